"""Number-for-number parity with the original PyTorch EDM (../shared/parity)."""

import numpy as np
import pytest

from conftest import shared_path
from edm_zoo.compat import parity


@pytest.fixture(scope='module')
def report():
  return parity.parity_report(shared_path('parity', 'parity_small.npz'))


def test_every_checked_array_within_tolerance(report):
  failing = {k: v for k, v in report.items() if not v['ok']}
  assert not failing, failing


def test_report_covers_every_reference_array(report):
  v = np.load(shared_path('parity', 'parity_small.npz'))
  want = {k for k in v.files if k.split('/')[0] in ('eval', 'train', 'sample')
          and k not in ('sample/t_step', 'sample/eps_step_in', 'sample/zt_step_in',
                        'sample/noise_step', 'sample/zT_prior', 'sample/noise_stepT',
                        'sample/z0_in', 'sample/noise_final')}
  assert want <= set(report), sorted(want - set(report))


def test_report_detects_a_wrong_parameter(tmp_path):
  v = dict(np.load(shared_path('parity', 'parity_small.npz')))
  key = 'param/dynamics.egnn.e_block_0.gcl_0.node_mlp.2.bias'
  v[key] = v[key] + 1e-2
  path = tmp_path / 'broken.npz'
  np.savez(path, **v)
  report = parity.parity_report(str(path))
  assert not report['eval/net_out']['ok']
  assert report['schedule/gamma']['ok']


def test_state_dict_mismatch_is_one_clear_error(tmp_path):
  v = dict(np.load(shared_path('parity', 'parity_small.npz')))
  del v['param/dynamics.egnn.e_block_1.gcl_0.att_mlp.0.weight']
  path = tmp_path / 'missing.npz'
  np.savez(path, **v)
  with pytest.raises(ValueError, match='does not match the config: missing'):
    parity.parity_report(str(path))
