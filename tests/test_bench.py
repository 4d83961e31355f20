"""launch/bench.py runs end to end on a tiny preset and writes valid JSON (not timed)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_and_writes_json(tmp_path):
  out = tmp_path / 'bench.json'
  md = tmp_path / 'B.md'
  subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'bench.py'),
                  '--preset=tiny', '--T=20', '--what=all,jit_study,size_study', '--repeats=3',
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
  # The size study: QM9 molecules, then three of them joined.
  small, joined = result['size_study']
  assert joined['mean_atoms'] > 2.5 * small['mean_atoms']
  assert joined['real_edges'] > 6 * small['real_edges']
  assert small['timed_steps'] > 0 and joined['timed_steps'] > 0
  rows = [line for line in md.read_text().splitlines() if line.startswith('| 1 |') or
          line.startswith('| 20 |')]
  assert len(rows) == 2 and (tmp_path / 'jit.png').stat().st_size > 1000
