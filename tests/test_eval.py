"""launch/eval.py and launch/sample.py end to end on a small imported checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from rdkit import Chem

from edm_zoo.compat import edm_torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, check=True):
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch', script), *args,
                         '--progress=false'], capture_output=True, text=True, cwd=REPO,
                        check=check)


@pytest.fixture(scope='module')
def ckpt(exported_edm, tmp_path_factory):
  folder, _ = exported_edm
  out = tmp_path_factory.mktemp('ckpt') / 'ckpt'
  edm_torch.import_checkpoint(str(folder / 'generative_model_ema.npz'),
                              str(folder / 'args.json'), str(out))
  return out


def test_eval_writes_everything_and_resumes(ckpt, tmp_path):
  out = tmp_path / 'eval'
  args = (f'--ckpt={ckpt}', f'--out_dir={out}', '--n_samples=6', '--batch_size=3',
          '--nll_passes=1', '--nll_molecules=16', '--chain')
  _run('eval.py', *args)
  report = json.loads((out / 'report.json').read_text())
  assert report['nll']['molecules'] == 16 and np.isfinite(report['nll']['nll'])
  for key in ('atom_stability', 'mol_stability', 'validity', 'uniqueness', 'novelty'):
    assert 0 <= report['metrics'][key] <= 1
  assert report['metrics']['molecules'] == 6
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


@pytest.mark.parametrize('args,message', [
    (('--ckpt=/nonexistent',), 'no such directory'),
    (('--ckpt={tmp}',), 'holds no edm_zoo checkpoint'),
    (('--ckpt={ckpt}', '--n_samples=0'), '--n_samples must be positive'),
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
  import shutil
  broken = tmp_path / 'broken'
  shutil.copytree(ckpt, broken)
  meta = next(broken.glob('checkpoints/*/meta/metadata'))
  d = json.loads(meta.read_text())
  d['config']['model']['nf'] = 64
  meta.write_text(json.dumps(d))
  result = _run('eval.py', f'--ckpt={broken}', '--n_samples=2', check=False)
  assert result.returncode != 0 and 'do not fit its config' in result.stderr
  assert 'Traceback' not in result.stderr
