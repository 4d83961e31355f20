"""SemlaFlow's flow matching (`MolecularCFM` of semlaflow/models/fm.py) around the
zoo's semlaflow network: the interpolant, self-conditioning and the four losses,
as pure functions of explicit t and draws.

Conventions (SemlaFlow's):
  * Data: coordinates centred and divided by `coord_std`; atom types one-hot over
    the vocabulary; bond classes (none, single, double, triple, aromatic) of every
    ordered atom pair; formal charges as classes (`models.semla.CHARGE_CLASSES`).
  * x_t = (1 - t) x_0 + t x_1 + coord_noise_std * eps with x_0 the (OT-matched)
    prior; an atom keeps its data type with probability t, else takes its prior
    type; a pair likewise. t ~ Beta(2, 1) per molecule.
  * Losses per molecule, averaged over the batch: coordinates sum((x_hat - x_1)^2)
    / (3 n_pad) with n_pad the batch's largest molecule (SemlaFlow's mean over a
    dense batch); types and charges the cross-entropy summed over atoms / (n +
    1e-3); bonds over all n^2 ordered pairs, the diagonal included, / (n^2 + 1e-3).
    The total is coord + 0.2 type + w_bond bond + charge.
  * Self-conditioning: on a training step, with probability 1/2 the inputs carry
    the network's own (stopped) prediction from zero inputs; else zeros.

A batch is the zoo's padded GraphsTuple with bonds; the network runs on its
dense [G, N] view (N the largest molecule of the training histogram).
"""

from __future__ import annotations

from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import jraph
import numpy as np
from scipy.spatial.transform import Rotation

from edm_zoo import masking, models
from edm_zoo.config import Config
from edm_zoo.data import bonds as bonds_lib
from edm_zoo.data import features
from edm_zoo.methods.flow import interpolant
from edm_zoo.models import semla

Params = Any
N_BOND_CLASSES = len(bonds_lib.BOND_CLASSES)
N_CHARGE_CLASSES = len(semla.CHARGE_CLASSES)
# Node feature of a training batch: the OT-matched prior coordinates (scaled).
PRIOR = 'prior_positions'
# SemlaFlow's validation interpolant: a fixed t, no optimal transport.
EVAL_T = 0.9
EPS = 1e-3


def charge_classes(formal: jax.Array) -> jax.Array:
  """Formal charges -> SemlaFlow's charge classes (0..3 -> 0..3, -1..-3 -> 4..6)."""
  formal = formal.astype(jnp.int32)
  return jnp.where(formal >= 0, formal, 3 - formal)


def uniform(z: jax.Array) -> jax.Array:
  """Standard normal -> U(0, 1) (the normal CDF), so uniform draws ride in the
  training loop's Gaussian noise."""
  return 0.5 * (1 + jax.lax.erf(z / np.sqrt(2.0)))


def categorical(u: jax.Array, k: int) -> jax.Array:
  """A uniform class of k from u in (0, 1)."""
  return jnp.minimum((u * k).astype(jnp.int32), k - 1)


class Dense:
  """A padded graph's dense view: node (graph, slot) indices and masks.

  Args:
    graph: the padded batch.
    width: N, slots per molecule (at least its largest real molecule).
  """

  def __init__(self, graph: jraph.GraphsTuple, width: int):
    self.graph, self.width = graph, width
    g = masking.node_graph_index(graph)
    first = jnp.cumsum(graph.n_node) - graph.n_node
    slot = jnp.arange(g.shape[0]) - first[g]
    real = masking.node_mask(graph) > 0
    self.n_graph = graph.n_node.shape[0]
    # Padding nodes go past the last row and are dropped by the scatter.
    self.row = jnp.where(real & (slot < width), g, self.n_graph)
    self.slot = jnp.where(real & (slot < width), slot, 0)
    self.mask = self.to_dense(jnp.ones(g.shape[0], jnp.float32))
    self.n_atoms = jnp.sum(self.mask, -1)

  def to_dense(self, values: jax.Array) -> jax.Array:
    """[n_node, ...] -> [G, N, ...] (zeros in empty slots)."""
    out = jnp.zeros((self.n_graph, self.width) + values.shape[1:], values.dtype)
    return out.at[self.row, self.slot].set(values, mode='drop')

  def to_nodes(self, dense: jax.Array) -> jax.Array:
    """[G, N, ...] -> [n_node, ...] (zeros on padding)."""
    valid = self.row < self.n_graph
    out = dense[jnp.minimum(self.row, self.n_graph - 1), self.slot]
    return jnp.where(valid.reshape((-1,) + (1,) * (out.ndim - 1)), out, 0)

  def edges_to_dense(self, values: jax.Array) -> jax.Array:
    """[n_edge] per directed pair (receiver i, sender j) -> [G, N, N] (0 elsewhere)."""
    g = self.graph
    rows = self.row[g.receivers]
    rows = jnp.where(masking.edge_mask(g) > 0, rows, self.n_graph)
    out = jnp.zeros((self.n_graph, self.width, self.width), values.dtype)
    return out.at[rows, self.slot[g.receivers], self.slot[g.senders]].set(values, mode='drop')


