"""edm_zoo: E(3)-equivariant diffusion models for molecules in JAX + Haiku."""

from edm_zoo import _jax_compat  # noqa: F401  (must precede any jraph use)

__version__ = '0.1.0'
