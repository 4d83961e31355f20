"""The zoo's generative methods, one package each, behind one interface.

`diffusion/`: EDM's equivariant Gaussian diffusion (and GeoLDM's on a latent);
`bfn/`: GeoBFN's Bayesian flow network; `flow/`: SemlaFlow's flow matching of
molecules with bonds. A method's model object speaks what the training skeleton
and evaluation call: `init`, `check_params`, `draw_time` / `eval_time` (its
randomness, drawn outside), `train_terms` / `eval_terms` (per-molecule figures
for explicit t and noise), `loss_units`, `objective_name` and `objective_label`.
Its package's `METHOD` (`protocol.Method`) builds it and samples from it.
Adding a method: its package here, one line in `_METHODS`, and its networks in
`edm_zoo.models` with `method=` in the registry.
"""

from __future__ import annotations

from typing import Any

import jax
import jraph

from edm_zoo import models
from edm_zoo.config import Config, SamplingConfig
from edm_zoo.methods import bfn, diffusion, flow
from edm_zoo.methods.protocol import Method

Model = diffusion.Diffusion | diffusion.LatentDiffusion | bfn.BayesianFlow | flow.SemlaFlow

__all__ = ['Method', 'Model', 'check_sampling', 'make', 'method_of', 'sample', 'steps_of']

_METHODS: dict[str, Method] = {
    'diffusion': diffusion.METHOD,
    'bfn': bfn.METHOD,
    'flow': flow.METHOD,
}


def method_of(model_name: str) -> Method:
  """The entry points of the method of `--model=model_name`."""
  return _METHODS[models.get(model_name).method]


def make(config: Config, n_nodes_histogram: dict[int, int]) -> Model:
  """The config's model object (its method's `build`)."""
  return method_of(config.model.name).build(config, n_nodes_histogram)


def check_sampling(model: Model, sampling: SamplingConfig) -> None:
  """One-line ValueErrors for sampler options the model's method does not have."""
  method_of(model.config.model.name).check_sampling(model, sampling)


def steps_of(model: Model, params: Any, sampling: SamplingConfig) -> int:
  """The number of network steps before the final one that `sampling` asks for."""
  return method_of(model.config.model.name).steps_of(model, params, sampling)


def sample(model: Model, params: Any, graph: jraph.GraphsTuple, key: jax.Array,
           sampling: SamplingConfig, *, atomic_numbers, chain_every: int = 0
           ) -> dict[str, jax.Array]:
  """Molecules of the sizes in `graph` by the model's sampler: {'x', 'h_cat',
  'h_int'} (and 'chain' for a diffusion model with `chain_every`; 'bond_orders'
  and 'formal_charges' for a method that writes bonds)."""
  return method_of(model.config.model.name).sample(
      model, params, graph, key, sampling, atomic_numbers=atomic_numbers,
      chain_every=chain_every)
