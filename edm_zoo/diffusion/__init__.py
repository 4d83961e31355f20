"""The shared diffusion objective: schedules, Gaussians, loss / NLL, sampler."""

from edm_zoo import models
from edm_zoo.config import Config
from edm_zoo.diffusion.latent import LatentDiffusion
from edm_zoo.diffusion.objective import Diffusion, log_pn_table

__all__ = ['Diffusion', 'LatentDiffusion', 'log_pn_table', 'make']


def make(config: Config, n_nodes_histogram: dict[int, int]) -> Diffusion | LatentDiffusion:
  """The config's model: EDM's objective around a zoo network, or GeoLDM's latent
  diffusion for a latent entry of the model registry."""
  if models.get(config.model.name).latent:
    return LatentDiffusion(config, n_nodes_histogram, config.num_atom_types)
  return Diffusion(config, n_nodes_histogram)
