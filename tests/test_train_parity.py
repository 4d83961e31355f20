"""Three reference EDM optimizer steps, end to end (TRAIN_PARITY.md)."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_path
from edm_zoo.compat import parity
from edm_zoo.training import optimizer


@pytest.fixture(scope='module')
def report():
  return parity.train_parity_report(shared_path('parity', 'train_parity_small.npz'))


@pytest.mark.parametrize('variant', ['', 'clipped/'])
def test_three_steps_match_the_reference(report, variant):
  keys = [k for k in report if k.startswith(variant) and
          (variant or not k.startswith('clipped/'))]
  assert len(keys) >= 3 * 9 + 4
  failing = {k: report[k] for k in keys if not report[k]['ok']}
  assert not failing, failing


def test_clipped_variant_really_clips(report):
  v = np.load(shared_path('parity', 'train_parity_small.npz'))
  assert bool(v['clipped/step0/clipped']) and not bool(v['step0/clipped'])
  assert report['clipped/step0/clipped']['ok'] and report['clipped/step1/clip_coef']['ok']


def test_clip_queue_semantics():
  queue = optimizer.init_clip_queue([3000.0], max_len=3)
  grads = {'a': jnp.array([3.0, 4.0])}
  g, queue, info = optimizer.clip_gradients(grads, queue)
  assert float(info['max_grad_norm']) == 4500.0 and not bool(info['clipped'])
  np.testing.assert_allclose(g['a'], [3.0, 4.0])
  np.testing.assert_allclose(queue.items[:2], [5.0, 3000.0])
  for _ in range(2):
    _, queue, _ = optimizer.clip_gradients(grads, queue)
  np.testing.assert_allclose(queue.items, [5.0, 5.0, 5.0])  # 3000 evicted.
  big = {'a': jnp.array([30.0, 40.0])}
  g, queue, info = optimizer.clip_gradients(big, queue)
  assert bool(info['clipped'])
  np.testing.assert_allclose(optimizer.optax.global_norm(g), 7.5, rtol=1e-5)
  np.testing.assert_allclose(queue.items[0], 7.5)
