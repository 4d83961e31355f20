"""Building datasets of any size: splits stream into shards (no TFDS shuffle buffer,
whose spill needs TensorFlow), GEOM-Drugs' input is read chunk by chunk, and a
killed build starts again cleanly.

The GEOM-format inputs here are synthetic (random atoms of GEOM's elements): the
build's memory and its bookkeeping do not depend on the chemistry.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tqdm
from tensorflow_datasets.core import shuffle as tfds_shuffle

from datasets import common
from datasets.geom_drugs import edm_geom_drugs
from edm_zoo.data import registry
from instruments import geom_full_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_geom(folder, n_conformers: int, atoms: int = 50, seed: int = 0,
                   chunk: int = 20_000) -> str:
  """The original's four files for `n_conformers` conformers of `atoms` atoms,
  written chunk by chunk."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = np.lib.format.open_memmap(os.path.join(folder, 'geom_drugs_30.npy'), 'w+',
                                   np.float64, (n_conformers * atoms, 5))
  for lo in range(0, n_conformers, chunk):
    hi = min(lo + chunk, n_conformers)
    block = rows[lo * atoms:hi * atoms]
    block[:, 0] = np.repeat(np.arange(lo, hi), atoms)
    block[:, 1] = rng.choice([1, 6, 7, 8, 16], size=len(block))
    block[:, 2:] = rng.normal(0, 3, (len(block), 3))
  rows.flush()
  del rows
  np.save(os.path.join(folder, 'geom_drugs_n_30.npy'), np.full(n_conformers, atoms))
  np.save(os.path.join(folder, 'geom_permutation.npy'),
          np.random.RandomState(seed).permutation(n_conformers).astype('int32'))
  return str(folder)


def _check_against_rows(data_dir, folder, n_conformers, atoms):
  rows = np.load(os.path.join(folder, 'geom_drugs_30.npy'), mmap_mode='r')
  permutation = np.load(os.path.join(folder, 'geom_permutation.npy'))
  n_valid = int(0.1 * n_conformers)
  for split, offset in (('valid', 0), ('test', n_valid), ('train', 2 * n_valid)):
    source = registry.load('geom_drugs', split, data_dir)
    picks = np.unique(np.linspace(0, len(source) - 1, 20).astype(int))
    for i, m in zip(picks, source.__getitems__(picks)):
      k = permutation[offset + i]  # The split keeps the permutation's order.
      block = rows[k * atoms:(k + 1) * atoms]
      assert m['index'] == k
      np.testing.assert_array_equal(m['charges'], block[:, 1].astype(np.int32))
      np.testing.assert_array_equal(m['positions'], block[:, 2:].astype(np.float32))


def test_a_split_past_tfds_spill_point_streams_into_shards(tmp_path, monkeypatch):
  # TFDS's shuffle buffer spills past MAX_MEM_BUFFER_SIZE through tf.io.gfile
  # (TensorFlow is not installed); lowered to 1 KB, any use of it would fail here.
  monkeypatch.setattr(tfds_shuffle, 'MAX_MEM_BUFFER_SIZE', 1000)
  monkeypatch.setattr(common.MoleculeBuilder, 'shard_molecules', 300)
  folder = synthetic_geom(tmp_path / 'in', 2000, atoms=12)
  data_dir = str(tmp_path / 'tfds')
  path = registry.prepare('geom_drugs', data_dir, options={'source': folder})
  shards = sorted(f for f in os.listdir(path) if 'train.array_record' in f)
  assert len(shards) == 6  # 1,600 train conformers in shards of 300.
  _check_against_rows(data_dir, folder, 2000, 12)
  stats = registry.statistics('geom_drugs', data_dir)
  assert stats.n_nodes_histogram == {12: 1600}
  rows = np.load(os.path.join(folder, 'geom_drugs_30.npy'))
  train = np.sort(np.load(os.path.join(folder, 'geom_permutation.npy'))[400:])
  z = rows.reshape(2000, 12, 5)[train, :, 1].astype(int).ravel()
  expected = [int((z == a).sum()) for a in edm_geom_drugs.ATOMIC_NUMBERS_WITH_H]
  assert list(stats.type_counts) == expected


def test_a_second_build_of_the_same_dataset_is_refused_in_one_line(tmp_path):
  folder = synthetic_geom(tmp_path / 'in', 50, atoms=5)
  data_dir = str(tmp_path / 'tfds')
  builder = registry.get('geom_drugs', data_dir, for_build=True).make_builder(
      data_dir, {'source': folder})
  with registry._build_lock(builder.data_dir, 'geom_drugs'):  # pylint: disable=protected-access
    with pytest.raises(ValueError, match='another process is building'):
      registry.prepare('geom_drugs', data_dir, options={'source': folder})
  registry.prepare('geom_drugs', data_dir, options={'source': folder})  # Released.


VERSION = str(edm_geom_drugs.EdmGeomDrugs.VERSION)


