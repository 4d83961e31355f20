"""SemlaFlow: parity with its authors' code, symmetries of its network, its
optimal transport, a loss that falls and any-step sampling, on real QM9 molecules
with bonds."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edm_zoo import config as config_lib, methods, reporting
from edm_zoo.compat import importer, semlaflow
from edm_zoo.config import SamplingConfig
from edm_zoo.data import batching, registry, sources
from edm_zoo.methods.flow import integrator, interpolant
from edm_zoo.methods.flow import objective
from edm_zoo.methods.flow.objective import N_BOND_CLASSES
from edm_zoo.models import semla
from edm_zoo.training import optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHARGES = np.asarray(semla.CHARGE_CLASSES)
VECTORS = os.path.join(ROOT, 'tests', 'parity', 'semlaflow', 'semlaflow_parity_small.npz')


def _bad(report):
  return {k: v for k, v in report.items() if not v['ok']}


def test_forward_parity_with_semlaflows_own_code():
  report = semlaflow.parity_report(VECTORS)
  assert not _bad(report), _bad(report)
  for part in ('ot/perm', 'ot/rotation', 'prior/coords', 'prior/bonds',
               'interpolated/coords', 'interpolated/bonds', 'out_plain/coords',
               'out_cond/bonds', 'loss/bond_loss', 'loss/coord_loss', 'euler/state2/bonds',
               'euler/final/coords'):
    assert part in report
  assert sum(k.startswith('grad/') for k in report) > 100


def test_three_optimizer_steps_match_semlaflows_own():
  report = semlaflow.train_parity_report(VECTORS)
  assert not _bad(report), _bad(report)
  assert {'step0/loss', 'step2/grad_norm', 'step2/ema/size_emb.weight'} <= set(report)


@pytest.fixture(scope='module')
def setup():
  config = config_lib.build('published', model='semlaflow', dataset='qm9', n_layers=2,
                            d_model=32, d_message=16, d_edge=16, n_coord_sets=4,
                            n_attn_heads=4, d_message_hidden=16, size_emb=8,
                            lr=1e-3, warmup_steps=0)
  config = registry.configure(config, None)
  source = registry.load('qm9', 'valid', None, with_bonds=True)
  molecules = sources.fetch(source, np.arange(200, 206))
  model = methods.make(config, {19: 1, 29: 1})
  params = model.init(jax.random.PRNGKey(0))
  return model, params, molecules, source.atomic_numbers


def _dense(model, molecules, atomic_numbers, extra=1):
  sizes = [len(m['charges']) for m in molecules]
  budget = batching.PaddingBudget(sum(sizes) + extra, sum(n * (n - 1) for n in sizes) + extra,
                                  len(sizes) + 1)
  graph = batching.build_graph(molecules, atomic_numbers, budget, with_bonds=True)
  d, data = model.data(graph)
  return graph, d, data


def _inputs(model, d, data, key):
  k1, k2, k3 = jax.random.split(key, 3)
  mask = d.mask
  x = data['coords'] + 0.3 * jax.random.normal(k1, data['coords'].shape) * mask[..., None]
  types = jax.nn.one_hot(data['types'], model.vocab) * mask[..., None]
  bonds = jax.random.randint(k2, data['bonds'].shape, 0, N_BOND_CLASSES)
  bonds = jnp.where(bonds == bonds.transpose(0, 2, 1), bonds, data['bonds'])
  pair = mask[:, :, None] * mask[:, None, :]
  t = jax.random.uniform(k3, (mask.shape[0],))
  return x, types, jax.nn.one_hot(bonds, N_BOND_CLASSES) * pair[..., None], t


def _orthogonal(seed):
  q, _ = np.linalg.qr(np.random.RandomState(seed).normal(size=(3, 3)))
  if np.linalg.det(q) > 0:
    q[:, 0] = -q[:, 0]  # A reflection too.
  return jnp.asarray(q, jnp.float32)


@pytest.mark.parametrize('seed', [0, 1])
def test_e3_equivariant_coordinates_invariant_types_bonds_charges(setup, seed):
  model, params, molecules, z = setup
  _, d, data = _dense(model, molecules, z)
  x, types, bonds, t = _inputs(model, d, data, jax.random.PRNGKey(seed))
  network = jax.jit(model.network)
  cond = model.conditioning(network(params, x, types, bonds, d.mask, t))
  out = network(params, x, types, bonds, d.mask, t, cond)
  q, shift = _orthogonal(seed), jnp.asarray([1.5, -2.0, 0.7])
  m = d.mask[..., None]
  moved = dict(cond, coords=(cond['coords'] @ q.T + shift) * m)
  out2 = network(params, (x @ q.T + shift) * m, types, bonds, d.mask, t, moved)
  np.testing.assert_allclose(out2['coords'], out['coords'] @ q.T * m, atol=2e-4)
  for k in ('atomics', 'bonds', 'charges'):
    np.testing.assert_allclose(out2[k], out[k], atol=2e-4)
  np.testing.assert_allclose(out['bonds'], out['bonds'].transpose(0, 2, 1, 3), atol=1e-5)


def test_permutation_and_padding_invariance(setup):
  model, params, molecules, z = setup
  _, d, data = _dense(model, molecules, z)
  x, types, bonds, t = _inputs(model, d, data, jax.random.PRNGKey(3))
  network = jax.jit(model.network)
  out = network(params, x, types, bonds, d.mask, t)
  n = int(d.n_atoms[0])
  perm = np.concatenate([np.random.RandomState(0).permutation(n), np.arange(n, model.width)])
  p = lambda a, axes=1: a[:, perm] if axes == 1 else a[:, perm][:, :, perm]
  out_p = network(params, p(x), p(types), p(bonds, 2), p(d.mask), t)
  real = np.asarray(d.mask)[0, :n] > 0
  for k in ('coords', 'atomics', 'charges'):
    np.testing.assert_allclose(out_p[k][0, :n], out[k][0, perm[:n]], atol=2e-5)
  np.testing.assert_allclose(out_p['bonds'][0, :n, :n], out['bonds'][0][perm[:n]][:, perm[:n]],
                             atol=2e-5)
  # More empty slots (a wider dense view): the real outputs do not move.
  pad = lambda a, k: jnp.pad(a, [(0, 0)] + [(0, 5)] * k + [(0, 0)] * (a.ndim - 1 - k))
  wide = network(params, pad(x, 1), pad(types, 1), pad(bonds, 2),
                       jnp.pad(d.mask, [(0, 0), (0, 5)]), t)
  assert real.all()
  for k in ('coords', 'atomics', 'charges'):
    np.testing.assert_allclose(wide[k][:, :model.width] * d.mask[..., None],
                               out[k] * d.mask[..., None], atol=2e-5)


def test_dense_view_round_trips_nodes_and_bonds(setup):
  model, _, molecules, z = setup
  graph, d, data = _dense(model, molecules, z, extra=3)
  qm9_coord_std = json.loads(str(np.load(VECTORS)['meta']))['coord_std']
  positions = np.asarray(graph.nodes['positions'])
  np.testing.assert_array_equal(d.to_nodes(d.to_dense(jnp.asarray(positions))),
                                positions * np.asarray(graph.nodes['mask'])[:, None])
  for i, m in enumerate(molecules):
    n = len(m['charges'])
    want = np.zeros((n, n), int)
    want[m['bonds'][:, 0], m['bonds'][:, 1]] = m['bond_orders']
    np.testing.assert_array_equal(np.asarray(data['bonds'][i, :n, :n]), want + want.T)
    np.testing.assert_array_equal(CHARGES[np.asarray(data['charges'][i, :n])],
                                  m['formal_charges'])
    # SemlaFlow's coordinates: centred, divided by QM9's coordinate std (the value its
    # own code wrote beside the parity vectors).
    centred = m['positions'] - m['positions'].mean(0)
    np.testing.assert_allclose(np.asarray(data['coords'][i, :n]) * qm9_coord_std, centred,
                               atol=1e-4)
  # Every formal charge SemlaFlow's head knows maps to its class and back.
  formal = np.arange(-3, 4)
  np.testing.assert_array_equal(CHARGES[np.asarray(objective.charge_classes(formal))], formal)


def test_ot_returns_a_permutation_and_a_proper_rotation_that_lower_the_cost():
  rng = np.random.default_rng(0)
  for n in (3, 9, 21):
    data = rng.normal(size=(n, 3))
    data -= data.mean(0)
    prior = interpolant.prior_coords(rng.normal(size=(n + 4, 3)), n)
    perm, rot = interpolant.ot_match(data, prior)
    assert sorted(perm) == list(range(n))
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-10)
    assert abs(np.linalg.det(rot) - 1) < 1e-10
    before = np.sum((data - prior)**2)
    after = np.sum((data - interpolant.match(data, prior))**2)
    assert after <= np.sum((data - prior[perm])**2) + 1e-9 <= before + 1e-9


def test_a_tiny_run_learns(setup):
  model, params, molecules, z = setup
  sizes = [len(m['charges']) for m in molecules]
  graph = batching.stack([batching.build_graph(molecules, z, batching.exact_budget(sizes),
                                               with_bonds=True)])
  graph = jax.tree.map(lambda a: a[0], model.prepare(graph, np.random.default_rng(0)))
  tx = optimizer.torch_adamw_amsgrad(3e-3, weight_decay=0.0)
  opt = tx.init(params)
  eps = model.sample_noise(jax.random.PRNGKey(1), graph)
  t = jnp.full(graph.n_node.shape, 0.5)

  @jax.jit
  def step(params, opt):
    loss_fn = lambda p: jnp.sum(model.train_terms(p, graph, t, eps)['loss_per_molecule'])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    grads, _ = optimizer.clip_by_norm(grads, 1.0)
    updates, opt = tx.update(grads, opt, params)
    return jax.tree.map(jnp.add, params, updates), opt, loss
  losses = []
  for _ in range(40):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


@pytest.mark.parametrize('steps', [1, 5, 20])
def test_sampling_any_steps(setup, steps):
  model, params, _, z = setup
  sizes = np.array([7, 12, 19])
  graph = batching.placeholder_graph(sizes, z, batching.exact_budget(sizes))
  sampling = SamplingConfig(steps=steps)
  out = methods.sample(model, params, graph, jax.random.PRNGKey(4), sampling, atomic_numbers=z)
  again = methods.sample(model, params, graph, jax.random.PRNGKey(4), sampling,
                         atomic_numbers=z)
  n = int(sizes.sum())
  assert out['x'].shape == (graph.nodes['positions'].shape[0], 3)
  lo = 0
  for size in sizes:
    x = np.asarray(out['x'][lo:lo + size])
    assert np.abs(x.mean(0)).max() < 1e-4
    b = np.asarray(out['bond_orders'][lo:lo + size, :size])
    assert (b == b.T).all() and b.min() >= 0 and b.max() < N_BOND_CLASSES
    lo += size
  assert set(np.asarray(out['h_int'][:n, 0]).tolist()) <= set(z)
  for k in out:
    np.testing.assert_array_equal(out[k], again[k])
  assert methods.steps_of(model, params, sampling) == steps - 1


def test_samples_come_out_at_the_datas_scale(setup):
  # The network sees coordinates divided by coord_std: the same weights under twice
  # the scale draw the same molecules, twice as large.
  model, params, _, z = setup
  scaled = dataclasses.replace(model.config, semla=dataclasses.replace(
      model.config.semla, coord_std=2 * model.coord_std))
  sizes = np.array([9, 14])
  graph = batching.placeholder_graph(sizes, z, batching.exact_budget(sizes))
  sampling = SamplingConfig(steps=5)
  out = [methods.sample(m, params, graph, jax.random.PRNGKey(5), sampling, atomic_numbers=z)
         for m in (model, methods.make(scaled, {19: 1, 29: 1}))]
  np.testing.assert_allclose(out[1]['x'], 2 * out[0]['x'], rtol=1e-5, atol=1e-5)
  assert float(np.abs(out[0]['x'][:sizes.sum()]).max()) > 0.1  # Not a vanishing sample.
  for k in ('h_int', 'bond_orders', 'formal_charges'):
    np.testing.assert_array_equal(out[1][k], out[0][k])


def test_diffusion_options_are_refused_in_one_line(setup):
  model, params, _, _ = setup
  with pytest.raises(ValueError, match='diffusion sampler option'):
    methods.check_sampling(model, SamplingConfig(sampler='ddim'))
  with pytest.raises(ValueError, match='chain'):
    methods.sample(model, params, None, None, SamplingConfig(), atomic_numbers=[1],
                   chain_every=5)


def test_euler_step_keeps_the_class_when_the_prediction_agrees():
  probs = jax.nn.one_hot(jnp.array([[2, 0]]), 4)
  curr = jnp.array([[2, 0]])
  p = integrator.step_probs(curr, probs, jnp.array([[0.3]]), 0.1, 1.0)
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
  assert (integrator.inverse_cdf(p, jnp.array([[0.5, 0.5]])) == curr).all()


def test_state_dict_names_map_one_to_one(setup):

  v = np.load(VECTORS)
  state = {k[len('params/'):]: v[k] for k in v.files if k.startswith('params/')}
  params = semlaflow.params_from_state_dict(state)
  model = methods.make(semlaflow.config_from_meta(json.loads(str(v['meta']))),
                       {int(v['data/mask'].shape[1]): 1})
  model.check_params(params)
  for name, value in state.items():
    if not semlaflow.UNUSED.search(name):
      np.testing.assert_array_equal(semlaflow.torch_view(params, name), value)


def test_import_makes_a_checkpoint_of_the_same_weights(tmp_path):


  v = np.load(VECTORS)
  state = {k[len('params/'):]: v[k] for k in v.files if k.startswith('params/')}
  path = str(tmp_path / 'semla.npz')
  np.savez(path, **state)
  out = importer.import_semlaflow(path, str(tmp_path / 'ckpt'))
  config, model, params, meta = reporting.load_model(out)
  assert (config.model.n_layers, config.semla.d_model, config.semla.n_coord_sets) == (2, 32, 4)
  assert meta['statistics']['atom_types'] == list(semlaflow.SEMLA_TOKENS)
  for name, value in state.items():
    if not semlaflow.UNUSED.search(name):
      np.testing.assert_array_equal(semlaflow.torch_view(params, name), value)
  del state['feat_proj.2.weight']
  np.savez(path, **state)
  with pytest.raises(ValueError, match='not a SemlaFlow generator'):
    importer.import_semlaflow(path, str(tmp_path / 'bad'))