class SemlaFlow:
  """SemlaFlow: flow matching of coordinates, atom types, bonds and charges.

  Args:
    config: the run configuration (`semla`, `model`, `dataset`).
    n_nodes_histogram: {molecule size: count} of the train split.
    atomic_numbers: Z of each atom type of the vocabulary, in order (0 for a
      token that is no atom, as SemlaFlow's <PAD> and <MASK>).
  """

  method = 'flow'
  objective_name = 'fm_loss'
  objective_label = (f'flow-matching loss at t = {EVAL_T}', 'per molecule')
  centred_noise = False
  noise_blocks = 1
  # Its batches carry bonds and formal charges (`batching.build_graph`).
  with_bonds = True

  def __init__(self, config: Config, n_nodes_histogram: dict[int, int],
               atomic_numbers=None):
    if config.conditioning:
      raise ValueError('semlaflow is unconditional here: drop --conditioning.')
    self.config = config
    self.n_nodes_histogram = dict(n_nodes_histogram)
    self.width = int(max(n_nodes_histogram))
    if self.width >= config.semla.size_emb_max:
      raise ValueError(f'molecules of {self.width} atoms need --size_emb_max > '
                       f'{self.width} (it is {config.semla.size_emb_max}).')
    self.vocab = int(config.num_atom_types)
    self.atomic_numbers = (None if atomic_numbers is None
                           else np.asarray(atomic_numbers, np.int32))
    self.coord_std = interpolant.coord_std(config.dataset, config.semla.coord_std)
    self.T = config.semla.flow_steps
    # Gaussian columns per atom (`draw` layout): prior x (3), coordinate noise
    # (3), type prior, type unmask, self-conditioning coin, then N bond priors
    # and N bond unmasks of the atom's row of pairs.
    self.n_features = 6 + 2 * self.width
    self._net = hk.without_apply_rng(hk.transform(
        lambda *a: models.get(config.model.name).net_fn(*a, config=config)))

  # --- Parameters and the network.

  def probe(self, batch: int = 2) -> dict[str, jax.Array]:
    n, v = self.width, self.vocab
    return dict(coords=jnp.zeros((batch, n, 3)), features=jnp.zeros((batch, n, v + 1)),
                bonds=jnp.zeros((batch, n, n, N_BOND_CLASSES)),
                mask=jnp.ones((batch, n)).at[:, n // 2 + 1:].set(0.0))

  def init(self, rng: jax.Array, graph: jraph.GraphsTuple | None = None) -> Params:
    del graph  # The parameters do not depend on the batch.
    p = self.probe()
    return self._net.init(rng, p['coords'], p['features'], p['bonds'], p['mask'],
                          self.zero_cond(p['coords'], p['bonds']))

  def check_params(self, params: Params) -> None:
    """Raises ValueError unless `params` has exactly this model's names and shapes."""
    expected = jax.eval_shape(self.init, jax.random.PRNGKey(0))
    want = {(m, k): v.shape for m, d in expected.items() for k, v in d.items()}
    have = {(m, k): np.shape(v) for m, d in params.items() for k, v in d.items()}
    if want != have:
      raise ValueError(
          f'parameters do not match the config: missing {sorted(set(want) - set(have))[:3]}, '
          f'unexpected {sorted(set(have) - set(want))[:3]}, wrong shapes '
          f'{[k for k in set(want) & set(have) if want[k] != have[k]][:3]}.')

  def zero_cond(self, coords, bonds):
    if not self.config.semla.self_condition:
      return None
    return {'coords': jnp.zeros_like(coords),
            'atomics': jnp.zeros(coords.shape[:2] + (self.vocab,), coords.dtype),
            'bonds': jnp.zeros_like(bonds)}

  def network(self, params, coords, types, bonds, mask, t, cond=None):
    """The network's outputs (logits) for dense inputs at times t [B]: `coords`
    [B, N, 3], one-hot `types` [B, N, V] and `bonds` [B, N, N, E]."""
    tt = jnp.broadcast_to(t[:, None, None], types.shape[:2] + (1,))
    feats = jnp.concatenate([tt, types], -1)
    if self.config.semla.self_condition and cond is None:
      cond = self.zero_cond(coords, bonds)
    return self._net.apply(params, coords, feats, bonds, mask, cond)

  def predict(self, params, coords, types, bonds, mask, t, self_condition=False):
    """Outputs with self-conditioning: a first pass from zero inputs feeds the
    second (`self_condition`), or the zero inputs alone."""
    cond = None
    if self.config.semla.self_condition and self_condition:
      first = self.network(params, coords, types, bonds, mask, t)
      cond = jax.lax.stop_gradient(self.conditioning(first))
    return self.network(params, coords, types, bonds, mask, t, cond)

  @staticmethod
  def conditioning(out: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The self-conditioning inputs from a prediction: coordinates and softmaxes."""
    return {'coords': out['coords'], 'atomics': jax.nn.softmax(out['atomics'], -1),
            'bonds': jax.nn.softmax(out['bonds'], -1)}

  # --- Randomness (drawn outside, passed in).

  def draw_time(self, key: jax.Array) -> jax.Array:
    """One molecule's training t ~ Beta(time_alpha, time_beta)."""
    s = self.config.semla
    return jax.random.beta(key, s.time_alpha, s.time_beta)

  def sample_noise(self, rng: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
    """[n_node, n_features + 3] standard normal draws (`split_noise`), zero on padding."""
    n = masking.node_mask(graph).shape[0]
    return (jax.random.normal(rng, (n, self.n_features + 3))
            * masking.node_mask(graph)[:, None])

  @staticmethod
  def eval_time(key: jax.Array, shape) -> jax.Array:
    del key
    return jnp.full(shape, EVAL_T, jnp.float32)

  # --- Data.

  def data(self, graph: jraph.GraphsTuple) -> tuple[Dense, dict[str, jax.Array]]:
    """The dense view and the batch's data: scaled centred coordinates, type,
    bond and charge classes, each [G, N(, N)]."""
    d = Dense(graph, self.width)
    x = d.to_dense(graph.nodes[features.POSITIONS]) / self.coord_std
    x = semla.zero_com(x, d.mask) * d.mask[..., None]
    types = d.to_dense(jnp.argmax(graph.nodes[features.ONE_HOT], -1))
    bonds = d.edges_to_dense(graph.edges[features.BOND_ORDERS].astype(jnp.int32))
    charges = d.to_dense(charge_classes(graph.nodes[features.FORMAL_CHARGES]))
    return d, {'coords': x, 'types': types, 'bonds': bonds, 'charges': charges}

  def split_noise(self, d: Dense, eps: jax.Array) -> dict[str, jax.Array]:
    """The named draws of the Gaussian block `eps` [n_node, n_features + 3]."""
    z = d.to_dense(eps)
    n = self.width
    return {'prior_coords': z[..., 0:3], 'coord_noise': z[..., 3:6],
            'type_prior': categorical(uniform(z[..., 6]), self.vocab),
            'type_unmask': uniform(z[..., 7]), 'coin': uniform(z[:, 0, 8]),
            'bond_prior': categorical(uniform(z[..., 9:9 + n]), N_BOND_CLASSES),
            'bond_unmask': uniform(z[..., 9 + n:9 + 2 * n])}

  def interpolate(self, data, x0, type_prior, bond_prior, t, coord_noise, type_unmask,
                  bond_unmask, mask):
    """SemlaFlow's `_interpolate_mol` on a dense batch: (coords, one-hot types,
    one-hot bonds) at t [B]."""
    tb = t[:, None]
    coords = (1 - tb[..., None]) * x0 + tb[..., None] * data['coords']
    coords = (coords + self.config.semla.coord_noise_std * coord_noise) * mask[..., None]
    types = jnp.where(type_unmask > tb, type_prior, data['types'])
    bonds = jnp.where(bond_unmask > tb[..., None], bond_prior, data['bonds'])
    pair = semla.pair_mask(mask, self_connect=True)
    return (coords, jax.nn.one_hot(types, self.vocab) * mask[..., None],
            jax.nn.one_hot(bonds, N_BOND_CLASSES) * pair[..., None])

  # --- The objective.

  def losses(self, out, data, mask, n_pad) -> dict[str, jax.Array]:
    """Per-molecule loss terms [B] (weighted; `loss` is their sum)."""
    s = self.config.semla
    n = jnp.sum(mask, -1)
    pair = semla.pair_mask(mask, self_connect=True)
    ce = lambda logits, labels: -jnp.take_along_axis(
        jax.nn.log_softmax(logits, -1), labels[..., None], -1)[..., 0]
    coord = jnp.sum((out['coords'] - data['coords'])**2 * mask[..., None], (1, 2))
    coord = coord / (3.0 * n_pad)
    types = jnp.sum(ce(out['atomics'], data['types']) * mask, -1) / (n + EPS)
    bonds = jnp.sum(ce(out['bonds'], data['bonds']) * pair, (1, 2)) / (jnp.sum(pair, (1, 2)) + EPS)
    charges = jnp.sum(ce(out['charges'], data['charges']) * mask, -1) / (n + EPS)
    terms = {'coord_loss': coord, 'type_loss': s.type_loss_weight * types,
             'bond_loss': s.bond_loss_weight * bonds,
             'charge_loss': s.charge_loss_weight * charges}
    terms['loss'] = sum(terms.values())
    return terms

  def _terms(self, params, graph, t, eps, padded_n, training: bool):
    d, data = self.data(graph)
    draws = self.split_noise(d, eps)
    if training:
      if PRIOR not in graph.nodes:
        raise ValueError('a semlaflow training batch needs its host-side prior '
                         f'(`SemlaFlow.prepare`, node feature {PRIOR!r}).')
      x0 = d.to_dense(graph.nodes[PRIOR])
    else:
      x0 = semla.zero_com(draws['prior_coords'], d.mask) * d.mask[..., None]
      draws = dict(draws, coord_noise=jnp.zeros_like(draws['coord_noise']))
    coords, types, bonds = self.interpolate(
        data, x0, draws['type_prior'], draws['bond_prior'], t, draws['coord_noise'],
        draws['type_unmask'], draws['bond_unmask'], d.mask)
    n_pad = jnp.max(d.n_atoms) if padded_n is None else padded_n
    if training and self.config.semla.self_condition:
      # One coin per batch (per shard) as SemlaFlow's `torch.rand(1) > 0.5`.
      out = jax.lax.cond(
          draws['coin'][0] > 0.5,
          lambda: self.predict(params, coords, types, bonds, d.mask, t, True),
          lambda: self.predict(params, coords, types, bonds, d.mask, t, False))
    else:
      out = self.predict(params, coords, types, bonds, d.mask, t, False)
    terms = self.losses(out, data, d.mask, n_pad)
    per_molecule = jnp.where(masking.graph_mask(graph) > 0, terms['loss'], 0.0)
    return dict(terms, nll_per_molecule=per_molecule, loss_per_molecule=per_molecule)

  def train_terms(self, params, graph, t, eps, padded_n=None) -> dict[str, jax.Array]:
    """Per-molecule losses at t [n_graph] for draws `eps` [n_node, n_features + 3];
    `padded_n` is the batch's largest molecule (the coordinate loss' normaliser)."""
    return self._terms(params, graph, t, eps, padded_n, training=True)

  def eval_terms(self, params, graph, t, eps, eps0=None) -> dict[str, jax.Array]:
    """The validation figure per molecule: the weighted loss at t = 0.9 from an
    unmatched prior without coordinate noise (SemlaFlow's validation interpolant)."""
    del eps0
    return self._terms(params, graph, t, eps, None, training=False)

  @staticmethod
  def loss_units(graphs: jraph.GraphsTuple) -> jax.Array:
    """SemlaFlow's losses are means over molecules."""
    return masking.graph_mask(graphs)

  # --- The host side of a training batch.

  def prepare(self, graphs: jraph.GraphsTuple, rng: np.random.Generator,
              rotate: bool = True) -> jraph.GraphsTuple:
    """Adds the OT-matched prior (node feature `PRIOR`, scaled) to stacked
    shards [S, ...] of a training batch, after a random rotation of each
    molecule (SemlaFlow's `mol_transform`) when `rotate`."""
    ot = self.config.semla.optimal_transport == 'equivariant'
    pos = np.array(graphs.nodes[features.POSITIONS], np.float32)
    prior = np.zeros_like(pos)
    for s in range(pos.shape[0]):
      sizes = np.asarray(graphs.n_node[s])
      real = np.asarray(graphs.globals[features.MASK][s]) > 0
      n_max = int(sizes[real].max()) if real.any() else 0
      lo = 0
      for n, is_real in zip(sizes, real):
        n = int(n)
        if is_real and n:
          x = pos[s, lo:lo + n] - pos[s, lo:lo + n].mean(0)
          if rotate:
            x = x @ Rotation.random(random_state=rng).as_matrix().T
          pos[s, lo:lo + n] = x
          x0 = interpolant.prior_coords(rng.standard_normal((n_max, 3)), n)
          prior[s, lo:lo + n] = interpolant.match(x / self.coord_std, x0, ot)
        lo += n
    return graphs._replace(nodes={**graphs.nodes, features.POSITIONS: pos, PRIOR: prior})
