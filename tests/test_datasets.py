"""The dataset registry's builders on real molecules: your own SDF/XYZ files, the
drug-like moses3d set (a few hundred MOSES molecules embedded here), GEOM-Drugs in
the original's file format (made from them), and their bad inputs."""

import os

import jax
import numpy as np
import pytest

from conftest import exportable
from datasets.geom_drugs import edm_geom_drugs
from edm_zoo import config as config_lib
from edm_zoo import evaluation, reporting
from edm_zoo.data import batching, bonds, registry
from edm_zoo.methods.diffusion.objective import Diffusion
from edm_zoo.io import export, readers
from edm_zoo.metrics import own_bonds
from edm_zoo.training import loop, optimizer
from edm_zoo.training import state as train_state

QM9_ELEMENTS = ('H', 'C', 'N', 'O', 'F')
MOSES_MOLECULES = 160


@pytest.fixture(scope='module')
def qm9_molecules(qm9_sources):
  """60 real QM9 molecules as the exporters take them."""
  return exportable(qm9_sources['valid'], 60, 211)


@pytest.fixture(scope='module')
def own_files(qm9_molecules, tmp_path_factory):
  """A folder: 40 molecules in an SDF file and 20 in an XYZ file."""
  folder = tmp_path_factory.mktemp('own')
  export.write_sdf(qm9_molecules[:40], QM9_ELEMENTS, str(folder / 'a.sdf'))
  export.write_xyz(qm9_molecules[40:], QM9_ELEMENTS, str(folder / 'b.xyz'))
  return folder


def test_own_molecules_build_split_and_statistics(own_files, qm9_molecules, tmp_path):
  data_dir = str(tmp_path)
  registry.prepare('mine', data_dir, options={'source': str(own_files), 'seed': 3})
  sizes = {s: len(registry.load('mine', s, data_dir)) for s in registry.SPLITS}
  assert sizes == {'train': 48, 'valid': 6, 'test': 6}
  stats = registry.statistics('mine', data_dir)
  present = sorted({int(c) for m in qm9_molecules for c in m['charges']})
  assert list(stats.atomic_numbers) == present  # Types from the data, sorted by Z.
  train = registry.load('mine', 'train', data_dir)
  items = train.__getitems__(range(len(train)))
  assert sum(stats.n_nodes_histogram.values()) == 48
  assert stats.type_counts == tuple(
      sum(int(np.sum(m['charges'] == z)) for m in items) for z in present)
  # Every input molecule is in exactly one split, with its own atoms.
  seen = sorted(m['index'] for s in registry.SPLITS
                for m in registry.load('mine', s, data_dir).__getitems__(range(sizes[s])))
  assert seen == list(range(60))
  m = items[0]
  np.testing.assert_array_equal(m['charges'], qm9_molecules[m['index']]['charges'])
  np.testing.assert_allclose(m['positions'], qm9_molecules[m['index']]['positions'],
                             atol=1e-4)
  # The batches the model sees use the dataset's own types.
  graph = batching.build_graph(items[:4], stats.atomic_numbers)
  assert graph.nodes['one_hot'].shape[1] == len(present)
  meta = registry.metadata('mine', data_dir)
  assert meta['content_hash'] == readers.read_molecules(str(own_files)).content_hash
  assert meta['files'] == ['a.sdf', 'b.xyz'] and meta['bad_records'] == []


