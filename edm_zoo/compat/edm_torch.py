"""Bridges to the original PyTorch EDM: state dicts, args, parity reports.

* `params_from_state_dict` maps EDM parameter names to our Haiku params
  (`dynamics.egnn.e_block_0.gcl_0.edge_mlp.0.weight` -> module
  `egnn/e_block_0/gcl_0/edge_mlp_0`, param `w` = weight.T).
* `config_from_args` maps EDM's `args` (args.pickle or PARITY.md's `config_json`).
* `parity_report(path)` replays any vectors file in the PARITY.md format through our
  model, objective and sampler and returns the error of every checked array.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from edm_zoo import conditioning
from edm_zoo.config import Config, DiffusionConfig, ModelConfig
from edm_zoo.data import batching
from edm_zoo.diffusion import sampler
from edm_zoo.diffusion.objective import Diffusion

_MODEL_NAMES = {'egnn_dynamics': 'egnn', 'gnn_dynamics': 'gnn'}
_SKIP = {'buffer', 'gamma.gamma'}  # A dummy buffer; the predefined table is rebuilt.


def config_from_args(args: Mapping[str, Any]) -> Config:
  """Our Config from EDM's training args (a dict)."""
  model = args.get('model', 'egnn_dynamics')
  if model not in _MODEL_NAMES:
    raise ValueError(f'EDM model {model!r} is not supported; allowed: '
                     f'{sorted(_MODEL_NAMES)}.')
  remove_h = bool(args.get('remove_h', False))
  dataset = args.get('dataset', 'qm9')
  if dataset not in ('qm9', 'qm9_first_half', 'qm9_second_half'):
    raise ValueError(f'EDM dataset {dataset!r} is not supported; allowed: qm9, '
                     'qm9_first_half, qm9_second_half.')
  if remove_h and dataset != 'qm9':
    raise ValueError(f'EDM has no {dataset} without hydrogens.')
  return Config(
      model=ModelConfig(
          name=_MODEL_NAMES[model], nf=int(args['nf']), n_layers=int(args['n_layers']),
          inv_sublayers=int(args.get('inv_sublayers', 1)),
          attention=bool(args.get('attention', True)),
          tanh=bool(args.get('tanh', True)),
          coords_range=float(args.get('coords_range', 15.0)),
          norm_constant=float(args.get('norm_constant', 1.0)),
          normalization_factor=float(args.get('normalization_factor', 1.0)),
          aggregation=args.get('aggregation_method', 'sum'),
          sin_embedding=bool(args.get('sin_embedding', False)),
          condition_time=bool(args.get('condition_time', True))),
      diffusion=DiffusionConfig(
          T=int(args.get('diffusion_steps', 1000)),
          noise_schedule=args.get('diffusion_noise_schedule', 'polynomial_2'),
          noise_precision=float(args.get('diffusion_noise_precision', 1e-5)),
          loss_type=args.get('diffusion_loss_type', 'l2'),
          norm_values=tuple(float(v) for v in args.get('normalize_factors', (1, 4, 1))),
          include_charges=bool(args.get('include_charges', True))),
      dataset='qm9_noh' if remove_h else dataset,
      conditioning=tuple(args.get('conditioning') or ()),
      num_atom_types=int(args.get('num_classes', 4 if remove_h else 5)))


def haiku_name(torch_name: str) -> tuple[str, str, bool]:
  """(module path, param name, transpose?) of one EDM state-dict entry."""
  parts = torch_name.split('.')
  if parts[0] == 'dynamics':
    parts = parts[1:]
  *path, leaf = parts
  merged: list[str] = []
  for p in path:
    if re.fullmatch(r'\d+', p) and merged:
      merged[-1] += f'_{p}'
    else:
      merged.append(p)
  if leaf == 'weight':
    return '/'.join(merged), 'w', True
  if leaf == 'bias':
    return '/'.join(merged), 'b', False
  return '/'.join(merged), leaf, False  # e.g. gamma.gamma_0


