"""Generic tests of every zoo model and the shared objective, on real QM9 batches."""

import dataclasses

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import NETWORKS, padded_graph
from edm_zoo import center_of_gravity, masking, models
from edm_zoo.config import Config, DiffusionConfig, ModelConfig
from edm_zoo.data import registry
from edm_zoo.methods.diffusion import Diffusion, samplers, schedules
from edm_zoo.methods.diffusion.samplers import ancestral, chain
from edm_zoo.models import layers


ANCESTRAL = samplers.get('ancestral')


def small_config(name, **diffusion):
  return Config(model=ModelConfig(name=name, nf=16, n_layers=2),
                diffusion=DiffusionConfig(**diffusion))


@pytest.fixture(scope='module')
def molecules(qm9_sources):
  return qm9_sources['valid'].__getitems__(range(100, 106))


@pytest.fixture(scope='module')
def histogram():
  return registry.statistics('qm9').n_nodes_histogram


def _setup(name, molecules, histogram, **diffusion):
  """(model, params, graph) of a small `name` network on the given molecules."""
  model = Diffusion(small_config(name, **diffusion), histogram)
  graph = padded_graph(molecules)
  params = model.init(jax.random.PRNGKey(0), graph)
  return model, params, graph


def _random_orthogonal(seed):
  q, _ = np.linalg.qr(np.random.RandomState(seed).normal(size=(3, 3)))
  if np.linalg.det(q) > 0:  # Make it a reflection too.
    q[:, 0] = -q[:, 0]
  return jnp.asarray(q, jnp.float32)


def _z_t(model, graph, seed=1):
  xh, _ = model.normalize(graph)
  eps = model.sample_noise(jax.random.PRNGKey(seed), graph)
  return 0.8 * xh + 0.6 * eps, eps


@pytest.mark.parametrize('name', NETWORKS)
def test_output_shape_zero_cog_and_zero_padding(name, molecules, histogram):
  model, params, graph = _setup(name, molecules, histogram)
  z_t, _ = _z_t(model, graph)
  t = jnp.full(graph.n_node.shape, 0.3)
  out = model.eps(params, graph, z_t, t)
  assert out.shape == z_t.shape
  assert float(center_of_gravity.max_abs_mean(out[:, :3], graph)) < 1e-5
  pad = masking.node_mask(graph) == 0
  assert jnp.all(out[pad] == 0)
  assert jnp.all(jnp.isfinite(out))


@pytest.mark.parametrize('name', [n for n in NETWORKS if models.get(n).equivariant])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_e3_equivariance(name, seed, molecules, histogram):
  model, params, graph = _setup(name, molecules, histogram)
  z_t, eps = _z_t(model, graph)
  t = jnp.full(graph.n_node.shape, 0.5)
  rot = _random_orthogonal(seed)
  shift = jnp.asarray(np.random.RandomState(seed).normal(size=3) * 3, jnp.float32)
  mask = masking.node_mask(graph)[:, None]
  moved = z_t.at[:, :3].set((z_t[:, :3] @ rot + shift) * mask)
  out = model.eps(params, graph, z_t, t)
  out_moved = model.eps(params, graph, moved, t)
  np.testing.assert_allclose(out_moved[:, :3], out[:, :3] @ rot, atol=2e-5)
  np.testing.assert_allclose(out_moved[:, 3:], out[:, 3:], atol=2e-5)
  # The loss is invariant to rotating the data and the noise together.
  t_int = jnp.full(graph.n_node.shape, 300)
  rotated = graph._replace(nodes={**graph.nodes,
                                  'positions': graph.nodes['positions'] @ rot + shift})
  eps_rot = eps.at[:, :3].set(eps[:, :3] @ rot)
  np.testing.assert_allclose(model.train_loss(params, rotated, t_int, eps_rot),
                             model.train_loss(params, graph, t_int, eps), rtol=1e-5)


@pytest.mark.parametrize('name', NETWORKS)
def test_permutation_equivariance(name, molecules, histogram):
  model, params, graph = _setup(name, molecules, histogram)
  perms = [np.random.RandomState(i).permutation(len(m['charges']))
           for i, m in enumerate(molecules)]
  permuted = [{**m, 'positions': m['positions'][p], 'charges': m['charges'][p]}
              for m, p in zip(molecules, perms)]
  graph_p = padded_graph(permuted)
  offsets = np.concatenate([[0], np.cumsum([len(p) for p in perms])])
  index = np.concatenate([p + o for p, o in zip(perms, offsets)])
  z_t, _ = _z_t(model, graph)
  n = len(index)
  z_p = z_t.at[:n].set(z_t[index])
  t = jnp.linspace(0.1, 0.9, graph.n_node.shape[0])
  out = model.eps(params, graph, z_t, t)
  out_p = model.eps(params, graph_p, z_p, t)
  np.testing.assert_allclose(out_p[:n], out[index], atol=2e-5)


