"""The model zoo: the networks of every generative method.

Each model is a pure `net_fn(graph, ..., *, config)` over a padded
`jraph.GraphsTuple`; `transform(config)` wraps it once with `hk.transform`. A
diffusion network maps (z_t, t) to eps_hat (`conventions`); a Bayesian flow
network (geobfn) maps the flow's means and t to its output distribution's
parameters. Adding a model: one new module file with a `net_fn`, one line in
`_REGISTRY` naming its method (`edm_zoo.methods`).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import haiku as hk

from edm_zoo.config import Config
from edm_zoo.models import egnn, geobfn, gnn, semla


class Entry(NamedTuple):
  """A zoo model: its pure `net_fn`, whether its position output is E(3)-equivariant,
  whether the diffusion runs on an autoencoder's latent (GeoLDM: `net_fn` is
  then the latent dynamics, `edm_zoo.methods.diffusion.latent`), and its
  generative method (`edm_zoo.methods`: 'diffusion', 'bfn' or 'flow')."""
  net_fn: Callable
  equivariant: bool
  latent: bool = False
  method: str = 'diffusion'


_REGISTRY: dict[str, Entry] = {
    'egnn': Entry(egnn.net_fn, equivariant=True),
    'gnn': Entry(gnn.net_fn, equivariant=False),
    'geoldm': Entry(egnn.net_fn, equivariant=True, latent=True),
    'geobfn': Entry(geobfn.net_fn, equivariant=True, method='bfn'),
    'semlaflow': Entry(semla.net_fn, equivariant=True, method='flow'),
}


def names() -> list[str]:
  return sorted(_REGISTRY)


def latent_names() -> list[str]:
  return sorted(n for n, e in _REGISTRY.items() if e.latent)


def diffusion_names() -> list[str]:
  """The models of EDM's diffusion (on data or a latent): their networks take
  (z_t, t) and return eps_hat."""
  return sorted(n for n, e in _REGISTRY.items() if e.method == 'diffusion')


def get(name: str) -> Entry:
  """The registry entry of `name`."""
  if name not in _REGISTRY:
    raise ValueError(f'unknown model {name!r}; allowed: {names()}.')
  return _REGISTRY[name]


def transform(config: Config) -> hk.Transformed:
  """The configured model's net_fn, wrapped once (no rng at apply time)."""
  return hk.without_apply_rng(hk.transform(
      functools.partial(get(config.model.name).net_fn, config=config)))