def params_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Haiku params from an EDM state dict (arrays keyed by PyTorch names)."""
  params: dict[str, dict[str, jax.Array]] = {}
  for name, value in state_dict.items():
    if name in _SKIP:
      continue
    module, leaf, transpose = haiku_name(name)
    value = np.asarray(value, np.float32)
    params.setdefault(module, {})[leaf] = jnp.asarray(value.T if transpose else value)
  return params


def probe_graph(remove_h: bool, context_nf: int = 0) -> jraph.GraphsTuple:
  """A one-molecule padded batch, for shape checks and initialisation (with a
  zero context of `context_nf` properties for a conditional model)."""
  from edm_zoo.data import qm9  # pylint: disable=g-import-not-at-top
  z = qm9.atomic_numbers(remove_h)
  molecule = {'positions': np.zeros((3, 3), np.float32), 'charges': np.full(3, z[0])}
  if context_nf:
    molecule[conditioning.CONTEXT] = np.zeros(context_nf, np.float32)
  return batching.build_graph([molecule], z, batching.PaddingBudget(4, 6, 2))


def check_params(model: Diffusion, params: dict, graph: jraph.GraphsTuple) -> None:
  """Raises ValueError unless `params` has exactly the model's names and shapes."""
  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), graph)
  want = {(m, k): v.shape for m, d in expected.items() for k, v in d.items()}
  have = {(m, k): v.shape for m, d in params.items() for k, v in d.items()}
  if want != have:
    missing = sorted(set(want) - set(have))[:3]
    extra = sorted(set(have) - set(want))[:3]
    wrong = [k for k in set(want) & set(have) if want[k] != have[k]][:3]
    raise ValueError(f'state dict does not match the config: missing {missing}, '
                     f'unexpected {extra}, wrong shapes {wrong}.')


# --- Dense (B, N, .) <-> our padded graphs.

def graph_from_dense(one_hot: np.ndarray, charges: np.ndarray, x: np.ndarray,
                     node_mask: np.ndarray, atomic_numbers) -> jraph.GraphsTuple:
  """A padded GraphsTuple holding EDM's dense batch (one padding graph/node)."""
  mask = node_mask[..., 0] > 0
  molecules = [{'positions': x[b][mask[b]],
                'charges': np.rint(charges[b, mask[b], 0]).astype(np.int32),
                'gdb_index': b} for b in range(len(mask))]
  sizes = mask.sum(1)
  budget = batching.PaddingBudget(int(sizes.sum()) + 1,
                                  int((sizes * (sizes - 1)).sum()), len(sizes) + 1)
  graph = batching.build_graph(molecules, atomic_numbers, budget)
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


def _error(ours, ref) -> dict[str, float]:
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64).reshape(ours.shape)
  diff = np.abs(ours - ref)
  return {'max_abs': float(diff.max(initial=0.0)),
          'max_rel': float((diff / np.maximum(np.abs(ref), 1e-30)).max(initial=0.0)),
          'ok': bool(np.all(diff <= 1e-4 * np.abs(ref) + 1e-5))}