def test_own_molecules_rebuild_rules(own_files, qm9_molecules, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  source = tmp_path / 'in'
  source.mkdir()
  for f in os.listdir(own_files):
    (source / f).write_bytes((own_files / f).read_bytes())
  path = registry.prepare('mine', data_dir, options={'source': str(source)})
  stamp = os.path.getmtime(os.path.join(path, 'dataset_info.json'))
  # The same inputs: the same dataset, kept.
  assert registry.prepare('mine', data_dir, options={'source': str(source)}) == path
  assert os.path.getmtime(os.path.join(path, 'dataset_info.json')) == stamp
  # Changed inputs (or options) under the same name: refused, then rebuilt on purpose.
  export.write_xyz(qm9_molecules[40:50], QM9_ELEMENTS, str(source / 'b.xyz'))
  with pytest.raises(ValueError, match='built from other inputs.*--rebuild'):
    registry.prepare('mine', data_dir, options={'source': str(source)})
  with pytest.raises(ValueError, match='built from other inputs'):
    registry.prepare('mine', data_dir, options={'source': str(own_files), 'seed': 1})
  registry.prepare('mine', data_dir, options={'source': str(source)}, rebuild=True)
  assert sum(len(registry.load('mine', s, data_dir)) for s in registry.SPLITS) == 50
  # A rebuild that fails leaves the dataset that was there.
  with pytest.raises(ValueError, match='no such file'):
    registry.prepare('mine', data_dir, options={'source': str(tmp_path / 'gone.sdf')},
                     rebuild=True)
  assert sum(len(registry.load('mine', s, data_dir)) for s in registry.SPLITS) == 50


def test_own_molecules_bad_record_stops_or_is_skipped_and_listed(qm9_molecules, tmp_path):
  export.write_sdf(qm9_molecules[:30], QM9_ELEMENTS, str(tmp_path / 'good.sdf'))
  text = (tmp_path / 'good.sdf').read_text().split('$$$$\n')
  text[6] = 'broken\n  no atoms here\n\nM  END\n'  # Record 7 cannot be parsed.
  (tmp_path / 'good.sdf').unlink()
  (tmp_path / 'mixed.sdf').write_text('$$$$\n'.join(text))
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(readers.BadRecordError, match=r'mixed.sdf record 7: unparsable'):
    registry.prepare('mixed', data_dir, options={'source': str(tmp_path / 'mixed.sdf')})
  assert not registry.is_prepared('mixed', data_dir)
  registry.prepare('mixed', data_dir, options={'source': str(tmp_path / 'mixed.sdf'),
                                               'skip_bad': True, 'max_atoms': 20})
  meta = registry.metadata('mixed', data_dir)
  want = [f'record {i + 1}: ' + ('unparsable block' if i == 6 else
                                 f'{len(m["charges"])} atoms, over --max_atoms=20')
          for i, m in enumerate(qm9_molecules[:30]) if i == 6 or len(m['charges']) > 20]
  assert len(want) > 1
  assert [b.split('mixed.sdf ')[1] for b in meta['bad_records']] == want
  kept = sum(len(registry.load('mixed', s, data_dir)) for s in registry.SPLITS)
  assert kept == 30 - len(want)


# --- moses3d: MOSES SMILES embedded with RDKit, here a few hundred of them.

@pytest.fixture(scope='module')
def moses_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('moses'))
  registry.prepare('moses3d', data_dir, options={'molecules': MOSES_MOLECULES, 'seed': 0,
                                                 'workers': 2})
  return data_dir


def test_moses3d_builds_with_geom_types_and_counts_failures(moses_dir):
  meta = registry.metadata('moses3d', moses_dir)
  assert meta['embedded'] + meta['failed'] == MOSES_MOLECULES
  sizes = {s: len(registry.load('moses3d', s, moses_dir)) for s in registry.SPLITS}
  assert sum(sizes.values()) == meta['embedded'] and sizes['valid'] == meta['embedded'] // 10
  stats = registry.statistics('moses3d', moses_dir)
  assert stats.atom_types == edm_geom_drugs.ATOM_TYPES_WITH_H
  assert max(stats.n_nodes_histogram) > 40  # Drug-sized, hydrogens included.
  item = registry.load('moses3d', 'valid', moses_dir)[0]
  assert 1 in item['charges'] and item['smiles']


def test_moses3d_bonds_are_its_smiles_and_every_molecule_passes(moses_dir):
  meta = registry.metadata('moses3d', moses_dir)['bonds']
  assert all(c['given'] == sum(c.values()) for c in meta['counts'].values())
  test = reporting.reference_split_molecules('test', 'moses3d', moses_dir)
  report = own_bonds.evaluate(test, edm_geom_drugs.ATOMIC_NUMBERS_WITH_H)
  assert report['molecules'] == len(test) > 0
  # Every real molecule passes edm_zoo's table; the reference table lacks the neutral
  # sulfoxide (S=O, which MOSES writes) and fails those alone (docs/metrics.md).
  assert report['ours']['mol_stability']['value'] == 1.0
  assert report['validity']['value'] == 1.0 and report['connectivity']['value'] == 1.0
  for m in test:
    z = np.asarray(edm_geom_drugs.ATOMIC_NUMBERS_WITH_H)[m['types']]
    judged = own_bonds.judge(z, m['bonds'], m['bond_orders'], m['formal_charges'])
    assert judged['stable'] or 'S(=O)' in judged['smiles'] or '[S' in judged['smiles']


