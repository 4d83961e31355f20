"""EDM's data augmentation: the original's rotations, per molecule, device-independent."""

import jax
import numpy as np
import pytest

from edm_zoo import augmentation
from edm_zoo import config as config_lib
from edm_zoo.data import batching, features, registry
from edm_zoo.methods.diffusion import Diffusion
from edm_zoo.training import optimizer
from edm_zoo.training import state as train_state


def _edm_rotation(tx, ty, tz):
  """EDM's utils.random_rotation for given angles, element by element as written there."""
  rx, ry, rz = np.eye(3), np.eye(3), np.eye(3)
  rx[1, 1], rx[1, 2], rx[2, 1], rx[2, 2] = np.cos(tx), np.sin(tx), -np.sin(tx), np.cos(tx)
  ry[0, 0], ry[0, 2], ry[2, 0], ry[2, 2] = np.cos(ty), -np.sin(ty), np.sin(ty), np.cos(ty)
  rz[0, 0], rz[0, 1], rz[1, 0], rz[1, 1] = np.cos(tz), np.sin(tz), -np.sin(tz), np.cos(tz)
  return rz @ ry @ rx  # x <- Rx x, then Ry, then Rz.


@pytest.mark.parametrize('seed', range(4))
def test_rotation_is_the_originals_and_proper(seed):
  key = jax.random.PRNGKey(seed)
  theta = np.asarray(jax.random.uniform(key, (3,), minval=-np.pi, maxval=np.pi))
  r = np.asarray(augmentation.random_rotation(key))
  np.testing.assert_allclose(r, _edm_rotation(*theta), atol=1e-6)
  np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
  assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-6)


@pytest.fixture(scope='module')
def molecules():
  source = registry.load('qm9', 'valid')
  hist = registry.statistics('qm9').n_nodes_histogram
  one, _ = next(batching.sharded_batches(source, 8, 1, n_nodes_histogram=hist))
  two, _ = next(batching.sharded_batches(source, 8, 2, n_nodes_histogram=hist))
  return one, two, hist


def _by_molecule(graphs):
  """{gdb index: positions [n, 3]} of the real molecules of stacked shards."""
  out = {}
  for d in range(graphs.n_node.shape[0]):
    g = jax.tree.map(lambda a: np.asarray(a[d]), graphs)
    start = 0
    for i, n in enumerate(g.n_node):
      if g.globals[features.MASK][i] > 0:
        out[int(g.globals[features.GDB_INDEX][i])] = g.nodes[features.POSITIONS][start:start + n]
      start += n
  return out


def test_each_molecule_is_rotated_rigidly_and_the_same_on_any_layout(molecules):
  one, two, _ = molecules
  key = jax.random.PRNGKey(7)
  before = _by_molecule(one)
  after_one = _by_molecule(train_state.rotate_molecules(one, key))
  after_two = _by_molecule(train_state.rotate_molecules(two, key))
  assert sorted(after_one) == sorted(after_two) == sorted(before) and len(before) == 8
  dist = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)
  rotations = []
  for gdb, x in before.items():
    np.testing.assert_allclose(after_one[gdb], after_two[gdb], atol=1e-6)
    np.testing.assert_allclose(dist(after_one[gdb]), dist(x), atol=1e-4)
    r, *_ = np.linalg.lstsq(x, after_one[gdb], rcond=None)
    rotations.append(r)
  assert min(np.abs(a - b).max() for i, a in enumerate(rotations)
             for b in rotations[i + 1:]) > 1e-2  # Every molecule its own rotation.


def test_augmented_step_trains_on_rotated_molecules(molecules):
  _, two, hist = molecules
  config = config_lib.build('tiny', data_augmentation=True)
  model = Diffusion(registry.configure(config), hist)
  tx = optimizer.torch_adamw_amsgrad(1e-3)
  state = train_state.init_state(model, tx, jax.random.PRNGKey(0),
                                 jax.tree.map(lambda a: a[0], two))
  draw_fn, step_fn = train_state.make_step_fns(model, tx, ema_decay=0.99)
  augment_fn = train_state.make_augment_fn()
  rotated = augment_fn(two, jax.random.PRNGKey(2), state.step)
  assert not np.allclose(rotated.nodes[features.POSITIONS], two.nodes[features.POSITIONS])
  t_int, eps = draw_fn(two, jax.random.PRNGKey(1), state.step)
  losses = [float(step_fn(jax.tree.map(np.copy, state), g, t_int, eps)[1]['loss'])
            for g in (two, rotated)]
  assert np.all(np.isfinite(losses)) and losses[0] != losses[1]
