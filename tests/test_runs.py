"""Runs read back and compared (`edm_zoo.runs`, `launch/compare.py`)."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edm_zoo import config as config_lib
from edm_zoo import models, runs
from edm_zoo.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def _fake_run(path, config, losses, vals, report=None, write_config=True):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for step, loss in enumerate(losses, 1):
      f.write(json.dumps({'step': step, 'loss': loss}) + '\n')
    for step, val in vals:
      f.write(json.dumps({'step': step, 'val_nll': val}) + '\n')
  if write_config:
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(config_lib.to_dict(config), f)
  if report is not None:
    os.makedirs(os.path.join(path, 'eval'))
    with open(os.path.join(path, 'eval', 'report.json'), 'w') as f:
      json.dump(report, f)
  return str(path)


def test_summary_names_what_differs_best_and_test_figures(tmp_path):
  a = _fake_run(tmp_path / 'x' / 'run', config_lib.build('tiny'), [3.0, 2.0, 1.5],
                [(2, 90.0), (3, 80.0)],
                report={'nll': {'nll': 75.5, 'split': 'test', 'figure': 'nll'},
                        'metrics': {'atom_stability': 0.9, 'mol_stability': 0.5,
                                    'validity': 0.75, 'uniqueness': 1.0,
                                    'molecules': 100}})
  b = _fake_run(tmp_path / 'y' / 'run', config_lib.build('tiny', nf=32, lr=2e-3),
                [3.0, 2.5], [(1, 100.0), (2, 95.0)])
  rows = runs.summary(runs.read([a, b]))
  assert [r['run'] for r in rows] == ['x/run', 'y/run']  # Same folder names told apart.
  assert (rows[0]['nf'], rows[1]['nf']) == ('16', '32')
  assert (rows[0]['lr'], rows[1]['lr']) == ('0.001', '0.002')
  assert 'n_layers' not in rows[0]  # The same in both: not a column.
  assert rows[0]['best val_nll'] == '80 (step 3)' and rows[1]['best val_nll'] == '95 (step 2)'
  assert rows[0]['steps'] == '3 / 20'
  assert rows[0]['eval nll (test)'] == '75.5' and rows[0]['eval mol_stability'] == '50.0%'
  assert rows[0]['eval samples'] == '100' and 'eval nll (test)' not in rows[1]
  table = runs.markdown(rows)
  assert table.count('\n') == 3 and '| - |' in table  # b has no report: dashes.


def test_a_run_in_progress_without_config_shows_question_marks(tmp_path):
  a = _fake_run(tmp_path / 'a', config_lib.build('tiny'), [3.0], [])
  b = _fake_run(tmp_path / 'b', config_lib.build('tiny', nf=32), [3.0, 2.0], [(2, 9.0)])
  c = _fake_run(tmp_path / 'c', None, [4.0], [], write_config=False)
  rows = runs.summary(runs.read([a, b, c]))
  assert [r['nf'] for r in rows] == ['16', '32', '?']
  assert 'best val_nll' not in rows[0] and rows[1]['best val_nll'] == '9 (step 2)'


@pytest.mark.parametrize('make, message', [
    (lambda p: p / 'missing', 'no such folder'),
    (lambda p: p, 'is not a training run'),
])
def test_a_folder_that_is_not_a_run_is_refused_in_one_line(tmp_path, make, message):
  with pytest.raises(ValueError, match=message):
    runs.read([str(make(tmp_path))])
  out = subprocess.run([PYTHON, 'launch/compare.py', str(make(tmp_path))], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert out.stderr.startswith('error: ') and out.stderr.count('\n') == 1, out.stderr
  assert message in out.stderr


def test_the_plot_draws_every_run(tmp_path):
  rng = np.random.default_rng(0)
  paths = [_fake_run(tmp_path / name, config_lib.build('tiny', nf=nf),
                     list(3 + rng.random(200) / (1 + np.arange(200))),
                     [(100, 50.0 * nf), (200, 40.0 * nf)]) for name, nf in (('a', 16),
                                                                         ('b', 32))]
  table, _ = runs.compare(paths, str(tmp_path / 'out'))
  image = np.asarray(Image.open(tmp_path / 'out' / 'compare.png').convert('RGB'))
  colors = {tuple(c) for c in image.reshape(-1, 3)}
  # matplotlib's first two line colours are drawn (blue and orange).
  assert (31, 119, 180) in colors and (255, 127, 14) in colors
  assert (tmp_path / 'out' / 'compare.md').read_text().strip() == table


@pytest.mark.slow
def test_compare_reads_short_runs_of_every_model(tmp_path):
  paths = []
  for name in models.names():
    config = config_lib.build('tiny', model=name, total_steps=2, eval_every_steps=2,
                              eval_molecules=8, train_molecules=64)
    paths.append(str(tmp_path / name))
    loop.train(config, paths[-1], progress=False)
  out = subprocess.run([PYTHON, 'launch/compare.py', *paths,
                        f'--out_dir={tmp_path / "cmp"}'], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  rows = json.loads((tmp_path / 'cmp' / 'compare.json').read_text())['rows']
  assert [r['run'] for r in rows] == list(models.names())
  # Each method's own validation figure: EDM's NLL, GeoBFN's loss L^inf, SemlaFlow's
  # loss at t = 0.9.
  figure = lambda name: {'bfn': 'bfn_loss', 'flow': 'fm_loss'}.get(models.get(name).method,
                                                                     'nll')
  # The best figure's step and wall-clock minute (every logged line has elapsed_s).
  assert all(r['steps'] == '2 / 2' and
             re.search(r'\(step 2, [\d.]+ min\)$', r[f"best val_{figure(r['model'])}"])
             and r[f"test_{figure(r['model'])}"] != '-' for r in rows), rows
  assert [r['model'] for r in rows] == list(models.names())


def test_a_classifier_run_reads_with_its_own_figures(tmp_path):
  path = tmp_path / 'clf'
  os.makedirs(path)
  with open(path / 'metrics.jsonl', 'w') as f:
    for step, l1 in enumerate([0.9, 0.7, 0.6], 1):
      f.write(json.dumps({'step': step, 'l1': l1}) + '\n')
    f.write(json.dumps({'step': 3, 'val_mae': 0.55, 'test_mae': 0.58}) + '\n')
  with open(path / 'config.json', 'w') as f:
    json.dump(dataclasses.asdict(config_lib.build_classifier('tiny')), f)
  other = _fake_run(tmp_path / 'gen', config_lib.build('tiny'), [3.0], [(1, 9.0)])
  runs_ = runs.read([str(path), other])
  assert runs_[0].train_scalar == 'l1' and runs_[0].config['property'] == 'alpha'
  row = runs.summary(runs_)[0]
  assert row['best val_mae'] == '0.55 (step 3)' and row['test_mae'] == '0.58 (step 3)'
  runs.plot(runs_, str(tmp_path / 'both.png'))
  assert os.path.getsize(tmp_path / 'both.png') > 0
