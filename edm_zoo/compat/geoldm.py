"""GeoLDM parity: vectors written by GeoLDM's own code (PARITY_GEOLDM.md) replayed
through `edm_zoo.methods.diffusion.latent.LatentDiffusion`.

`parity_report(path)` checks the encoder, the latent, the decoder and the
reconstruction terms, the dynamics, the train-mode loss, the eval-mode NLL terms,
the stage-1 VAE loss and the gradients, each against the spec's tolerance.
Nothing about the configuration is assumed beyond the file's `args` and `param/*`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from edm_zoo import center_of_gravity, masking
from edm_zoo.compat import edm_args, parity, state_dict as state_dict_lib
from edm_zoo.data import batching, elements, registry
from edm_zoo.methods.diffusion.samplers import ancestral
from edm_zoo.methods.diffusion.latent import LatentDiffusion
from edm_zoo.training import optimizer, state as train_state

# State-dict entries that are not parameters of ours (zero buffers; the gamma
# table is rebuilt from the schedule's name).
SKIP = {'buffer', 'vae.buffer', 'gamma.gamma'}

# Spec section 10: (absolute, relative) tolerance of each kind of quantity.
TOL_NETWORK = (1e-5, 0.0)
TOL_LOSS = (1e-4, 1e-5)
TOL_EVAL_LD = (5e-3, 0.0)
TOL_KL = (5e-6, 0.0)
# Elementwise: 5e-5 for gradients up to ~10 (the spec), plus float32 resolution
# (rtol 1e-5) for larger ones (a gradient of 16 resolves to 1e-6).
TOL_GRAD = (5e-5, 1e-5)


def is_geoldm(args: Mapping) -> bool:
  """GeoLDM's argument namespace (EDM's has no latent space)."""
  return 'latent_nf' in args


def config_from_args(args: Mapping) -> object:
  """Our Config for GeoLDM's argument namespace: EDM's arguments plus latent_nf
  and its recipe (no --train_diffusion: stage 1; --trainable_ae; --ae_path)."""
  config = edm_args.config_from_args(args)
  model = dataclasses.replace(config.model, name='geoldm',
                              latent_nf=int(args.get('latent_nf', 1)))
  train = dataclasses.replace(
      config.train,
      stage='diffusion' if args.get('train_diffusion', True) else 'autoencoder',
      trainable_ae=bool(args.get('trainable_ae', True)),
      ae_ckpt=str(args.get('ae_path') or '') if args.get('train_diffusion', True) else '')
  return dataclasses.replace(config, model=model, train=train)


def params_from_vectors(vectors: Mapping[str, np.ndarray]) -> dict:
  state = {k[len('param/'):]: v for k, v in vectors.items()
           if k.startswith('param/') and k[len('param/'):] not in SKIP}
  return state_dict_lib.params_from_state_dict(state)


def read_model(state_dict_path: str, args_path: str, data_dir: str | None = None):
  """(config, model, params) of a GeoLDM run: its state dict (`.npz`, or torch's
  `generative_model_ema.npy`) and its `args.pickle` (or JSON); one-line
  ValueErrors for unreadable files or parameters that do not fit the args."""
  args = edm_args.read_args(args_path)
  config = config_from_args(args)
  types = registry.atom_types(config.dataset, data_dir)
  config = dataclasses.replace(config, num_atom_types=len(types))
  hist = registry.statistics(config.dataset, data_dir).n_nodes_histogram
  model = LatentDiffusion(config, hist, len(types))
  state = state_dict_lib.read_state_dict(state_dict_path)
  params = state_dict_lib.params_from_state_dict(
      {k: v for k, v in state.items() if k not in SKIP})
  try:
    model.check_params(params)
  except ValueError as e:
    raise ValueError(f'{state_dict_path}: {e}') from e
  return config, model, params


def _check(ours, ref, tol) -> dict[str, float]:
  return parity.array_error(ours, ref, rtol=tol[1], atol=tol[0])


class _Batch:
  """The file's dense batch on our padded graph, and conversions both ways."""

  def __init__(self, vectors, x_key: str, atomic_numbers):
    self.node_mask = vectors['batch/node_mask']
    self.graph = parity.graph_from_dense(vectors['batch/one_hot'], vectors['batch/charges'],
                                         vectors[x_key], self.node_mask, atomic_numbers)
    self.n_total = self.graph.nodes['positions'].shape[0]

  def nodes(self, a):
    return parity.nodes_from_dense(np.asarray(a), self.node_mask, self.n_total)

  def dense(self, a):
    return parity.dense_from_nodes(a, self.node_mask)

  def noise(self, vectors, prefix: str):
    """GeoLDM's `noise(raw_x, raw_h)`: zero-CoG x, masked h."""
    x = center_of_gravity.remove_mean(self.nodes(vectors[f'{prefix}_x']), self.graph)
    return jnp.concatenate([x, self.nodes(vectors[f'{prefix}_h'])], -1)

  def t_int(self, a):
    return jnp.concatenate([jnp.asarray(np.asarray(a).reshape(-1), jnp.int32),
                            jnp.zeros(1, jnp.int32)])


