"""Molecules -> padded `jraph.GraphsTuple` batches.

Each molecule becomes a fully connected directed graph without self loops (edge
lists: no padded N x N work), with the features that `edm_zoo.data.features`
names: positions, the one-hot of the dataset's atom types, Z and masks, and the
normalised context of a conditional batch. Batches are padded with
`jraph.pad_with_graphs` to one of a few `PaddingBudget`s, so jit compiles at most
`len(budgets)` shapes (5 for the default ladder, see `default_budgets`).

Shuffling is a permutation drawn from `(seed, epoch)`; an epoch can be resumed
from any molecule position in it. The molecules of the next batches are read in a
background thread (`read_ahead`) while the current one is built and trained on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import math
from typing import Callable, Iterator, Sequence

import jax
import jraph
import numpy as np

from edm_zoo.data import bonds as bonds_lib
from edm_zoo.data import features
from edm_zoo.data import sources


@dataclasses.dataclass(frozen=True, order=True)
class PaddingBudget:
  """Sizes a batch is padded to (padding included; jraph needs >= 1 pad node/graph)."""
  n_node: int
  n_edge: int
  n_graph: int

  def fits(self, sizes: Sequence[int]) -> bool:
    sizes = np.asarray(sizes)
    return (len(sizes) < self.n_graph and int(sizes.sum()) < self.n_node and
            int((sizes * (sizes - 1)).sum()) <= self.n_edge)


def _round_up(x: float, multiple: int) -> int:
  return int(math.ceil(x / multiple) * multiple)


def _mean_plus_z(batch_size: int, sizes: np.ndarray, probs: np.ndarray, z: float,
                 n_max: int) -> PaddingBudget:
  """The budget covering mean + z std of the node and of the edge count of a sum of
  `batch_size` sizes drawn from (sizes, probs)."""
  edges = sizes * (sizes - 1)
  nodes = batch_size * (probs @ sizes) + z * math.sqrt(
      batch_size * (probs @ sizes**2 - (probs @ sizes)**2))
  n_edge = batch_size * (probs @ edges) + z * math.sqrt(
      batch_size * (probs @ edges**2 - (probs @ edges)**2))
  return PaddingBudget(n_node=min(_round_up(nodes + 1, 32), batch_size * n_max + 1),
                       n_edge=min(_round_up(n_edge, 256), batch_size * n_max * (n_max - 1)),
                       n_graph=batch_size + 1)


def default_budgets(batch_size: int, n_nodes_histogram: dict[int, int],
                    z_levels: Sequence[float] = (1.0, 2.0, 3.0, 4.5, 6.5, 9.0),
                    small_quantiles: Sequence[float] = (0.05, 0.25, 0.5),
                    ) -> tuple[PaddingBudget, ...]:
  """A short ladder of budgets for batches of `batch_size` molecules.

  Sums of `batch_size` i.i.d. sizes are close to normal; level k covers
  mean + z_k * std of both the node and the edge count, and a last level covers
  the worst case (every molecule of maximal size), so no batch is ever refused.
  The 6.5 and 9 levels keep heavy-tailed size distributions off that last level:
  for GEOM-Drugs (batch 64, up to 181 atoms) 1 batch in 2,000 exceeds 4.5 sigma and
  the worst case is 2.1 M edges, 9 sigma is 0.22 M. Below them, one level per
  `small_quantiles` q covers mean + 1 std of batches of the molecules up to the
  q-quantile size: splits read in order (evaluation; QM9's are roughly sorted by
  size) have batches of small molecules, which the random-batch levels pad up to
  2.4x in edges. A level compiles only when a batch first needs it, and random
  batches never need the small ones.

  Args:
    batch_size: molecules per batch.
    n_nodes_histogram: {molecule size: count} of the split's distribution.
    z_levels: the standard-deviation multiples of the intermediate levels.
    small_quantiles: size quantiles of the levels for batches of small molecules.

  Returns:
    Budgets sorted from smallest to largest.
  """
  sizes = np.array(sorted(n_nodes_histogram), np.float64)
  probs = np.array([n_nodes_histogram[int(s)] for s in sizes], np.float64)
  probs /= probs.sum()
  n_max = int(sizes.max())
  budgets = {_mean_plus_z(batch_size, sizes, probs, z, n_max) for z in z_levels}
  for q in small_quantiles:
    small = sizes <= sizes[np.searchsorted(np.cumsum(probs), q)]
    budgets.add(_mean_plus_z(batch_size, sizes[small], probs[small] / probs[small].sum(),
                             1.0, n_max))
  budgets.add(PaddingBudget(batch_size * n_max + 1,
                            batch_size * n_max * (n_max - 1), batch_size + 1))
  return tuple(sorted(budgets))


def molecule_ids(molecules: Sequence[dict]) -> list[str]:
  """How messages name molecules: QM9's gdb id, else their place in the inputs."""
  return [f'gdb {m[features.GDB_INDEX]}' if features.GDB_INDEX in m else
          f'molecule {m.get(features.INDEX, "?")}' for m in molecules]


