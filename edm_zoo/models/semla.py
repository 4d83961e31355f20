"""SemlaFlow's network (Irwin, Tibo, Janet, Olsson, AISTATS 2025): `SemlaGenerator`
around `EquiInvDynamics` (semlaflow/models/semla.py at commit 2f41e57), dense
over [B, N] molecules and their [B, N, N] atom pairs.

Dense rather than the zoo's padded edge lists: every layer attends over all atom
pairs of a molecule (softmax over neighbours, pairwise coordinate-set products,
per-pair bond features on the diagonal too), which is a batched matmul on a
[B, N, N] block and a gather plus segment softmax on an edge list. Masks keep
padded atoms out of every real atom's result, so outputs do not depend on N.

Parameter names mirror SemlaFlow's state dict with `dynamics.` dropped and
`.<k>.` merged into the module name (`edm_zoo.compat.state_dict.haiku_name`):
`layers.0.node_ff.invariant_mlp.node_ff.0.weight` is module
`layers_0/node_ff/invariant_mlp/node_ff_0`, param `w` (the weight transposed);
LayerNorms hold `w`, `b`; the size embedding is `size_emb/embeddings`.
"""

from __future__ import annotations

import math

import haiku as hk
import jax
import jax.numpy as jnp

from edm_zoo.config import Config
from edm_zoo.models import layers

# Charge classes of SemlaFlow's charge head (util/rdkit.py IDX_CHARGE_MAP):
# class k is formal charge CHARGE_CLASSES[k].
CHARGE_CLASSES = (0, 1, 2, 3, -1, -2, -3)
# Masked-out logits: exp underflows to exactly 0, as torch's -inf does.
_NEG = -1e30


def _linear(out: int, name: str, *, bias: bool = True) -> layers.TorchLinear:
  # SemlaFlow re-initialises every weight of rank > 1 with xavier_uniform_;
  # biases keep torch.nn.Linear's U(+-1/sqrt(fan_in)).
  return layers.TorchLinear(out, with_bias=bias, w_init=layers.xavier_uniform(1.0),
                            name=name)


def _mlp(x: jax.Array, hidden: int, out: int, name: str) -> jax.Array:
  """torch.nn.Sequential(Linear, SiLU, Linear) named `name.0` and `name.2`."""
  return _linear(out, f'{name}_2')(jax.nn.silu(_linear(hidden, f'{name}_0')(x)))


class LayerNorm(hk.Module):
  """torch.nn.LayerNorm over the last axis (eps 1e-5), params `w` and `b`."""

  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    w = hk.get_parameter('w', [d], x.dtype, init=jnp.ones)
    b = hk.get_parameter('b', [d], x.dtype, init=jnp.zeros)
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * w + b


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
  """||x|| whose gradient at 0 is 0 (torch's vector_norm backward; jnp's is NaN)."""
  sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def zero_com(coords: jax.Array, mask: jax.Array) -> jax.Array:
  """coords [..., N, 3] less the mean of the real atoms (mask [..., N])."""
  # max(n, 1): an empty row (padding) stays finite; real molecules have n >= 1.
  n = jnp.maximum(jnp.sum(mask, -1), 1.0)[..., None, None]
  com = jnp.sum(coords * mask[..., None], -2, keepdims=True) / n
  return coords - com


def pair_mask(mask: jax.Array, self_connect: bool = False) -> jax.Array:
  """[B, N, N]: 1 for two real atoms (`edges_from_nodes` / `adj_from_node_mask`)."""
  adj = mask[:, :, None] * mask[:, None, :]
  if self_connect:
    return adj
  return adj * (1 - jnp.eye(mask.shape[-1], dtype=adj.dtype))


def masked_softmax(logits: jax.Array, adj: jax.Array) -> jax.Array:
  """Softmax over axis 2 of [B, N, N, H] where adj [B, N, N] is 1; an atom with
  no neighbour (padding, a lone atom) attends to all N, as SemlaFlow's
  `adj_to_attn_mask` leaves its row unmasked."""
  keep = (adj > 0) | (jnp.sum(adj, -1, keepdims=True) == 0)
  return jax.nn.softmax(jnp.where(keep[..., None], logits, _NEG), axis=2)


