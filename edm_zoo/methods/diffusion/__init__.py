"""Gaussian diffusion (EDM, and GeoLDM on a latent): schedules, Gaussians, loss /
NLL, samplers."""

from edm_zoo import models
from edm_zoo.methods.diffusion import samplers
from edm_zoo.methods.diffusion.latent import LatentDiffusion
from edm_zoo.methods.diffusion.objective import Diffusion, log_pn_table
from edm_zoo.methods.protocol import Method

__all__ = ['Diffusion', 'LatentDiffusion', 'METHOD', 'log_pn_table']


def build(config, n_nodes_histogram):
  """EDM's objective around a zoo network, or GeoLDM's latent diffusion for a
  latent entry of the model registry."""
  t = config.train
  if models.get(config.model.name).latent:
    return LatentDiffusion(config, n_nodes_histogram, config.num_atom_types)
  for given, flag in ((t.stage != 'diffusion', f'--stage={t.stage}'),
                      (bool(t.ae_ckpt), '--ae_ckpt'), (not t.trainable_ae, '--notrainable_ae')):
    if given:
      raise ValueError(f'{flag} applies to latent models ({", ".join(models.latent_names())}), '
                       f'not --model={config.model.name}.')
  return Diffusion(config, n_nodes_histogram)


def _check_sampling(model, sampling) -> None:
  del model
  samplers.get(sampling.sampler, eta=sampling.eta)


def _steps_of(model, params, sampling) -> int:
  return len(samplers.model_grid(model, params, sampling.steps, sampling.spacing)) - 1


def _sample(model, params, graph, key, sampling, *, atomic_numbers, chain_every=0):
  del atomic_numbers
  return samplers.sample(model, params, graph, key,
                         samplers.get(sampling.sampler, eta=sampling.eta),
                         steps=sampling.steps, spacing=sampling.spacing,
                         jit_steps=sampling.jit_steps, unroll=sampling.unroll,
                         fix_noise=sampling.fix_noise, chain_every=chain_every)


METHOD = Method(build=build, check_sampling=_check_sampling, steps_of=_steps_of,
                sample=_sample)