def exact_budget(sizes: Sequence[int]) -> PaddingBudget:
  """The smallest budget of exactly these molecules: every edge, one padding node
  and one padding graph (parity replays, whose batches are given)."""
  sizes = np.asarray(sizes)
  return PaddingBudget(int(sizes.sum()) + 1, int((sizes * (sizes - 1)).sum()), len(sizes) + 1)


def choose_budget(sizes: Sequence[int], budgets: Sequence[PaddingBudget],
                  ids: Sequence[str] = ()) -> PaddingBudget:
  for budget in budgets:
    if budget.fits(sizes):
      return budget
  largest = max(sizes)
  culprit = f' ({ids[int(np.argmax(sizes))]}, {largest} atoms)' if len(ids) else ''
  raise ValueError(
      f'a batch of {len(sizes)} molecules with {sum(sizes)} atoms{culprit} '
      f'exceeds the largest padding budget {max(budgets)}; raise the budget '
      '(or lower the batch size).')


@functools.lru_cache(maxsize=None)
def _edge_template(n: int) -> tuple[np.ndarray, np.ndarray]:
  """(senders, receivers) of the complete directed graph on n nodes, no loops."""
  s, r = np.nonzero(~np.eye(n, dtype=bool))
  # Receivers aggregate: i = receiver, grouped so row-major edge order is (i, j).
  return r.astype(np.int32), s.astype(np.int32)


def _type_lookup(atomic_numbers: Sequence[int]) -> np.ndarray:
  lookup = np.full(128, -1, np.int32)
  lookup[np.asarray(atomic_numbers)] = np.arange(len(atomic_numbers))
  return lookup


