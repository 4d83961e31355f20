"""QM9 preparation and batching, on the real data."""

import csv
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import REFERENCE_HISTOGRAM, REFERENCE_TYPE_COUNTS
from datasets.qm9 import edm_qm9
from edm_zoo import masking
from edm_zoo.data import batching, registry

pytestmark = pytest.mark.filterwarnings('ignore')


def test_split_sizes_disjoint_and_sorted(qm9_index):
  sizes = {s: len(g) for s, (g, _) in qm9_index.items()}
  assert sizes == {'train': 100_000, 'valid': 17_748, 'test': 13_083}
  all_ids = np.concatenate([g for g, _ in qm9_index.values()])
  assert len(np.unique(all_ids)) == 130_831
  for gdb, _ in qm9_index.values():
    assert np.all(np.diff(gdb) > 0), 'ascending gdb id inside a split'


def test_split_is_the_reference_permutation(qm9_index):
  # Independent of the builder: the reference's recipe on gdb ids 1-based,
  # sorted, minus the uncharacterized molecules = all ids the splits hold.
  ids = np.sort(np.concatenate([g for g, _ in qm9_index.values()]))
  np.random.seed(0)
  perm = np.random.permutation(len(ids))
  np.testing.assert_array_equal(qm9_index['valid'][0],
                                np.sort(ids[perm[100_000:117_748]]))
  np.testing.assert_array_equal(qm9_index['test'][0], np.sort(ids[perm[117_748:]]))


def test_train_statistics_equal_reference(qm9_index):
  stats = registry.statistics('qm9')
  assert stats.atom_types == ('H', 'C', 'N', 'O', 'F')
  assert stats.type_counts == REFERENCE_TYPE_COUNTS
  assert stats.n_nodes_histogram == REFERENCE_HISTOGRAM
  # And the recorded histogram is what the train split actually holds.
  sizes, counts = np.unique(qm9_index['train'][1], return_counts=True)
  assert dict(zip(sizes.tolist(), counts.tolist())) == REFERENCE_HISTOGRAM


def _qm9pack_row(gdb):
  folder = edm_qm9.qm9pack_data_dir()
  csv.field_size_limit(1 << 24)
  for part in ('qm9_part1.csv', 'qm9_part2.csv', 'qm9_part3.csv'):
    with open(os.path.join(folder, part)) as f:
      for row in csv.DictReader(f):
        if int(row['Index']) == gdb:
          return row
  raise KeyError(gdb)


def test_molecule_round_trips_from_qm9pack_into_a_batch(qm9_sources):
  source = qm9_sources['valid']
  item = source[3]
  row = _qm9pack_row(int(item['gdb_index']))
  z = {'H': 1, 'C': 6, 'N': 7, 'O': 8, 'F': 9}
  expected_z = [z[e.strip(" '")] for e in row['Elements'].strip('[]').split(',')]
  expected_x = np.array(
      [[float(v) for v in a.split(',')]
       for a in row['XYZ_Ang'].strip('[]').split('],[')], np.float32)
  assert item['smiles'] == row['SMILES']
  np.testing.assert_array_equal(item['charges'], expected_z)
  np.testing.assert_array_equal(item['positions'], expected_x)
  assert item['homo'] == pytest.approx(float(row['HOMO_au']) * 27.2114)
  graph = next(batching.batches(source, 8, shuffle=False, start=3))
  n = len(expected_z)
  np.testing.assert_array_equal(graph.nodes['positions'][:n], expected_x)
  np.testing.assert_array_equal(graph.nodes['charges'][:n], expected_z)
  types = np.argmax(graph.nodes['one_hot'][:n], axis=1)
  np.testing.assert_array_equal(np.array([1, 6, 7, 8, 9])[types], expected_z)


