"""Bayesian flow networks (GeoBFN): the flow, its objective and its any-step sampler."""

from edm_zoo.methods.bfn import sampler
from edm_zoo.methods.bfn.objective import BayesianFlow
from edm_zoo.methods.protocol import Method, refuse_diffusion_options

__all__ = ['BayesianFlow', 'METHOD']


def _check_sampling(model, sampling) -> None:
  refuse_diffusion_options(sampling, 'geobfn', 'its own Bayesian updates')
  sampler.check_steps(model, sampling.steps)


def _steps_of(model, params, sampling) -> int:
  del params
  return sampler.check_steps(model, sampling.steps)


def _sample(model, params, graph, key, sampling, *, atomic_numbers, chain_every=0):
  if chain_every:
    raise ValueError('geobfn has no diffusion chain to record (--chain_every is '
                     'for diffusion models).')
  _check_sampling(model, sampling)
  return sampler.sample(model, params, graph, key, steps=sampling.steps,
                        atomic_numbers=atomic_numbers)


METHOD = Method(build=BayesianFlow, check_sampling=_check_sampling, steps_of=_steps_of,
                sample=_sample, own_sampler='bayesian_updates')
