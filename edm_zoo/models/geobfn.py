"""GeoBFN's network (`bfn4MolEGNN`'s EGNN and its input/output heads, Song et
al., ICLR 2024) on padded jraph edge lists.

The EGNN is the zoo's (`edm_zoo.models.egnn.EGNN`, EDM's `egnn_new`); GeoBFN's
copy of `egnn_new.py` differs from EDM's in exactly these ways, all options here:
  * `inv_sublayers` defaults to 1 and `normalization_factor` to 1 (EDM's class
    defaults are 2 and 100; EDM's QM9 run passes 1 and 1 too);
  * `bfn4MolEGNN` builds it with attention=False and tanh=False (EDM's QM9 run:
    both True), so the coordinate update is unbounded;
  * the output layer is named `embedding_out_charge` (EDM: `embedding_out`) and
    has 2 outputs: the charge's mu and log-sigma "noise" predictions;
  * no node mask is passed (PyG batches hold no padding); ours masks padding.

The node input is not the charge but a 16-centre Gaussian basis of the charge's
flow mean mu_c on [-2, 2] (width 4/16, L1-normalised, then 2 p - 1), with t
appended. Parameter names mirror the state dict: `egnn.embedding`,
`egnn.e_block_<l>.gcl_0...`, `egnn.embedding_out_charge`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity, masking
from edm_zoo.config import Config
from edm_zoo.models import egnn

# GeoBFN clamps the network's three outputs to this range.
OUTPUT_CLAMP = 10.0
BASIS_RANGE = (-2.0, 2.0)


def gaussian_basis(mu_charge: jax.Array, n: int) -> jax.Array:
  """[n_node, n]: GeoBFN's `gaussian_basis` of the charge mean [n_node, 1]."""
  start, end = BASIS_RANGE
  centres = jnp.linspace(start, end, n, dtype=mu_charge.dtype)
  width = (end - start) / n  # Not (end - start) / (n - 1): GeoBFN's choice.
  p = jnp.exp(-0.5 * ((mu_charge - centres) / width)**2)
  # torch's F.normalize(p=1): divide by max(||p||_1, 1e-12).
  p = p / jnp.maximum(jnp.sum(jnp.abs(p), -1, keepdims=True), 1e-12)
  return p * 2 - 1


def net_fn(graph: jraph.GraphsTuple, mu_x: jax.Array, mu_charge: jax.Array,
           t: jax.Array, *, config: Config) -> dict[str, jax.Array]:
  """GeoBFN's `interdependency_modeling` up to the Bayesian algebra.

  Args:
    graph: the padded batch.
    mu_x: [n_node, 3] the coordinates' flow mean (zero CoG).
    mu_charge: [n_node, 1] the charge's flow mean.
    t: [n_graph] times in [t_min, 1].
    config: the run configuration (`model`, `bfn.basis_nf`).

  Returns:
    `eps_x` [n_node, 3]: x_out - mu_x projected to zero CoG, clamped to +-10;
    `mu_eps`, `ln_sigma_eps` [n_node, 1]: the charge heads, clamped to +-10.
  """
  mask = masking.node_mask(graph)[:, None]
  h = gaussian_basis(mu_charge, config.bfn.basis_nf)
  if config.model.condition_time:
    h = jnp.concatenate([h, masking.per_node(t, graph)], -1)
  h_out, x_out = egnn.EGNN(config=config.model, out_node_nf=2,
                           out_name='embedding_out_charge')(h * mask, mu_x * mask, graph)
  eps_x = center_of_gravity.remove_mean((x_out - mu_x) * mask, graph)
  clamp = lambda v: jnp.clip(v, -OUTPUT_CLAMP, OUTPUT_CLAMP) * mask
  return {'eps_x': clamp(eps_x), 'mu_eps': clamp(h_out[:, 0:1]),
          'ln_sigma_eps': clamp(h_out[:, 1:2])}