def test_padding_masks_cover_exactly_real_nodes_and_edges(qm9_sources):
  stats = registry.statistics('qm9')
  graph = next(batching.batches(qm9_sources['train'], 64, seed=1, epoch=0,
                                n_nodes_histogram=stats.n_nodes_histogram))
  node, edge, glob = (masking.node_mask(graph), masking.edge_mask(graph),
                      masking.graph_mask(graph))
  for ours, theirs in zip((node, edge, glob), masking.jraph_masks(graph)):
    np.testing.assert_array_equal(ours.astype(bool), theirs)
  sizes = graph.n_node[:64]
  assert node.sum() == sizes.sum() and glob.sum() == 64
  assert edge.sum() == (sizes * (sizes - 1)).sum()
  # Real edges are exactly the ordered pairs i != j inside each molecule.
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  real = edge.astype(bool)
  s, r = graph.senders[real], graph.receivers[real]
  owner = np.searchsorted(offsets, s, side='right') - 1
  assert np.all(owner == np.searchsorted(offsets, r, side='right') - 1)
  assert np.all(s != r)
  assert len(set(zip(s.tolist(), r.tolist()))) == real.sum()
  # The budget comes from the documented ladder (bounded shapes).
  budgets = batching.default_budgets(64, stats.n_nodes_histogram)
  assert len(budgets) <= 10
  assert (graph.n_node.sum(), len(graph.senders), len(graph.n_node)) in {
      (b.n_node, b.n_edge, b.n_graph) for b in budgets}


def test_packed_mode_respects_the_budget_and_drops_nothing(qm9_sources):
  source = qm9_sources['test']
  budget = batching.PaddingBudget(n_node=512, n_edge=8192, n_graph=40)
  seen = 0
  for graph in batching.batches(source, None, seed=0, budget=budget, start=13_000):
    assert graph.n_node.sum() == budget.n_node
    seen += int(masking.graph_mask(graph).sum())
  assert seen == len(source) - 13_000


def test_no_h_config_has_at_most_9_atoms(qm9_noh_sources):
  stats = registry.statistics('qm9_noh')
  assert stats.atom_types == ('C', 'N', 'O', 'F')
  assert max(stats.n_nodes_histogram) == 9
  assert stats.type_counts == REFERENCE_TYPE_COUNTS[1:]
  item = qm9_noh_sources['valid'][0]
  assert 1 not in item['charges'] and len(item['charges']) <= 9
  np.testing.assert_allclose(item['positions'].mean(0), 0, atol=1e-5)
  graph = next(batching.batches(qm9_noh_sources['valid'], 16, seed=0))
  assert graph.nodes['one_hot'].shape[1] == 4


def _gdb_order(source, seed, epoch, start=0, n=3):
  out = []
  for graph in batching.batches(source, 16, seed=seed, epoch=epoch, start=start):
    out.append(graph.globals['gdb_index'][:16].copy())
    if len(out) == n:
      break
  return np.concatenate(out)


def test_shuffling_is_deterministic_differs_by_epoch_and_resumes(qm9_sources):
  source = qm9_sources['valid']
  a = _gdb_order(source, seed=3, epoch=0)
  np.testing.assert_array_equal(a, _gdb_order(source, seed=3, epoch=0))
  assert not np.array_equal(a, _gdb_order(source, seed=3, epoch=1))
  assert not np.array_equal(a, _gdb_order(source, seed=4, epoch=0))
  np.testing.assert_array_equal(a[16:], _gdb_order(source, 3, 0, start=16, n=2))


# --- Bad input: each a one-line ValueError that names the problem and the fix.

def test_unknown_dataset():
  with pytest.raises(ValueError, match=r"unknown dataset 'qm10'.*registered"):
    registry.get('qm10')


def test_missing_dataset(tmp_path):
  with pytest.raises(ValueError, match='not prepared.*make data'):
    registry.load('qm9', 'train', data_dir=str(tmp_path))


def test_corrupt_dataset(tmp_path, qm9_sources):
  src = qm9_sources['valid'].path
  dst = tmp_path / 'edm_qm9' / 'with_h' / os.path.basename(src.rstrip('/'))
  shutil.copytree(src, dst)
  for f in dst.glob('*valid.array_record*'):
    f.write_bytes(b'\x00garbage' * 100)
  with pytest.raises(ValueError, match='corrupt.*make data'):
    registry.load('qm9', 'valid', data_dir=str(tmp_path))


def test_data_prepared_without_bonds_is_refused_in_one_line(tmp_path, qm9_sources):
  # A folder of an older version (before bonds) beside no current one.
  src = qm9_sources['valid'].path
  shutil.copytree(src, tmp_path / 'edm_qm9' / 'with_h' / '1.1.0')
  with pytest.raises(ValueError, match=r'older edm_zoo \(version 1.1.0, without bonds.*'
                                       r'rebuild it with `python launch/prepare_data.py '
                                       r'--dataset=qm9`'):
    registry.load('qm9', 'valid', data_dir=str(tmp_path))


