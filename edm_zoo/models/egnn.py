"""EDM's `EGNN_dynamics_QM9` (mode 'egnn_dynamics') on padded jraph edge lists.

The network sees the noisy state z_t = [x (3), h (F)] of every node, t/T of its
molecule and, for a conditional model, its molecule's context (`edm_zoo.conditioning`),
and predicts eps: [x_out - x projected to zero CoG, h_out]. Module and
parameter names mirror the PyTorch state dict (`e_block_0/gcl_0/edge_mlp_0` is
`e_block_0.gcl_0.edge_mlp.0`) so that `edm_zoo.compat.edm_torch` maps 1:1.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity
from edm_zoo import conditioning
from edm_zoo import masking
from edm_zoo.config import Config, ModelConfig
from edm_zoo.models import layers


def _pairwise(x, graph):
  diff = x[graph.receivers] - x[graph.senders]
  return jnp.sum(diff**2, axis=-1, keepdims=True), diff


class GCL(hk.Module):
  """Invariant graph convolution: edge MLP, optional attention, residual node MLP."""

  def __init__(self, *, config: ModelConfig, name: str | None = None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, h, graph, edge_attr, node_mask, edge_mask):
    c = self._config
    m = jax.nn.silu(layers.EdgeLinear(c.nf, name='edge_mlp_0')(
        h, graph.receivers, graph.senders, edge_attr))
    m = jax.nn.silu(layers.TorchLinear(c.nf, name='edge_mlp_2')(m))
    if c.attention:
      m = m * jax.nn.sigmoid(layers.TorchLinear(1, name='att_mlp_0')(m))
    m = m * edge_mask[:, None]
    agg = layers.aggregate(m, graph.receivers, h.shape[0], c.normalization_factor)
    out = jax.nn.silu(layers.TorchLinear(c.nf, name='node_mlp_0')(
        jnp.concatenate([h, agg], axis=-1)))
    h = h + layers.TorchLinear(c.nf, name='node_mlp_2')(out)
    return h * node_mask[:, None]


class EquivariantUpdate(hk.Module):
  """x_i += sum_j (x_i - x_j)/(|x_i - x_j| + C) * tanh(phi(h_i, h_j, e_ij)) * range."""

  def __init__(self, *, config: ModelConfig, name: str | None = None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, h, x, graph, coord_diff, edge_attr, node_mask, edge_mask):
    c = self._config
    phi = jax.nn.silu(layers.EdgeLinear(c.nf, name='coord_mlp_0')(
        h, graph.receivers, graph.senders, edge_attr))
    phi = jax.nn.silu(layers.TorchLinear(c.nf, name='coord_mlp_2')(phi))
    phi = layers.TorchLinear(1, with_bias=False, w_init=layers.xavier_uniform(0.001),
                             name='coord_mlp_4')(phi)
    if c.tanh:
      phi = jnp.tanh(phi) * c.coords_range
    trans = coord_diff * phi * edge_mask[:, None]
    x = x + layers.aggregate(trans, graph.receivers, x.shape[0],
                             c.normalization_factor)
    return x * node_mask[:, None]


class EquivariantBlock(hk.Module):
  """`inv_sublayers` GCLs on [radial, radial_0] edges, then one coordinate update."""

  def __init__(self, *, config: ModelConfig, name: str | None = None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, h, x, graph, dist0, node_mask, edge_mask):
    c = self._config
    radial, diff = _pairwise(x, graph)
    coord_diff = diff / (jnp.sqrt(radial + 1e-8) + c.norm_constant)
    if c.sin_embedding:
      radial = layers.sinusoidal_distance_embedding(radial)
    edge_attr = jnp.concatenate([radial, dist0], axis=-1)
    for k in range(c.inv_sublayers):
      h = GCL(config=c, name=f'gcl_{k}')(h, graph, edge_attr, node_mask, edge_mask)
    x = EquivariantUpdate(config=c, name='gcl_equiv')(
        h, x, graph, coord_diff, edge_attr, node_mask, edge_mask)
    return h * node_mask[:, None], x


class EGNN(hk.Module):
  """EDM's `EGNN` (egnn_new.py): embedding, EquivariantBlocks, output embedding."""

  def __init__(self, *, config: ModelConfig, out_node_nf: int,
               name: str | None = 'egnn'):
    super().__init__(name=name)
    if config.aggregation != 'sum':
      raise ValueError(f"aggregation {config.aggregation!r}: only 'sum' is supported.")
    self._config = config
    self._out_node_nf = out_node_nf

  def __call__(self, h, x, graph):
    c = self._config
    node_mask, edge_mask = masking.node_mask(graph), masking.edge_mask(graph)
    dist0, _ = _pairwise(x, graph)
    if c.sin_embedding:
      dist0 = layers.sinusoidal_distance_embedding(dist0)
    h = layers.TorchLinear(c.nf, name='embedding')(h)
    for l in range(c.n_layers):
      h, x = EquivariantBlock(config=c, name=f'e_block_{l}')(
          h, x, graph, dist0, node_mask, edge_mask)
    h = layers.TorchLinear(self._out_node_nf, name='embedding_out')(h)
    return h * node_mask[:, None], x


def with_conditioning(h: jax.Array, t: jax.Array, graph: jraph.GraphsTuple,
                      config: Config) -> tuple[jax.Array, int]:
  """EDM's input convention, shared by the zoo: h -> [h, t/T, context].

  Returns:
    The widened features and how many columns were appended (the network's
    output carries as many, which `finalize_eps` drops).

  Raises:
    ValueError: the batch's context does not have the config's width (a batch
      without the properties would silently run the model unconditioned).
  """
  extra = []
  if config.model.condition_time:
    extra.append(masking.per_node(t, graph))
  context = conditioning.node_context(graph)
  width = 0 if context is None else context.shape[-1]
  if width != config.context_nf:
    raise ValueError(f'the model is conditioned on {list(config.conditioning)}, the '
                     f'batch carries {width} context columns.')
  if context is not None:
    extra.append(context)
  return jnp.concatenate([h, *extra], axis=-1), sum(e.shape[-1] for e in extra)


def finalize_eps(vel: jax.Array, h_out: jax.Array, graph: jraph.GraphsTuple,
                 n_extra: int) -> jax.Array:
  """EDM's output convention, shared by the zoo: zero-CoG velocity, h without the
  `n_extra` time and context columns."""
  # EDM zeroes the whole velocity when any entry is NaN (and warns); keep that.
  vel = jnp.where(jnp.any(jnp.isnan(vel)), jnp.zeros_like(vel), vel)
  vel = center_of_gravity.remove_mean(vel, graph)
  return jnp.concatenate([vel, h_out[:, :h_out.shape[-1] - n_extra]], axis=-1)


def net_fn(graph: jraph.GraphsTuple, z_t: jax.Array, t: jax.Array, *,
           config: Config) -> jax.Array:
  """Predicted noise eps_hat [n_node, 3 + F] for z_t [n_node, 3 + F], t [n_graph]."""
  c = config.model
  node_mask = masking.node_mask(graph)[:, None]
  z_t = z_t * node_mask
  x, h = z_t[:, :3], z_t[:, 3:]
  h, n_extra = with_conditioning(h, t, graph, config)
  h_out, x_out = EGNN(config=c, out_node_nf=h.shape[-1])(h, x, graph)
  return finalize_eps((x_out - x) * node_mask, h_out, graph, n_extra)
