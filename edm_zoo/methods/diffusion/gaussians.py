"""Gaussians on padded graphs: CoG-free positions, masked features, KLs, Phi."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity
from edm_zoo import masking


def sample_noise(rng: jax.Array, graph: jraph.GraphsTuple, n_features: int,
                 dtype=jnp.float32) -> jax.Array:
  """[n_node, 3 + n_features]: CoG-free normal positions, masked normal features.

  EDM's `sample_combined_position_feature_noise` on edge lists.
  """
  n_node = masking.node_mask(graph).shape[0]
  z = jax.random.normal(rng, (n_node, 3 + n_features), dtype)
  z = z * masking.node_mask(graph)[:, None]
  return center_of_gravity.remove_mean_positions(z, graph)


def sample_noise_per_molecule(keys: jax.Array, graph: jraph.GraphsTuple,
                              n_features: int, max_atoms: int, *,
                              centre: bool = True) -> jax.Array:
  """As `sample_noise`, but molecule g's rows come from `keys[g]` alone.

  The draw of a molecule then does not depend on which other molecules share its
  batch or device, so a global batch gets the same noise whether one device
  holds it or many hold its shards.

  Args:
    keys: [n_graph] keys, one per molecule (padding graphs included).
    graph: the batch.
    n_features: columns of h.
    max_atoms: the largest real molecule (rows drawn per molecule).
    centre: project the positions to zero CoG (a Bayesian flow takes raw draws).
  """
  table = jax.vmap(lambda k: jax.random.normal(k, (max_atoms, 3 + n_features)))(keys)
  graph_of = masking.node_graph_index(graph)
  first = jnp.cumsum(graph.n_node) - graph.n_node
  row = jnp.arange(graph_of.shape[0]) - first[graph_of]
  # Padding nodes may sit past max_atoms; they are masked to zero below.
  z = table[graph_of, jnp.clip(row, 0, max_atoms - 1)]
  z = z * masking.node_mask(graph)[:, None]
  return center_of_gravity.remove_mean_positions(z, graph) if centre else z


def subspace_dim(graph: jraph.GraphsTuple) -> jax.Array:
  """[n_graph] (N_atoms - 1) * 3: the dimension of the zero-CoG position space."""
  return (graph.n_node - 1).astype(jnp.float32) * 3


def kl_to_standard_normal(mu: jax.Array, sigma: jax.Array,
                          graph: jraph.GraphsTuple) -> jax.Array:
  """[n_graph] sum over real nodes and features of KL(N(mu, sigma) || N(0, 1)).

  Args:
    mu: [n_node, d] means.
    sigma: [n_node, 1] standard deviations.
    graph: the batch.
  """
  kl = -jnp.log(sigma) + 0.5 * (sigma**2 + mu**2) - 0.5
  return masking.segment_sum(
      jnp.sum(kl, axis=-1) * masking.node_mask(graph), graph)


def kl_to_standard_normal_subspace(mu_norm2: jax.Array, sigma: jax.Array,
                                   d: jax.Array) -> jax.Array:
  """[n_graph] KL to N(0, I) of an isotropic Gaussian on a d-dim subspace."""
  return d * -jnp.log(sigma) + 0.5 * (d * sigma**2 + mu_norm2) - 0.5 * d


def standard_normal_cdf(x: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + jax.lax.erf(x / jnp.sqrt(2.0).astype(x.dtype)))
