"""launch/bench.py runs end to end on a tiny preset and writes valid JSON; the size study
runs on QM9 molecules, joined ones and molecules of one size (figures checked for
consistency, not timed); the original's one-size view keeps what it must."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edm_zoo import benchmarks
from edm_zoo import config as config_lib
from edm_zoo.data import registry
from edm_zoo.methods.diffusion import Diffusion
from edm_zoo.training import optimizer
from conftest import shared_path
from instruments import original_geom_train


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_runs_and_writes_json(tmp_path):
  out = tmp_path / 'bench.json'
  md = tmp_path / 'B.md'
  subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'bench.py'),
                  '--preset=tiny', '--T=20', '--what=all,jit_study', '--repeats=3',
                  '--sample_steps=5', '--data_batches=20', '--jit_study_ks=1,20',
                  '--jit_study_unrolls=1', f'--json={out}', f'--markdown={md}',
                  f'--plot={tmp_path / "jit.png"}'],
                 check=True, capture_output=True, cwd=REPO)
  result = json.loads(out.read_text())
  for key in ('train_step_median_s', 'nll_batch_median_s', 'sample_molecules_per_hour',
              'data_batches_per_s', 'peak_rss_gb', 'train_gflops_per_s', 'jax_version',
              'device', 'cpu_count', 'other_busy_cores_before_after'):
    assert key in result, key
  # The derived figures follow from the measured ones (the FLOP model, T = 20).
  assert result['train_gflops_per_s'] == pytest.approx(
      3 * result['flops_forward_per_batch'] / result['train_step_median_s'] / 1e9)
  assert result['sample_molecules_per_hour'] == pytest.approx(
      3600 * result['sample_molecules'] / (result['sample_step_s'] * 20))
  assert [r['K'] for r in result['jit_study']] == [1, 20]
  # Edges per batch: padding adds to the real ones, a dense layout adds more.
  shapes = result['batch_shapes']
  assert shapes['real_edges_mean'] <= shapes['padded_edges_mean']
  assert shapes['real_edges_mean'] < shapes['dense_pairs_mean']
  assert 1 <= shapes['shapes_used'] <= len(shapes['ladder'])
  rows = [line for line in md.read_text().splitlines() if line.startswith('| 1 |') or
          line.startswith('| 20 |')]
  assert len(rows) == 2 and (tmp_path / 'jit.png').stat().st_size > 1000


def test_size_study_times_small_and_joined_molecules():
  config = config_lib.build('tiny', batch_size=4, T=20)
  bench = config_lib.build_bench(what=('size_study',), repeats=1)
  model = Diffusion(config, registry.statistics('qm9').n_nodes_histogram)
  tx = optimizer.torch_adamw_amsgrad(config.train.lr)
  small, joined = benchmarks.size_study(model, tx, config, bench, None, log=lambda _: None)
  assert small['molecules'] == 'qm9' and joined['molecules'] == 'qm9 x3 joined'
  assert joined['mean_atoms'] > 2.5 * small['mean_atoms']
  assert joined['real_edges'] > 6 * small['real_edges']
  for row in (small, joined):
    assert row['error'] is None and row['compiled_shapes'] >= 1
    assert row['timed_steps'] > 0  # Deterministic batches: some repeat a shape.
    assert row['gflops_per_s'] == pytest.approx(
        3 * benchmarks.flops_forward(row['real_nodes'], row['real_edges'], 16, 2)
        / row['train_step_median_s'] / 1e9)


def test_size_study_on_molecules_of_one_size():
  config = config_lib.build('tiny', batch_size=4, T=20)
  bench = config_lib.build_bench(what=('size_study',), repeats=1, size_study_sizes=(19, 12))
  assert bench.size_study_sizes == (12, 19)
  model = Diffusion(config, registry.statistics('qm9').n_nodes_histogram)
  tx = optimizer.torch_adamw_amsgrad(config.train.lr)
  rows = benchmarks.size_study(model, tx, config, bench, None, log=lambda _: None)
  assert [r['molecules'] for r in rows] == ['qm9 12 atoms', 'qm9 19 atoms']
  for row, n in zip(rows, (12, 19)):
    # Every molecule of every batch has n atoms: all real pairs are edges, one shape.
    assert row['mean_atoms'] == row['max_atoms'] == n
    assert row['real_nodes'] == 4 * n and row['real_edges'] == 4 * n * (n - 1)
    assert row['compiled_shapes'] == 1 and row['timed_steps'] == 2
    assert row['error'] is None and row['train_step_median_s'] > 0


def test_size_study_refuses_sizes_qm9_lacks():
  with pytest.raises(ValueError, match='atom counts'):
    config_lib.build_bench(size_study_sizes=(1,))
  with pytest.raises(ValueError, match=r'qm9 has no training molecule of \[28\] atoms; pick'):
    benchmarks.molecules_of_sizes('qm9', (28,), 4, (1, 6, 7, 8, 9), None)


def _fake_original(root, sizes, charges):
  """A folder shaped like the original's checkout with a QM9 train split."""
  splits = root / 'qm9' / 'temp' / 'qm9'
  splits.mkdir(parents=True)
  (root / 'main_qm9.py').write_text('# the original\n')
  (root / 'qm9' / 'dataset.py').write_text('# the original\n')
  arrays = {'num_atoms': sizes, 'charges': charges, 'index': np.arange(len(sizes))}
  np.savez(splits / 'train.npz', **arrays)
  for split in ('valid', 'test'):
    np.savez(splits / f'{split}.npz', **arrays)


