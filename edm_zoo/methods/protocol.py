"""What a generative method gives the zoo besides its model object: how to build
it from a config and how to sample from it."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Method(NamedTuple):
  """A method's entry points (`edm_zoo.methods` dispatches on the model
  registry's `method` name).

  Attributes:
    build: (config, n_nodes_histogram) -> the model object.
    check_sampling: (model, SamplingConfig) -> None; one-line ValueErrors for
      options the method does not have.
    steps_of: (model, params, SamplingConfig) -> the number of network steps
      before the final one.
    sample: (model, params, graph, key, SamplingConfig, *, atomic_numbers,
      chain_every) -> {'x', 'h_cat', 'h_int', ...} per node of `graph`.
    own_sampler: the name of the method's one sampler ('bayesian_updates',
      'euler'), whose chain compiles per step count; None for the diffusion
      samplers (`--sampler`, `--spacing`).
  """
  build: Callable[..., Any]
  check_sampling: Callable[..., None]
  steps_of: Callable[..., int]
  sample: Callable[..., dict]
  own_sampler: str | None = None


def refuse_diffusion_options(sampling, name: str, own: str) -> None:
  """One-line ValueErrors for the diffusion samplers' options, which a method
  without them (`name`, sampling by `own`) does not take."""
  for given, flag in ((sampling.sampler != 'ancestral', f'--sampler={sampling.sampler}'),
                      (sampling.spacing != 'uniform', f'--spacing={sampling.spacing}'),
                      (sampling.fix_noise, '--fix_noise'), (sampling.chain, '--chain'),
                      (sampling.eta != 0.0, f'--eta={sampling.eta}')):
    if given:
      raise ValueError(f'{flag} is a diffusion sampler option; {name} samples with '
                       f'{own} (--steps sets how many).')
