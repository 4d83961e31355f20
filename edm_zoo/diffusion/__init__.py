"""The shared diffusion objective: schedules, Gaussians, loss / NLL, sampler."""

from edm_zoo.diffusion.objective import Diffusion, log_pn_table

__all__ = ['Diffusion', 'log_pn_table']