def setup(vectors: Mapping[str, np.ndarray]):
  """(model, params) of a GeoLDM vectors file."""
  config = config_from_args(json.loads(str(vectors['args'])))
  hist = {int(n): float(p) for n, p in zip(vectors['const/n_nodes_values'],
                                           vectors['const/n_nodes_prob'])}
  n_types = vectors['batch/one_hot'].shape[-1]
  config = dataclasses.replace(config, num_atom_types=n_types)
  return LatentDiffusion(config, hist, n_types), params_from_vectors(vectors)


def parity_report(path: str) -> dict[str, dict[str, float]]:
  """{quantity: error} for every checked array of a `geoldm_parity_*.npz` file."""
  v = parity.load_vectors(path)
  model, params = setup(v)
  z = elements.atomic_numbers(registry.atom_types('qm9'))
  out: dict[str, dict[str, float]] = {}

  def per_molecule(a, b):
    return np.asarray(a)[:b.graph.n_node.shape[0] - 1]

  def common(prefix, b, terms, *, recon_tol):
    lat, dec, rec = terms['latent'], terms['dec'], terms['rec']
    out[f'{prefix}/enc/x_mean'] = _check(b.dense(lat['x_mean']), v[f'{prefix}/enc/x_mean'],
                                         TOL_NETWORK)
    out[f'{prefix}/enc/h_mean'] = _check(b.dense(lat['h_mean']), v[f'{prefix}/enc/h_mean'],
                                         TOL_NETWORK)
    out[f'{prefix}/enc/x_std'] = _check(per_molecule(lat['x_std'], b),
                                        v[f'{prefix}/enc/x_std'][:, 0, 0], (0.0, 1e-5))
    out[f'{prefix}/latent/z'] = _check(b.dense(lat['z']), v[f'{prefix}/latent/z'],
                                       TOL_NETWORK)
    out[f'{prefix}/dec/x'] = _check(b.dense(dec['x']), v[f'{prefix}/dec/x'], TOL_NETWORK)
    out[f'{prefix}/dec/h'] = _check(b.dense(dec['h']), v[f'{prefix}/dec/h'], TOL_NETWORK)
    for ours, theirs in (('x_sqerr', 'recon_x_sqerr_sum'), ('cat_ce', 'recon_cat_ce_sum'),
                         ('charge_sqerr', 'recon_charge_sqerr_sum')):
      out[f'{prefix}/derived/{theirs}'] = _check(
          per_molecule(rec[ours], b), v[f'{prefix}/derived/{theirs}'], recon_tol)
    out[f'{prefix}/recon/value'] = _check(per_molecule(terms['recon'], b),
                                          v[f'{prefix}/recon/value'], recon_tol)

  # Train mode (the README's training objective), and its gradients.
  b = _Batch(v, 'batch/x_train', z)
  args = (b.graph, b.t_int(v['rand/train/t_int']),
          jnp.concatenate([b.noise(v, 'rand/train/eps'), b.noise(v, 'rand/train/enc_eps')], -1))
  terms = jax.jit(model.train_terms)(params, *args)
  common('train', b, terms, recon_tol=TOL_LOSS)
  out['train/dyn/eps_pred'] = _check(b.dense(terms['eps_hat']), v['train/dyn/eps_pred'],
                                     TOL_NETWORK)
  for ours, theirs, tol in (('error_t', 'train/error_t/value', TOL_LOSS),
                            ('kl_prior', 'train/kl_prior', TOL_KL),
                            ('loss_ld', 'train/loss_ld/value', TOL_LOSS),
                            ('neg_log_pxh', 'train/neg_log_pxh', TOL_LOSS)):
    out[theirs] = _check(per_molecule(terms[ours], b), v[theirs], tol)
  loss, grads = jax.jit(jax.value_and_grad(model.train_loss))(params, *args)
  out['train/nll'] = _check(loss, v['train/nll'], TOL_LOSS)
  with_grad = json.loads(str(v['meta/params_with_grad']))
  for name in with_grad:
    out[f'grad/{name}'] = _check(state_dict_lib.torch_view(grads, name), v[f'grad/{name}'],
                                 TOL_GRAD)
  norm = np.sqrt(sum(float(np.sum(np.square(v[f'grad/{n}'], dtype=np.float64)))
                     for n in with_grad))
  ours_norm = np.sqrt(sum(float(jnp.sum(jnp.square(g))) for g in jax.tree.leaves(grads)))
  out['grad/global_norm'] = _check(ours_norm, norm, (0.0, 1e-5))

  # Eval mode: what validation and test report.
  b = _Batch(v, 'batch/x_eval', z)
  terms = jax.jit(model.eval_terms)(
      params, b.graph, b.t_int(v['rand/eval/t_int']),
      jnp.concatenate([b.noise(v, 'rand/eval/eps'), b.noise(v, 'rand/eval/enc_eps')], -1),
      b.noise(v, 'rand/eval/eps0'))
  common('eval', b, terms, recon_tol=(1e-4, 1e-5))
  out['eval/dyn_t/eps_pred'] = _check(b.dense(terms['eps_hat']), v['eval/dyn_t/eps_pred'],
                                      TOL_NETWORK)
  out['eval/dyn_0/eps_pred'] = _check(b.dense(terms['eps_hat0']), v['eval/dyn_0/eps_pred'],
                                      TOL_NETWORK)
  for ours, theirs, tol in (('error_t', 'eval/error_t/value', TOL_LOSS),
                            ('error_0', 'eval/error_0/value', TOL_LOSS),
                            ('kl_prior', 'eval/kl_prior', TOL_KL),
                            ('log_const_x', 'eval/log_const_x', TOL_LOSS),
                            ('log_const_h', 'eval/log_const_h', TOL_LOSS),
                            ('loss_ld', 'eval/loss_ld/value', TOL_EVAL_LD),
                            ('neg_log_pxh', 'eval/neg_log_pxh', TOL_EVAL_LD)):
    out[theirs] = _check(per_molecule(terms[ours], b), v[theirs], tol)
  nll = float(np.mean(per_molecule(terms['nll_per_molecule'], b)))
  out['eval/nll'] = _check(nll, v['eval/nll'], TOL_EVAL_LD)

  # The sampler: three ancestral steps (the zoo's), p(z | z_0) and the decoder.
  out.update(_sampler_report(v, model, params, z))

  # The stage-1 autoencoder's loss.
  b = _Batch(v, 'batch/x_train', z)
  terms = jax.jit(model.vae_terms)(params, b.graph, b.noise(v, 'rand/vae/eps'))
  common('vae', b, terms, recon_tol=TOL_LOSS)
  for ours, theirs in (('kl_h', 'vae/kl_h'), ('kl_x', 'vae/kl_x'),
                       ('vae_loss', 'vae/vae_loss')):
    out[theirs] = _check(per_molecule(terms[ours], b), v[theirs], TOL_LOSS)
  out['vae/nll'] = _check(np.mean(per_molecule(terms['nll_per_molecule'], b)), v['vae/nll'],
                          TOL_LOSS)
  return out


