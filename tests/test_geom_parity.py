"""EDM parity at drug size: the published GEOM-Drugs configuration on molecules of
42-181 atoms, replayed against vectors written by the original's own code
(tests/parity/edm_geom/PARITY_GEOM.md)."""

import os

import numpy as np
import pytest

from edm_zoo.compat import parity

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'parity', 'edm_geom')
FORWARD = os.path.join(HERE, 'geom_parity_small.npz')
TRAIN = os.path.join(HERE, 'geom_parity_small_train.npz')


@pytest.fixture(scope='module')
def report():
  return parity.parity_report(FORWARD)


@pytest.fixture(scope='module')
def train_report():
  return parity.train_parity_report(TRAIN)


def test_forward_nll_and_sampler_at_drug_size(report):
  failing = {k: v for k, v in report.items() if not v['ok']}
  assert not failing, failing
  v = np.load(FORWARD)
  want = {k for k in v.files if k.split('/')[0] in ('eval', 'train')} | {
      'sample/mu_step', 'sample/zs_step', 'sample/mu_stepT', 'sample/x_final',
      'sample/h_cat_final', 'sample/mu_x_final'}
  assert want <= set(report), sorted(want - set(report))
  assert int(v['input/num_atoms'].max()) == 181
  # The float64 deviation of the original's own numbers is reported beside ours.
  assert report['eval/net_out']['f64_dev'] > 0 and report['eval/neg_log_pxh']['f64_dev'] > 0


@pytest.mark.parametrize('variant', ['', 'clipped/'])
def test_three_steps_with_the_clipping_queue(train_report, variant):
  keys = [k for k in train_report if k.startswith(variant) and
          (variant or not k.startswith('clipped/'))]
  failing = {k: train_report[k] for k in keys if not train_report[k]['ok']}
  assert not failing, failing
  for k in (1, 2):  # Teacher-forced from the reference's own parameters.
    assert train_report[f'{variant}step{k}/grad_teacher_forced']['max_abs'] < 1e-5
  for k in range(3):
    assert train_report[f'{variant}step{k}/clipped']['ok']


def test_a_wrong_parameter_is_detected_at_drug_size(tmp_path):
  v = dict(np.load(FORWARD))
  key = 'param/dynamics.egnn.e_block_1.gcl_0.node_mlp.2.bias'
  v[key] = v[key] + 1e-3
  path = tmp_path / 'broken.npz'
  np.savez(path, **v)
  report = parity.parity_report(str(path))
  assert not report['eval/net_out']['ok'] and not report['train/loss_per_molecule']['ok']