def test_original_size_split_keeps_one_size_and_every_element(tmp_path):
  # Sizes 2, 3, 3, 2, 1: only the 2-atom molecule 3 has F (9); the 3-atom ones lack it.
  sizes = np.array([2, 3, 3, 2, 1])
  charges = np.array([[1, 6, 0], [1, 6, 8], [6, 1, 1], [9, 1, 0], [9, 0, 0]])
  _fake_original(tmp_path / 'edm', sizes, charges)
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, 'instruments', 'original_size_split.py'),
       f'--edm_repo={tmp_path / "edm"}', '--size=3', f'--out={tmp_path / "view"}'],
      check=True, capture_output=True, text=True, cwd=REPO).stdout
  report = json.loads(out)
  # The largest molecule no bigger than 3 atoms that has F is added, and named.
  assert report['molecules'] == 2 and report['train_rows'] == 3
  assert report['added'] == [{'element': 9, 'index': 3, 'atoms': 2}]
  view = tmp_path / 'view'
  train = np.load(view / 'qm9' / 'temp' / 'qm9' / 'train.npz')
  np.testing.assert_array_equal(train['index'], [1, 2, 3])
  np.testing.assert_array_equal(train['charges'], charges[[1, 2, 3]])
  # Everything else is the original's own files.
  for link in ('main_qm9.py', 'qm9/dataset.py', 'qm9/temp/qm9/valid.npz'):
    assert (view / link).is_symlink()
  assert not (view / 'qm9' / 'temp' / 'qm9' / 'train.npz').is_symlink()
  # A rare size repeats its molecules up to --min_molecules, then adds F's.
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, 'instruments', 'original_size_split.py'),
       f'--edm_repo={tmp_path / "edm"}', '--size=3', '--min_molecules=5',
       f'--out={tmp_path / "view5"}'], check=True, capture_output=True, text=True,
      cwd=REPO).stdout
  assert json.loads(out)['train_rows'] == 6
  train = np.load(tmp_path / 'view5' / 'qm9' / 'temp' / 'qm9' / 'train.npz')
  np.testing.assert_array_equal(train['index'], [1, 2, 1, 2, 1, 3])
  bad = subprocess.run(
      [sys.executable, os.path.join(REPO, 'instruments', 'original_size_split.py'),
       f'--edm_repo={tmp_path / "edm"}', '--size=7', f'--out={tmp_path / "v7"}'],
      capture_output=True, text=True, cwd=REPO)
  assert bad.returncode != 0
  assert bad.stderr.strip() == "error: the original's train split has no molecule of 7 atoms."


def _side_by_side_report(folder, plot=True):
  """The report's stdout on `folder` (with a plot, which must be drawn)."""
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, 'instruments', 'side_by_side_report.py'),
       f'--dir={folder}'] + ([f'--plot={folder / "p.png"}'] if plot else []),
      check=True, capture_output=True, text=True, cwd=REPO).stdout
  assert not plot or (folder / 'p.png').stat().st_size > 1000
  return out


def _one_size_pair(folder, kind, n, ours, orig):
  """Our size-study JSON and the harness's log lines ending in its JSON line."""
  (folder / f'ours_{kind}{n}.json').write_text(json.dumps({'size_study': [
      {'molecules': f'{n} atoms', 'train_step_median_s': ours, 'peak_rss_gb': n / 10}]},
      indent=1))
  (folder / f'orig_{kind}{n}.json').write_text(
      'a log line\n' + json.dumps({'median_s': orig, 'peak_rss_mb': 1024.0 * n / 5}))