def _sampler_report(v, model, params, atomic_numbers) -> dict[str, dict[str, float]]:
  mask = v['sample/node_mask']
  sizes = mask[..., 0].sum(1).astype(int)
  graph = batching.placeholder_graph(sizes, atomic_numbers, batching.exact_budget(sizes))
  n_total = graph.nodes['positions'].shape[0]
  nodes = lambda a: parity.nodes_from_dense(np.asarray(a), mask, n_total)
  dense = lambda a: parity.dense_from_nodes(a, mask)

  def noise(prefix):
    x = center_of_gravity.remove_mean(nodes(v[f'{prefix}_x']), graph)
    return jnp.concatenate([x, nodes(v[f'{prefix}_h'])], -1)
  out = {}
  z = noise('rand/sample/zT')
  out['sample/zT'] = _check(dense(z), v['sample/zT'], TOL_NETWORK)
  per_graph = lambda a: jnp.concatenate([jnp.asarray(a, jnp.float32).reshape(-1),
                                         jnp.zeros(1)])
  reverse = jax.jit(lambda *a: ancestral.p_zs_given_zt(model, params, graph, *a))
  for k in range(3):
    s, t = per_graph(v[f'sample/step{k}/s']), per_graph(v[f'sample/step{k}/t'])
    step = reverse(s, t, z, noise(f'rand/sample/step{k}_eps'))
    z = step['z_s']
    out[f'sample/step{k}/zs'] = _check(dense(z), v[f'sample/step{k}/zs'], TOL_NETWORK)
  xh = jax.jit(model.p_z_given_z0)(params, graph, z, noise('rand/sample/final_eps'))
  out['sample/p_x_given_z0/x'] = _check(dense(xh[:, :3]), v['sample/p_x_given_z0/x'],
                                        TOL_NETWORK)
  out['sample/p_x_given_z0/h_latent'] = _check(
      dense(xh[:, 3:]), v['sample/p_x_given_z0/h_latent'], TOL_NETWORK)
  mol = jax.jit(model.decode_molecules)(params, graph, xh)
  out['sample/decode/x'] = _check(dense(mol['x']), v['sample/decode/x'], TOL_NETWORK)
  out['sample/decode/one_hot'] = _check(dense(mol['one_hot']), v['sample/decode/one_hot'],
                                        (0.0, 0.0))
  if 'charges' in mol:
    out['sample/decode/charges'] = _check(dense(mol['charges']), v['sample/decode/charges'],
                                          (0.0, 0.0))
  return out


