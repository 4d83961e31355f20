"""Parity replays: vectors written by the original PyTorch EDM (PARITY.md,
TRAIN_PARITY.md) run through our model, objective, sampler and train step.

`parity_report(path)` and `train_parity_report(path)` return the error of every
checked array; nothing about width, depth, attention, molecule count, padding or
dataset (QM9, or GEOM-Drugs with its histogram in `config_json`:
tests/parity/edm_geom/PARITY_GEOM.md) is assumed beyond what the file's
`config_json`, `param/*` and `input/*` say. Where the file holds the reference's
float64 re-run, each array's report carries the reference's own float32 error
(`f64_dev`) beside ours.
"""

from __future__ import annotations

import json
from typing import Mapping

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from jax.sharding import Mesh

from edm_zoo.compat import edm_args, state_dict as state_dict_lib
from edm_zoo.data import batching, elements, registry
from edm_zoo.methods.diffusion.samplers import ancestral, chain
from edm_zoo.methods.diffusion.objective import Diffusion
from edm_zoo.training import optimizer, state as train_state


# Free-running training steps after the first: each update's float32 rounding
# (~1 ulp of a parameter) is multiplied by the next gradient, whose norm reaches 4e6
# in the first steps of the GEOM-Drugs configuration; measured at drug size
# (PARITY_GEOM.md): gradients within 1e-4 relative L2, norms within 1.1e-4.
FREE_RTOL = 3e-4
FREE_GRAD_REL_L2 = 5e-4
# The same step's gradients at the reference's own parameters: float32 reduction
# order only (measured 6e-7 to 1.2e-6 at 181 atoms).
TEACHER_FORCED_GRAD_REL_L2 = 1e-5


# --- Dense (B, N, .) <-> our padded graphs.

def graph_from_dense(one_hot: np.ndarray, charges: np.ndarray, x: np.ndarray,
                     node_mask: np.ndarray, atomic_numbers,
                     budget: batching.PaddingBudget | None = None) -> jraph.GraphsTuple:
  """A padded GraphsTuple holding EDM's dense batch (by default padded by one
  graph and one node; `budget` pads several batches alike)."""
  mask = node_mask[..., 0] > 0
  molecules = [{'positions': x[b][mask[b]],
                'charges': np.rint(charges[b, mask[b], 0]).astype(np.int32),
                'gdb_index': b} for b in range(len(mask))]
  sizes = mask.sum(1)
  graph = batching.build_graph(molecules, atomic_numbers, budget or batching.exact_budget(sizes))
  types = np.argmax(graph.nodes['one_hot'], -1)
  want = np.concatenate([np.argmax(one_hot[b][mask[b]], -1) for b in range(len(mask))])
  if not np.array_equal(types[:len(want)], want):
    raise ValueError('one_hot disagrees with charges in the vectors file.')
  return graph


def nodes_from_dense(a: np.ndarray, node_mask: np.ndarray, n_node_total: int):
  """[B, N, D] -> [n_node_total, D] (real nodes first, zero padding)."""
  real = a[node_mask[..., 0] > 0]
  pad = np.zeros((n_node_total - len(real),) + real.shape[1:], real.dtype)
  return jnp.asarray(np.concatenate([real, pad]))


def dense_from_nodes(a, node_mask: np.ndarray) -> np.ndarray:
  mask = node_mask[..., 0] > 0
  out = np.zeros(mask.shape + np.shape(a)[1:], np.float32)
  out[mask] = np.asarray(a)[:mask.sum()]
  return out


def array_error(ours, ref, *, rtol: float = 1e-4, atol: float = 1e-5) -> dict[str, float]:
  """Max absolute and relative error of an array, and whether every element is
  within atol + rtol * |ref|."""
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64).reshape(ours.shape)
  diff = np.abs(ours - ref)
  return {'max_abs': float(diff.max(initial=0.0)),
          'max_rel': float((diff / np.maximum(np.abs(ref), 1e-30)).max(initial=0.0)),
          'ok': bool(np.all(diff <= rtol * np.abs(ref) + atol)), 'rtol': rtol, 'atol': atol}