def test_element_outside_the_type_list():
  molecule = {'positions': np.zeros((2, 3), np.float32),
              'charges': np.array([6, 16]), 'gdb_index': 77}
  with pytest.raises(ValueError, match=r'gdb 77 has an atom with Z=16'):
    batching.build_graph([molecule], [1, 6, 7, 8, 9])


def test_molecule_larger_than_the_budget(qm9_sources):
  item = qm9_sources['valid'][500]
  assert item['num_atoms'] > 4
  budget = batching.PaddingBudget(n_node=4, n_edge=12, n_graph=2)
  with pytest.raises(ValueError, match='exceeds the largest padding budget'):
    batching.build_graph([item], [1, 6, 7, 8, 9], budget)
  with pytest.raises(ValueError, match='exceeds'):
    next(batching.batches(qm9_sources['valid'], None, budget=budget,
                         start=500, shuffle=False))


def test_batches_of_small_molecules_get_a_small_padding_level(qm9_sources):
  hist = registry.statistics('qm9').n_nodes_histogram
  budgets = batching.default_budgets(64, hist)
  random_level = batching.default_budgets(64, hist, small_quantiles=())[0]
  # The validation split read in order starts with small molecules.
  graph = next(batching.batches(qm9_sources['valid'], 64, shuffle=False,
                                n_nodes_histogram=hist))
  real_edges = int(masking.edge_mask(graph).sum())
  assert len(graph.senders) < random_level.n_edge
  assert len(graph.senders) < 1.3 * real_edges, (len(graph.senders), real_edges)
  # Random batches of 64 never need the small levels.
  for graph, _ in zip(batching.batches(qm9_sources['train'], 64, seed=0,
                                       n_nodes_histogram=hist), range(50)):
    assert len(graph.senders) >= random_level.n_edge
  assert set(batching.default_budgets(64, hist, small_quantiles=())) < set(budgets)


class _Recorded:
  """A source that records the reads and can fail at one index."""

  def __init__(self, n, fail_at=None):
    self.items = [{'i': i} for i in range(n)]
    self.reads = []
    self.fail_at = fail_at

  def __len__(self):
    return len(self.items)

  def __getitems__(self, indices):
    self.reads.append(list(indices))
    if self.fail_at is not None and self.fail_at in indices:
      raise ValueError(f'bad record {self.fail_at}')
    return [self.items[i] for i in indices]


@pytest.mark.parametrize('depth', [0, 1, 4])
def test_read_ahead_keeps_the_order_and_reads_each_list_once(depth):
  source = _Recorded(100)
  lists = [np.arange(lo, lo + 7) for lo in range(0, 90, 9)]
  got = list(batching.read_ahead(source, iter(lists), depth))
  assert [[m['i'] for m in batch] for batch in got] == [list(l) for l in lists]
  assert source.reads == [list(l) for l in lists]


def test_read_ahead_raises_the_readers_error_at_its_batch_and_stops_early_cleanly():
  source = _Recorded(100, fail_at=30)
  it = batching.read_ahead(source, (np.arange(lo, lo + 10) for lo in range(0, 100, 10)))
  assert [m['i'] for m in next(it)] == list(range(10))
  assert next(it) and next(it)
  with pytest.raises(ValueError, match='bad record 30'):
    next(it)
  source = _Recorded(100)
  early = batching.read_ahead(source, (np.arange(lo, lo + 10) for lo in range(0, 100, 10)),
                              depth=2)
  next(early)
  early.close()  # Stops the reader threads without reading the rest.
  assert len(source.reads) <= 3  # The one taken and at most `depth` ahead.


def test_batches_only_yields_the_numbered_batches_and_reads_nothing_else():
  source = _Recorded(50)
  source.atomic_numbers = np.array([1, 6, 7, 8, 9])
  for item in source.items:
    item.update(positions=np.zeros((2, 3), np.float32), charges=np.array([6, 1], np.int32))
  budgets = [batching.PaddingBudget(n_node=40, n_edge=80, n_graph=11)]
  every = list(batching.batches(source, 10, shuffle=False, budgets=budgets))
  source.reads.clear()
  some = list(batching.batches(source, 10, shuffle=False, budgets=budgets, only=[1, 4]))
  assert source.reads == [list(range(10, 20)), list(range(40, 50))]
  for got, want in zip(some, [every[1], every[4]]):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
