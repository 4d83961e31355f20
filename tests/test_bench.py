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
from edm_zoo.diffusion import Diffusion
from edm_zoo.training import optimizer


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
  with pytest.raises(ValueError, match=r'no training molecule of \[28\] atoms; pick'):
    benchmarks.qm9_of_sizes((28,), 4, (1, 6, 7, 8, 9), None)


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
      [sys.executable, os.path.join(REPO, 'launch', 'original_size_split.py'),
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
      [sys.executable, os.path.join(REPO, 'launch', 'original_size_split.py'),
       f'--edm_repo={tmp_path / "edm"}', '--size=3', '--min_molecules=5',
       f'--out={tmp_path / "view5"}'], check=True, capture_output=True, text=True,
      cwd=REPO).stdout
  assert json.loads(out)['train_rows'] == 6
  train = np.load(tmp_path / 'view5' / 'qm9' / 'temp' / 'qm9' / 'train.npz')
  np.testing.assert_array_equal(train['index'], [1, 2, 1, 2, 1, 3])
  bad = subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch', 'original_size_split.py'),
       f'--edm_repo={tmp_path / "edm"}', '--size=7', f'--out={tmp_path / "v7"}'],
      capture_output=True, text=True, cwd=REPO)
  assert bad.returncode != 0
  assert bad.stderr.strip() == "error: the original's train split has no molecule of 7 atoms."


def test_side_by_side_report_on_the_size_part_alone(tmp_path):
  # What `PARTS=sizes launch/side_by_side.sh` leaves: per size, our bench JSON and the
  # harness's log lines ending in its JSON line.
  (tmp_path / 'processor.txt').write_text('model name\t: test CPU\n')
  for n, ours, orig in ((10, 0.5, 1.25), (20, 2.0, 7.0)):
    (tmp_path / f'ours_size{n}.json').write_text(json.dumps({'size_study': [
        {'molecules': f'qm9 {n} atoms', 'train_step_median_s': ours,
         'peak_rss_gb': n / 10}]}, indent=1))
    (tmp_path / f'orig_size{n}.json').write_text(
        'a log line\n' + json.dumps({'median_s': orig, 'peak_rss_mb': 1024.0 * n / 5}))
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch', 'side_by_side_report.py'),
       f'--dir={tmp_path}', f'--plot={tmp_path / "p.png"}'],
      check=True, capture_output=True, text=True, cwd=REPO).stdout
  assert '| 10 | 1.25 s | 0.5 s | 2.5x | 2.00 / 1.00 GB |' in out
  assert '| 20 | 7 s | 2 s | 3.5x | 4.00 / 2.00 GB |' in out
  assert 'train step, batch 64' not in out  # That part did not run.
  assert (tmp_path / 'p.png').stat().st_size > 1000
