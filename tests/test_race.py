"""The race instrument (`instruments/race/`): its clock, snapshots and report format."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edm_zoo import config as config_lib
from edm_zoo import runs
from instruments.race import original_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_budget_loader_snapshots_at_each_mark_and_stops_at_the_budget(monkeypatch):
  clock = iter(np.arange(0.0, 100.0, 7.0))  # A step every 7 s from the start.
  monkeypatch.setattr(original_train, 'STARTED', 0.0)
  monkeypatch.setattr(original_train.time, 'time', lambda: next(clock))
  saved, stamps = [], []
  loader = original_train.BudgetLoader(range(1000), save=lambda mark: saved.append(
      (mark, len(stamps))), seconds=30, every=10, stamps=stamps)
  got = list(loader)
  assert loader.done
  # Batches asked for at 0, 7, ..., 28 s; at 35 s the budget is spent.
  assert got == [0, 1, 2, 3, 4] and [s for _, s in stamps] == [0, 7, 14, 21, 28]
  # Each mark is saved before the first batch after it, with the steps done by then.
  assert saved == [(10, 2), (20, 3), (30, 5)]


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    if isinstance(obj, list):
      f.writelines(json.dumps(x) + '\n' for x in obj)
    elif isinstance(obj, str):
      f.write(obj)
    else:
      json.dump(obj, f)


def _fake_race(d):
  """What race.sh leaves: two short runs, their NLL files and the sample reports."""
  config = config_lib.to_dict(config_lib.build('cpu_small'))
  _write(f'{d}/race.json', {'started': 0.0, 'budget_s': 600})
  _write(f'{d}/ours/config.json', config)
  _write(f'{d}/ours/metrics.jsonl', [{'step': s, 'loss': 3.0 - s / 1e4, 'grad_norm': 1.0,
                                      'elapsed_s': 20.0 + s / 10} for s in range(10, 5001, 10)])
  _write(f'{d}/ours_nll.jsonl', [{'step': s, 'elapsed_s': 20.0 + s / 10,
                                  'val_nll': 300.0 - s / 50, 'val_nll_molecules': 64}
                                 for s in range(500, 5001, 500)])
  _write(f'{d}/original/stamps.json', {'steps': 1200, 'setup_s': 3.0, 'argv': ['--nf', '64'],
                                       'stamps': [[i, 5.0 + i / 2] for i in range(1200)]})
  _write(f'{d}/original/train.log', ''.join(
      f'\rEpoch: 1, iter: {i}/3125, Loss {3.0 - i / 1e3:.2f}, NLL: {3.0 - i / 1e3:.2f}, '
      f'RegTerm: 0.0, GradNorm: 1.0\n' for i in range(1200)))
  _write(f'{d}/original/nll.jsonl', [{'step': 120 * k, 'elapsed_s': 60.0 * k, 'mark_s': 60 * k,
                                      'val_nll': 300.0 - 5 * k, 'val_nll_molecules': 64}
                                     for k in range(1, 11)])
  _write(f'{d}/original_nll_paired.jsonl', [{'step': 120 * k, 'elapsed_s': 60.0 * k,
                                             'val_nll': 310.0 - 5 * k} for k in range(1, 11)])
  _write(f'{d}/original/sampling.json', {'molecules': 100, 'molecules_per_hour': 1200.0})
  share = {'molecules': 100, 'atom_stability': 0.8, 'atom_stability_lo': 0.78,
           'atom_stability_hi': 0.82, 'mol_stability': 0.1, 'mol_stability_lo': 0.05,
           'mol_stability_hi': 0.17, 'validity': 0.5, 'validity_lo': 0.4, 'validity_hi': 0.6,
           'uniqueness': 1.0}
  _write(f'{d}/ours_eval_1000/report.json', {'metrics': share, 'metrics_intervals': share,
                                             'molecules_per_hour': 9000.0})
  _write(f'{d}/original_eval/report.json', {**share, 'intervals': share})


def test_report_converts_the_original_and_finds_the_minute(tmp_path):
  d = str(tmp_path / 'race')
  _fake_race(d)
  out = subprocess.run([sys.executable, os.path.join(REPO, 'instruments', 'race', 'report.py'),
                        f'--race={d}'], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  # The original's final NLL is 250 (minute 10); ours reaches 250 at step 2,500, 270 s.
  assert "first minute at or below the original's final NLL (250.0) | 10.0 | 4.5 " \
         "(step 2,500) |" in out.stdout
  assert '| steps in 10 minutes | 1,200 | 5,000 |' in out.stdout
  # Through one estimator with the same draws the original ends at 260: ours at step 2,000.
  assert ("same estimator and draws: first minute at or below the original's final NLL "
          '(260.0) | 10.0 | 3.7 (step 2,000) |') in out.stdout
  both = runs.read([f'{d}/runs/edm_zoo', f'{d}/runs/original'])
  minutes, values = both[1].curve('val_nll', 'minutes')
  np.testing.assert_allclose(minutes, np.arange(1, 11))
  # The original's own log, every 10th step, on the common clock.
  steps, losses = both[1].curve('loss')
  assert steps[0] == 10 and losses[0] == pytest.approx(2.99)
  assert both[1].curve('loss', 'minutes')[0][0] == pytest.approx((5.0 + 10 / 2) / 60)
  assert os.path.exists(f'{d}/compare/compare.png') and os.path.exists(f'{d}/race.md')
  assert both[1].report['metrics']['validity'] == 0.5
  assert both[1].curve('val_nll_edm_zoo_estimator', 'minutes')[1][-1] == 260.0
