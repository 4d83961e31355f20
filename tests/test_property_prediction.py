"""Property classifiers and the MAE protocol."""

import dataclasses
import math
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from conftest import ATOMIC_NUMBERS, padded_graph
from edm_zoo import conditioning, config as config_lib
from edm_zoo.data import sources
from edm_zoo.property_prediction import models, protocol, training
from edm_zoo.training import checkpoint

@pytest.fixture(scope='module')
def labelled(qm9_sources):
  """Eight real molecules whose context is their normalised alpha."""
  values, _ = conditioning.property_table(qm9_sources['valid'], ['alpha'])
  norm = conditioning.Normalizer.fit(values, ['alpha'])
  source = conditioning.conditioned(qm9_sources['valid'], norm)
  return norm, source.__getitems__(range(3000, 3008))


def _small(model='egnn', **kw):
  return config_lib.build_classifier('tiny', model=model, **kw)


@pytest.mark.parametrize('model', ['egnn', 'numnodes'])
def test_classifier_is_invariant(model, labelled):
  _, molecules = labelled
  net = models.transform(_small(model))
  graph = padded_graph(molecules)
  params = net.init(jax.random.PRNGKey(0), graph)
  out = net.apply(params, graph)
  assert out.shape == (9,)
  q, _ = np.linalg.qr(np.random.RandomState(0).normal(size=(3, 3)))
  moved = [{**m, 'positions': (m['positions'] @ q + 5.0).astype(np.float32)}
           for m in molecules]
  np.testing.assert_allclose(net.apply(params, padded_graph(moved))[:8], out[:8], rtol=1e-4,
                             atol=1e-4)
  perm = [{**m, 'positions': m['positions'][::-1], 'charges': m['charges'][::-1]}
          for m in molecules]
  np.testing.assert_allclose(net.apply(params, padded_graph(perm))[:8], out[:8], rtol=1e-4,
                             atol=1e-4)
  big = padded_graph(molecules, extra_nodes=40, extra_graphs=3, extra_edges=500)
  np.testing.assert_allclose(net.apply(params, big)[:8], out[:8], rtol=1e-5, atol=1e-5)


def test_tiny_classifier_overfits_a_handful_of_molecules(labelled):
  _, molecules = labelled
  config = _small(nf=32, n_layers=2)
  net = models.transform(config)
  graph = padded_graph(molecules)
  params = net.init(jax.random.PRNGKey(0), graph)
  tx = training.optimizer(dataclasses.replace(config, epochs=10_000), 1)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(lambda p: training.l1_loss(net.apply(p, graph),
                                                                graph))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(400):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_epoch_cosine_is_torchs_stepped_once_per_epoch():
  schedule = training.epoch_cosine(1e-3, epochs=4, steps_per_epoch=10)
  lrs = [float(schedule(s)) for s in (0, 9, 10, 25, 39)]
  expected = [1e-3 * (1 + math.cos(math.pi * (e + 1) / 4)) / 2 for e in (0, 0, 1, 2, 3)]
  np.testing.assert_allclose(lrs, expected, atol=1e-12)
  assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_mae_hand_made():
  assert protocol.mae([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
  assert protocol.mae([1.0, 2.0, 3.0], [2.0, 2.0, 5.0]) == pytest.approx(1.0)
  with pytest.raises(ValueError, match='equally long'):
    protocol.mae([1.0], [1.0, 2.0])
  predict = protocol.size_median_predictor(np.array([3, 3, 3, 5]), np.array([1., 2., 9., 4.]))
  np.testing.assert_array_equal(predict([3, 5, 7]), [2.0, 4.0, 3.0])


def test_protocol_rows(labelled, qm9_sources):
  norm, molecules = labelled
  config = _small()
  net = models.transform(config)
  params = net.init(jax.random.PRNGKey(0), padded_graph(molecules))
  clf = training.Classifier(config, params, norm)
  # 'Generated' molecules asked for exactly what the classifier will predict.
  generated = [{'positions': m['positions'],
                'types': np.searchsorted(ATOMIC_NUMBERS, m['charges'])} for m in molecules]
  predicted = training.predictions_for_molecules(clf, generated)
  for m, p in zip(generated, predicted):
    m['properties'] = np.array([2.7, p])
  second = sources.Subset(qm9_sources['test'], 40, spread=True)
  first = sources.Subset(qm9_sources['valid'], 200, spread=True)
  result = protocol.evaluate(clf, generated, ('mu', 'alpha'), second_half=second,
                             first_half=first, progress=False)
  assert result['mae']['EDM'] == pytest.approx(0.0, abs=1e-9)
  labels, sizes = conditioning.property_table(second, ['alpha'])
  real = clf.predict(second)
  assert result['mae']['QM9 (lower bound)'] == pytest.approx(
      np.mean(np.abs(real - labels[:, 0])))
  assert result['mae']['Naive (upper bound)'] != result['mae']['QM9 (lower bound)']
  first_values, first_sizes = conditioning.property_table(first, ['alpha'])
  atoms = protocol.size_median_predictor(first_sizes, first_values[:, 0])(sizes)
  assert result['mae']['#Atoms'] == pytest.approx(np.mean(np.abs(atoms - labels[:, 0])))
  assert result['unit'] == 'Bohr^3' and result['published']['EDM'] == 2.76
  assert '| EDM |' in protocol.format_table(result)
  with pytest.raises(ValueError, match='--classifier predicts alpha'):
    protocol.evaluate(clf, generated, ('mu',), second_half=second, first_half=first)


@pytest.mark.slow
def test_classifier_training_resumes_the_same_run(tmp_path):
  config = config_lib.build_classifier('tiny', total_steps=12, checkpoint_every_steps=4,
                                       eval_every_steps=6, keep_last=5, train_molecules=64)
  whole = training.train(config, str(tmp_path / 'whole'), progress=False)
  cut = tmp_path / 'cut'
  training.train(dataclasses.replace(config), str(cut), progress=False)
  # Lose everything after step 4, as a run killed there would.
  for folder in ('checkpoints', 'best'):
    for step in os.listdir(cut / folder):
      if step.isdigit() and int(step) > 4:
        shutil.rmtree(cut / folder / step)
  resumed = training.train(config, str(cut), progress=False)
  assert resumed['step'] == 12
  assert resumed['val_mae'] == pytest.approx(whole['val_mae'], rel=1e-6)
  a, b = training.load(str(tmp_path / 'whole')), training.load(str(cut))
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match='is a classifier checkpoint'):
    checkpoint.load_for_inference(str(cut))