def test_own_molecules_carry_their_bonds(own_files, tmp_path):
  data_dir = str(tmp_path)
  registry.prepare('mine', data_dir, options={'source': str(own_files), 'seed': 3})
  from_file = readers.read_molecules(str(own_files / 'a.sdf')).molecules
  meta = registry.metadata('mine', data_dir)['bonds']
  statuses = []
  for split in registry.SPLITS:
    source = registry.load('mine', split, data_dir)
    for m in source.__getitems__(range(len(source))):
      statuses.append(m['bonds_status'])
      if m['file'] == 'a.sdf':  # The SDF's own bond block, read back unchanged.
        want = from_file[m['record'] - 1]
        assert m['bonds_status'] == bonds.GIVEN
        np.testing.assert_array_equal(m['bonds'], want['bonds'])
        np.testing.assert_array_equal(m['bond_orders'], want['bond_orders'])
        np.testing.assert_array_equal(m['formal_charges'], want['formal_charges'])
      else:  # XYZ: perceived, and listed by record where that failed.
        assert m['bonds_status'] in (bonds.PERCEIVED, bonds.NOT_PERCEIVED)
  assert statuses.count(bonds.GIVEN) == 40
  assert len(meta['not_perceived']) == statuses.count(bonds.NOT_PERCEIVED)


def test_moses3d_resumes_only_missing_chunks(moses_dir, tmp_path):
  cache = os.path.join(moses_dir, 'edm_moses3d_embed', f'0_{MOSES_MOLECULES}')
  chunks = sorted(os.listdir(cache))
  assert len(chunks) == -(-MOSES_MOLECULES // 100)
  stamps = {c: os.path.getmtime(os.path.join(cache, c)) for c in chunks}
  before = [registry.load('moses3d', 'train', moses_dir)[i]['positions'] for i in range(5)]
  os.remove(os.path.join(cache, chunks[1]))
  registry.prepare('moses3d', moses_dir, options={'molecules': MOSES_MOLECULES, 'seed': 0},
                   rebuild=True)
  assert os.path.getmtime(os.path.join(cache, chunks[0])) == stamps[chunks[0]]
  assert os.path.getmtime(os.path.join(cache, chunks[1])) != stamps[chunks[1]]
  after = [registry.load('moses3d', 'train', moses_dir)[i]['positions'] for i in range(5)]
  for a, b in zip(before, after):  # Seeds per molecule: the same conformers.
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='built from other inputs or options'):
    registry.prepare('moses3d', moses_dir, options={'molecules': 10})


# --- GEOM-Drugs in the original's file format, made from the embedded molecules.

def _geom_files(folder, molecules, permutation=True, seed=5):
  rows = np.concatenate([np.column_stack([np.full(len(m['charges']), k), m['charges'],
                                          m['positions']]) for k, m in enumerate(molecules)])
  np.save(folder / 'geom_drugs_30.npy', rows.astype(np.float64))
  np.save(folder / 'geom_drugs_n_30.npy', np.array([len(m['charges']) for m in molecules]))
  (folder / 'geom_drugs_smiles.txt').write_text(''.join(m['smiles'] + '\n' for m in molecules))
  if permutation:
    np.save(folder / 'geom_permutation.npy',
            np.random.RandomState(seed).permutation(len(molecules)).astype(np.int32))
  return rows