class CoordNorm(hk.Module):
  """Zero-CoM coordinate sets scaled by learnable weights; 'length' also divides
  each set by its mean atom distance from the centre.

  Args:
    n_sets: coordinate sets S.
    norm: 'length' or 'none'.
    eps: added to the mean length.
  """

  def __init__(self, *, n_sets: int, norm: str = 'length', eps: float = 1e-6,
               name: str | None = None):
    super().__init__(name=name)
    if norm not in ('length', 'none'):
      raise ValueError(f"coord_norm must be 'length' or 'none', got {norm!r}.")
    self._n_sets, self._norm, self._eps = n_sets, norm, eps

  def __call__(self, coords: jax.Array, mask: jax.Array) -> jax.Array:
    """coords [B, S, N, 3], mask [B, S, N] -> [B, S, N, 3]."""
    s = self._n_sets
    # xavier_uniform_ of a [1, S, 1, 1] tensor: fan_in S, fan_out 1.
    bound = math.sqrt(6.0 / (s + 1))
    w = hk.get_parameter('set_weights', [1, s, 1, 1], coords.dtype,
                         init=hk.initializers.RandomUniform(-bound, bound))
    coords = zero_com(coords, mask) * mask[..., None]
    if self._norm == 'length':
      n = jnp.maximum(jnp.sum(mask, -1, keepdims=True), 1.0)
      mean_length = jnp.sum(safe_norm(coords), -1, keepdims=True) / n
      coords = coords * w / (mean_length[..., None] + self._eps)
    else:
      coords = coords * w
    return coords * mask[..., None]


def edge_messages(coords, h, mask, e, *, d_message: int, d_out: int, n_sets: int,
                  d_ff: int, name: str) -> jax.Array:
  """`EdgeMessages`: an MLP of (h_i, h_j, set-wise x_i . x_j, e_ij) -> [B, N, N, d_out]."""
  with hk.experimental.name_scope(name):
    h = LayerNorm(name='node_norm')(h)
    x = CoordNorm(n_sets=n_sets, norm='none', name='coord_norm')(coords, mask)
    dots = jnp.einsum('bsic,bsjc->bijs', x, x)
    h = _linear(d_message, 'node_proj')(h)
    parts = [dots]
    if e is not None:
      parts.append(LayerNorm(name='edge_norm')(e))
    # The first layer on concat(h_i, h_j, dots, e), factored: h_i and h_j per atom.
    first = _linear(d_ff, 'message_mlp_0')
    w, b = first.params(2 * d_message + sum(p.shape[-1] for p in parts))
    pair = jnp.concatenate(parts, -1) @ w[2 * d_message:]
    hidden = (h @ w[:d_message])[:, :, None] + (h @ w[d_message:2 * d_message])[:, None]
    hidden = jax.nn.silu(hidden + pair + b)
    return _linear(d_out, 'message_mlp_2')(hidden)


