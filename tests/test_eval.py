"""launch/eval.py and launch/sample.py end to end on a small imported checkpoint."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from rdkit import Chem

from edm_zoo import reporting
from edm_zoo.compat import importer
from edm_zoo.training import checkpoint

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, check=True):
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch', script), *args,
                         '--progress=false'], capture_output=True, text=True, cwd=REPO,
                        check=check)


ELEMENTS = ('H', 'C', 'N', 'O', 'F')


def _read_xyz(path):
  """(positions, type indices) of every molecule of a multi-molecule XYZ file."""
  lines = path.read_text().splitlines()
  molecules, i = [], 0
  while i < len(lines):
    n = int(lines[i])
    rows = [line.split() for line in lines[i + 2:i + 2 + n]]
    molecules.append((np.array([[float(v) for v in r[1:]] for r in rows], np.float32),
                      np.array([ELEMENTS.index(r[0]) for r in rows])))
    i += 2 + n
  return molecules


@pytest.fixture(scope='module')
def ckpt(exported_edm, tmp_path_factory):
  folder, _ = exported_edm
  out = tmp_path_factory.mktemp('ckpt') / 'ckpt'
  importer.import_checkpoint(str(folder / 'generative_model_ema.npz'),
                              str(folder / 'args.json'), str(out))
  return out


def test_eval_writes_everything_and_resumes(ckpt, tmp_path):
  out = tmp_path / 'eval'
  args = (f'--ckpt={ckpt}', f'--out_dir={out}', '--n_samples=6', '--batch_size=3',
          '--nll_passes=1', '--nll_molecules=16', '--chain')
  _run('eval.py', *args)
  report = json.loads((out / 'report.json').read_text())
  assert report['nll']['molecules'] == 16 and np.isfinite(report['nll']['nll'])
  # The report's metrics are those of the molecules it wrote.
  written = _read_xyz(out / 'samples.xyz')
  again = reporting.molecule_metrics(written, ELEMENTS)
  for key in ('atom_stability', 'mol_stability', 'validity', 'uniqueness'):
    assert report['metrics'][key] == pytest.approx(again[key]), key
  assert report['metrics']['molecules'] == 6 and np.isfinite(report['metrics']['novelty'])
  # Beside EDM's row: its intervals and the chemistry checks, each with its count.
  assert report['metrics_intervals']['molecules'] == 6
  assert report['metrics_intervals']['validity'] == pytest.approx(report['metrics']['validity'])
  chem = report['chemistry']
  assert chem['molecules'] == 6 and chem['perception']['perceived']['n'] == 6
  for table in ('reference', 'ours'):
    assert chem['valency'][table]['mol_stability']['n'] == 6
  pb = chem['posebusters']['all_but_energy']
  assert pb['n'] + pb['not_run'] == 6
  mols = [m for m in Chem.SDMolSupplier(str(out / 'samples.sdf'), sanitize=False)]
  assert len(mols) == 6 and all(m.GetNumConformers() == 1 for m in mols)
  assert (out / 'samples.xyz').read_text().count('sample_') == 6
  for name in ('chain.png', 'chain.gif'):
    assert (out / name).stat().st_size > 1000
  # A rerun reuses the sampled batches instead of sampling again.
  partial = sorted((out / 'partial').glob('batch_*.npz'))
  assert len(partial) == 2
  stamps = [p.stat().st_mtime_ns for p in partial]
  xyz = (out / 'samples.xyz').read_text()
  (out / 'report.json').unlink()
  _run('sample.py', f'--ckpt={ckpt}', f'--out_dir={out}', '--n_samples=6',
       '--batch_size=3')
  assert [p.stat().st_mtime_ns for p in sorted((out / 'partial').glob('batch_*.npz'))
          ] == stamps
  assert (out / 'samples.xyz').read_text() == xyz
  assert not (out / 'report.json').exists()
  # Batches of another request are never passed off as this one's.
  other = _run('sample.py', f'--ckpt={ckpt}', f'--out_dir={out}', '--n_samples=6',
               '--batch_size=3', '--seed=7', check=False)
  assert other.returncode != 0 and 'holds batches sampled for' in other.stderr
  assert 'Traceback' not in other.stderr


def test_few_step_sampler_without_the_nll(ckpt, tmp_path):
  out = tmp_path / 'fast'
  _run('eval.py', f'--ckpt={ckpt}', f'--out_dir={out}', '--n_samples=4', '--batch_size=4',
       '--nll_passes=0', '--sampler=dpm_solver', '--steps=10')
  report = json.loads((out / 'report.json').read_text())
  assert 'nll' not in report and 'nll_seconds' not in report['timings']
  assert report['sampling']['sampler'] == 'dpm_solver' and report['sampling']['steps'] == 10
  assert report['metrics']['molecules'] == 4
  request = json.loads((out / 'partial' / 'request.json').read_text())
  assert request['sampler'] == 'dpm_solver' and request['steps'] == 10


@pytest.mark.parametrize('args,message', [
    (('--ckpt=/nonexistent',), 'no such directory'),
    (('--ckpt={tmp}',), 'holds no edm_zoo checkpoint'),
    (('--ckpt={ckpt}', '--n_samples=0'), '--n_samples must be positive'),
    (('--ckpt={ckpt}', '--sampler=euler'), "unknown sampler 'euler'"),
    (('--ckpt={ckpt}', '--steps=2000', '--nll_passes=0'), 'steps must be in [1, T=1000]'),
    (('--ckpt={ckpt}', '--out_dir=/proc/edm_zoo_out'), 'cannot write to --out_dir'),
])
def test_bad_input_is_one_line(ckpt, tmp_path, args, message):
  args = [a.format(ckpt=ckpt, tmp=tmp_path) for a in args]
  result = _run('eval.py', *args, check=False)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and message in last, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


def test_checkpoint_whose_config_does_not_fit(ckpt, tmp_path):
  broken = tmp_path / 'broken'
  shutil.copytree(ckpt, broken)
  meta = next(broken.glob('checkpoints/*/meta/metadata'))
  d = json.loads(meta.read_text())
  d['config']['model']['nf'] = 64
  meta.write_text(json.dumps(d))
  # A checkpoint written that way (its commit record agrees), not a damaged one.
  checkpoint.write_record(str(meta.parent.parent))
  result = _run('eval.py', f'--ckpt={broken}', '--n_samples=2', check=False)
  assert result.returncode != 0 and 'do not fit its config' in result.stderr
  assert 'Traceback' not in result.stderr
