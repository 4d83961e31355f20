"""Conditional generation end to end by the README's commands (tiny presets)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from rdkit import Chem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def _run(script, *args, check=True):
  result = subprocess.run([sys.executable, os.path.join(REPO, 'launch', script), *args,
                           '--progress=false'], capture_output=True, text=True, cwd=REPO)
  if check and result.returncode:
    raise AssertionError(f'{script} failed:\n{result.stderr[-3000:]}')
  return result


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(conditional generator, alpha classifier) trained with the launchers."""
  root = tmp_path_factory.mktemp('conditional')
  generator, classifier = root / 'gen', root / 'clf'
  # Both at once: the two trainings are independent.
  procs = [subprocess.Popen([sys.executable, os.path.join(REPO, 'launch', script), *args,
                             '--progress=false'], cwd=REPO, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
           for script, *args in (
               ('train.py', '--preset=tiny', '--dataset=qm9_second_half',
                '--conditioning=alpha', '--T=50', f'--workdir={generator}'),
               ('train_classifier.py', '--preset=tiny', '--property=alpha',
                f'--workdir={classifier}'))]
  for proc in procs:
    _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
  return generator, classifier


def test_sample_with_a_target(runs, tmp_path):
  generator, _ = runs
  out = tmp_path / 'samples'
  _run('sample.py', f'--ckpt={generator}', '--condition', 'alpha=75.3', '--n_samples=4',
       '--batch_size=2', f'--out_dir={out}')
  mols = list(Chem.SDMolSupplier(str(out / 'samples.sdf'), sanitize=False))
  assert len(mols) == 4
  assert all(m.GetDoubleProp('requested_alpha') == pytest.approx(75.3) for m in mols)
  assert (out / 'samples.xyz').read_text().count('requested_alpha=75.3') == 4


def test_eval_runs_the_mae_protocol(runs, tmp_path):
  generator, classifier = runs
  out = tmp_path / 'eval'
  _run('eval.py', f'--ckpt={generator}', f'--classifier={classifier}', '--n_samples=4',
       '--batch_size=4', '--nll_passes=1', '--nll_molecules=16', '--mae_molecules=200',
       f'--out_dir={out}')
  report = json.loads((out / 'report.json').read_text())
  mae = report['mae']
  assert mae['property'] == 'alpha' and mae['unit'] == 'Bohr^3'
  assert set(mae['mae']) == {'EDM', 'QM9 (lower bound)', 'Naive (upper bound)', '#Atoms'}
  assert mae['molecules']['EDM'] == 4 and mae['molecules']['QM9 (lower bound)'] == 200
  table = (out / 'mae_table.md').read_text()
  for row, value in mae['mae'].items():  # alpha's table unit is the dataset's.
    assert np.isfinite(value) and mae['table'][row] == value
    assert f'| {row} | {value:.4g} |' in table
  assert report['nll']['molecules'] == 16


@pytest.mark.parametrize('script,args,message', [
    ('sample.py', ('--ckpt={gen}', '--condition', 'gap=6.8'), 'give a value for each'),
    ('sample.py', ('--ckpt={gen}', '--condition', 'alpha=1000'),
     'no molecule of the conditional split has properties near'),
    ('eval.py', ('--ckpt={gen}', '--classifier={gen}'), 'is a generative checkpoint'),
    ('eval.py', ('--ckpt={clf}',), 'is a classifier checkpoint'),
    ('eval.py', ('--ckpt={gen}', '--classifier={clf}', '--mae_molecules=-1'),
     '--mae_molecules must be >= 0'),
    ('train.py', ('--preset=tiny', '--conditioning=alpha,polarity'),
     "unknown property 'polarity'"),
    ('train_classifier.py', ('--property=U1',), "unknown property 'U1'"),
    ('train_classifier.py', ('--model=mlp',), "unknown classifier model 'mlp'"),
])
def test_bad_input_is_one_line(runs, tmp_path, script, args, message):
  generator, classifier = runs
  args = [a.format(gen=generator, clf=classifier) for a in args]
  result = _run(script, *args, f'--out_dir={tmp_path}' if 'sample' in script or
                'eval' in script else f'--workdir={tmp_path}', check=False)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and message in last, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
