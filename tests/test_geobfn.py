"""GeoBFN (`--model=geobfn`): parity with GeoBFN's own code (tests/parity/geobfn,
PARITY_GEOBFN.md), the network's and loss's symmetries, its optimisation rules,
any-step sampling, import and the launchers."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import padded_graph
from edm_zoo import center_of_gravity, config as config_lib, masking, methods
from edm_zoo.compat import geobfn, importer
from edm_zoo.config import SamplingConfig
from edm_zoo.data import batching, registry
from edm_zoo.methods.bfn import BayesianFlow, flow
from edm_zoo.training import checkpoint, optimizer, state as train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTORS = os.path.join(ROOT, 'tests', 'parity', 'geobfn', 'geobfn_parity_small.npz')
TRAIN_VECTORS = VECTORS.replace('.npz', '_train.npz')
ATOMIC_NUMBERS = [1, 6, 7, 8, 9]


@pytest.fixture(scope='module')
def molecules(qm9_sources):
  return qm9_sources['valid'].__getitems__(range(100, 106))


@pytest.fixture(scope='module')
def setup(molecules):
  config = config_lib.build('published', model='geobfn', nf=16, n_layers=2)
  model = BayesianFlow(config, registry.statistics('qm9').n_nodes_histogram)
  graph = padded_graph(molecules)
  return model, model.init(jax.random.PRNGKey(0), graph), graph


def _orthogonal(seed):
  q, _ = np.linalg.qr(np.random.RandomState(seed).normal(size=(3, 3)))
  if np.linalg.det(q) > 0:
    q[:, 0] = -q[:, 0]
  return jnp.asarray(q, jnp.float32)


def _inputs(model, graph, t=0.6, seed=1):
  x, c = model.data(graph)
  t = jnp.full(graph.n_node.shape, t)
  return model.flow_inputs(graph, x, c, t, model.sample_noise(jax.random.PRNGKey(seed), graph))


# --- Parity with GeoBFN's code.

def _failures(report):
  return {k: v for k, v in report.items() if not v['ok']}


def test_parity_with_geobfn_forward_loss_gradients_and_sampler():
  report = geobfn.parity_report(VECTORS)
  assert not _failures(report)
  for key in ('flow/mu_coord', 'network/eps_x', 'predict/p', 'loss/posloss', 'grad',
              'sample/coord_pred', 'sample/charge'):
    assert key in report


def test_parity_with_geobfn_optimizer_steps_and_spike_skip():
  report = geobfn.train_parity_report(TRAIN_VECTORS)
  assert not _failures(report)
  # The file exercises GeoBFN's loss-spike rule: step 1 is skipped after step 0's spike.
  assert [report[f'train/step{k}/skip']['ok'] for k in range(3)] == [True] * 3
  args = geobfn.Replay(np.load(TRAIN_VECTORS)).args
  assert [s['applied'] for s in args['steps']] == [True, False, True]


# --- Symmetries.

@pytest.mark.parametrize('seed', [0, 1])
def test_network_and_loss_are_e3_equivariant(setup, seed):
  model, params, graph = setup
  inputs = _inputs(model, graph)
  rot = _orthogonal(seed)
  mask = masking.node_mask(graph)[:, None]
  t = inputs['t']
  out = model.network(params, graph, inputs['mu_x'], inputs['mu_charge'], t)
  moved = model.network(params, graph, inputs['mu_x'] @ rot * mask, inputs['mu_charge'], t)
  np.testing.assert_allclose(moved['eps_x'], out['eps_x'] @ rot, atol=2e-5)
  for head in ('mu_eps', 'ln_sigma_eps'):
    np.testing.assert_allclose(moved[head], out[head], atol=2e-5)
  # The loss is invariant to rotating and translating the data, the noise rotated with it.
  shift = jnp.asarray(np.random.RandomState(seed).normal(size=3) * 3, jnp.float32)
  eps = model.sample_noise(jax.random.PRNGKey(4), graph)
  rotated = graph._replace(nodes={**graph.nodes,
                                  'positions': graph.nodes['positions'] @ rot + shift})
  eps_rot = eps.at[:, :3].set(eps[:, :3] @ rot)
  t = jnp.linspace(0.05, 0.95, graph.n_node.shape[0])
  np.testing.assert_allclose(model.train_loss(params, rotated, t, eps_rot),
                             model.train_loss(params, graph, t, eps), rtol=2e-5)


def test_permutation_equivariance_and_padding_invariance(setup, molecules):
  model, params, graph = setup
  inputs = _inputs(model, graph)
  t = inputs['t']
  out = model.network(params, graph, inputs['mu_x'], inputs['mu_charge'], t)
  perms = [np.random.RandomState(i).permutation(len(m['charges']))
           for i, m in enumerate(molecules)]
  offsets = np.concatenate([[0], np.cumsum([len(p) for p in perms])])
  index = np.concatenate([p + o for p, o in zip(perms, offsets)])
  graph_p = padded_graph([{**m, 'positions': m['positions'][p], 'charges': m['charges'][p]}
                          for m, p in zip(molecules, perms)])
  n = len(index)
  perm = lambda a: a.at[:n].set(a[index])
  out_p = model.network(params, graph_p, perm(inputs['mu_x']), perm(inputs['mu_charge']), t)
  for k in out:
    np.testing.assert_allclose(out_p[k][:n], out[k][index], atol=2e-5)
  # More padding changes nothing of the real molecules.
  big = padded_graph(molecules, extra_nodes=37, extra_graphs=5, extra_edges=300)
  pad = lambda a: jnp.concatenate([a[:n], jnp.zeros((37,) + a.shape[1:])])
  t_mol = jnp.linspace(0.1, 0.9, len(molecules))
  t_small, t_big = (jnp.concatenate([t_mol, jnp.zeros(k)]) for k in (1, 5))
  eps = model.sample_noise(jax.random.PRNGKey(3), graph)
  small_terms = model.train_terms(params, graph, t_small, eps)
  big_terms = model.train_terms(params, big, t_big, pad(eps))
  np.testing.assert_allclose(big_terms['loss_per_molecule'][:len(molecules)],
                             small_terms['loss_per_molecule'][:len(molecules)], rtol=1e-5)
  np.testing.assert_allclose(model.train_loss(params, big, t_big, pad(eps)),
                             model.train_loss(params, graph, t_small, eps), rtol=1e-5)


def test_flow_below_t_min_is_the_prior_and_the_loss_is_finite(setup):
  model, params, graph = setup
  x, c = model.data(graph)
  t = jnp.full(graph.n_node.shape, 0.5 * model.config.bfn.t_min)
  inputs = model.flow_inputs(graph, x, c, t, model.sample_noise(jax.random.PRNGKey(0), graph))
  assert float(jnp.max(jnp.abs(inputs['mu_x']))) == 0.0
  assert float(jnp.max(jnp.abs(inputs['mu_charge']))) == 0.0
  loss, grads = jax.value_and_grad(model.train_loss)(params, graph, t, jnp.zeros_like(x[:, :1])
                                                     .repeat(4, -1))
  assert np.isfinite(float(loss))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_bins_and_charges():
  centres, left, right = flow.bin_centres(9)
  z = np.arange(1, 10)
  np.testing.assert_allclose(centres, (2 * z - 1) / 9 - 1, atol=1e-7)
  np.testing.assert_allclose(right - left, 2 / 9, atol=1e-6)
  p = flow.bin_probabilities(jnp.array([[0.1], [-3.0]]), jnp.array([[0.3], [1e-6]]), 9)
  np.testing.assert_allclose(jnp.sum(p, -1), 1.0, atol=1e-6)  # The tails go to the end bins.
  assert int(jnp.argmax(p[1])) == 0


# --- The optimisation rules.

def test_spike_rules_skip_the_next_step_count_per_epoch_and_ask_for_recovery():
  rules = optimizer.StepRules(spike_loss=10.0, spike_limit=2, steps_per_epoch=100)
  params = {'w': jnp.ones(3)}
  tx = optimizer.guarded(optimizer.torch_adamw_amsgrad(1e-2))
  state = train_state.new_state(params, tx, optimizer.init_clip_queue((1.0,), 3000))
  grads = {'w': jnp.full(3, 0.5)}
  history = []
  for loss in (20.0, 1.0, 20.0, 20.0, 20.0):
    before = state.params['w']
    state, m = train_state.apply_gradients(state, grads, jnp.float32(loss), tx=tx,
                                           ema_decay=0.9, rules=rules)
    history.append((bool(m['skipped']), int(m['spikes']), bool(m['recover']),
                    bool(jnp.any(state.params['w'] != before))))
  assert history == [(False, 1, False, True), (True, 1, False, False),
                     (False, 2, False, True), (True, 1, True, False), (True, 2, False, False)]
  # A skipped step puts a norm of 0 into the queue, as GeoBFN's None gradients do.
  assert float(state.clip_queue.items[0]) == 0.0
  # A new epoch clears the pending skip and the count.
  state = state._replace(step=jnp.asarray(100, jnp.int32))
  _, m = train_state.apply_gradients(state, grads, jnp.float32(1.0), tx=tx, ema_decay=0.9,
                                     rules=rules)
  assert not bool(m['skipped']) and int(m['spikes']) == 0


def test_gradient_norm_cap_skips_the_update_and_the_queue():
  rules = optimizer.StepRules(skip_grad_norm=1.0)
  tx = optimizer.torch_adamw_amsgrad(1e-2)
  state = train_state.new_state({'w': jnp.ones(3)}, tx, optimizer.init_clip_queue((1.0,), 3000))
  new, m = train_state.apply_gradients(state, {'w': jnp.full(3, 5.0)}, jnp.float32(1.0),
                                       tx=tx, ema_decay=0.9, rules=rules)
  np.testing.assert_array_equal(new.params['w'], state.params['w'])
  assert int(new.clip_queue.count) == 1
  np.testing.assert_allclose(new.ema_params['w'], state.ema_params['w'])


def test_geobfn_defaults_are_its_published_settings():
  c = config_lib.build('published', model='geobfn')
  assert (c.model.attention, c.model.tanh, c.model.inv_sublayers,
          c.model.normalization_factor) == (False, False, 1, 1.0)
  assert (c.train.clip_queue_start, c.train.clip_queue_len, c.train.skip_grad_norm,
          c.train.spike_loss, c.train.spike_limit) == (1.0, 3000, 10_000.0, 500.0, 3)
  assert (c.bfn.sigma1_coord, c.bfn.sigma1_charges, c.bfn.bins, c.bfn.t_min,
          c.bfn.sample_steps, c.bfn.position_scale) == (0.001, 0.15, 9, 1e-4, 1000, 2.0)
  # EDM's defaults are untouched.
  e = config_lib.build('published')
  assert (e.model.attention, e.train.clip_queue_start, e.train.spike_loss) == (True, 3000.0, 0.0)


def test_loss_falls_on_a_fixed_batch(setup):
  model, params, graph = setup
  tx = optimizer.guarded(optimizer.torch_adamw_amsgrad(1e-3))
  state = train_state.new_state(params, tx, optimizer.init_clip_queue((1.0,), 3000))
  rules = optimizer.StepRules(skip_grad_norm=1e4, spike_loss=500.0)
  t = jnp.linspace(0.05, 0.95, graph.n_node.shape[0])
  eps = model.sample_noise(jax.random.PRNGKey(2), graph)
  value_and_grad = jax.jit(jax.value_and_grad(model.train_loss))
  step = jax.jit(lambda s, g, l: train_state.apply_gradients(s, g, l, tx=tx, ema_decay=0.9,
                                                              rules=rules))
  losses = []
  for _ in range(60):
    loss, grads = value_and_grad(state.params, graph, t, eps)
    state, _ = step(state, grads, loss)
    losses.append(float(loss))
  # GeoBFN's clipping queue starts at [1], so early steps are small: 22.3 -> 17.9.
  assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
  assert all(b < a for a, b in zip(losses[10:], losses[11:]))


# --- Sampling with any number of steps.

@pytest.mark.parametrize('steps', [1, 7])
def test_any_step_sampling(setup, steps):
  model, params, _ = setup
  sizes = [3, 9, 17]
  graph = batching.placeholder_graph(sizes, ATOMIC_NUMBERS, batching.PaddingBudget(40, 400, 5))
  sampling = SamplingConfig(steps=steps)
  out = methods.sample(model, params, graph, jax.random.PRNGKey(7), sampling,
                       atomic_numbers=ATOMIC_NUMBERS)
  n = sum(sizes)
  assert out['x'].shape == (40, 3) and out['h_cat'].shape == (40, 5)
  assert float(center_of_gravity.max_abs_mean(out['x'], graph)) < 1e-5
  assert set(np.asarray(out['h_int'][:n, 0]).astype(int)) <= set(ATOMIC_NUMBERS)
  np.testing.assert_array_equal(np.asarray(ATOMIC_NUMBERS)[np.argmax(out['h_cat'][:n], -1)],
                                np.asarray(out['h_int'][:n, 0]).astype(int))
  assert float(jnp.abs(out['x'][n:]).max()) == 0.0
  again = methods.sample(model, params, graph, jax.random.PRNGKey(7), sampling,
                         atomic_numbers=ATOMIC_NUMBERS)
  np.testing.assert_array_equal(out['x'], again['x'])
  assert methods.steps_of(model, params, sampling) == steps


def test_sampler_options_of_diffusion_are_refused(setup):
  model, params, _ = setup
  for bad in (SamplingConfig(sampler='ddim'), SamplingConfig(spacing='quadratic'),
              SamplingConfig(fix_noise=True), SamplingConfig(steps=-2)):
    with pytest.raises(ValueError):
      methods.check_sampling(model, bad)


def test_conditioning_is_refused_in_one_line():
  config = config_lib.build('published', model='geobfn', conditioning=('alpha',))
  with pytest.raises(ValueError, match='unconditional'):
    BayesianFlow(config, {9: 1})


# --- Import.

def test_import_of_a_geobfn_state_dict(tmp_path):
  v = np.load(VECTORS)
  path = tmp_path / 'geobfn.npz'
  np.savez(path, **{'dynamics.' + k[len('param/'):]: v[k] for k in v.files
                    if k.startswith('param/')})
  out = importer.import_geobfn(str(path), str(tmp_path / 'imported'))
  config, params, _ = checkpoint.load_for_inference(out)
  assert (config.model.name, config.model.nf, config.model.n_layers) == ('geobfn', 32, 2)
  ref = geobfn.Replay(v).params
  for module in ref:
    for leaf in ref[module]:
      np.testing.assert_array_equal(params[module][leaf], ref[module][leaf])
  with pytest.raises(ValueError, match='no GeoBFN network'):
    np.savez(tmp_path / 'other.npz', w=np.zeros(3))
    importer.import_geobfn(str(tmp_path / 'other.npz'), str(tmp_path / 'x'))


# --- End to end.

def _run(*args, cwd):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=900)


@pytest.mark.slow
def test_tiny_run_loss_falls_then_samples_and_evaluates(tmp_path):
  work = tmp_path / 'run'
  r = _run('launch/train.py', '--model=geobfn', '--preset=tiny', '--total_steps=30',
           '--eval_every_steps=30', '--checkpoint_every_steps=30', '--log_every_steps=1',
           f'--workdir={work}', '--noprogress', cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  records = [json.loads(l) for l in open(work / 'metrics.jsonl')]
  losses = [r['loss'] for r in records if 'loss' in r]
  assert len(losses) == 30 and losses[0] > 10 * np.median(losses[-15:])
  assert np.isfinite([r['val_bfn_loss'] for r in records if 'val_bfn_loss' in r]).all()
  r = _run('launch/sample.py', f'--ckpt={work}', '--n_samples=6', '--batch_size=6',
           '--steps=10', f'--out_dir={tmp_path / "s"}', cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  assert (tmp_path / 's' / 'samples.sdf').exists()
  r = _run('launch/sample.py', f'--ckpt={work}', '--n_samples=2', '--sampler=ddim',
           f'--out_dir={tmp_path / "s2"}', cwd=ROOT)
  assert r.returncode != 0 and 'geobfn samples with its own' in r.stderr
  assert 'Traceback' not in r.stderr
