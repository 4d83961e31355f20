"""launch/bench.py runs end to end on a tiny preset and writes valid JSON; the size study
runs on QM9 molecules and joined ones (figures checked for consistency, not timed)."""

import json
import os
import subprocess
import sys

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