def test_side_by_side_report_on_the_size_parts_alone(tmp_path):
  # What `PARTS=sizes instruments/side_by_side.sh` leaves.
  (tmp_path / 'processor.txt').write_text('model name\t: test CPU\n')
  for n, ours, orig in ((10, 0.5, 1.25), (20, 2.0, 7.0)):
    _one_size_pair(tmp_path, 'size', n, ours, orig)
  out = _side_by_side_report(tmp_path)
  assert '| 10 | 1.25 s | 0.5 s | 2.5x | 2.00 / 1.00 GB |' in out
  assert '| 20 | 7 s | 2 s | 3.5x | 4.00 / 2.00 GB |' in out
  assert 'train step, batch 64' not in out  # That part did not run.
  assert 'drug-like' not in out
  # The drug-like part (PARTS=geom) adds its own table and panel; the view's own
  # record (geom_view40.json) is no measurement.
  _one_size_pair(tmp_path, 'geom', 40, 1.0, 3.0)
  (tmp_path / 'geom_view40.json').write_text(json.dumps({'size': 40}))
  out = _side_by_side_report(tmp_path)
  assert 'batch of 16 drug-like molecules, GEOM-Drugs config' in out
  assert '| 40 | 3 s | 1 s | 3.0x | 8.00 / 4.00 GB |' in out
  # Random batches: our size study's moses3d row beside the original's mixed view.
  (tmp_path / 'ours_geom_mixed.json').write_text(json.dumps({'size_study': [
      {'molecules': name, 'train_step_median_s': t, 'peak_rss_gb': 1.5, 'mean_atoms': a}
      for name, t, a in (('qm9', 0.2, 18.0), ('moses3d', 0.75, 38.5),
                         ('moses3d x3 joined', 7.0, 115.0))]}))
  (tmp_path / 'orig_geom_mixed.json').write_text(json.dumps(
      {'median_s': 6.0, 'peak_rss_mb': 3072.0, 'padded_nodes_per_batch_mean': 49.5}))
  out = _side_by_side_report(tmp_path)
  row = ('| random batches (38.5 atoms on average; the original pads to 49.5) | 6 s | '
         '0.75 s | 8.0x | 3.00 / 1.50 GB |')
  assert row in out
  # Alone (PARTS=geom GEOM_SIZES=), the row still comes under its table's header.
  for name in ('ours_geom40.json', 'orig_geom40.json', 'ours_size10.json',
               'orig_size10.json', 'ours_size20.json', 'orig_size20.json'):
    (tmp_path / name).unlink()
  lines = _side_by_side_report(tmp_path, plot=False).splitlines()  # Nothing to plot.
  assert lines[lines.index(row) - 2].startswith(
      '| atoms per molecule (batch of 16 drug-like molecules, GEOM-Drugs config)')


def test_original_geom_view_holds_molecules_of_one_size(tmp_path, qm9_noh_sources):
  del qm9_noh_sources  # Prepared: its molecules stand in for drug-like ones here.
  edm = tmp_path / 'edm'
  (edm / 'data' / 'geom').mkdir(parents=True)
  (edm / 'main_geom_drugs.py').write_text('# the original\n')
  np.save(edm / 'data' / 'geom' / 'geom_permutation.npy', np.arange(3))
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, 'instruments', 'original_size_split.py'),
       f'--edm_repo={edm}', '--dataset=qm9_noh', '--size=7', '--min_molecules=20',
       f'--out={tmp_path / "view"}'], check=True, capture_output=True, text=True,
      cwd=REPO).stdout
  assert json.loads(out.strip().splitlines()[-1])['train_molecules'] == 16
  geom = tmp_path / 'view' / 'data' / 'geom'
  rows = np.load(geom / 'geom_drugs_30.npy')
  ids = rows[:, 0].astype(int)
  assert len(set(ids)) == 20 and (np.bincount(ids) == 7).all()
  # The original's format: (molecule id, atomic number, x, y, z) per atom, split
  # where the id changes.
  stats = registry.statistics('qm9_noh')
  ((_, molecules),) = benchmarks.molecules_of_sizes('qm9_noh', (7,), 20,
                                                    stats.atomic_numbers, None)
  parts = np.split(rows[:, 1:], np.nonzero(ids[:-1] - ids[1:])[0] + 1)
  for part, m in zip(parts, molecules):
    np.testing.assert_array_equal(part[:, 0], m['charges'])
    np.testing.assert_allclose(part[:, 1:], m['positions'], rtol=1e-6)
  np.testing.assert_array_equal(np.load(geom / 'geom_permutation.npy'), np.arange(20))
  assert not (geom / 'geom_permutation.npy').is_symlink()
  assert (tmp_path / 'view' / 'main_geom_drugs.py').is_symlink()
  # --size=0: molecules of every size, spread over the split.
  subprocess.run(
      [sys.executable, os.path.join(REPO, 'instruments', 'original_size_split.py'),
       f'--edm_repo={edm}', '--dataset=qm9_noh', '--size=0', '--min_molecules=50',
       f'--out={tmp_path / "mixed"}'], check=True, capture_output=True, cwd=REPO)
  rows = np.load(tmp_path / 'mixed' / 'data' / 'geom' / 'geom_drugs_30.npy')
  sizes = np.bincount(rows[:, 0].astype(int))
  assert len(sizes) == 50 and len(set(sizes)) > 3