@pytest.mark.parametrize('name', NETWORKS)
def test_padding_invariance(name, molecules, histogram):
  model, params, graph = _setup(name, molecules, histogram)
  big = padded_graph(molecules, extra_nodes=37, extra_graphs=5, extra_edges=300)
  n = int(graph.n_node[:-1].sum())
  z_t, eps = _z_t(model, graph)
  pad = lambda a: jnp.concatenate([a[:n], jnp.zeros((37,) + a.shape[1:])])
  t = jnp.linspace(0.1, 0.9, len(molecules))
  t_small = jnp.concatenate([t, jnp.zeros(1)])
  t_big = jnp.concatenate([t, jnp.zeros(5)])
  np.testing.assert_allclose(model.eps(params, big, pad(z_t), t_big)[:n],
                             model.eps(params, graph, z_t, t_small)[:n], atol=1e-6)
  t_int = (t_small * 1000).astype(jnp.int32)
  t_int_big = (t_big * 1000).astype(jnp.int32)
  np.testing.assert_allclose(model.train_loss(params, big, t_int_big, pad(eps)),
                             model.train_loss(params, graph, t_int, eps), rtol=1e-6)
  eps0 = model.sample_noise(jax.random.PRNGKey(5), graph)
  np.testing.assert_allclose(
      model.nll(params, big, t_int_big + 1, pad(eps), pad(eps0)),
      model.nll(params, graph, t_int + 1, eps, eps0), rtol=1e-6)


