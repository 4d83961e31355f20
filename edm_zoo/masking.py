"""Masks of padded `jraph.GraphsTuple`s: the one home of node/edge/graph masking.

Batches carry their masks as features (`nodes['mask']`, `edges['mask']`,
`globals['mask']`): set to 1 for every real element before `jraph.pad_with_graphs`,
which fills padding with zeros. They equal jraph's `get_*_padding_mask` helpers
(a test checks it) but cost nothing on the host and nothing to recompute under jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from edm_zoo.data import features

MASK = features.MASK


def node_mask(graph: jraph.GraphsTuple) -> jax.Array:
  """[n_node] float mask, 1 for real atoms."""
  return graph.nodes[MASK]


def edge_mask(graph: jraph.GraphsTuple) -> jax.Array:
  """[n_edge] float mask, 1 for real (directed) bonds-to-be."""
  return graph.edges[MASK]


def graph_mask(graph: jraph.GraphsTuple) -> jax.Array:
  """[n_graph] float mask, 1 for real molecules."""
  return graph.globals[MASK]


def node_graph_index(graph: jraph.GraphsTuple) -> jax.Array:
  """[n_node] index of the graph each node belongs to (static total size)."""
  n_graph = graph.n_node.shape[0]
  total = jax.tree.leaves(graph.nodes)[0].shape[0]
  return jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=total)


def per_node(values: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
  """[n_node, 1]: each node gets its molecule's entry of `values` [n_graph]."""
  return per_node_rows(values, graph)[:, None]


def per_node_rows(values: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
  """[n_node, ...]: each node gets its molecule's row of `values` [n_graph, ...]."""
  return values[node_graph_index(graph)]


def segment_sum(data: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
  """Sums per-node `data` over the nodes of each graph -> [n_graph, ...]."""
  return jax.ops.segment_sum(data, node_graph_index(graph),
                             num_segments=graph.n_node.shape[0])


def graph_sum(values: jax.Array, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
  """(sum of per-molecule `values` [n_graph] over real molecules, their count).

  Padding graphs may hold NaN or inf (their molecules are empty): they are
  excluded with `where`, not multiplied by a zero mask.
  """
  mask = graph_mask(graph)
  return jnp.sum(jnp.where(mask > 0, values, 0.0)), jnp.sum(mask)


def graph_mean(values: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
  """Mean of per-molecule `values` [n_graph] over the batch's real molecules."""
  total, count = graph_sum(values, graph)
  return total / jnp.maximum(count, 1.0)


def jraph_masks(graph: jraph.GraphsTuple) -> tuple[np.ndarray, ...]:
  """(node, edge, graph) masks from jraph's own padding helpers, as numpy."""
  return tuple(np.asarray(f(graph)) for f in (
      jraph.get_node_padding_mask, jraph.get_edge_padding_mask,
      jraph.get_graph_padding_mask))
