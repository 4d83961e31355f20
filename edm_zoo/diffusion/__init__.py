"""The shared diffusion objective: schedules, Gaussians, loss / NLL, sampler."""

from edm_zoo import models
from edm_zoo.config import Config
from edm_zoo.diffusion.latent import LatentDiffusion
from edm_zoo.diffusion.objective import Diffusion, log_pn_table

__all__ = ['Diffusion', 'LatentDiffusion', 'log_pn_table', 'make']


def make(config: Config, n_nodes_histogram: dict[int, int]) -> Diffusion | LatentDiffusion:
  """The config's model: EDM's objective around a zoo network, or GeoLDM's latent
  diffusion for a latent entry of the model registry."""
  t = config.train
  if models.get(config.model.name).latent:
    return LatentDiffusion(config, n_nodes_histogram, config.num_atom_types)
  for given, flag in ((t.stage != 'diffusion', f'--stage={t.stage}'),
                      (bool(t.ae_ckpt), '--ae_ckpt'), (not t.trainable_ae, '--notrainable_ae')):
    if given:
      raise ValueError(f'{flag} applies to latent models ({", ".join(models.latent_names())}), '
                       f'not --model={config.model.name}.')
  return Diffusion(config, n_nodes_histogram)