def _bond_features(molecules: Sequence[dict], sizes: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(formal charges [n_node], bond class of every directed pair [n_edge]) in the
  edge order of `_edge_template`."""
  missing = [i for i, m in enumerate(molecules) if features.BONDS not in m]
  if missing:
    raise ValueError(
        f'{molecule_ids(molecules)[missing[0]]} has no bonds: its dataset was prepared '
        'without them; rebuild it with `python launch/prepare_data.py --dataset=NAME '
        '--rebuild`.')
  classes = []
  for m, n in zip(molecules, sizes):
    dense = bonds_lib.dense_classes(int(n), m[features.BONDS], m[features.BOND_ORDERS])
    classes.append(dense[~np.eye(int(n), dtype=bool)])  # Row-major, as the template.
  return (np.concatenate([m[features.FORMAL_CHARGES] for m in molecules]).astype(np.int32),
          np.concatenate(classes).astype(np.int32))


def build_graph(molecules: Sequence[dict], atomic_numbers: Sequence[int],
                budget: PaddingBudget | None = None, *,
                with_bonds: bool = False) -> jraph.GraphsTuple:
  """Packs molecules into one GraphsTuple, padded to `budget` when given.

  Args:
    molecules: dicts with `positions` [n, 3], `charges` [n] (Z), an id
      (`gdb_index` or `index`, for messages) and optionally (all or none) a `context` [C].
    atomic_numbers: Z of each one-hot type, in order.
    budget: the padding sizes; None leaves the graph unpadded.
    with_bonds: also carry formal charges (node feature) and the bond class of every
      edge (`features.BOND_ORDERS`, 0 where there is no bond); the molecules must
      have bonds. Off, the batch is exactly what the EGNN members read.

  Returns:
    The (padded) GraphsTuple, masks included.

  Raises:
    ValueError: an element outside `atomic_numbers`, a batch too large, or a
      molecule without bonds when `with_bonds`.
  """
  sizes = np.array([len(m[features.CHARGES]) for m in molecules], np.int32)
  gdb = np.array([int(m.get(features.GDB_INDEX, -1)) for m in molecules], np.int32)
  charges = np.concatenate([m[features.CHARGES] for m in molecules]).astype(np.int32)
  types = _type_lookup(atomic_numbers)[np.clip(charges, 0, 127)]
  if (types < 0).any():
    bad = int(np.argmax(types < 0))
    owner = int(np.searchsorted(np.cumsum(sizes), bad, side='right'))
    raise ValueError(
        f'{molecule_ids(molecules)[owner]} has an atom with Z={charges[bad]}, not '
        f'among the dataset types Z={list(atomic_numbers)}; use the matching --dataset.')
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
  senders, receivers = zip(*(_edge_template(int(n)) for n in sizes))
  senders = np.concatenate([s + o for s, o in zip(senders, offsets)])
  receivers = np.concatenate([r + o for r, o in zip(receivers, offsets)])
  n_node_total = int(sizes.sum())
  one_hot = np.zeros((n_node_total, len(atomic_numbers)), np.float32)
  one_hot[np.arange(n_node_total), types] = 1.0
  graph_features = {features.MASK: np.ones(len(sizes), np.float32),
                    features.GDB_INDEX: gdb}
  with_context = [features.CONTEXT in m for m in molecules]
  if any(with_context):
    if not all(with_context):
      raise ValueError('some molecules of the batch carry a conditioning context and '
                       'some do not.')
    graph_features[features.CONTEXT] = np.stack(
        [m[features.CONTEXT] for m in molecules]).astype(np.float32)
  nodes = {
      features.POSITIONS: np.concatenate(
          [m[features.POSITIONS] for m in molecules]).astype(np.float32),
      features.ONE_HOT: one_hot,
      features.CHARGES: charges.astype(np.float32),
      features.MASK: np.ones(n_node_total, np.float32),
  }
  edges = {features.MASK: np.ones(len(senders), np.float32)}
  if with_bonds:
    nodes[features.FORMAL_CHARGES], edges[features.BOND_ORDERS] = _bond_features(
        molecules, sizes)
  graph = jraph.GraphsTuple(
      nodes=nodes, edges=edges,
      globals=graph_features,
      senders=senders.astype(np.int32), receivers=receivers.astype(np.int32),
      n_node=sizes, n_edge=(sizes * (sizes - 1)).astype(np.int32))
  if budget is None:
    return graph
  if not budget.fits(sizes):
    choose_budget(sizes, [budget], molecule_ids(molecules))  # Raises the one-line error.
  return jraph.pad_with_graphs(graph, budget.n_node, budget.n_edge,
                               budget.n_graph)


def placeholder_graph(sizes: Sequence[int], atomic_numbers: Sequence[int],
                      budget: PaddingBudget, context: np.ndarray | None = None, *,
                      with_bonds: bool = False) -> jraph.GraphsTuple:
  """A padded batch of molecules of the given sizes whose data are never read (the
  sampler's canvas, shape probes), with a normalised `context` [len(sizes), C]
  when given (and, `with_bonds`, zero charges and no bonds)."""
  molecules = [{features.POSITIONS: np.zeros((int(n), 3), np.float32),
                features.CHARGES: np.full(int(n), atomic_numbers[0]),
                features.BONDS: np.zeros((0, 2), np.int32),
                features.BOND_ORDERS: np.zeros(0, np.int32),
                features.FORMAL_CHARGES: np.zeros(int(n), np.int32)} for n in sizes]
  if context is not None:
    for m, c in zip(molecules, context):
      m[features.CONTEXT] = c
  return build_graph(molecules, atomic_numbers, budget, with_bonds=with_bonds)


def probe_graph(num_atom_types: int, context_nf: int = 0) -> jraph.GraphsTuple:
  """The smallest padded batch of a dataset's shape (one 3-atom molecule, with a
  zero context of `context_nf` properties): for initialisation and shape checks,
  which depend on the number of types, not on which elements they are."""
  return placeholder_graph(
      [3], np.arange(1, num_atom_types + 1), PaddingBudget(4, 6, 2),
      np.zeros((1, context_nf), np.float32) if context_nf else None)


# Batches whose molecules are read ahead, by READERS threads: reading (random
# access and decoding, ~3/4 of a drug-sized batch's preparation) runs while the
# device steps. Decoding holds the GIL part of the time: a second reader adds ~30%
# (GEOM-sized batches: 83 -> 107 per second on 2 cores), a third nothing.
READ_AHEAD = 4
READERS = 2


def ahead(items: Iterator, fn, depth: int, workers: int = 1) -> Iterator:
  """fn(item) of each item, in order, computed by `workers` background threads up
  to `depth` items ahead (fn must have no side effects that matter when stopping
  early: what was computed ahead is dropped)."""
  if depth <= 0:
    for item in items:
      yield fn(item)
    return
  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='ahead') as pool:
    pending: collections.deque = collections.deque()
    try:
      for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > depth:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:
        future.cancel()


def read_ahead(source, index_lists: Iterator[np.ndarray], depth: int = READ_AHEAD,
               readers: int = READERS) -> Iterator[list[dict]]:
  """The molecules at each of `index_lists`, in order, read by `readers`
  background threads up to `depth` lists ahead (reading has no side effects, so
  stopping early only wastes what was read)."""
  return ahead(index_lists, functools.partial(sources.fetch, source), depth, readers)


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The order of an epoch: deterministic in (seed, epoch), different across epochs."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def batches(source, batch_size: int | None = 64, seed: int = 0, epoch: int = 0,
            *, shuffle: bool = True, start: int = 0,
            budgets: Sequence[PaddingBudget] | None = None,
            budget: PaddingBudget | None = None,
            atomic_numbers: Sequence[int] | None = None,
            n_nodes_histogram: dict[int, int] | None = None,
            only: Sequence[int] | None = None,
            with_bonds: bool = False,
            ) -> Iterator[jraph.GraphsTuple]:
  """Iterates over one epoch of padded GraphsTuples.

  Two modes: fixed `batch_size` molecules per batch (EDM's 64; the last batch may
  hold fewer, nothing is dropped), padded to the smallest fitting budget of
  `budgets`; or `batch_size=None` with a single `budget`, packing as many
  molecules as fit (one compiled shape).

  Args:
    source: a sized, indexable source of molecule dicts (`registry.load`).
    batch_size: molecules per batch, or None for budget packing.
    seed: shuffling seed.
    epoch: epoch number (the permutation depends on it).
    shuffle: False keeps the source order.
    start: molecule position in this epoch's order to resume from.
    budgets: padding ladder for fixed batches; defaults to `default_budgets`.
    budget: the budget of packed mode.
    atomic_numbers: Z of each one-hot type; defaults to `source.atomic_numbers`.
    n_nodes_histogram: sizes distribution for the default ladder; defaults to
      the worst case when absent.
    only: the numbers of the batches to yield, counted from `start` (a process's
      share of an evaluation); all when None. Fixed batch sizes only.
    with_bonds: batches carry bonds and formal charges (`build_graph`).

  Yields:
    Padded `jraph.GraphsTuple`s; `globals['mask'].sum()` says how many molecules
    a batch consumed (to track the resume position).
  """
  if atomic_numbers is None:
    atomic_numbers = source.atomic_numbers
  n = len(source)
  if not 0 <= start <= n:
    raise ValueError(f'start={start} is outside the epoch of {n} molecules.')
  order = permutation(n, seed, epoch) if shuffle else np.arange(n)
  if batch_size is None:
    if budget is None:
      raise ValueError('packed mode (batch_size=None) needs a `budget`.')
    yield from _packed(source, order[start:], budget, atomic_numbers, with_bonds)
    return
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if budgets is None:
    budgets = default_budgets(batch_size, n_nodes_histogram or {29: 1})
  starts = range(start, n, batch_size)
  if only is not None:
    starts = [starts[i] for i in only]
  wanted = (order[lo:lo + batch_size] for lo in starts)
  for molecules in read_ahead(source, wanted):
    sizes = [len(m[features.CHARGES]) for m in molecules]
    chosen = choose_budget(sizes, budgets, molecule_ids(molecules))
    yield build_graph(molecules, atomic_numbers, chosen, with_bonds=with_bonds)


def _packed(source, order, budget, atomic_numbers, with_bonds, chunk: int = 256):
  pending: list[dict] = []
  nodes = edges = 0
  for lo in range(0, len(order), chunk):
    for molecule in sources.fetch(source, order[lo:lo + chunk]):
      n = len(molecule[features.CHARGES])
      if (len(pending) + 1 >= budget.n_graph or nodes + n >= budget.n_node or
          edges + n * (n - 1) > budget.n_edge):
        if not pending:
          choose_budget([n], [budget], molecule_ids([molecule]))  # Raises.
        yield build_graph(pending, atomic_numbers, budget, with_bonds=with_bonds)
        pending, nodes, edges = [], 0, 0
      pending.append(molecule)
      nodes, edges = nodes + n, edges + n * (n - 1)
  if pending:
    yield build_graph(pending, atomic_numbers, budget, with_bonds=with_bonds)


def stack(graphs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
  """Stacks equally padded graphs along a new leading (shard) axis."""
  return jax.tree.map(lambda *leaves: np.stack(leaves), *graphs)


def common_level(parts: Sequence[Sequence[dict]],
                 budgets: Sequence[PaddingBudget]) -> int:
  """The ladder level (index into the sorted `budgets`) that fits every non-empty
  part, so that the parts stack into one shape."""
  return max((budgets.index(choose_budget(
      [len(m[features.CHARGES]) for m in part], budgets, molecule_ids(part)))
      for part in parts if part), default=0)


def sharded_batches(source, batch_size: int, n_shards: int, seed: int = 0,
                    epoch: int = 0, *, shuffle: bool = True, start: int = 0,
                    budgets: Sequence[PaddingBudget] | None = None,
                    atomic_numbers: Sequence[int] | None = None,
                    n_nodes_histogram: dict[int, int] | None = None,
                    shards: Sequence[int] | None = None,
                    agree: Callable[[int], int] | None = None,
                    with_bonds: bool = False,
                    ) -> Iterator[tuple[jraph.GraphsTuple, int]]:
  """Global batches of `batch_size` molecules split into `n_shards` equal parts.

  Every shard is padded to the same budget (the largest any shard needs), so
  the stack [n_shards, ...] has one shape per ladder level. Only the molecules of
  the `shards` built here are read.

  Args:
    source, seed, epoch, shuffle, start, atomic_numbers: as in `batches`.
    batch_size: molecules per global batch (divisible by n_shards).
    n_shards: shards per global batch (one per device).
    budgets: the per-shard ladder; defaults to `default_budgets(batch_size //
      n_shards, n_nodes_histogram)`.
    n_nodes_histogram: sizes distribution for the default ladder.
    shards: which shards to build (a process builds its local devices' ones);
      all when None.
    agree: maps the ladder level these shards need to the level of the whole
      global batch (the largest over processes, `distributed.max_over_processes`);
      needed when other processes build the other shards.
    with_bonds: batches carry bonds and formal charges (`build_graph`).

  Yields:
    (stacked graphs [len(shards), ...], molecules consumed by the global batch).
  """
  if batch_size % n_shards:
    raise ValueError(f'batch_size {batch_size} is not divisible by the '
                     f'{n_shards} devices; pick a multiple of {n_shards}.')
  if atomic_numbers is None:
    atomic_numbers = source.atomic_numbers
  per_shard = batch_size // n_shards
  if budgets is None:
    budgets = default_budgets(per_shard, n_nodes_histogram or {29: 1})
  budgets = sorted(budgets)
  shards = list(range(n_shards)) if shards is None else list(shards)
  n = len(source)
  if not 0 <= start <= n:
    raise ValueError(f'start={start} is outside the epoch of {n} molecules.')
  order = permutation(n, seed, epoch) if shuffle else np.arange(n)
  def my_parts(batch):
    return [batch[i * per_shard:(i + 1) * per_shard] for i in shards]
  global_batches = [order[lo:lo + batch_size] for lo in range(start, n, batch_size)]
  reads = read_ahead(source, (np.concatenate(my_parts(b)) for b in global_batches))
  for batch, molecules in zip(global_batches, reads):
    bounds = np.cumsum([0] + [len(p) for p in my_parts(batch)])
    parts = [molecules[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    level = common_level(parts, budgets)
    chosen = budgets[agree(level) if agree is not None else level]
    context = next((p[0] for p in parts if p), None) or sources.fetch(source, batch[:1])[0]
    context = context.get(features.CONTEXT)
    yield stack([build_graph(part, atomic_numbers, chosen, with_bonds=with_bonds) if part
                 else _empty_graph(atomic_numbers, chosen, context, with_bonds)
                 for part in parts]), len(batch)


def _empty_graph(atomic_numbers, budget: PaddingBudget,
                 context: np.ndarray | None = None,
                 with_bonds: bool = False) -> jraph.GraphsTuple:
  """A shard with no molecule (the tail of a short last batch): all padding.

  `context` (any molecule's) gives the conditioning width the shard must match.
  """
  graph = placeholder_graph([1], atomic_numbers, budget,
                            None if context is None else np.zeros_like(context)[None],
                            with_bonds=with_bonds)
  zero = lambda tree: jax.tree.map(np.zeros_like, tree)
  return graph._replace(
      nodes={**graph.nodes, features.MASK: zero(graph.nodes[features.MASK])},
      globals={**graph.globals, features.MASK: zero(graph.globals[features.MASK])})
