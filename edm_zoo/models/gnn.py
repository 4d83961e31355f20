"""EDM's non-equivariant GDM baseline (`GNN_dynamics`, mode 'gnn_dynamics').

A plain message-passing GNN on [x, h, t/T, context] that outputs [vel, h] directly. EDM
passes no edge mask to this GNN, so every node also sends itself a message (the
self loops of its dense N x N edge list); we keep those self messages. EDM's dense
version would also receive messages from padding nodes, which makes its output
depend on the padding; on edge lists there are none, which is the intended model.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from edm_zoo import masking
from edm_zoo.config import Config, ModelConfig
from edm_zoo.models import conventions
from edm_zoo.models import layers


class SelfLoopGCL(hk.Module):
  """EDM's GCL without edge attributes, over real edges plus one self loop.

  Args:
    config: the network's width, attention and normalisation factor.
    name: the Haiku module name.
  """

  def __init__(self, *, config: ModelConfig, name: str | None = None):
    super().__init__(name=name)
    self._config = config

  def _edge_mlp(self, pre):
    c = self._config
    m = layers.silu(pre)
    m = layers.silu(layers.TorchLinear(c.nf, name='edge_mlp_2')(m))
    if c.attention:
      m = m * jax.nn.sigmoid(layers.TorchLinear(1, name='att_mlp_0')(m))
    return m

  def __call__(self, h: jax.Array, *, graph: jraph.GraphsTuple, node_mask: jax.Array,
               edge_mask: jax.Array) -> jax.Array:
    """Updated node features.

    Args:
      h: [n_node, nf] node features.
      graph: the padded batch.
      node_mask: [n_node] 1 for real atoms.
      edge_mask: [n_edge] 1 for real edges.

    Returns:
      [n_node, nf], zero on padding nodes.
    """
    c = self._config
    nf = h.shape[-1]
    first = layers.EdgeLinear(c.nf, name='edge_mlp_0')
    empty = jnp.zeros((graph.senders.shape[0], 0), h.dtype)
    m = self._edge_mlp(first(h, graph.receivers, graph.senders, empty))
    m = m * edge_mask[:, None]
    w, b = first.params(2 * nf)
    self_m = self._edge_mlp(h @ (w[:nf] + w[nf:]) + b)
    agg = layers.aggregate(m, graph.receivers, h.shape[0],
                           c.normalization_factor) + self_m / c.normalization_factor
    out = layers.silu(layers.TorchLinear(c.nf, name='node_mlp_0')(
        jnp.concatenate([h, agg], axis=-1)))
    h = h + layers.TorchLinear(c.nf, name='node_mlp_2')(out)
    return h * node_mask[:, None]


class GNN(hk.Module):
  """EDM's `GNN` (egnn_new.py): embedding, GCLs, output embedding.

  Args:
    config: the network configuration.
    name: the Haiku module name.
  """

  def __init__(self, *, config: ModelConfig, name: str | None = 'gnn'):
    super().__init__(name=name)
    self._config = config

  def __call__(self, xh: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
    """[n_node, D] output for inputs xh [n_node, D] (positions are plain features)."""
    c = self._config
    node_mask = masking.node_mask(graph)
    h = layers.TorchLinear(c.nf, name='embedding')(xh)
    for l in range(c.n_layers):
      h = SelfLoopGCL(config=c, name=f'gcl_{l}')(
          h, graph=graph, node_mask=node_mask, edge_mask=masking.edge_mask(graph))
    out = layers.TorchLinear(xh.shape[-1], name='embedding_out')(h)
    return out * node_mask[:, None]


def net_fn(graph: jraph.GraphsTuple, z_t: jax.Array, t: jax.Array, *,
           config: Config) -> jax.Array:
  """Predicted noise eps_hat [n_node, 3 + F] for z_t [n_node, 3 + F], t [n_graph]."""
  c = config.model
  xh = z_t * masking.node_mask(graph)[:, None]
  xh, n_extra = conventions.with_conditioning(xh, t, graph, config)
  out = GNN(config=c)(xh, graph)
  return conventions.finalize_eps(out[:, :3], out[:, 3:], graph, n_extra)