def test_ragged_split_splits_a_list_of_molecules_as_old_numpy_did():
  # The original's GEOM loader splits its list of molecules with np.split.
  split = original_geom_train._ragged_split(np.split)
  molecules = [np.full((n, 4), n, float) for n in (3, 5, 2, 4, 6)]
  val, test, train = split(molecules, [1, 2])
  assert [len(part) for part in (val, test, train)] == [1, 1, 3]
  assert [m.shape[0] for m in train] == [2, 4, 6]
  np.testing.assert_array_equal(test[0], molecules[1])
  # Molecules of one size split as numpy splits any array.
  same = [np.zeros((3, 4))] * 4
  assert [p.shape for p in split(same, [1, 2])] == [(1, 3, 4), (1, 3, 4), (2, 3, 4)]


def _records(losses, every=10):
  return [{'step': every * (i + 1), 'loss': float(v)} for i, v in enumerate(losses)]


def test_loss_windows_average_the_logged_losses_per_window():
  losses = np.arange(1.0, 21.0)  # Logged at steps 10, 20, ..., 200.
  records = _records(losses) + [{'step': 100, 'val_nll': 5.0}]
  windows = benchmarks.loss_windows(records, 50, 200)
  np.testing.assert_allclose(windows, [losses[i:i + 5].mean() for i in range(0, 20, 5)])
  with pytest.raises(ValueError, match='does not divide'):
    benchmarks.loss_windows(records, 30, 200)
  with pytest.raises(ValueError, match='steps 151-200'):
    benchmarks.loss_windows(_records(losses[:15]), 50, 200)


def test_against_seed_noise_compares_each_gap_with_the_seeds_spread():
  ref = np.array([3.0, 2.0, 1.5, 1.2])
  seed1 = ref + np.array([0.1, -0.1, 0.1, -0.1])  # noise: mean |diff| 0.1
  close = ref + 0.05
  far = ref + np.array([0.0, 0.3, 0.3, 0.4])
  v = benchmarks.against_seed_noise(
      {'highest_seed0': ref, 'highest_seed1': seed1, 'tf32': close, 'bf16': far},
      'highest_seed0', ['highest_seed1'])
  assert set(v) == {'tf32', 'bf16'}
  assert v['tf32']['noise'] == pytest.approx(0.1)
  assert v['tf32']['gap'] == pytest.approx(0.05) and v['tf32']['within_noise']
  assert v['bf16']['gap'] == pytest.approx(0.25) and not v['bf16']['within_noise']
  assert v['bf16']['final_gap'] == pytest.approx(0.4)
  with pytest.raises(ValueError, match='two seeds'):
    benchmarks.against_seed_noise({'highest_seed0': ref}, 'highest_seed0', [])


@pytest.mark.parametrize('flags, message', [
    (['--precisions=highest,bf16'], 'needs a GPU'),
    (['--precisions=fp8'], 'unknown'),
    (['--seeds=1'], 'must be >= 2'),
])
def test_precision_study_refuses_in_one_line(tmp_path, flags, message):
  done = subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'precision_study.py'),
                         f'--out={tmp_path}', "--parity_dir="] + flags,
                        capture_output=True, text=True, cwd=REPO, check=False)
  assert done.returncode == 1
  assert message in done.stderr and 'Traceback' not in done.stderr, done.stderr