def load_vectors(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read parity vectors {path}: {e}') from e


def setup_from_vectors(vectors: Mapping[str, np.ndarray], prefix: str = 'param/',
                       n_nodes_histogram: dict[int, int] | None = None):
  """(config, model, params, graph) rebuilt from a PARITY.md-format file."""
  args = json.loads(str(vectors['config_json']))
  config = edm_args.config_from_args(args)
  if n_nodes_histogram is None and 'n_nodes_histogram' in args:
    # The original's dataset_info histogram, written by the vector generator.
    n_nodes_histogram = {int(k): int(n) for k, n in args['n_nodes_histogram'].items()}
  if n_nodes_histogram is None:
    n_nodes_histogram = registry.statistics(config.dataset).n_nodes_histogram
  model = Diffusion(config, n_nodes_histogram)
  state = {k[len(prefix):]: v for k, v in vectors.items() if k.startswith(prefix)}
  params = state_dict_lib.params_from_state_dict(state)
  graph = graph_from_dense(vectors['input/one_hot'], vectors['input/charges'],
                           vectors['input/x'], vectors['input/node_mask'],
                           elements.atomic_numbers(registry.atom_types(config.dataset)))
  model.check_params(params)
  table = state.get('gamma.gamma')
  if table is not None and config.diffusion.noise_schedule != 'learned':
    if not np.allclose(model.schedule.table, table, rtol=1e-6, atol=1e-6):
      raise ValueError('the gamma table of the file differs from our schedule.')
  return config, model, params, graph


# A term whose float64 twin the file lacks, and the one with the same float32 error.
_SAME_F64 = {'train/kl_prior': 'eval/kl_prior', 'train/net_out': 'eval/net_out',
             'eval/net_out0': 'eval/net_out', 'eval/nll_per_molecule': 'eval/neg_log_pxh'}


def f64_deviation(v: Mapping[str, np.ndarray], key: str) -> float | None:
  """max |float64 - float32| of the reference's own value of `key` (its float64
  re-run, `f64/<key>` or PARITY.md's `f64/<key with _>`), if the file has it."""
  key = key if any(f'f64/{k}' in v for k in (key, key.replace('/', '_'))) else _SAME_F64.get(
      key, key)
  for name in (f'f64/{key}', f'f64/{key.replace("/", "_")}'):
    if name in v and key in v and np.shape(v[name]) == np.shape(v[key]):
      return float(np.max(np.abs(v[name].astype(np.float64) - v[key].astype(np.float64)),
                          initial=0.0))
  return None


def parity_report(path: str) -> dict[str, dict[str, float]]:
  """Replays a PARITY.md vectors file; returns {array: {max_abs, max_rel, ok}}.

  Nothing about width, depth, attention, molecule count or padding is assumed
  beyond what the file's `config_json`, `param/*` and `input/*` say. Checked:
  the schedule table, both network outputs, every eval-mode NLL term and
  `nll_per_molecule`, the train-mode loss terms, one sampler step at t_step and
  at T, and the final p(x, h | z0).
  """
  v = load_vectors(path)
  _, model, params, graph = setup_from_vectors(v)
  mask = v['input/node_mask']
  n_total = graph.nodes['mask'].shape[0]
  B = mask.shape[0]
  nodes = lambda k: nodes_from_dense(v[k], mask, n_total)
  per_graph = lambda a: jnp.concatenate([jnp.asarray(a).reshape(B),
                                         jnp.zeros(1, jnp.asarray(a).dtype)])
  report = {}
  # KL(q(z_T | x) || N(0, I)) cancels terms of size 3 (N - 1) down to ~0.1: its
  # float32 error is an ulp or two of those terms.
  atol = {'kl_prior': max(1e-5, 2e-7 * 3 * float(mask[..., 0].sum(1).max()))}

  def check(name, ours, ref_key, node_level=False, whole=False):
    if node_level:
      ours = dense_from_nodes(ours, mask)
    elif not whole:
      ours = np.asarray(ours)[:B]
    report[name] = array_error(ours, v[ref_key], atol=atol.get(ref_key.split('/')[-1], 1e-5))
    dev = f64_deviation(v, ref_key)
    if dev is not None:
      # Two float32 codes each stray from the float64 result by about the
      # reference's own float32 error: allow 4 times that beside the fixed rule.
      report[name]['f64_dev'] = dev
      report[name]['ok'] |= report[name]['max_abs'] <= 4 * dev

  if 'schedule/gamma' in v:
    check('schedule/gamma', model.gamma(params, jnp.arange(model.T + 1) / model.T),
          'schedule/gamma', whole=True)
  terms = jax.jit(model.eval_terms)(params, graph, per_graph(v['fixed/t_int']),
                                    nodes('fixed/eps'), nodes('fixed/eps0'))
  for key, value in terms.items():
    if f'eval/{key}' in v:
      check(f'eval/{key}', value, f'eval/{key}', node_level=value.ndim == 2)
  report['eval/nll_batch_mean'] = array_error(
      np.mean(np.asarray(terms['nll_per_molecule'])[:B]), v['eval/nll_batch_mean'])
  terms = jax.jit(model.train_terms)(params, graph, per_graph(v['fixed/t_train_int']),
                                     nodes('fixed/eps_train'))
  for key, value in terms.items():
    if f'train/{key}' in v:
      check(f'train/{key}', value, f'train/{key}', node_level=value.ndim == 2)
  report['train/nll_batch_mean'] = array_error(
      np.mean(np.asarray(terms['nll_per_molecule'])[:B]), v['train/nll_batch_mean'])

  step = jax.jit(lambda s, t, z, n: ancestral.p_zs_given_zt(model, params, graph, s, t, z, n))
  T = model.T
  for suffix, t_int, z_key, noise_key in (
      ('_step', int(v['sample/t_step']), 'sample/zt_step_in', 'sample/noise_step'),
      ('_stepT', T, 'sample/zT_prior', 'sample/noise_stepT')):
    t = jnp.full(B + 1, t_int, jnp.float32) / T
    s = jnp.full(B + 1, t_int - 1, jnp.float32) / T
    out = step(s, t, nodes(z_key), nodes(noise_key))
    check(f'sample/mu{suffix}', out['mu'], f'sample/mu{suffix}', node_level=True)
    check(f'sample/sigma{suffix}', out['sigma'], f'sample/sigma{suffix}')
    check(f'sample/zs{suffix}', out['z_s'], f'sample/zs{suffix}', node_level=True)
  final = jax.jit(lambda z, n: chain.p_xh_given_z0(model, params, graph, z, n))(
      nodes('sample/z0_in'), nodes('sample/noise_final'))
  check('sample/mu_x_final', final['mu_x'], 'sample/mu_x_final', node_level=True)
  check('sample/sigma_x_final', final['sigma_x'], 'sample/sigma_x_final')
  for key in ('x', 'h_cat', 'h_int'):
    if f'sample/{key}_final' in v:  # No h_int without the charge feature (GEOM-Drugs).
      check(f'sample/{key}_final', final[key], f'sample/{key}_final', node_level=True)
  return report


def tree_error(tree: dict, v: Mapping[str, np.ndarray], prefix: str, names,
                rtol: float, atol: float) -> dict[str, float]:
  """Max errors over every named parameter-shaped array `prefix + name`."""
  worst = {'max_abs': 0.0, 'max_rel': 0.0, 'ok': True, 'rtol': rtol, 'atol': atol}
  for name in names:
    ours = state_dict_lib.torch_view(tree, name).astype(np.float64)
    ref = v[prefix + name].astype(np.float64)
    diff = np.abs(ours - ref)
    worst['max_abs'] = max(worst['max_abs'], float(diff.max(initial=0)))
    worst['max_rel'] = max(worst['max_rel'], float(
        (diff / np.maximum(np.abs(ref), 1e-30)).max(initial=0)))
    worst['ok'] &= bool(np.all(diff <= rtol * np.abs(ref) + atol))
  return worst


def _scalar_error(ours, ref, rtol: float, atol: float = 0.0) -> dict[str, float]:
  ours, ref = float(ours), float(ref)
  diff = abs(ours - ref)
  return {'max_abs': diff, 'max_rel': diff / max(abs(ref), 1e-30),
          'ok': diff <= rtol * abs(ref) + atol, 'rtol': rtol, 'atol': atol}


def rel_l2_error(tree: dict, v: Mapping[str, np.ndarray], prefix: str, names) -> float:
  """||ours - reference|| / ||reference|| over every named array together: the
  scale-free float32 distance of a whole gradient or optimizer moment."""
  num = den = 0.0
  for name in names:
    ours = state_dict_lib.torch_view(tree, name).astype(np.float64)
    ref = v[prefix + name].astype(np.float64)
    num += float(((ours - ref) ** 2).sum())
    den += float((ref ** 2).sum())
  return float(np.sqrt(num / max(den, 1e-300)))


def _rel_l2_check(value: float, tol: float) -> dict[str, float]:
  return {'max_abs': value, 'max_rel': value, 'ok': value <= tol, 'rtol': tol, 'atol': 0.0}


def train_parity_report(path: str) -> dict[str, dict[str, float]]:
  """Replays a TRAIN_PARITY.md file end to end, for both queue variants: each step
  runs the jitted step that training runs (`train_state.make_step_fns`, on a
  one-device mesh) with the reference's t and eps; the gradients are checked
  through `loss_and_grads`, the function that step differentiates with.

  Beside the free-running chain, every step is replayed teacher-forced: the loss
  and gradients of step k >= 1 at the reference's own parameters after step k - 1
  (`step{k}/loss_teacher_forced`, `grad_teacher_forced`), and clipping, AdamW and
  EMA applied to the reference's own gradients from the start
  (`param_teacher_forced`, `ema_teacher_forced`): these isolate each step's
  arithmetic from float32 differences that a spiking gradient amplifies.

  Returns {array: {max_abs, max_rel, ok, rtol, atol}} with the tolerances that
  TRAIN_PARITY.md suggests for an end-to-end float32 reimplementation, widened
  for the free-running steps after the first (FREE_RTOL, FREE_GRAD_REL_L2).
  """
  v = load_vectors(path)
  args = json.loads(str(v['config_json']))
  _, model, params, graph = setup_from_vectors(v, prefix='init/param/')
  opt = args.get('optimizer', {})
  betas = opt.get('betas', (0.9, 0.999))
  lr = float(opt.get('lr', args.get('lr', 1e-4)))
  tx = optimizer.torch_adamw_amsgrad(
      lr, b1=betas[0], b2=betas[1],
      eps=float(opt.get('eps', 1e-8)), weight_decay=float(opt.get('weight_decay', 1e-12)))
  ema_decay = float(args.get('ema_decay', 0.9999))
  max_len = int(args.get('queue_max_len', 50))
  K = int(args.get('K', 3))
  mask = v['input/node_mask']
  n_total = graph.nodes['mask'].shape[0]
  graphs = jax.tree.map(lambda a: jnp.asarray(a)[None], graph)
  with_grad = sorted({k[len('step0/grad/'):] for k in v if k.startswith('step0/grad/')})
  all_params = [n for n in (k[len('init/param/'):] for k in v if k.startswith('init/param/'))
                if n not in state_dict_lib.SKIP]

  apply_fn = jax.jit(lambda st, g, loss: train_state.apply_gradients(
      st, g, loss, tx=tx, ema_decay=ema_decay))
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  _, step_fn = train_state.make_step_fns(model, tx, ema_decay=ema_decay, mesh=mesh)
  grad_fn = jax.jit(lambda p, t_int, eps: train_state.loss_and_grads(
      model, p, graphs, t_int, eps, mesh))
  report = {}
  fixed = {n: v['init/param/' + n] for n in state_dict_lib.SKIP if 'init/param/' + n in v}
  for prefix in ('', 'clipped/'):
    if f'{prefix}step0/loss' not in v:
      continue
    state = train_state.new_state(
        jax.tree.map(jnp.copy, params), tx,  # The step donates its state.
        optimizer.init_clip_queue(v[f'{prefix}queue_init_items'], max_len))
    forced = train_state.new_state(
        jax.tree.map(jnp.copy, params), tx,
        optimizer.init_clip_queue(v[f'{prefix}queue_init_items'], max_len))
    for k in range(K):
      sp = f'{prefix}step{k}/'
      t_int = jnp.concatenate([jnp.asarray(v[sp + 't_int'], jnp.int32),
                               jnp.zeros(1, jnp.int32)])[None]
      eps = nodes_from_dense(v[sp + 'eps'], mask, n_total)[None]
      if k:
        # Teacher-forced: the loss and gradients at the reference's own parameters
        # after step k-1, which isolate this step's arithmetic from the float32
        # differences of the earlier updates (which a spike's gradient amplifies).
        ref_params = state_dict_lib.params_from_state_dict(
            {**fixed, **{n: v[f'{prefix}step{k - 1}/param/{n}'] for n in all_params}})
        ref_loss, ref_grads = grad_fn(ref_params, t_int, eps)
        report[sp + 'loss_teacher_forced'] = _scalar_error(ref_loss, v[sp + 'loss'], 2e-6)
        report[sp + 'grad_teacher_forced'] = _rel_l2_check(
            rel_l2_error(ref_grads, v, sp + 'grad/', with_grad), TEACHER_FORCED_GRAD_REL_L2)
      _, grads = grad_fn(state.params, t_int, eps)
      # Free-running: element by element, or as a whole within float32's reach.
      report[sp + 'grad'] = tree_error(grads, v, sp + 'grad/', with_grad, 1e-4, 2e-5)
      rel = rel_l2_error(grads, v, sp + 'grad/', with_grad)
      report[sp + 'grad']['rel_l2'] = rel
      report[sp + 'grad']['ok'] |= rel <= FREE_GRAD_REL_L2
      state, info = step_fn(state, graphs, t_int, eps)
      free = 2e-6 if k == 0 else FREE_RTOL
      report[sp + 'loss'] = _scalar_error(info['loss'], v[sp + 'loss'], free)
      report[sp + 'grad_norm'] = _scalar_error(info['grad_norm'], v[sp + 'grad_norm'],
                                               1e-5 if k == 0 else FREE_RTOL)
      report[sp + 'max_grad_norm'] = _scalar_error(
          info['max_grad_norm'], v[sp + 'max_grad_norm'], 1e-6 if k < 2 else FREE_RTOL)
      report[sp + 'clip_coef'] = _scalar_error(info['clip_coef'], v[sp + 'clip_coef'],
                                               1e-5 if k == 0 else FREE_RTOL)
      same = bool(info['clipped']) == bool(v[sp + 'clipped'])
      report[sp + 'clipped'] = {'max_abs': float(not same), 'max_rel': float(not same),
                                'ok': same, 'rtol': 0.0, 'atol': 0.0}
      queue = np.asarray(state.clip_queue.items)[:int(state.clip_queue.count)]
      ref_queue = np.asarray(v[sp + 'queue_after'])
      report[sp + 'queue_after'] = (
          array_error(queue, ref_queue, rtol=1e-4 if k == 0 else FREE_RTOL)
          if queue.shape == ref_queue.shape else
          {'max_abs': np.inf, 'max_rel': np.inf, 'ok': False})
      # Free-running, an element whose gradient is at float32 noise level can take
      # Adam's full step either way: after the first step, within two steps (2 lr).
      atol = 1e-6 if k == 0 else max(1e-6, 2 * lr)
      report[sp + 'param'] = tree_error(state.params, v, sp + 'param/', all_params, 0, atol)
      report[sp + 'ema'] = tree_error(state.ema_params, v, sp + 'ema/', all_params, 0, 1e-6)
      # Teacher-forced optimizer: clipping, AdamW and EMA applied to the reference's
      # own gradients, from the start; only this arithmetic's rounding remains.
      ref_grads = state_dict_lib.params_from_state_dict(
          {n: v[sp + 'grad/' + n] for n in with_grad})
      forced, _ = apply_fn(forced, ref_grads, jnp.asarray(v[sp + 'loss']))
      report[sp + 'param_teacher_forced'] = tree_error(forced.params, v, sp + 'param/',
                                                       all_params, 0, 1e-7)
      report[sp + 'ema_teacher_forced'] = tree_error(forced.ema_params, v, sp + 'ema/',
                                                     all_params, 0, 1e-7)
    amsgrad = state.opt_state[0]
    for ours, key, atol in ((amsgrad.mu, 'exp_avg', 1e-6), (amsgrad.nu, 'exp_avg_sq', 1e-8),
                            (amsgrad.nu_max, 'max_exp_avg_sq', 1e-8)):
      report[f'{prefix}opt/{key}'] = tree_error(ours, v, f'{prefix}opt/{key}/', with_grad,
                                                 1e-3, atol)
      # The moments are sums of the free-running gradients: judged as those are.
      rel = rel_l2_error(ours, v, f'{prefix}opt/{key}/', with_grad)
      report[f'{prefix}opt/{key}']['rel_l2'] = rel
      report[f'{prefix}opt/{key}']['ok'] |= rel <= FREE_GRAD_REL_L2
    report[f'{prefix}opt/step'] = _scalar_error(amsgrad.count, v[f'{prefix}opt/step'], 0)
  return report


