"""Samplers for any trained zoo model, one module each behind one interface.

`ancestral` (EDM's p(z_s | z_t), on the full or a respaced grid), `ddim`
(deterministic or partly stochastic with `eta`), `dpm_solver` (DPM-Solver++(2M),
second order in log-SNR). `get(name, eta=...)` returns the step rule; `chain.sample`
runs it (time grid, noise, K steps per compiled call, the final step). Adding a
sampler: one module with a frozen dataclass that has `stochastic`, `init` and
`step`, and one line in `_REGISTRY`.
"""

from __future__ import annotations

from edm_zoo.methods.diffusion.samplers import ancestral, ddim, dpm_solver
from edm_zoo.methods.diffusion.samplers.chain import SPACINGS, model_grid, sample, time_grid

_REGISTRY = {
    'ancestral': lambda eta: ancestral.Ancestral(),
    'ddim': lambda eta: ddim.DDIM(eta=eta),
    'dpm_solver': lambda eta: dpm_solver.DPMSolverPP2M(),
}

__all__ = ['SPACINGS', 'get', 'model_grid', 'names', 'sample', 'time_grid']


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str, *, eta: float = 0.0):
  """The step rule `name` (`eta` is DDIM's noise share; the others ignore it).

  Raises:
    ValueError: an unknown name or a bad eta (one line).
  """
  if name not in _REGISTRY:
    raise ValueError(f'unknown sampler {name!r}; allowed: {names()}.')
  return _REGISTRY[name](eta)