def _original_load_split_data(rows, permutation, filter_size=None):
  """The original's `load_split_data` step by step (build_geom_dataset.py)."""
  mol_id = rows[:, 0].astype(int)
  data_list = np.split(rows[:, 1:], np.nonzero(mol_id[:-1] - mol_id[1:])[0] + 1)
  if filter_size is not None:
    data_list = [m for m in data_list if m.shape[0] <= filter_size]
  data_list = [data_list[i] for i in permutation]
  val_index = int(len(data_list) * 0.1)
  test_index = val_index + int(len(data_list) * 0.1)
  return {'valid': data_list[:val_index], 'test': data_list[val_index:test_index],
          'train': data_list[test_index:]}


@pytest.fixture(scope='module')
def moses_molecules(moses_dir):
  return [m for s in registry.SPLITS
          for m in registry.load('moses3d', s, moses_dir).__getitems__(
              range(len(registry.load('moses3d', s, moses_dir))))]


@pytest.mark.parametrize('filter_size', [None, 45])
def test_geom_drugs_split_is_the_originals(moses_molecules, tmp_path, filter_size):
  folder = tmp_path / 'geom'
  folder.mkdir()
  rows = _geom_files(folder, moses_molecules, permutation=filter_size is None)
  n_kept = sum(len(m['charges']) <= (filter_size or 10**9) for m in moses_molecules)
  permutation = np.random.RandomState(5).permutation(n_kept)
  if filter_size is not None:  # The permutation file permutes what the filter keeps.
    np.save(folder / 'geom_permutation.npy', permutation)
  options = {'source': str(folder), 'filter_size': filter_size}
  registry.prepare('geom_drugs', str(tmp_path), options=options)
  want = _original_load_split_data(rows, permutation, filter_size)
  for split in registry.SPLITS:
    got = registry.load('geom_drugs', split, str(tmp_path))
    assert len(got) == len(want[split])
    for k in range(0, len(got), 7):
      m = got[k]
      np.testing.assert_array_equal(m['charges'], want[split][k][:, 0].astype(int))
      np.testing.assert_allclose(m['positions'], want[split][k][:, 1:], rtol=1e-6)
  meta = registry.metadata('geom_drugs', str(tmp_path))
  assert meta['paper_split'] and meta['num_smiles'] == len(moses_molecules)
  assert registry.statistics('geom_drugs', str(tmp_path)).atom_types == \
      edm_geom_drugs.ATOM_TYPES_WITH_H


def test_geom_drugs_bonds_per_molecule_shared_by_its_conformers(moses_molecules, tmp_path):
  folder = tmp_path / 'geom'
  folder.mkdir()
  molecules = moses_molecules[:30]
  rng = np.random.default_rng(0)
  # Three conformers of each molecule, one after another, as the original writes them.
  conformers = [dict(m, positions=m['positions'] + rng.normal(0, 0.01, m['positions'].shape))
                for m in molecules for _ in range(3)]
  rows = np.concatenate([np.column_stack([np.full(len(m['charges']), k), m['charges'],
                                          m['positions']]) for k, m in enumerate(conformers)])
  np.save(folder / 'geom_drugs_30.npy', rows.astype(np.float64))
  np.save(folder / 'geom_drugs_n_30.npy', np.array([len(m['charges']) for m in conformers]))
  (folder / 'geom_drugs_smiles.txt').write_text(''.join(m['smiles'] + '\n' for m in molecules))
  registry.prepare('geom_drugs', str(tmp_path), options={'source': str(folder), 'seed': 0})
  meta = registry.metadata('geom_drugs', str(tmp_path))['bonds']
  assert meta['molecules'] == 30 and meta['checked_against_smiles']
  counts = {name: sum(c[name] for c in meta['counts'].values()) for name in bonds.STATUS}
  assert sum(counts.values()) == 90 and counts['given'] == 0
  seen = 0
  for split in registry.SPLITS:
    source = registry.load('geom_drugs', split, str(tmp_path))
    for m in source.__getitems__(range(len(source))):
      true = molecules[m['index'] // 3]
      if m['bonds_status'] == bonds.PERCEIVED:  # The molecule its SMILES says it is.
        np.testing.assert_array_equal(m['bonds'], true['bonds'])
        np.testing.assert_array_equal(m['bond_orders'], true['bond_orders'])
        np.testing.assert_array_equal(m['formal_charges'], true['formal_charges'])
        seen += 1
    bonded = registry.load('geom_drugs', split, str(tmp_path), with_bonds=True)
    assert len(bonded) == len(source) - len(meta['left_out'][split])
  assert seen == counts['perceived'] >= 60


def test_geom_drugs_bad_inputs_in_one_line(moses_molecules, tmp_path):
  folder = tmp_path / 'geom'
  folder.mkdir()
  _geom_files(folder, moses_molecules[:50], permutation=False)
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match=r'no geom_permutation.npy.*--seed'):
    registry.prepare('geom_drugs', data_dir, options={'source': str(folder)})
  np.save(folder / 'geom_permutation.npy', np.arange(49))
  with pytest.raises(ValueError, match=r'does not permute the 50 conformers'):
    registry.prepare('geom_drugs', data_dir, options={'source': str(folder)})
  os.remove(folder / 'geom_permutation.npy')
  np.save(folder / 'geom_drugs_n_30.npy', np.ones(50, int))
  with pytest.raises(ValueError, match=r'geom_drugs_n_30.npy .* does not match'):
    registry.prepare('geom_drugs', data_dir, options={'source': str(folder), 'seed': 1})
  with pytest.raises(ValueError, match=r'no geom_drugs_no_h_30.npy there'):
    registry.prepare('geom_drugs_noh', data_dir, options={'source': str(folder)})
  _geom_files(folder, moses_molecules[:50], permutation=False)
  registry.prepare('geom_drugs', data_dir, options={'source': str(folder), 'seed': 1})
  meta = registry.metadata('geom_drugs', data_dir)
  assert not meta['paper_split'] and "NOT the paper's split" in meta['split_recipe']


