"""The zoo's generative methods, one package each, behind one interface.

`diffusion/`: EDM's equivariant Gaussian diffusion (and GeoLDM's on a latent);
`bfn/`: GeoBFN's Bayesian flow network. A method's model object speaks what the
training skeleton, evaluation and sampling call: `init`, `check_params`,
`draw_time` / `eval_time` / `sample_noise` (its randomness, drawn outside),
`train_terms` / `eval_terms` (per-molecule figures for explicit t and noise),
`loss_units`, `objective_name` and `objective_label`; `sample` below runs its
sampler. Adding a method: a package here, a branch in `make` and `sample`, and
its networks in `edm_zoo.models` with `method=` in the registry.
"""

from __future__ import annotations

from typing import Any

import jax
import jraph

from edm_zoo import models
from edm_zoo.config import Config, SamplingConfig
from edm_zoo.methods import bfn, diffusion
from edm_zoo.methods.bfn import sampler as bfn_sampler
from edm_zoo.methods.diffusion import samplers

Model = diffusion.Diffusion | diffusion.LatentDiffusion | bfn.BayesianFlow

__all__ = ['Model', 'make', 'sample', 'steps_of']


def make(config: Config, n_nodes_histogram: dict[int, int]) -> Model:
  """The config's model: EDM's objective around a zoo network, GeoLDM's latent
  diffusion for a latent entry of the model registry, or a Bayesian flow."""
  t = config.train
  entry = models.get(config.model.name)
  if entry.latent:
    return diffusion.LatentDiffusion(config, n_nodes_histogram, config.num_atom_types)
  for given, flag in ((t.stage != 'diffusion', f'--stage={t.stage}'),
                      (bool(t.ae_ckpt), '--ae_ckpt'), (not t.trainable_ae, '--notrainable_ae')):
    if given:
      raise ValueError(f'{flag} applies to latent models ({", ".join(models.latent_names())}), '
                       f'not --model={config.model.name}.')
  if entry.method == 'bfn':
    return bfn.BayesianFlow(config, n_nodes_histogram)
  return diffusion.Diffusion(config, n_nodes_histogram)


def check_sampling(model: Model, sampling: SamplingConfig) -> None:
  """One-line ValueErrors for sampler options the model's method does not have."""
  if isinstance(model, bfn.BayesianFlow):
    for given, flag in ((sampling.sampler != 'ancestral', f'--sampler={sampling.sampler}'),
                        (sampling.spacing != 'uniform', f'--spacing={sampling.spacing}'),
                        (sampling.fix_noise, '--fix_noise'), (sampling.chain, '--chain'),
                        (sampling.eta != 0.0, f'--eta={sampling.eta}')):
      if given:
        raise ValueError(f'{flag} is a diffusion sampler option; geobfn samples with '
                         'its own Bayesian updates (--steps sets how many).')
    bfn_sampler.check_steps(model, sampling.steps)
  else:
    samplers.get(sampling.sampler, eta=sampling.eta)


def steps_of(model: Model, params: Any, sampling: SamplingConfig) -> int:
  """The number of network steps before the final one that `sampling` asks for."""
  if isinstance(model, bfn.BayesianFlow):
    return bfn_sampler.check_steps(model, sampling.steps)
  return len(samplers.model_grid(model, params, sampling.steps, sampling.spacing)) - 1


def sample(model: Model, params: Any, graph: jraph.GraphsTuple, key: jax.Array,
           sampling: SamplingConfig, *, atomic_numbers, chain_every: int = 0
           ) -> dict[str, jax.Array]:
  """Molecules of the sizes in `graph` by the model's sampler: {'x', 'h_cat',
  'h_int'} (and 'chain' for a diffusion model with `chain_every`)."""
  if isinstance(model, bfn.BayesianFlow):
    if chain_every:
      raise ValueError('geobfn has no diffusion chain to record (--chain_every is '
                       'for diffusion models).')
    check_sampling(model, sampling)
    return bfn_sampler.sample(model, params, graph, key, steps=sampling.steps,
                              atomic_numbers=atomic_numbers)
  return samplers.sample(model, params, graph, key,
                         samplers.get(sampling.sampler, eta=sampling.eta),
                         steps=sampling.steps, spacing=sampling.spacing,
                         jit_steps=sampling.jit_steps, unroll=sampling.unroll,
                         fix_noise=sampling.fix_noise, chain_every=chain_every)
