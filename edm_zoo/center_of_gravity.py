"""The centre-of-gravity projection: the one home of zero-CoG positions.

EDM's positions live in the linear subspace where each molecule's centre of
gravity (over its real atoms) is zero; the noise, the network's position output
and every sampler step are projected there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

from edm_zoo import masking


def remove_mean(x: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
  """Subtracts each molecule's mean over its real atoms; padding stays zero.

  Args:
    x: [n_node, 3] positions (or any per-node vectors).
    graph: the padded batch the nodes belong to.

  Returns:
    [n_node, 3], zero mean per real molecule, zero on padding nodes.
  """
  mask = masking.node_mask(graph)[:, None]
  x = x * mask
  n = jnp.maximum(masking.segment_sum(mask, graph), 1.0)
  mean = masking.segment_sum(x, graph) / n
  return x - mean[masking.node_graph_index(graph)] * mask


def remove_mean_positions(z: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
  """Projects the position columns (the first 3) of z [n_node, 3 + F] to zero CoG;
  the feature columns pass unchanged."""
  return jnp.concatenate([remove_mean(z[:, :3], graph), z[:, 3:]], axis=-1)


def max_abs_mean(x: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
  """Largest |mean| of x over the real atoms of any molecule (a check)."""
  mask = masking.node_mask(graph)[:, None]
  n = jnp.maximum(masking.segment_sum(mask, graph), 1.0)
  return jnp.max(jnp.abs(masking.segment_sum(x * mask, graph) / n))