def _build_in_subprocess(folder, data_dir, *, data_limit_mib=None, shard=None):
  lines = ['import resource']
  if data_limit_mib:
    lines.append(f'resource.setrlimit(resource.RLIMIT_DATA, ({data_limit_mib} << 20, '
                 f'{data_limit_mib} << 20))')
  lines += ['from datasets import common', 'from edm_zoo.data import registry']
  if shard:
    lines.append(f'common.MoleculeBuilder.shard_molecules = {shard}')
  # Random atoms: the writer is measured here, not bond perception.
  lines.append(f'registry.prepare("geom_drugs", {data_dir!r}, '
               f'options={{"source": {folder!r}, "perceive_bonds": False}})')
  return subprocess.Popen([sys.executable, '-c', '\n'.join(lines)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_the_build_never_holds_the_input_in_memory(tmp_path):
  # 600 MB of rows under a 500 MiB limit on the process's data (anonymous memory and
  # reservations such as protobuf's arenas for the records' nine features; the
  # memory-mapped input does not count): reading the file whole fails, the build
  # does not.
  folder = synthetic_geom(tmp_path / 'in', 150_000, atoms=100)
  rows_file = os.path.join(folder, 'geom_drugs_30.npy')
  assert os.path.getsize(rows_file) > 600e6
  limit = ['import resource', 'resource.setrlimit(resource.RLIMIT_DATA, (500 << 20, 500 << 20))',
           'import numpy as np', f'np.load({rows_file!r})']
  whole = subprocess.run([sys.executable, '-c', '\n'.join(limit)], capture_output=True,
                         text=True, timeout=120)
  assert whole.returncode != 0 and 'MemoryError' in whole.stderr
  proc = _build_in_subprocess(folder, str(tmp_path / 'tfds'), data_limit_mib=500)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  assert registry.metadata('geom_drugs', str(tmp_path / 'tfds'))['num_conformers'] == 150_000


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_usable_and_the_next_one_starts_clean(tmp_path):
  folder = synthetic_geom(tmp_path / 'in', 20_000, atoms=20)
  data_dir = str(tmp_path / 'tfds')
  proc = _build_in_subprocess(folder, data_dir, shard=1000)
  config_dir = os.path.join(data_dir, 'edm_geom_drugs', 'with_h')
  deadline = time.time() + 240

  def shards_written():
    return [f for d in registry.stale_builds(os.path.join(config_dir, VERSION))
            for f in os.listdir(d) if 'train.array_record' in f]
  while len(shards_written()) < 3:  # Killed in the middle of writing the train split.
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not registry.is_prepared('geom_drugs', data_dir)
  with pytest.raises(ValueError, match='is not prepared'):
    registry.load('geom_drugs', 'train', data_dir)
  [stale] = registry.stale_builds(os.path.join(config_dir, VERSION))
  # The next build removes what the killed one wrote and builds from scratch.
  registry.prepare('geom_drugs', data_dir, options={'source': folder, 'perceive_bonds': False})
  assert not os.path.exists(stale)
  assert registry.stale_builds(os.path.join(config_dir, VERSION)) == []
  _check_against_rows(data_dir, folder, 20_000, 20)


def test_the_full_size_instrument_writes_the_originals_format(tmp_path):
  rng = np.random.default_rng(1)
  molecules = [{'charges': rng.choice([1, 6, 7, 8], n).astype(np.int32),
                'positions': rng.normal(0, 2, (n, 3)).astype(np.float32),
                'smiles': f'C{n}'} for n in (9, 10, 12, 15, 20) for _ in range(3)]
  histogram = {3: 1, 10: 45, 12: 30, 44: 61}  # Cut, exact, exact and composed sizes.
  out = str(tmp_path / 'geom')
  summary = geom_full_size.write(out, histogram, molecules, scale=1.0, noise=0.05, seed=0)
  rows = np.load(os.path.join(out, 'geom_drugs_30.npy'))
  sizes = np.load(os.path.join(out, 'geom_drugs_n_30.npy'))
  permutation = np.load(os.path.join(out, 'geom_permutation.npy'))
  assert rows.dtype == np.float64 and rows.shape == (summary['atoms'], 5)
  assert summary['conformers'] == sum(histogram.values()) == len(sizes)
  assert summary['atoms'] == sum(n * c for n, c in histogram.items())
  assert dict(zip(*np.unique(sizes, return_counts=True))) == histogram
  bounds = edm_geom_drugs.conformer_bounds(rows)
  np.testing.assert_array_equal(np.diff(bounds), sizes)
  np.testing.assert_array_equal(rows[bounds[:-1], 0], np.arange(len(sizes)))  # Ids 0, 1, ...
  assert permutation.dtype == np.int32
  np.testing.assert_array_equal(np.sort(permutation), np.arange(len(sizes)))
  # Molecules of at most 30 conformers of one size: 1 + 2 + 1 + 3 (30 + 15, 30, 30 + 30 + 1).
  assert summary['molecules'] == 7
  assert len(open(os.path.join(out, 'geom_drugs_smiles.txt')).read().splitlines()) == 7
  assert set(np.unique(rows[:, 1]).astype(int)) <= {1, 6, 7, 8}
  registry.prepare('geom_drugs', str(tmp_path / 'tfds'), options={'source': out})
  train = permutation[2 * int(0.1 * len(sizes)):]
  expected = dict(zip(*np.unique(sizes[train], return_counts=True)))
  assert registry.statistics('geom_drugs', str(tmp_path / 'tfds')).n_nodes_histogram == expected


def test_a_builder_that_gives_too_few_molecules_for_a_shard_is_refused():
  split = common.SplitExamples(10, lambda lo, hi: iter([{'i': i} for i in range(lo, hi - 1)]))
  with tqdm.tqdm(disable=True) as bar:
    with pytest.raises(ValueError, match=r'gave 4 molecules for places 5..9'):
      list(common._keyed(split, 5, 10, bar))  # pylint: disable=protected-access
    assert [k for k, _ in common._keyed(  # pylint: disable=protected-access
        common.SplitExamples(3, lambda lo, hi: iter([{}] * (hi - lo))), 0, 3, bar)] == [0, 1, 2]