# --- A model on the drug-like set.

@pytest.mark.slow
def test_small_model_on_moses3d_learns_and_samples_its_elements(moses_dir, tmp_path):
  config = registry.configure(config_lib.build(
      'tiny', dataset='moses3d', nf=32, batch_size=8, total_steps=80,
      eval_every_steps=80, eval_molecules=16, checkpoint_every_steps=1000,
      log_every_steps=50, train_molecules=0), moses_dir)
  assert config.in_node_nf == 16 and not config.diffusion.include_charges
  stats = registry.statistics('moses3d', moses_dir)
  model = Diffusion(config, stats.n_nodes_histogram)
  valid = registry.load('moses3d', 'valid', moses_dir)
  graphs, _ = next(batching.sharded_batches(registry.load('moses3d', 'train', moses_dir),
                                            8, 1, n_nodes_histogram=stats.n_nodes_histogram,
                                            atomic_numbers=stats.atomic_numbers))
  init = train_state.init_state(model, optimizer.torch_adamw_amsgrad(1e-3),
                                jax.random.fold_in(jax.random.PRNGKey(0), 0),
                                jax.tree.map(lambda a: a[0], graphs))
  before = evaluation.nll(model, init.params, valid, batch_size=8, limit=16,
                          n_nodes_histogram=stats.n_nodes_histogram, progress=False)['nll']
  result = loop.train(config, str(tmp_path / 'run'), data_dir=moses_dir, progress=False)
  print(f'moses3d validation NLL {before:.1f} -> {result["val_nll"]:.1f}')
  assert result['val_nll'] < 0.8 * before, (before, result['val_nll'])
  _, model, params, meta = reporting.load_model(str(tmp_path / 'run'))
  types, _ = reporting.elements_of(config, meta)
  assert types == edm_geom_drugs.ATOM_TYPES_WITH_H
  sampling = config_lib.SamplingConfig(n_samples=3, batch_size=3, seed=0, sampler='ddim',
                                       steps=20)
  out = reporting.sample_and_export(model, params, config, str(tmp_path / 'samples'),
                                    sampling, atom_types=types, progress=False)
  written = readers.read_molecules(str(tmp_path / 'samples' / 'samples.sdf'))
  assert len(written.molecules) == 3
  allowed = set(edm_geom_drugs.ATOMIC_NUMBERS_WITH_H)
  for m, got in zip(out['molecules'], written.molecules):
    assert set(got['charges'].tolist()) <= allowed
    np.testing.assert_array_equal(
        got['charges'], np.array(edm_geom_drugs.ATOMIC_NUMBERS_WITH_H)[m['types']])
