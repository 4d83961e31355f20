"""GeoLDM: parity with vectors from GeoLDM's own code (forward, losses, NLL, VAE,
gradients, the zoo's ancestral sampler on the latent, decoding, three optimizer
steps), E(3) equivariance of the encoder, the decoder and the whole objective,
padding and permutation invariance, import, and `--model=geoldm` trained, evaluated
and sampled through the zoo's own loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import padded_graph, shared_path
from edm_zoo import config as config_lib
from edm_zoo import evaluation, masking, reporting
from edm_zoo.compat import geoldm, importer
from edm_zoo.config import Config, ModelConfig
from edm_zoo.diffusion import gaussians
from edm_zoo.diffusion.latent import LatentDiffusion
from edm_zoo.data import registry
from edm_zoo.io import readers
from edm_zoo.training import loop, optimizer, state as train_state

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