def _tree_check(tree, v, prefix: str, names, tol) -> dict[str, float]:
  """The worst error over the named parameters (torch layout) of a tree."""
  return parity.tree_error(tree, v, prefix, names, rtol=tol[1], atol=tol[0])


def train_parity_report(path: str) -> dict[str, dict[str, float]]:
  """Replays a `geoldm_train_parity_*.npz` file: three optimizer steps through the
  training skeleton's own functions (`state.mean_loss_and_grads`, then
  `state.apply_gradients`: EDM clipping, torch-exact AdamW-amsgrad, EMA over every
  parameter, the frozen encoder included) with the file's draws."""
  v = parity.load_vectors(path)
  model, params = setup(v)
  args = json.loads(str(v['args']))
  z = elements.atomic_numbers(registry.atom_types('qm9'))
  b = _Batch(v, 'batch/x_train', z)
  graphs = jax.tree.map(lambda a: jnp.asarray(a)[None], b.graph)
  tx = optimizer.torch_adamw_amsgrad(float(args.get('lr', 1e-4)), weight_decay=1e-12)
  state = train_state.new_state(params, tx, optimizer.init_clip_queue())
  names = [n for n in json.loads(str(v['meta/param_order'])) if n not in SKIP]
  with_grad = [n for n in names if f'step0/grad/{n}' in v]
  out: dict[str, dict[str, float]] = {}

  @jax.jit
  def loss_and_grads(p, t_int, eps, enc_noise):
    def sum_fn(p, graph):
      terms = model.train_terms(p, graph, t_int, jnp.concatenate([eps, enc_noise], -1))
      return masking.graph_sum(terms['nll_per_molecule'], graph)
    return train_state.mean_loss_and_grads(sum_fn, p, graphs)
  apply = jax.jit(functools.partial(train_state.apply_gradients, tx=tx,
                                    ema_decay=float(args.get('ema_decay', 0.9999))))
  for k in range(3):
    sp = f'step{k}/'
    t_int = b.t_int(v[f'rand/{sp}t_int'])
    eps, enc_noise = b.noise(v, f'rand/{sp}eps'), b.noise(v, f'rand/{sp}enc_eps')

    loss, grads = loss_and_grads(state.params, t_int, eps, enc_noise)
    out[sp + 'nll'] = _check(loss, v[sp + 'nll'], TOL_LOSS)
    out[sp + 'grad'] = _tree_check(grads, v, sp + 'grad/', with_grad, TOL_GRAD)
    state, info = apply(state, grads, loss)
    out[sp + 'grad_norm'] = _check(info['grad_norm'], v[sp + 'grad_norm'], (0.0, 1e-5))
    out[sp + 'clip_threshold'] = _check(info['max_grad_norm'], v[sp + 'clip_threshold'],
                                        (0.0, 1e-6))
    out[sp + 'clip_coef'] = _check(info['clip_coef'], v[sp + 'clip_coef'], (0.0, 1e-6))
    queue = np.asarray(state.clip_queue.items)[:int(state.clip_queue.count)]
    out[sp + 'queue_after'] = _check(np.sort(queue), np.sort(v[sp + 'queue_after']),
                                     (0.0, 1e-5))
    out[sp + 'param'] = _tree_check(state.params, v, sp + 'param/', names, (1e-5, 0.0))
    out[sp + 'ema'] = _tree_check(state.ema_params, v, sp + 'ema/', names, (1e-5, 0.0))
  return out
