"""Flow matching of molecules with bonds (SemlaFlow): the host-side prior and
optimal transport, the objective and the Euler sampler."""

from edm_zoo.methods.flow import integrator
from edm_zoo.methods.flow.objective import SemlaFlow
from edm_zoo.methods.protocol import Method, refuse_diffusion_options

__all__ = ['METHOD', 'SemlaFlow']


def _check_sampling(model, sampling) -> None:
  refuse_diffusion_options(sampling, 'semlaflow', 'its own Euler steps')
  integrator.check_steps(model, sampling.steps)


def _steps_of(model, params, sampling) -> int:
  del params
  # Every step is a network evaluation; the sample is the last one's prediction.
  return integrator.check_steps(model, sampling.steps) - 1


def _sample(model, params, graph, key, sampling, *, atomic_numbers, chain_every=0):
  if chain_every:
    raise ValueError('semlaflow has no diffusion chain to record (--chain_every is '
                     'for diffusion models).')
  _check_sampling(model, sampling)
  return integrator.sample(model, params, graph, key, steps=sampling.steps,
                           atomic_numbers=atomic_numbers)


METHOD = Method(build=SemlaFlow, check_sampling=_check_sampling, steps_of=_steps_of,
                sample=_sample, own_sampler='euler')
