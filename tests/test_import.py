"""Importing an original EDM state dict + args into our checkpoint format."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from edm_zoo.compat import importer, parity
from edm_zoo.training import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def exported(exported_edm):
  return exported_edm


def test_cli_import_then_load_gives_the_reference_network(exported, tmp_path):
  folder, v = exported
  out = tmp_path / 'ckpt'
  subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'import_edm.py'),
                  f'--state_dict={folder / "generative_model_ema.npz"}',
                  f'--args={folder / "args.json"}', f'--out={out}'],
                 check=True, capture_output=True, cwd=REPO)
  config, ema, meta = checkpoint.load_for_inference(str(out))
  assert config.model.nf == 32 and config.model.n_layers == 2
  _, model, params, graph = parity.setup_from_vectors(v)
  for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert meta['imported_from'][0].endswith('.npz')


def test_bad_inputs_are_one_line_errors(exported, tmp_path):
  folder, _ = exported
  with pytest.raises(ValueError, match='no such file'):
    importer.import_checkpoint(str(tmp_path / 'nope.npz'), str(folder / 'args.json'),
                                str(tmp_path / 'o'))
  bad = tmp_path / 'model.npy'
  bad.write_bytes(b'not a torch file')
  with pytest.raises(ValueError, match='torch'):
    importer.import_checkpoint(str(bad), str(folder / 'args.json'), str(tmp_path / 'o'))
  wrong = json.loads((folder / 'args.json').read_text())
  wrong['nf'] = 64
  (tmp_path / 'wrong.json').write_text(json.dumps(wrong))
  with pytest.raises(ValueError, match='does not match the config'):
    importer.import_checkpoint(str(folder / 'generative_model_ema.npz'),
                                str(tmp_path / 'wrong.json'), str(tmp_path / 'o2'))
  with pytest.raises(ValueError, match='no edm_zoo checkpoint'):
    checkpoint.load_for_inference(str(tmp_path))