def node_attention(h, messages, adj, *, n_heads: int, name: str) -> jax.Array:
  """`NodeAttention`: heads of h_j weighted by softmax_j(messages), scaled by the
  weights' L2 norm (GNN-VPA)."""
  with hk.experimental.name_scope(name):
    d_model = h.shape[-1]
    a = masked_softmax(messages, adj)  # [B, N, N, H]
    v = _linear(d_model, 'in_proj')(LayerNorm(name='feat_norm')(h))
    v = v.reshape(*v.shape[:2], n_heads, d_model // n_heads)
    out = jnp.einsum('bijh,bjhd->bihd', a, v)
    out = out * jnp.sqrt(jnp.sum(a * a, 2))[..., None]
    return _linear(d_model, 'out_proj')(out.reshape(*out.shape[:2], d_model))


def coord_attention(coords, messages, adj, mask, *, n_sets: int, coord_norm: str,
                    eps: float, name: str) -> jax.Array:
  """`CoordAttention`: per projected set, softmax-weighted unit vectors x_i - x_j."""
  with hk.experimental.name_scope(name):
    x = CoordNorm(n_sets=n_sets, norm=coord_norm, name='coord_norm')(coords, mask)
    p = _linear(n_sets, 'coord_proj', bias=False)(jnp.moveaxis(x, 1, -1))  # [B, N, 3, P]
    diff = p[:, :, None] - p[:, None, :]  # [B, N, N, 3, P]
    unit = diff / (safe_norm(diff, axis=3, keepdims=True) + eps)
    a = masked_softmax(messages, adj)  # [B, N, N, P]
    upd = jnp.sum(unit * a[:, :, :, None, :], 2)  # [B, N, 3, P]
    upd = upd * jnp.sqrt(jnp.sum(a * a, 2))[:, :, None, :]
    return jnp.moveaxis(_linear(n_sets, 'attn_proj', bias=False)(upd), -1, 1)


def node_feed_forward(coords, h, mask, *, n_sets: int, d_ff: int, proj_sets: int,
                      coord_norm: str, name: str) -> tuple[jax.Array, jax.Array]:
  """`NodeFeedForward`: (coordinate update, feature update) from set lengths and an
  equivariant outer product."""
  with hk.experimental.name_scope(name):
    d_model = h.shape[-1]
    h = LayerNorm(name='node_norm')(h)
    x = CoordNorm(n_sets=n_sets, norm=coord_norm, name='coord_norm')(coords, mask)
    with hk.experimental.name_scope('invariant_mlp'):
      lengths = jnp.moveaxis(safe_norm(x), 1, -1)  # [B, N, S]
      dh = _mlp(jnp.concatenate([h, lengths], -1), d_ff, d_model, 'node_ff')
    with hk.experimental.name_scope('equivariant_mlp'):
      inv = _mlp(h, proj_sets, proj_sets, 'node_proj')  # [B, N, P]
      proj = _linear(proj_sets, 'coord_proj', bias=False)(jnp.moveaxis(x, 1, -1))
      # SemlaFlow's outer product inv_p proj_q summed over q.
      mixed = inv[:, :, None, :] * jnp.sum(proj, -1, keepdims=True)  # [B, N, 3, P]
      dx = jnp.moveaxis(_linear(n_sets, 'attn_proj', bias=False)(mixed), -1, 1)
    return dx, dh


def message_passing_layer(coords, h, adj, mask, e, *, cfg, d_edge_out,
                          d_message_hidden, name: str):
  """`EquiMessagePassingLayer`: feed-forward, then node and coordinate attention
  on one set of edge messages; returns (coords, h, edge features or None)."""
  s, heads = cfg.n_coord_sets, cfg.n_attn_heads
  with hk.experimental.name_scope(name):
    dx, dh = node_feed_forward(coords, h, mask, n_sets=s, d_ff=4 * h.shape[-1],
                               proj_sets=cfg.d_message, coord_norm=cfg.coord_norm,
                               name='node_ff')
    coords, h = coords + dx, h + dh
    d_out = heads + s + (d_edge_out or 0)
    m = edge_messages(coords, h, mask, e, d_message=cfg.d_message, d_out=d_out,
                      n_sets=s, d_ff=d_message_hidden or d_out, name='message_ff')
    h = h + node_attention(h, m[..., :heads], adj, n_heads=heads, name='node_attn')
    coords = coords + coord_attention(coords, m[..., heads:heads + s], adj, mask,
                                      n_sets=s, coord_norm=cfg.coord_norm, eps=1e-6,
                                      name='coord_attn')
    edge_out = m[..., heads + s:] if d_edge_out else None
    return coords, h, edge_out


def bond_refine(coords, h, mask, e, *, d_message: int, name: str) -> jax.Array:
  """`BondRefine`: new edge features from (h_i, h_j, |x_i - x_j|^2, x_i . x_j, e_ij)."""
  with hk.experimental.name_scope(name):
    x = CoordNorm(n_sets=1, norm='none', name='coord_norm')(coords[:, None],
                                                           mask[:, None])[:, 0]
    diff = x[:, :, None] - x[:, None, :]
    dists = jnp.sum(diff * diff, -1, keepdims=True)
    dots = jnp.einsum('bic,bjc->bij', x, x)[..., None]
    hp = _linear(d_message, 'node_proj')(LayerNorm(name='node_norm')(h))
    e = LayerNorm(name='edge_norm')(e)
    # The first layer on concat(h_i, h_j, d_ij, x_i . x_j, e_ij), factored as in
    # `edge_messages`: the h_i and h_j parts per atom.
    first = _linear(d_message, 'message_mlp_0')
    w, b = first.params(2 * d_message + 2 + e.shape[-1])
    pair = jnp.concatenate([dists, dots, e], -1) @ w[2 * d_message:]
    hidden = (hp @ w[:d_message])[:, :, None] + (hp @ w[d_message:2 * d_message])[:, None]
    return _linear(e.shape[-1], 'message_mlp_2')(jax.nn.silu(hidden + pair + b))


def net_fn(coords: jax.Array, features: jax.Array, bonds: jax.Array, mask: jax.Array,
           cond: dict[str, jax.Array] | None = None, *, config: Config
           ) -> dict[str, jax.Array]:
  """`SemlaGenerator.forward` on a dense batch.

  Args:
    coords: [B, N, 3] the interpolated coordinates (scaled).
    features: [B, N, 1 + V] t and the interpolated atom types (one-hot).
    bonds: [B, N, N, E] the interpolated bond classes (one-hot, every ordered pair).
    mask: [B, N] 1 for real atoms.
    cond: self-conditioning inputs {'coords' [B, N, 3], 'atomics' [B, N, V],
      'bonds' [B, N, N, E]} (zeros for none), required when
      `config.semla.self_condition`.
    config: the run configuration (`semla`, `model.n_layers`).

  Returns:
    `coords` [B, N, 3] (zero CoM, zero on padding), logits `atomics` [B, N, V],
    `bonds` [B, N, N, E] (symmetric) and `charges` [B, N, 7].
  """
  cfg = config.semla
  if cfg.self_condition != (cond is not None):
    raise ValueError('self-conditioning inputs are required exactly when '
                     'semla.self_condition is set.')
  vocab = features.shape[-1] - 1
  n_edge_types = bonds.shape[-1]
  adj = pair_mask(mask)
  n_atoms = jnp.sum(mask, -1).astype(jnp.int32)
  with hk.experimental.name_scope('size_emb'):
    limit = math.sqrt(6.0 / (cfg.size_emb_max + cfg.size_emb))
    table = hk.get_parameter('embeddings', [cfg.size_emb_max, cfg.size_emb], coords.dtype,
                             init=hk.initializers.RandomUniform(-limit, limit))
  size = jnp.broadcast_to(table[n_atoms][:, None], (*coords.shape[:2], cfg.size_emb))
  inv = [features, size] + ([cond['atomics']] if cond is not None else [])
  h = _mlp(jnp.concatenate(inv, -1), cfg.d_model, cfg.d_model, 'feat_proj')
  e = jnp.concatenate([bonds, cond['bonds']], -1) if cond is not None else bonds
  e = _mlp(e, cfg.d_edge, cfg.d_edge, 'edge_in_proj')

  # EquiInvDynamics: one coordinate set (two with self-conditioning) projected to S.
  s = cfg.n_coord_sets
  stacked = jnp.stack([coords] + ([cond['coords']] if cond is not None else []), -1)
  x = jnp.moveaxis(_linear(s, 'coord_proj', bias=False)(stacked), -1, 1)  # [B, S, N, 3]
  set_mask = jnp.broadcast_to(mask[:, None], (mask.shape[0], s, mask.shape[1]))
  x = x * set_mask[..., None]
  n_layers = config.model.n_layers
  for i in range(n_layers):
    first, last = i == 0, i == n_layers - 1
    x, h, e_out = message_passing_layer(
        x, h, adj, set_mask, e if first else None, cfg=cfg,
        d_edge_out=cfg.d_edge if last else None,
        d_message_hidden=None if first or last else cfg.d_message_hidden,
        name=f'layers_{i}')
    if last:
      e = e_out
  x, h = node_feed_forward(x, h, set_mask, n_sets=s, d_ff=4 * cfg.d_model, proj_sets=s,
                           coord_norm=cfg.coord_norm, name='final_ff_block')
  x = CoordNorm(n_sets=s, norm=cfg.coord_norm, name='coord_norm')(x, set_mask)
  out = _linear(1, 'coord_head', bias=False)(jnp.moveaxis(x, 1, -1))[..., 0]  # [B, N, 3]
  e = bond_refine(out, h, mask, e, d_message=cfg.d_message, name='refine_layer')
  h = LayerNorm(name='feat_norm')(h)
  e = LayerNorm(name='bond_norm')(e)

  out = zero_com(out, mask) * mask[..., None]
  e = e + jnp.swapaxes(e, 1, 2)
  return {'coords': out,
          'atomics': _mlp(h, cfg.d_model, vocab, 'atom_classifier_head'),
          'bonds': _mlp(e, cfg.d_edge, n_edge_types, 'edge_out_proj'),
          'charges': _mlp(h, cfg.d_model, len(CHARGE_CLASSES), 'charge_classifier_head')}