@pytest.mark.parametrize('name', NETWORKS)
@pytest.mark.parametrize('loss_type', ['l2', 'vlb'])
def test_losses_finite_and_differentiable(name, loss_type, molecules, histogram):
  model, params, graph = _setup(name, molecules, histogram, loss_type=loss_type)
  eps = model.sample_noise(jax.random.PRNGKey(3), graph)
  t_int = jnp.array([0, 1, 10, 500, 999, 1000, 0])
  loss, grads = jax.value_and_grad(model.train_loss)(params, graph, t_int, eps)
  assert jnp.isfinite(loss)
  assert all(jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_polynomial_schedule_equals_the_reference_table():
  from conftest import shared_path
  v = np.load(shared_path('parity', 'parity_small.npz'))
  table = schedules.gamma_table('polynomial_2', 1000, 1e-5)
  np.testing.assert_array_equal(table, v['schedule/gamma'])
  np.testing.assert_allclose(
      table[[0, 1, 500, 999, 1000]],
      [-11.5129, -11.3306, -0.2513, 11.1767, 11.5125], atol=1e-4)


@pytest.mark.parametrize('schedule', ['polynomial_2', 'cosine', 'learned'])
def test_schedules_are_increasing(schedule, molecules, histogram):
  model, params, graph = _setup('egnn', molecules, histogram, noise_schedule=schedule)
  gamma = model.gamma(params, jnp.linspace(0, 1, 1001))
  assert jnp.all(jnp.diff(gamma) >= 0) and gamma[-1] - gamma[0] > 10


def test_bad_schedule_and_model_names():
  with pytest.raises(ValueError, match="unknown noise schedule 'linear'"):
    schedules.gamma_table('linear', 10, 1e-5)
  with pytest.raises(ValueError, match=r"unknown model 'mlp'; allowed: \['egnn', 'geobfn', 'geoldm', 'gnn', 'semlaflow'\]"):
    models.get('mlp')


def test_parameters_are_routed_by_module_not_by_name(monkeypatch, molecules, histogram):
  def net_fn(graph, z_t, t, *, config):
    del t, config
    return hk.Linear(z_t.shape[-1], name='gamma_mlp')(z_t) * masking.node_mask(graph)[:, None]
  monkeypatch.setitem(models._REGISTRY, 'gamma_named',  # pylint: disable=protected-access
                      models.Entry(net_fn, equivariant=False))
  model, params, graph = _setup('gamma_named', molecules, histogram,
                                noise_schedule='learned')
  assert 'gamma' in model.schedule_modules and len(model.schedule_modules) == 4
  assert set(params) == model.schedule_modules | {'gamma_mlp'}
  t = jnp.linspace(0, 1, 7)
  z_t, _ = _z_t(model, graph)
  t_graph = jnp.full(graph.n_node.shape, 0.3)
  moved_net = {**params, 'gamma_mlp': jax.tree.map(lambda a: a + 1, params['gamma_mlp'])}
  np.testing.assert_array_equal(model.gamma(moved_net, t), model.gamma(params, t))
  assert not np.allclose(model.eps(moved_net, graph, z_t, t_graph),
                         model.eps(params, graph, z_t, t_graph))
  moved_gamma = {**params, 'gamma': {k: v + 1 for k, v in params['gamma'].items()}}
  np.testing.assert_array_equal(model.eps(moved_gamma, graph, z_t, t_graph),
                                model.eps(params, graph, z_t, t_graph))
  assert not np.allclose(model.gamma(moved_gamma, t), model.gamma(params, t))


def test_zero_cog_projection_of_z_moves_positions_only(molecules):
  graph = padded_graph(molecules, extra_nodes=5)
  z = jax.random.normal(jax.random.PRNGKey(0), (graph.nodes['mask'].shape[0], 9))
  z = z * masking.node_mask(graph)[:, None]
  projected = center_of_gravity.remove_mean_positions(z, graph)
  np.testing.assert_array_equal(projected[:, 3:], z[:, 3:])
  assert float(center_of_gravity.max_abs_mean(z[:, :3], graph)) > 1e-2
  assert float(center_of_gravity.max_abs_mean(projected[:, :3], graph)) < 1e-6
  np.testing.assert_allclose(center_of_gravity.remove_mean_positions(projected, graph),
                             projected, atol=1e-6)
  assert jnp.all(projected[masking.node_mask(graph) == 0] == 0)


def test_schedule_algebra_is_consistent():
  gamma = jnp.linspace(-8.0, 8.0, 33)
  alpha, sigma = schedules.alpha_sigma(gamma)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(schedules.sigma_over_alpha(gamma), sigma / alpha, rtol=1e-5)
  gamma_s, gamma_t = gamma[:-1], gamma[1:]
  sigma2_ts, sigma_ts, alpha_ts = schedules.transition(gamma_t, gamma_s)
  a_s, s_s = schedules.alpha_sigma(gamma_s)
  a_t, s_t = schedules.alpha_sigma(gamma_t)
  # q(z_t | z_s) composes with q(z_s | x) into q(z_t | x).
  np.testing.assert_allclose(alpha_ts * a_s, a_t, rtol=1e-5)
  np.testing.assert_allclose(alpha_ts**2 * s_s**2 + sigma2_ts, s_t**2, rtol=1e-5)
  np.testing.assert_allclose(sigma_ts**2, sigma2_ts, rtol=1e-6)
  np.testing.assert_allclose(schedules.snr_weight(gamma_s, gamma_t),
                             (a_s**2 / s_s**2) / (a_t**2 / s_t**2) - 1, rtol=1e-4)


@pytest.fixture(scope='module')
def short_chain(molecules, histogram):
  config = dataclasses.replace(small_config('egnn'), diffusion=DiffusionConfig(T=20))
  model = Diffusion(config, histogram)
  graph = padded_graph(molecules)
  return model, model.init(jax.random.PRNGKey(0), graph), graph


def test_full_sampler_makes_valid_molecules(short_chain):
  model, params, graph = short_chain
  out = samplers.sample(model, params, graph, jax.random.PRNGKey(1), ANCESTRAL)
  real = masking.node_mask(graph) > 0
  assert float(center_of_gravity.max_abs_mean(out['x'], graph)) < 1e-4
  np.testing.assert_array_equal(out['h_cat'][real].sum(-1), 1.0)
  assert jnp.all(out['h_cat'][~real] == 0)
  assert jnp.all(jnp.isfinite(out['x']))


def test_fix_noise_shares_the_draw_between_equal_sized_molecules(short_chain):
  model, params, _ = short_chain
  mol = {'positions': np.zeros((5, 3), np.float32), 'charges': np.full(5, 6),
         'gdb_index': 0}
  graph = padded_graph([mol, mol, mol])
  out = samplers.sample(model, params, graph, jax.random.PRNGKey(2), ANCESTRAL,
                        fix_noise=True, chain_every=10)
  x = np.asarray(out['x'][:15]).reshape(3, 5, 3)
  np.testing.assert_allclose(x[1], x[0], atol=1e-5)
  assert out['chain'].shape[0] == 3
  free = samplers.sample(model, params, graph, jax.random.PRNGKey(2), ANCESTRAL)
  assert not np.allclose(np.asarray(free['x'][:5]), np.asarray(free['x'][5:10]))


def test_full_grid_ancestral_chain_is_edms_step_by_step(short_chain):
  """`--sampler=ancestral --steps=T` is today's chain: EDM's p(z_s | z_t) (the
  parity-checked step) from T down to 0 with the draw of fold_in(rng, s)."""
  model, params, graph = short_chain
  rng = jax.random.PRNGKey(5)
  out = samplers.sample(model, params, graph, rng, ANCESTRAL, steps=model.T)
  n_graph = graph.n_node.shape[0]
  z = chain.noise(model, graph, rng, model.T, False)
  step = jax.jit(lambda s, t, z, e: ancestral.p_zs_given_zt(model, params, graph, s, t,
                                                           z, e)['z_s'])
  for s_int in range(model.T - 1, -1, -1):
    s = jnp.full(n_graph, s_int, jnp.float32) / model.T
    t = jnp.full(n_graph, s_int + 1, jnp.float32) / model.T
    z = step(s, t, z, chain.noise(model, graph, rng, s_int, False))
  final = chain.p_xh_given_z0(model, params, graph, z,
                              chain.noise(model, graph, rng, model.T + 1, False))
  # Equal up to float rounding (one compiled scan against step-by-step calls).
  np.testing.assert_allclose(out['x'], center_of_gravity.remove_mean(final['x'], graph),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(out['h_cat'], final['h_cat'])
  np.testing.assert_array_equal(out['h_int'], final['h_int'])


def test_time_grid():
  np.testing.assert_array_equal(samplers.time_grid(10), np.arange(10, -1, -1))
  np.testing.assert_array_equal(samplers.time_grid(1000, 4), [1000, 750, 500, 250, 0])
  assert len(set(samplers.time_grid(1000, 999).tolist())) == 1000
  quadratic = samplers.time_grid(1000, 100, 'quadratic')
  assert quadratic[0] == 1000 and quadratic[-1] == 0 and np.all(np.diff(quadratic) < 0)
  assert quadratic[-2] - quadratic[-1] < quadratic[0] - quadratic[1]  # Finer near 0.
  np.testing.assert_array_equal(samplers.time_grid(20, 20, 'quadratic'), np.arange(20, -1, -1))
  gamma = schedules.gamma_table('polynomial_2', 1000, 1e-5)
  log_snr = samplers.time_grid(1000, 50, 'log_snr', gamma)
  lam = -0.5 * gamma[log_snr].astype(np.float64)
  assert np.all(np.diff(log_snr) < 0) and np.std(np.diff(lam)) < 0.2 * np.mean(np.diff(lam))
  np.testing.assert_array_equal(samplers.time_grid(1000, 4, 'power_1'),
                                samplers.time_grid(1000, 4))
  np.testing.assert_array_equal(samplers.time_grid(1000, 2, 'power_1.5'), [1000, 354, 0])
  for bad in ('cosine', 'power_x', 'power_-1'):
    with pytest.raises(ValueError, match=f"unknown spacing '{bad}'"):
      samplers.time_grid(10, 5, bad)
  with pytest.raises(ValueError, match=r'steps must be in \[1, T=10\], got 11'):
    samplers.time_grid(10, 11)
  with pytest.raises(ValueError, match="unknown sampler 'euler'"):
    samplers.get('euler')
  with pytest.raises(ValueError, match='eta must be in'):
    samplers.get('ddim', eta=1.5)


SAMPLERS = [('ancestral', 0.0), ('ddim', 0.0), ('ddim', 0.5), ('dpm_solver', 0.0)]


@pytest.mark.parametrize('name,eta,steps,spacing', [
    *[(name, eta, 20, 'uniform') for name, eta in SAMPLERS],
    ('ancestral', 0.0, 6, 'power_1.5'), ('dpm_solver', 0.0, 6, 'log_snr')])
def test_every_sampler_keeps_cog_masks_and_types(short_chain, name, eta, steps, spacing):
  model, params, _ = short_chain
  mol = {'positions': np.zeros((5, 3), np.float32), 'charges': np.full(5, 6)}
  graph = padded_graph([mol, {**mol, 'positions': np.zeros((7, 3), np.float32),
                             'charges': np.full(7, 6)}], extra_nodes=4, extra_graphs=2)
  sampler = samplers.get(name, eta=eta)
  out = samplers.sample(model, params, graph, jax.random.PRNGKey(3), sampler, steps=steps,
                        spacing=spacing, chain_every=steps)
  real = masking.node_mask(graph) > 0
  assert jnp.all(jnp.isfinite(out['x']))
  assert float(center_of_gravity.max_abs_mean(out['x'], graph)) < 1e-4
  assert float(center_of_gravity.max_abs_mean(out['chain'][-1][:, :3], graph)) < 1e-4
  np.testing.assert_array_equal(out['h_cat'][real].sum(-1), 1.0)
  assert jnp.all(out['h_cat'][~real] == 0) and jnp.all(out['x'][~real] == 0)
  assert jnp.all(out['chain'][:, ~real] == 0)


@pytest.mark.parametrize('name,eta,jit_steps,unroll', [
    ('ancestral', 0.0, 1, 1), ('ancestral', 0.0, 4, 2), ('ddim', 0.5, 4, 1),
    ('dpm_solver', 0.0, 4, 1)])
def test_every_sampler_is_the_same_whatever_the_steps_per_call(short_chain, name, eta,
                                                               jit_steps, unroll):
  model, params, graph = short_chain
  sampler = samplers.get(name, eta=eta)
  whole = samplers.sample(model, params, graph, jax.random.PRNGKey(1), sampler, steps=9)
  cut = samplers.sample(model, params, graph, jax.random.PRNGKey(1), sampler, steps=9,
                        jit_steps=jit_steps, unroll=unroll)
  # Equal up to float rounding (XLA fuses a scan of 1 and of 9 steps differently).
  np.testing.assert_allclose(cut['x'], whole['x'], atol=2e-3)
  np.testing.assert_array_equal(cut['h_cat'], whole['h_cat'])


@pytest.mark.parametrize('name,eta', SAMPLERS[1:])  # Ancestral: the test above.
def test_fix_noise_shares_the_molecule_for_every_sampler(short_chain, name, eta):
  model, params, _ = short_chain
  mol = {'positions': np.zeros((5, 3), np.float32), 'charges': np.full(5, 6)}
  graph = padded_graph([mol, mol])
  out = samplers.sample(model, params, graph, jax.random.PRNGKey(2),
                        samplers.get(name, eta=eta), steps=8, fix_noise=True)
  np.testing.assert_allclose(out['x'][5:10], out['x'][:5], atol=1e-5)


def test_second_order_solver_is_closer_to_the_ode_solution(short_chain):
  """With the same z_T, 10 steps of DPM-Solver++(2M) land closer to its 20-step
  (full-grid) solution of the probability-flow ODE than 10 first-order (DDIM) steps."""
  model, params, graph = short_chain
  a = samplers.sample(model, params, graph, jax.random.PRNGKey(4), samplers.get('ddim'),
                      steps=10)
  b = samplers.sample(model, params, graph, jax.random.PRNGKey(4),
                      samplers.get('dpm_solver'), steps=10)
  c = samplers.sample(model, params, graph, jax.random.PRNGKey(4),
                      samplers.get('dpm_solver'), steps=20)
  assert not np.allclose(a['x'], b['x'], atol=1e-3)  # Second order differs from first.
  # 20 steps (the full grid here) and 10 of the same ODE solver agree more closely
  # than the first- and second-order 10-step solutions do.
  assert (np.abs(np.asarray(b['x']) - np.asarray(c['x'])).mean()
          < np.abs(np.asarray(a['x']) - np.asarray(c['x'])).mean())


def test_silu_and_its_saved_residual_gradient_are_autodiffs():
  x = jnp.concatenate([jnp.linspace(-30.0, 30.0, 601),
                       jax.random.normal(jax.random.PRNGKey(0), (1000,)) * 4])
  cotangent = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  np.testing.assert_allclose(layers.silu(x), jax.nn.silu(x), rtol=1e-6, atol=1e-7)
  ours = jax.vjp(layers.silu, x)[1](cotangent)[0]
  autodiff = jax.vjp(jax.nn.silu, x)[1](cotangent)[0]
  np.testing.assert_allclose(ours, autodiff, rtol=1e-5, atol=1e-6)
  # Second derivatives (grad of a grad) still work.
  second = jax.grad(lambda v: jnp.sum(jax.grad(lambda u: jnp.sum(layers.silu(u)))(v)))(x)
  reference = jax.grad(lambda v: jnp.sum(jax.grad(lambda u: jnp.sum(jax.nn.silu(u)))(v)))(x)
  np.testing.assert_allclose(second, reference, rtol=1e-4, atol=1e-5)
