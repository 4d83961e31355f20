"""The model zoo: denoising networks that share one diffusion objective.

Each model is a pure `net_fn(graph, z_t, t, *, config) -> eps_hat` over a padded
`jraph.GraphsTuple`; `transform(config)` wraps it once with `hk.transform`.
Adding a model: one new module file with a `net_fn`, one line in `_REGISTRY`.
"""

from __future__ import annotations

import functools
from typing import Callable

import haiku as hk

from edm_zoo.config import Config
from edm_zoo.models import egnn, gnn

_REGISTRY: dict[str, Callable] = {
    'egnn': egnn.net_fn,
    'gnn': gnn.net_fn,
}


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str) -> Callable:
  """The `net_fn` registered under `name`."""
  if name not in _REGISTRY:
    raise ValueError(f'unknown model {name!r}; allowed: {names()}.')
  return _REGISTRY[name]


def transform(config: Config) -> hk.Transformed:
  """The configured model's net_fn, wrapped once (no rng at apply time)."""
  return hk.without_apply_rng(hk.transform(
      functools.partial(get(config.model.name), config=config)))