def test_bf16_training_is_refused_on_cpu(tmp_path):
  done = subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'train.py'),
                         '--preset=tiny', '--matmul_precision=bf16', f'--workdir={tmp_path}'],
                        capture_output=True, text=True, cwd=REPO, check=False)
  assert done.returncode == 1
  assert 'needs a GPU' in done.stderr and 'Traceback' not in done.stderr, done.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_precision_study_trains_compares_and_replays_parity(tmp_path):
  out = tmp_path / 'study.json'
  cmd = [sys.executable, os.path.join(REPO, 'launch', 'precision_study.py'),
         '--precisions=highest', '--seeds=2', '--preset=tiny', '--steps=20', '--window=10',
         f'--out={tmp_path / "runs"}', f'--json={out}',
         f'--parity_dir={shared_path("parity")}']
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
  runs = json.loads(out.read_text())['runs']
  assert set(runs) == {'highest_seed0', 'highest_seed1'}
  for name, r in runs.items():
    records = [json.loads(line) for line in
               open(tmp_path / 'runs' / name / 'metrics.jsonl') if line.strip()]
    assert r['loss_windows'] == pytest.approx(
        benchmarks.loss_windows(records, 10, 20).tolist())
    assert np.isfinite(r['val_nll'])
  # Different seeds draw different runs; float32 keeps parity.
  assert runs['highest_seed0']['loss_windows'] != runs['highest_seed1']['loss_windows']
  assert runs['highest_seed0']['parity_failing'] == 0
  assert runs['highest_seed0']['train_parity_failing'] == 0
  assert 'highest_seed0' in done.stdout
  # A rerun finds both runs finished and starts no train.py (which rewrites its log).
  logs = [tmp_path / 'runs' / name / 'train.log' for name in runs]
  mtimes = [os.path.getmtime(log) for log in logs]
  subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
  assert [os.path.getmtime(log) for log in logs] == mtimes


def test_gpu_bench_report_pairs_the_measurements(tmp_path):
  raw = tmp_path / 'raw'
  raw.mkdir()
  config = {'nf': 256, 'n_layers': 9, 'batch_size': 64, 'T': 1000}
  (raw / 'ours_highest.json').write_text(json.dumps(
      {'device': 'GPU X', 'config': config, 'train_step_median_s': 0.02,
       'nll_batch_median_s': 0.008, 'device_peak_gib': 3.0}, indent=1))
  # The harness's output: log lines, then one JSON line.
  (raw / 'orig_train.json').write_text('noise\n' + json.dumps(
      {'median_s': 0.1, 'cuda_peak_gib': 5.0, 'device': 'GPU X'}))
  (raw / 'orig_nll.json').write_text(json.dumps({'median_s': 0.04}))
  (raw / 'ours_sample10.json').write_text(json.dumps({'sample_molecules_per_hour': 36000.0}))
  (raw / 'orig_sample10.json').write_text(json.dumps({'seconds_per_molecule_full_chain': 1.0}))
  (raw / 'orig_train_tf32.json').write_text('')  # A run that failed: left out.
  (raw / 'precision_study.json').write_text(json.dumps({'runs': {
      'highest_seed0': {'parity_failing': 0, 'parity_arrays': 49, 'parity_worst_abs': 1e-6,
                        'train_parity_failing': 0, 'train_parity_arrays': 62,
                        'train_parity_worst_abs': 2e-5},
      'bf16_seed0': {'gap': 0.02, 'noise': 0.03, 'within_noise': True}}}))
  subprocess.run([sys.executable, os.path.join(REPO, 'instruments', 'gpu_bench_report.py'),
                  f'--dir={raw}', f'--json={tmp_path / "r.json"}',
                  f'--markdown={tmp_path / "r.md"}'], check=True, cwd=REPO,
                 capture_output=True)
  text = (tmp_path / 'r.md').read_text()
  assert 'Device: GPU X' in text
  assert '| train step, float32 | 100.0 ms | 20.0 ms | 5.0x |' in text
  assert '| NLL per batch, float32 | 40.0 ms | 8.0 ms | 5.0x |' in text
  assert '| 5.00 GiB | 3.00 GiB |' in text
  assert '| 3,600 | 36,000 | 10.0x |' in text
  assert '0/49 (1.0e-06)' in text and '0.0200 vs 0.0300: within noise' in text
  assert 'Not measured in this run: orig_train_tf32, ours_tf32, ours_bf16.' in text
  assert set(json.loads((tmp_path / 'r.json').read_text())) == {
      'ours_highest', 'orig_train', 'orig_nll', 'ours_sample10', 'orig_sample10',
      'precision_study'}
