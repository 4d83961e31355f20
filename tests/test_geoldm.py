"""GeoLDM: parity with vectors from GeoLDM's own code (forward, losses, NLL, VAE,
gradients, the zoo's ancestral sampler on the latent, decoding, three optimizer
steps), E(3) equivariance of the encoder, the decoder and the whole objective,
padding and permutation invariance, import, and `--model=geoldm` trained, evaluated
and sampled through the zoo's own loop."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import padded_graph, shared_path
from edm_zoo import config as config_lib
from edm_zoo import evaluation, masking, methods, reporting
from edm_zoo.methods import diffusion
from edm_zoo.compat import geoldm, importer
from edm_zoo.config import Config, ModelConfig
from edm_zoo.methods.diffusion import gaussians
from edm_zoo.methods.diffusion.latent import LatentDiffusion
from edm_zoo.data import registry
from edm_zoo.io import readers
from edm_zoo.training import checkpoint, loop, optimizer, state as train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L = 2  # Not the files' L = 1: the shapes must follow the config.


def cat(eps, enc_noise):
  """The objective's eps: the diffusion noise, then the latent's noise."""
  return jnp.concatenate([eps, enc_noise], -1)


def test_forward_loss_nll_vae_and_gradient_parity():
  report = geoldm.parity_report(shared_path('parity', 'geoldm', 'geoldm_parity_small.npz'))
  bad = {k: v for k, v in report.items() if not v['ok']}
  assert not bad, bad
  for key in ('train/enc/x_mean', 'train/latent/z', 'train/dec/h', 'train/dyn/eps_pred',
              'train/nll', 'eval/dyn_0/eps_pred', 'eval/neg_log_pxh', 'eval/nll',
              'vae/nll', 'grad/global_norm', 'grad/vae.decoder.egnn.embedding_out.weight',
              'sample/step2/zs', 'sample/p_x_given_z0/h_latent', 'sample/decode/charges'):
    assert key in report, key


def test_three_optimizer_steps_parity():
  report = geoldm.train_parity_report(
      shared_path('parity', 'geoldm', 'geoldm_train_parity_small.npz'))
  bad = {k: v for k, v in report.items() if not v['ok']}
  assert not bad, bad
  assert {f'step{k}/{q}' for k in range(3) for q in ('param', 'ema', 'queue_after')} <= set(report)


@pytest.fixture(scope='module')
def setup(qm9_sources):
  molecules = qm9_sources['valid'].__getitems__(range(200, 206))
  config = Config(model=ModelConfig(nf=16, n_layers=2, latent_nf=L))
  model = LatentDiffusion(config, {len(m['charges']): 1 for m in molecules}, n_types=5)
  graph = padded_graph(molecules)
  params = model.init(jax.random.PRNGKey(0), graph)
  return model, params, graph, molecules


def _rotation(seed):
  q, _ = np.linalg.qr(np.random.RandomState(seed).normal(size=(3, 3)))
  if np.linalg.det(q) > 0:
    q[:, 0] = -q[:, 0]  # A reflection too.
  return jnp.asarray(q, jnp.float32)


def _moved(graph, rot, shift):
  mask = masking.node_mask(graph)[:, None]
  return graph._replace(nodes={**graph.nodes,
                               'positions': (graph.nodes['positions'] @ rot + shift) * mask})


@pytest.mark.parametrize('seed', [0, 1])
def test_encoder_decoder_and_objective_are_e3_equivariant(setup, seed):
  model, params, graph, _ = setup
  rot, shift = _rotation(seed), jnp.asarray([1.5, -2.0, 0.5])
  moved = _moved(graph, rot, shift)
  enc = model.encode(params, graph, *model.data(graph))
  enc_moved = model.encode(params, moved, *model.data(moved))
  np.testing.assert_allclose(enc_moved['x_mean'], enc['x_mean'] @ rot, atol=3e-5)
  np.testing.assert_allclose(enc_moved['h_mean'], enc['h_mean'], atol=3e-5)
  assert enc['h_mean'].shape[-1] == L
  z = jnp.concatenate([enc['x_mean'], enc['h_mean']], -1)
  z_moved = z.at[:, :3].set(z[:, :3] @ rot)
  dec, dec_moved = model.decode(params, graph, z), model.decode(params, graph, z_moved)
  np.testing.assert_allclose(dec_moved['x'], dec['x'] @ rot, atol=3e-5)
  np.testing.assert_allclose(dec_moved['h'], dec['h'], atol=3e-5)
  # The whole objective: rotating the data and every noise together changes nothing.
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  eps = gaussians.sample_noise(k1, graph, L)
  enc_noise = gaussians.sample_noise(k2, graph, L)
  rotate = lambda a: a.at[:, :3].set(a[:, :3] @ rot)
  t_int = jnp.array([0, 10, 300, 700, 999, 1000, 0])
  a = model.train_terms(params, graph, t_int, cat(eps, enc_noise))['nll_per_molecule']
  b = model.train_terms(params, moved, t_int, cat(rotate(eps), rotate(enc_noise)))
  np.testing.assert_allclose(a[:-1], b['nll_per_molecule'][:-1], rtol=2e-5)
  t_eval = t_int.clip(1)
  a = model.eval_terms(params, graph, t_eval, cat(eps, enc_noise), enc_noise)['nll_per_molecule']
  b = model.eval_terms(params, moved, t_eval, cat(rotate(eps), rotate(enc_noise)),
                       rotate(enc_noise))['nll_per_molecule']
  np.testing.assert_allclose(a[:-1], b[:-1], rtol=2e-5, atol=5e-3)


def test_padding_and_permutation_invariance(setup):
  model, params, graph, molecules = setup
  n = int(graph.n_node[:-1].sum())
  big = padded_graph(molecules, extra_nodes=23, extra_graphs=4, extra_edges=200)
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  eps = gaussians.sample_noise(k1, graph, L)
  enc_noise = gaussians.sample_noise(k2, graph, L)
  pad = lambda a: jnp.concatenate([a[:n], jnp.zeros((23,) + a.shape[1:])])
  t_int = jnp.array([5, 50, 500, 950, 1000, 0, 0])
  t_big = jnp.concatenate([t_int[:-1], jnp.zeros(4, jnp.int32)])
  np.testing.assert_allclose(model.train_loss(params, big, t_big, cat(pad(eps), pad(enc_noise))),
                             model.train_loss(params, graph, t_int, cat(eps, enc_noise)), rtol=1e-5)
  # Renumbering atoms inside molecules renumbers every per-node output.
  perms = [np.random.RandomState(i).permutation(len(m['charges']))
           for i, m in enumerate(molecules)]
  graph_p = padded_graph([{**m, 'positions': m['positions'][p], 'charges': m['charges'][p]}
                          for m, p in zip(molecules, perms)])
  offsets = np.concatenate([[0], np.cumsum([len(p) for p in perms])])
  index = np.concatenate([p + o for p, o in zip(perms, offsets)])
  perm_nodes = lambda a: a.at[:n].set(a[index])
  a = model.train_terms(params, graph, t_int, cat(eps, enc_noise))
  b = model.train_terms(params, graph_p, t_int, cat(perm_nodes(eps), perm_nodes(enc_noise)))
  np.testing.assert_allclose(b['nll_per_molecule'], a['nll_per_molecule'], rtol=1e-5)
  np.testing.assert_allclose(b['eps_hat'][:n], a['eps_hat'][index], atol=2e-5)


def test_the_latent_diffusion_loss_falls(setup):
  model, params, graph, _ = setup
  graphs = jax.tree.map(lambda a: jnp.asarray(a)[None], graph)
  tx = optimizer.torch_adamw_amsgrad(1e-3)
  state = train_state.new_state(params, tx)

  @jax.jit
  def step(state, key):
    k1, k2, k3 = jax.random.split(key, 3)
    t_int = jax.random.randint(k1, graph.n_node.shape, 0, model.T + 1)
    eps = gaussians.sample_noise(k2, graph, L)
    enc_noise = gaussians.sample_noise(k3, graph, L)
    sum_fn = lambda p, g: masking.graph_sum(
        model.train_terms(p, g, t_int, cat(eps, enc_noise))['nll_per_molecule'], g)
    loss, grads = train_state.mean_loss_and_grads(sum_fn, state.params, graphs)
    return train_state.apply_gradients(state, grads, loss, tx=tx, ema_decay=0.99)
  losses = []
  for i in range(60):
    state, info = step(state, jax.random.fold_in(jax.random.PRNGKey(7), i))
    losses.append(float(info['loss']))
  # The encoder is detached: only the decoder and the dynamics learn.
  enc = {k: v for k, v in state.params.items() if k.startswith('vae/encoder')}
  assert enc and all(np.array_equal(v['w'], params[k]['w']) for k, v in enc.items()
                     if 'w' in v)
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses


def test_a_geoldm_state_dict_and_args_import(tmp_path):
  vectors = np.load(shared_path('parity', 'geoldm', 'geoldm_parity_small.npz'))
  names = [k[len('param/'):] for k in vectors.files if k.startswith('param/')]
  np.savez(tmp_path / 'generative_model_ema.npz', **{n: vectors['param/' + n] for n in names})
  (tmp_path / 'args.json').write_text(str(vectors['args']))
  config, model, params = geoldm.read_model(str(tmp_path / 'generative_model_ema.npz'),
                                            str(tmp_path / 'args.json'))
  assert config.model.latent_nf == 1 and config.model.nf == 32
  want = geoldm.params_from_vectors(vectors)
  assert jax.tree.all(jax.tree.map(np.array_equal, params, want))
  # As a checkpoint that eval and sample read (launch/import_edm.py).
  out = importer.import_checkpoint(str(tmp_path / 'generative_model_ema.npz'),
                                   str(tmp_path / 'args.json'), str(tmp_path / 'ckpt'))
  loaded_config, loaded, loaded_params, _ = reporting.load_model(out)
  assert loaded_config.model.name == 'geoldm' and isinstance(loaded, LatentDiffusion)
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded_params, want))
  # A state dict that lacks a layer is refused in one line.
  np.savez(tmp_path / 'partial.npz', **{n: vectors['param/' + n] for n in names
                                        if 'decoder.egnn.e_block_1' not in n})
  with pytest.raises(ValueError, match=r'partial.npz: state dict does not match.*missing'):
    geoldm.read_model(str(tmp_path / 'partial.npz'), str(tmp_path / 'args.json'))


@pytest.mark.slow
def test_geoldm_trains_evaluates_and_samples_through_the_zoo(tmp_path):
  config = registry.configure(config_lib.build(
      'tiny', model='geoldm', nf=32, batch_size=16, total_steps=120, eval_every_steps=120,
      eval_molecules=64, checkpoint_every_steps=1000, log_every_steps=60))
  stats = registry.statistics('qm9')
  setup = loop.setup(config)
  assert isinstance(setup.model, LatentDiffusion)
  graph = padded_graph(registry.load('qm9', 'valid').__getitems__(range(4)))
  params = setup.model.init(jax.random.PRNGKey(config.train.seed), graph)
  before = evaluation.nll(setup.model, params, registry.load('qm9', 'valid'), batch_size=16,
                          limit=64, n_nodes_histogram=stats.n_nodes_histogram,
                          progress=False)['nll']
  result = loop.train(config, str(tmp_path / 'run'), progress=False)
  print(f'geoldm validation NLL {before:.1f} -> {result["val_nll"]:.1f}')
  assert result['val_nll'] < 0.8 * before, (before, result['val_nll'])
  loaded_config, model, ema, meta = reporting.load_model(str(tmp_path / 'run'))
  types, _ = reporting.elements_of(loaded_config, meta)
  sampling = config_lib.SamplingConfig(n_samples=4, batch_size=4, sampler='ddim', steps=20)
  out = reporting.sample_and_export(model, ema, loaded_config, str(tmp_path / 'samples'),
                                    sampling, atom_types=types, progress=False)
  written = readers.read_molecules(str(tmp_path / 'samples' / 'samples.sdf'))
  assert len(written.molecules) == 4
  for m, got in zip(out['molecules'], written.molecules):
    assert len(got['charges']) == len(m['types'])
    np.testing.assert_array_equal(got['charges'], np.array([1, 6, 7, 8, 9])[m['types']])


def _variant(model, **train):
  config = model.config
  config = config.__class__(model=config.model, diffusion=config.diffusion,
                            train=config.train.__class__(**train))
  return LatentDiffusion(config, model.n_nodes_histogram, model.n_types)


def _grads(model, params, graph, t_int, eps):
  return jax.grad(lambda p: jnp.sum(model.train_terms(p, graph, t_int, eps)['nll_per_molecule']
                                    * masking.graph_mask(graph)))(params)


def _zero(tree):
  return all(not np.any(np.asarray(a)) for a in jax.tree.leaves(tree))


def test_stage_one_and_a_frozen_decoder_train_what_geoldm_trains(setup):
  model, params, graph, _ = setup
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  t_int = jax.random.randint(keys[0], graph.n_node.shape, 0, model.T + 1)
  eps, enc_noise = (gaussians.sample_noise(k, graph, L) for k in keys[1:])
  mask = np.asarray(masking.graph_mask(graph), bool)
  ae = LatentDiffusion.autoencoder

  # Stage 1: the VAE loss alone, nothing reaches the dynamics.
  stage1 = _variant(model, stage='autoencoder')
  terms = stage1.train_terms(params, graph, t_int, cat(eps, enc_noise))
  want = model.vae_terms(params, graph, enc_noise)
  np.testing.assert_array_equal(terms['nll_per_molecule'], want['nll_per_molecule'])
  eval_terms = stage1.eval_terms(params, graph, t_int, cat(eps, enc_noise), eps)
  unnormalised = model.vae_terms(params, graph, enc_noise, normalise=False)
  np.testing.assert_array_equal(eval_terms['nll_per_molecule'], unnormalised['nll_per_molecule'])
  assert np.all(eval_terms['recon'][mask] > terms['recon'][mask])
  grads = _grads(stage1, params, graph, t_int, cat(eps, enc_noise))
  assert _zero({k: v for k, v in grads.items() if k not in ae(grads)})
  assert not _zero({k: v for k, v in grads.items() if k.startswith('vae/encoder')})
  assert stage1.objective_name == 'vae_loss'

  # Stage 2 with a frozen autoencoder: no reconstruction term, no VAE gradient.
  frozen = _variant(model, trainable_ae=False, ae_ckpt='stage1')
  joint = model.train_terms(params, graph, t_int, cat(eps, enc_noise))
  terms = frozen.train_terms(params, graph, t_int, cat(eps, enc_noise))
  assert 'dec' not in terms and not np.any(terms['recon'])
  np.testing.assert_allclose(terms['nll_per_molecule'][mask],
                             (joint['nll_per_molecule'] - joint['recon'])[mask],
                             rtol=1e-5, atol=1e-4)
  grads = _grads(frozen, params, graph, t_int, cat(eps, enc_noise))
  assert _zero(ae(grads)) and not _zero({k: v for k, v in grads.items() if k not in ae(grads)})
  ev_joint = model.eval_terms(params, graph, jnp.maximum(t_int, 1), cat(eps, enc_noise), eps)
  ev = frozen.eval_terms(params, graph, jnp.maximum(t_int, 1), cat(eps, enc_noise), eps)
  np.testing.assert_allclose(ev['neg_log_pxh'][mask],
                             (ev_joint['neg_log_pxh'] - ev_joint['rec']['sum'])[mask],
                             rtol=1e-5, atol=1e-3)

  # The autoencoder of one parameter dict goes into another, names and shapes checked.
  other = model.init(jax.random.PRNGKey(9), graph)
  merged = model.with_autoencoder(other, ae(params))
  assert jax.tree.all(jax.tree.map(np.array_equal, ae(merged), ae(params)))
  assert all(np.array_equal(merged[k]['w'], other[k]['w']) for k in other
             if k not in ae(other) and 'w' in other[k])
  wider = LatentDiffusion(
      Config(model=ModelConfig(nf=24, n_layers=2, latent_nf=L)), model.n_nodes_histogram, 5)
  with pytest.raises(ValueError, match='does not fit this model.*wrong shapes'):
    model.with_autoencoder(other, ae(wider.init(jax.random.PRNGKey(0), graph)))


@pytest.mark.parametrize('model_name, train, message', [
    ('egnn', {'stage': 'autoencoder'}, '--stage=autoencoder applies to latent models'),
    ('egnn', {'ae_ckpt': 'x'}, '--ae_ckpt applies to latent models'),
    ('gnn', {'trainable_ae': False}, '--notrainable_ae applies to latent models'),
])
def test_latent_recipe_flags_are_refused_for_other_models(model_name, train, message):
  config = config_lib.build('tiny', model=model_name, **train)
  with pytest.raises(ValueError, match=message):
    methods.make(config, {9: 1})


def test_bad_stage_settings_are_refused():
  with pytest.raises(ValueError, match="unknown stage 'vae'"):
    config_lib.build('tiny', model='geoldm', stage='vae')
  with pytest.raises(ValueError, match='does not apply to --stage=autoencoder'):
    config_lib.build('tiny', model='geoldm', stage='autoencoder', ae_ckpt='x')
  with pytest.raises(ValueError, match='--notrainable_ae freezes the decoder'):
    loop.check_recipe(config_lib.build('tiny', model='geoldm', trainable_ae=False))


@pytest.mark.slow
def test_the_two_stage_recipe(tmp_path):
  """Stage 1 trains the autoencoder (its loss falls); stage 2 starts from its EMA
  autoencoder and keeps it exactly; eval reports stage 1's loss and sampling it is
  refused in one line; an autoencoder of another model is refused."""
  common = dict(model='geoldm', nf=16, batch_size=16, eval_molecules=64, log_every_steps=10,
                checkpoint_every_steps=1000)
  stage1_dir, stage2_dir = str(tmp_path / 'ae'), str(tmp_path / 'ld')
  stage1 = registry.configure(config_lib.build(
      'tiny', stage='autoencoder', total_steps=40, eval_every_steps=20, **common))
  result = loop.train(stage1, stage1_dir, progress=False)
  assert 'val_vae_loss' in result and 'test_vae_loss' in result
  curve = [json.loads(line) for line in open(f'{stage1_dir}/metrics.jsonl')]
  val = [r['val_vae_loss'] for r in curve if 'val_vae_loss' in r]
  print('stage-1 validation VAE loss', val)
  assert len(val) == 2 and val[-1] < val[0]

  _, ae_model, ae_ema, _ = reporting.load_model(stage1_dir)
  stage2 = registry.configure(config_lib.build(
      'tiny', ae_ckpt=stage1_dir, trainable_ae=False, total_steps=10, eval_every_steps=10,
      **common))
  result = loop.train(stage2, stage2_dir, progress=False)
  assert 'val_nll' in result
  state, _ = checkpoint.load_state(stage2_dir)
  ae = LatentDiffusion.autoencoder
  assert jax.tree.all(jax.tree.map(np.array_equal, ae(state['params']), ae(ae_ema)))
  dyn = [k for k in state['params'] if k not in ae(state['params'])]
  _, _, stage2_ema, _ = reporting.load_model(stage2_dir)
  assert not all(np.array_equal(state['params'][k]['w'], stage2_ema[k]['w'])
                 for k in dyn if 'w' in state['params'][k])

  sampling = config_lib.SamplingConfig(n_samples=2, batch_size=2, sampler='ddim', steps=5)
  report = reporting.evaluate_checkpoint(
      stage1_dir, str(tmp_path / 'ae_eval'), sampling,
      config_lib.EvalConfig(nll_passes=1, nll_split='valid', nll_molecules=32),
      progress=False)
  assert report['nll']['figure'] == 'vae_loss' and 'metrics' not in report
  with pytest.raises(ValueError, match='stage-1 autoencoder'):
    reporting.sample_and_export(ae_model, ae_ema, stage1, str(tmp_path / 's'), sampling,
                                atom_types=('H', 'C', 'N', 'O', 'F'), progress=False)
  other = registry.configure(config_lib.build(
      'tiny', ae_ckpt=stage1_dir, **{**common, 'nf': 32}))
  with pytest.raises(ValueError, match=r"another model \(this run: \{'nf': 32\}\)"):
    loop.load_autoencoder(other)
  with pytest.raises(ValueError, match='is a diffusion run'):
    loop.load_autoencoder(registry.configure(config_lib.build(
        'tiny', ae_ckpt=stage2_dir, **common)))
  # A finished or interrupted stage 2 resumes from its own state, without stage 1.
  os.rename(stage1_dir, stage1_dir + '_moved')
  assert loop.train(stage2, stage2_dir, progress=False)['step'] == 10


@pytest.mark.slow
@pytest.mark.parametrize('args, message', [
    (('--model=geoldm', '--notrainable_ae'), '--notrainable_ae freezes the decoder'),
    (('--model=egnn', '--stage=autoencoder'), '--stage=autoencoder applies to latent models'),
])
def test_recipe_mistakes_are_one_line_from_the_launcher(tmp_path, args, message):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch', 'train.py'), '--preset=tiny', *args,
       f'--workdir={tmp_path}', '--progress=false'], capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and message in last, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