def load_vectors(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read parity vectors {path}: {e}') from e


def setup_from_vectors(vectors: Mapping[str, np.ndarray], prefix: str = 'param/',
                       n_nodes_histogram: dict[int, int] | None = None):
  """(config, model, params, graph) rebuilt from a PARITY.md-format file."""
  from edm_zoo.data import qm9  # pylint: disable=g-import-not-at-top
  args = json.loads(str(vectors['config_json']))
  config = config_from_args(args)
  remove_h = config.remove_h
  if n_nodes_histogram is None:
    n_nodes_histogram = qm9.statistics(remove_h).n_nodes_histogram
  model = Diffusion(config, n_nodes_histogram)
  state = {k[len(prefix):]: v for k, v in vectors.items() if k.startswith(prefix)}
  params = params_from_state_dict(state)
  graph = graph_from_dense(vectors['input/one_hot'], vectors['input/charges'],
                           vectors['input/x'], vectors['input/node_mask'],
                           qm9.atomic_numbers(remove_h))
  check_params(model, params, graph)
  table = state.get('gamma.gamma')
  if table is not None and config.diffusion.noise_schedule != 'learned':
    if not np.allclose(model.gamma_table, table, rtol=1e-6, atol=1e-6):
      raise ValueError('the gamma table of the file differs from our schedule.')
  return config, model, params, graph


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

  def check(name, ours, ref_key, node_level=False, whole=False):
    if node_level:
      ours = dense_from_nodes(ours, mask)
    elif not whole:
      ours = np.asarray(ours)[:B]
    report[name] = _error(ours, v[ref_key])

  if 'schedule/gamma' in v:
    check('schedule/gamma', model.gamma(params, jnp.arange(model.T + 1) / model.T),
          'schedule/gamma', whole=True)
  terms = jax.jit(model.eval_terms)(params, graph, per_graph(v['fixed/t_int']),
                                    nodes('fixed/eps'), nodes('fixed/eps0'))
  for key, value in terms.items():
    if f'eval/{key}' in v:
      check(f'eval/{key}', value, f'eval/{key}', node_level=value.ndim == 2)
  report['eval/nll_batch_mean'] = _error(
      np.mean(np.asarray(terms['nll_per_molecule'])[:B]), v['eval/nll_batch_mean'])
  terms = jax.jit(model.train_terms)(params, graph, per_graph(v['fixed/t_train_int']),
                                     nodes('fixed/eps_train'))
  for key, value in terms.items():
    if f'train/{key}' in v:
      check(f'train/{key}', value, f'train/{key}', node_level=value.ndim == 2)
  report['train/nll_batch_mean'] = _error(
      np.mean(np.asarray(terms['nll_per_molecule'])[:B]), v['train/nll_batch_mean'])

  step = jax.jit(lambda s, t, z, n: sampler.p_zs_given_zt(model, params, graph, s, t, z, n))
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
  final = jax.jit(lambda z, n: sampler.p_xh_given_z0(model, params, graph, z, n))(
      nodes('sample/z0_in'), nodes('sample/noise_final'))
  check('sample/mu_x_final', final['mu_x'], 'sample/mu_x_final', node_level=True)
  check('sample/sigma_x_final', final['sigma_x'], 'sample/sigma_x_final')
  for key in ('x', 'h_cat', 'h_int'):
    check(f'sample/{key}_final', final[key], f'sample/{key}_final', node_level=True)
  return report


def _torch_view(tree: dict, name: str) -> np.ndarray:
  module, leaf, transpose = haiku_name(name)
  value = np.asarray(tree[module][leaf])
  return value.T if transpose else value


def _tree_error(tree: dict, v: Mapping[str, np.ndarray], prefix: str, names,
                rtol: float, atol: float) -> dict[str, float]:
  """Max errors over every named parameter-shaped array `prefix + name`."""
  worst = {'max_abs': 0.0, 'max_rel': 0.0, 'ok': True, 'rtol': rtol, 'atol': atol}
  for name in names:
    ours = _torch_view(tree, name).astype(np.float64)
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


def train_parity_report(path: str) -> dict[str, dict[str, float]]:
  """Replays a TRAIN_PARITY.md file end to end: our loss and gradients, clipping,
  AdamW-amsgrad and EMA, for both queue variants.

  Returns {array: {max_abs, max_rel, ok, rtol, atol}} with the tolerances that
  TRAIN_PARITY.md suggests for an end-to-end float32 reimplementation.
  """
  from edm_zoo.training import optimizer, state as train_state  # pylint: disable=g-import-not-at-top
  v = load_vectors(path)
  args = json.loads(str(v['config_json']))
  _, model, params, graph = setup_from_vectors(v, prefix='init/param/')
  opt = args.get('optimizer', {})
  betas = opt.get('betas', (0.9, 0.999))
  tx = optimizer.torch_adamw_amsgrad(
      float(opt.get('lr', args.get('lr', 1e-4))), b1=betas[0], b2=betas[1],
      eps=float(opt.get('eps', 1e-8)), weight_decay=float(opt.get('weight_decay', 1e-12)))
  ema_decay = float(args.get('ema_decay', 0.9999))
  max_len = int(args.get('queue_max_len', 50))
  K = int(args.get('K', 3))
  mask = v['input/node_mask']
  n_total = graph.nodes['mask'].shape[0]
  graphs = jax.tree.map(lambda a: jnp.asarray(a)[None], graph)
  with_grad = sorted({k[len('step0/grad/'):] for k in v if k.startswith('step0/grad/')})
  all_params = [n for n in (k[len('init/param/'):] for k in v if k.startswith('init/param/'))
                if n not in _SKIP]

  def loss(p, t_int, eps):
    return train_state.loss_fn(model, p, graphs, t_int, eps)
  grad_fn = jax.jit(jax.value_and_grad(loss))
  apply = jax.jit(lambda s, g, l: train_state.apply_gradients(
      s, g, l, tx=tx, ema_decay=ema_decay))
  report = {}
  for prefix in ('', 'clipped/'):
    if f'{prefix}step0/loss' not in v:
      continue
    state = train_state.TrainState(
        step=jnp.zeros([], jnp.int32), params=params, ema_params=params,
        opt_state=tx.init(params),
        clip_queue=optimizer.init_clip_queue(v[f'{prefix}queue_init_items'], max_len),
        nonfinite=jnp.zeros([], jnp.int32))
    for k in range(K):
      sp = f'{prefix}step{k}/'
      t_int = jnp.concatenate([jnp.asarray(v[sp + 't_int'], jnp.int32),
                               jnp.zeros(1, jnp.int32)])[None]
      eps = nodes_from_dense(v[sp + 'eps'], mask, n_total)[None]
      value, grads = grad_fn(state.params, t_int, eps)
      report[sp + 'loss'] = _scalar_error(value, v[sp + 'loss'], 2e-6)
      report[sp + 'grad'] = _tree_error(grads, v, sp + 'grad/', with_grad, 1e-4, 2e-5)
      state, info = apply(state, grads, value)
      report[sp + 'grad_norm'] = _scalar_error(info['grad_norm'], v[sp + 'grad_norm'], 1e-5)
      report[sp + 'max_grad_norm'] = _scalar_error(
          info['max_grad_norm'], v[sp + 'max_grad_norm'], 1e-6)
      report[sp + 'clip_coef'] = _scalar_error(info['clip_coef'], v[sp + 'clip_coef'], 1e-5)
      same = bool(info['clipped']) == bool(v[sp + 'clipped'])
      report[sp + 'clipped'] = {'max_abs': float(not same), 'max_rel': float(not same),
                                'ok': same, 'rtol': 0.0, 'atol': 0.0}
      queue = np.asarray(state.clip_queue.items)[:int(state.clip_queue.count)]
      ref_queue = np.asarray(v[sp + 'queue_after'])
      report[sp + 'queue_after'] = (
          _error(queue, ref_queue) if queue.shape == ref_queue.shape else
          {'max_abs': np.inf, 'max_rel': np.inf, 'ok': False})
      report[sp + 'param'] = _tree_error(state.params, v, sp + 'param/', all_params, 0, 1e-6)
      report[sp + 'ema'] = _tree_error(state.ema_params, v, sp + 'ema/', all_params, 0, 1e-6)
    amsgrad = state.opt_state[0]
    for ours, key, atol in ((amsgrad.mu, 'exp_avg', 1e-6), (amsgrad.nu, 'exp_avg_sq', 1e-8),
                            (amsgrad.nu_max, 'max_exp_avg_sq', 1e-8)):
      report[f'{prefix}opt/{key}'] = _tree_error(ours, v, f'{prefix}opt/{key}/', with_grad,
                                                 1e-3, atol)
    report[f'{prefix}opt/step'] = _scalar_error(amsgrad.count, v[f'{prefix}opt/step'], 0)
  return report


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """An EDM state dict from `.npz` (no torch needed) or a torch file (`.npy`/`.pt`)."""
  import os  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise ValueError(f'--state_dict {path}: no such file.')
  if path.endswith('.npz'):
    return load_vectors(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(
        f'{path} is a PyTorch file (EDM saves generative_model_ema.npy with '
        'torch.save); reading it needs torch (`pip install torch==2.13.0`), or '
        'save its state dict as .npz.') from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for a bad file.
    raise ValueError(f'{path} is not a readable PyTorch state dict ({e}).') from e
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def read_args(path: str) -> dict[str, Any]:
  """EDM's args from `args.pickle` (an argparse.Namespace) or a JSON file."""
  import os  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise ValueError(f'--args {path}: no such file.')
  try:
    if path.endswith('.json'):
      with open(path) as f:
        return json.load(f)
    with open(path, 'rb') as f:
      args = pickle.load(f)  # The user's own EDM run folder.
  except Exception as e:
    raise ValueError(f'--args {path}: not an EDM args.pickle or JSON ({e}).') from e
  return dict(vars(args)) if not isinstance(args, dict) else args


def import_checkpoint(state_dict_path: str, args_path: str, out: str,
                      data_dir: str | None = None) -> str:
  """Converts an original EDM model into an edm_zoo checkpoint folder.

  The imported weights become both params and EMA params of a fresh train state
  (step 0); `launch/eval.py --ckpt=OUT` and `edm_zoo.training.checkpoint.
  load_for_inference` read it like one of ours.

  Returns:
    The checkpoint folder.
  """
  from edm_zoo import config as config_lib  # pylint: disable=g-import-not-at-top
  from edm_zoo.data import qm9  # pylint: disable=g-import-not-at-top
  from edm_zoo.training import checkpoint, optimizer, state as train_state  # pylint: disable=g-import-not-at-top
  state_dict = read_state_dict(state_dict_path)
  args = read_args(args_path)
  config = config_lib.validate(config_from_args(args))
  remove_h = config.remove_h
  stats = qm9.dataset_statistics(config.dataset, data_dir)
  model = Diffusion(config, stats.n_nodes_histogram)
  params = params_from_state_dict(state_dict)
  check_params(model, params, probe_graph(remove_h, config.context_nf))
  tx = optimizer.torch_adamw_amsgrad(float(args.get('lr', 1e-4)))
  state = train_state.TrainState(
      step=jnp.zeros([], jnp.int32), params=params,
      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
      clip_queue=optimizer.init_clip_queue(), nonfinite=jnp.zeros([], jnp.int32))
  meta = {'config': config_lib.to_dict(config), 'epoch': 0, 'position': 0,
          'statistics': {'n_nodes_histogram': {str(k): v for k, v in
                                               stats.n_nodes_histogram.items()}},
          'best_val_nll': None, 'imported_from': [state_dict_path, args_path]}
  if config.conditioning:
    meta['property_norms'] = conditioning.fit_normalizer(config, data_dir).to_dict()
  ckpt = checkpoint.Checkpointer(out, keep_last=1)
  ckpt.save(0, state, meta)
  ckpt.close()
  return out
