"""EDM's `EGNN_dynamics_QM9` (mode 'egnn_dynamics') on padded jraph edge lists.

The network sees the noisy state z_t = [x (3), h (F)] of every node, t of its
molecule and, for a conditional model, its molecule's context
(`edm_zoo.models.conventions`), and predicts eps: [x_out - x projected to zero
CoG, h_out]. Module and parameter names mirror the PyTorch state dict
(`e_block_0/gcl_0/edge_mlp_0` is `e_block_0.gcl_0.edge_mlp.0`) so that
`edm_zoo.compat.state_dict` maps 1:1.
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


def _pairwise(x, graph):
  diff = x[graph.receivers] - x[graph.senders]
  return jnp.sum(diff**2, axis=-1, keepdims=True), diff


class GCL(hk.Module):
  """Invariant graph convolution: edge MLP, optional attention, residual node MLP.

  Args:
    config: the network's width, attention and normalisation factor.
    name: the Haiku module name.
  """

  def __init__(self, *, config: ModelConfig, name: str | None = None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, h: jax.Array, *, graph: jraph.GraphsTuple, edge_attr: jax.Array,
               node_mask: jax.Array, edge_mask: jax.Array) -> jax.Array:
    """Updated node features.

    Args:
      h: [n_node, nf] node features.
      graph: the padded batch (senders, receivers).
      edge_attr: [n_edge, d_e] edge features.
      node_mask: [n_node] 1 for real atoms.
      edge_mask: [n_edge] 1 for real edges.

    Returns:
      [n_node, nf], zero on padding nodes.
    """
    c = self._config
    m = layers.silu(layers.EdgeLinear(c.nf, name='edge_mlp_0')(
        h, graph.receivers, graph.senders, edge_attr))
    m = layers.silu(layers.TorchLinear(c.nf, name='edge_mlp_2')(m))
    if c.attention:
      m = m * jax.nn.sigmoid(layers.TorchLinear(1, name='att_mlp_0')(m))
    m = m * edge_mask[:, None]
    agg = layers.aggregate(m, graph.receivers, h.shape[0], c.normalization_factor)
    out = layers.silu(layers.TorchLinear(c.nf, name='node_mlp_0')(
        jnp.concatenate([h, agg], axis=-1)))
    h = h + layers.TorchLinear(c.nf, name='node_mlp_2')(out)
    return h * node_mask[:, None]


class EquivariantUpdate(hk.Module):
  """x_i += sum_j (x_i - x_j)/(|x_i - x_j| + C) * tanh(phi(h_i, h_j, e_ij)) * range.

  Args:
    config: the network's width, tanh bound and normalisation factor.
    name: the Haiku module name.
  """

  def __init__(self, *, config: ModelConfig, name: str | None = None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, h: jax.Array, x: jax.Array, *, graph: jraph.GraphsTuple,
               coord_diff: jax.Array, edge_attr: jax.Array, node_mask: jax.Array,
               edge_mask: jax.Array) -> jax.Array:
    """Updated positions.

    Args:
      h: [n_node, nf] node features.
      x: [n_node, 3] positions.
      graph: the padded batch.
      coord_diff: [n_edge, 3] normalised x_receiver - x_sender.
      edge_attr: [n_edge, d_e] edge features.
      node_mask: [n_node] 1 for real atoms.
      edge_mask: [n_edge] 1 for real edges.

    Returns:
      [n_node, 3], zero on padding nodes.
    """
    c = self._config
    phi = layers.silu(layers.EdgeLinear(c.nf, name='coord_mlp_0')(
        h, graph.receivers, graph.senders, edge_attr))
    phi = layers.silu(layers.TorchLinear(c.nf, name='coord_mlp_2')(phi))
    phi = layers.TorchLinear(1, with_bias=False, w_init=layers.xavier_uniform(0.001),
                             name='coord_mlp_4')(phi)
    if c.tanh:
      phi = jnp.tanh(phi) * c.coords_range
    trans = coord_diff * phi * edge_mask[:, None]
    x = x + layers.aggregate(trans, graph.receivers, x.shape[0],
                             c.normalization_factor)
    return x * node_mask[:, None]


class EquivariantBlock(hk.Module):
  """`inv_sublayers` GCLs on [radial, radial_0] edges, then one coordinate update.

  Args:
    config: the network configuration.
    name: the Haiku module name.
  """

  def __init__(self, *, config: ModelConfig, name: str | None = None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, h: jax.Array, x: jax.Array, *, graph: jraph.GraphsTuple,
               dist0: jax.Array, node_mask: jax.Array, edge_mask: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """(h, x) after the block.

    Args:
      h: [n_node, nf] node features.
      x: [n_node, 3] positions.
      graph: the padded batch.
      dist0: [n_edge, d] the input positions' (embedded) squared distances.
      node_mask: [n_node] 1 for real atoms.
      edge_mask: [n_edge] 1 for real edges.
    """
    c = self._config
    radial, diff = _pairwise(x, graph)
    coord_diff = diff / (jnp.sqrt(radial + 1e-8) + c.norm_constant)
    if c.sin_embedding:
      radial = layers.sinusoidal_distance_embedding(radial)
    edge_attr = jnp.concatenate([radial, dist0], axis=-1)
    masks = dict(node_mask=node_mask, edge_mask=edge_mask)
    for k in range(c.inv_sublayers):
      h = GCL(config=c, name=f'gcl_{k}')(h, graph=graph, edge_attr=edge_attr, **masks)
    x = EquivariantUpdate(config=c, name='gcl_equiv')(
        h, x, graph=graph, coord_diff=coord_diff, edge_attr=edge_attr, **masks)
    return h * node_mask[:, None], x


class EGNN(hk.Module):
  """EDM's `EGNN` (egnn_new.py): embedding, EquivariantBlocks, output embedding.

  Args:
    config: the network configuration.
    out_node_nf: width of the feature output.
    out_name: the output layer's module name (GeoBFN's is `embedding_out_charge`).
    name: the Haiku module name.
  """

  def __init__(self, *, config: ModelConfig, out_node_nf: int,
               out_name: str = 'embedding_out', name: str | None = 'egnn'):
    super().__init__(name=name)
    if config.aggregation != 'sum':
      raise ValueError(f"aggregation {config.aggregation!r}: only 'sum' is supported.")
    self._config = config
    self._out_node_nf = out_node_nf
    self._out_name = out_name

  def __call__(self, h: jax.Array, x: jax.Array, graph: jraph.GraphsTuple
               ) -> tuple[jax.Array, jax.Array]:
    """(h_out [n_node, out_node_nf], x_out [n_node, 3]) for features h and positions x."""
    c = self._config
    node_mask, edge_mask = masking.node_mask(graph), masking.edge_mask(graph)
    dist0, _ = _pairwise(x, graph)
    if c.sin_embedding:
      dist0 = layers.sinusoidal_distance_embedding(dist0)
    h = layers.TorchLinear(c.nf, name='embedding')(h)
    for l in range(c.n_layers):
      h, x = EquivariantBlock(config=c, name=f'e_block_{l}')(
          h, x, graph=graph, dist0=dist0, node_mask=node_mask, edge_mask=edge_mask)
    h = layers.TorchLinear(self._out_node_nf, name=self._out_name)(h)
    return h * node_mask[:, None], x


def net_fn(graph: jraph.GraphsTuple, z_t: jax.Array, t: jax.Array, *,
           config: Config) -> jax.Array:
  """Predicted noise eps_hat [n_node, 3 + F] for z_t [n_node, 3 + F], t [n_graph]."""
  node_mask = masking.node_mask(graph)[:, None]
  z_t = z_t * node_mask
  x, h = z_t[:, :3], z_t[:, 3:]
  h, n_extra = conventions.with_conditioning(h, t, graph, config)
  h_out, x_out = EGNN(config=config.model, out_node_nf=h.shape[-1])(h, x, graph)
  return conventions.finalize_eps((x_out - x) * node_mask, h_out, graph, n_extra)
