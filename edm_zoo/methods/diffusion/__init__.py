"""Gaussian diffusion (EDM, and GeoLDM on a latent): schedules, Gaussians, loss /
NLL, samplers."""

from edm_zoo.methods.diffusion.latent import LatentDiffusion
from edm_zoo.methods.diffusion.objective import Diffusion, log_pn_table

__all__ = ['Diffusion', 'LatentDiffusion', 'log_pn_table']
