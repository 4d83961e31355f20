"""EDM parity vectors at drug size, written by the original EDM's own code.

The QM9 vectors of `../shared/parity` (PARITY.md, TRAIN_PARITY.md) test molecules
of at most 29 atoms under the QM9 configuration. This writes the same two files
for the published GEOM-Drugs configuration (`main_geom_drugs.py`'s README
command: no charge feature, normalization factor 1 with sum aggregation,
normalize factors [1, 4, 10], 16 atom types, GEOM's size histogram) on molecules
of 40 to 181 atoms in the original's GEOM format, batched by the original's
`build_geom_dataset.GeomDrugsTransform` and `collate_fn`:

  EDM_REPO=$HOME/edm_reference $HOME/edm_venv/bin/python \\
      instruments/edm_parity/generate.py --geom=DIR --seed=0 --nf=32 --n_layers=2 \\
      --n_mols=3 --max_atoms=181 --out=tests/parity/edm_geom/geom_parity_small.npz

writes OUT (PARITY.md's keys: inputs, fixed draws, eval-mode NLL terms,
train-mode loss terms, sampler steps, float64 re-run) and OUT with `_train`
before `.npz` (TRAIN_PARITY.md's keys: three steps of the original's
`train_test.train_epoch` with its AdamW, gradient clipping and EMA, for the
published queue [3000] and for a pre-filled queue that clips). DIR holds
`geom_drugs_30.npy` (`instruments/geom_full_size.py --scale=0.001` writes one
from moses3d). tests/parity/edm_geom/PARITY_GEOM.md is the spec.

Every random draw is fixed and stored: t by replacing `torch.randint` inside the
model's `compute_loss`, noise by replacing `sample_combined_position_feature_noise`
with stored draws (made by that same function after `torch.manual_seed`). The
intermediates are recorded by wrapping the original's own methods (`phi`,
`compute_error`, `kl_prior`, `sample_normal`, ...), which are called unchanged.
Nothing of the original is copied: it is imported from EDM_REPO.
"""

import argparse
import contextlib
import copy
import json
import os
import sys
import types

import numpy as np

GEOM_ARGS = dict(
    model='egnn_dynamics', probabilistic_model='diffusion', diffusion_steps=1000,
    diffusion_noise_schedule='polynomial_2', diffusion_noise_precision=1e-5,
    diffusion_loss_type='l2', lr=1e-4, ema_decay=0.9999, normalization_factor=1.0,
    aggregation_method='sum', normalize_factors=[1, 4, 10], include_charges=False,
    attention=True, tanh=True, norm_constant=1.0, inv_sublayers=1, sin_embedding=False,
    condition_time=True, conditioning=[], context_node_nf=0, dataset='geom', remove_h=False,
    clip_grad=True, ode_regularization=1e-3, augment_noise=0.0, data_augmentation=False,
    n_report_steps=50, test_epochs=1, visualize_every_batch=10000, break_train_epoch=False,
    n_stability_samples=500, batch_size=64, dp=False)
EVAL_T = (1, 137, 500, 1000, 250, 750, 42, 900)
TRAIN_T = (0, 137, 500, 1000, 250, 750, 42, 900)
T_STEP = 500


def original_modules() -> types.SimpleNamespace:
  """The original's modules, imported from $EDM_REPO (wandb disabled: train_epoch logs)."""
  repo = os.environ.get('EDM_REPO')
  if not repo or not os.path.isfile(os.path.join(repo, 'build_geom_dataset.py')):
    sys.exit('error: set EDM_REPO to a checkout of ehoogeboom/e3_diffusion_for_molecules.')
  sys.path.insert(0, repo)
  # pylint: disable=g-import-not-at-top
  import torch
  import wandb
  import build_geom_dataset
  import train_test
  import utils as edm_utils
  from configs.datasets_config import get_dataset_info
  from equivariant_diffusion import utils as diffusion_utils
  from qm9 import losses, models
  # pylint: enable=g-import-not-at-top
  wandb.init(mode='disabled')
  return types.SimpleNamespace(
      torch=torch, build_geom_dataset=build_geom_dataset, train_test=train_test,
      edm_utils=edm_utils, get_dataset_info=get_dataset_info, diffusion_utils=diffusion_utils,
      losses=losses, models=models)


def pick_conformers(geom_dir, n_mols, min_atoms, max_atoms, seed):
  """[(conformer id, rows [Z, x, y, z])]: the largest conformer with at most
  max_atoms atoms, then n_mols - 1 others of min_atoms..max_atoms (seeded)."""
  data = np.load(os.path.join(geom_dir, 'geom_drugs_30.npy'))
  ids = data[:, 0].astype(np.int64)
  starts = np.concatenate([[0], np.nonzero(np.diff(ids))[0] + 1, [len(ids)]])
  sizes = np.diff(starts)
  ok = np.nonzero((sizes >= min_atoms) & (sizes <= max_atoms))[0]
  if len(ok) < n_mols:
    sys.exit(f'error: {geom_dir} has {len(ok)} conformers of {min_atoms}-{max_atoms} atoms.')
  largest = ok[np.argmax(sizes[ok])]
  rest = np.random.default_rng(seed).choice(ok[ok != largest], n_mols - 1, replace=False)
  chosen = [int(largest)] + sorted(int(i) for i in rest)
  return [(i, data[starts[i]:starts[i + 1], 1:]) for i in chosen]


@contextlib.contextmanager
def patched(obj, name, replacement):
  original = getattr(obj, name)
  setattr(obj, name, replacement)
  try:
    yield original
  finally:
    setattr(obj, name, original)


class Recorder:
  """Wraps methods of the original's model to record their calls, in order."""

  def __init__(self, model, names):
    self.calls = {n: [] for n in names}
    self._stack = contextlib.ExitStack()
    for n in names:
      original = getattr(model, n)
      def wrapper(*args, _n=n, _f=original, **kwargs):
        out = _f(*args, **kwargs)
        self.calls[_n].append((args, kwargs, out))
        return out
      self._stack.enter_context(patched(model, n, wrapper))

  def close(self):
    self._stack.close()


def np32(t):
  return t.detach().cpu().numpy().astype(np.float32)


def inject(torch, model, t_int, noises):
  """t for `torch.randint` (the one draw compute_loss makes) and noise draws for the
  model's noise method, in the order the code asks for them."""
  queue = list(noises)
  stack = contextlib.ExitStack()

  def randint(low, high, size, device=None, **kwargs):
    t = torch.as_tensor(np.asarray(t_int).reshape(size), dtype=torch.int64)
    if not ((t >= low) & (t < high)).all():
      raise ValueError('injected t outside the range compute_loss draws from')
    return t

  def noise(n_samples, n_nodes, node_mask):
    z = queue.pop(0)
    assert z.shape[:2] == (n_samples, n_nodes)
    return z.to(node_mask.dtype)
  stack.enter_context(patched(torch, 'randint', randint))
  stack.enter_context(patched(model, 'sample_combined_position_feature_noise', noise))
  return stack


def forward_vectors(torch, model, nodes_dist, losses, args, x, h, node_mask, edge_mask, fixed,
                    T):
  """Eval-mode NLL terms, train-mode loss terms (PARITY.md) in the model's dtype."""
  out = {}
  dtype = next(model.parameters()).dtype
  cast = lambda a: torch.as_tensor(a).to(dtype)
  model.eval()
  rec = Recorder(model, ['phi', 'compute_error', 'kl_prior', 'log_constants_p_x_given_z0',
                         'log_pxh_given_z0_without_constants', 'forward'])
  with inject(torch, model, fixed['t_int'][:, None], [cast(fixed['eps']), cast(fixed['eps0'])]):
    with torch.no_grad():
      nll = losses.compute_loss_and_nll(args, model, nodes_dist, x, h, node_mask, edge_mask,
                                        None)[0]
  rec.close()
  c = rec.calls
  n_atoms = node_mask.squeeze(2).sum(1).long()
  log_pN = nodes_dist.log_prob(n_atoms)
  out.update({
      'eval/z_t': c['phi'][0][0][0], 'eval/net_out': c['phi'][0][2],
      'eval/error': c['compute_error'][0][2], 'eval/kl_prior': c['kl_prior'][0][2],
      'eval/neg_log_constants': -c['log_constants_p_x_given_z0'][0][2],
      'eval/z_0': c['phi'][1][0][0], 'eval/net_out0': c['phi'][1][2],
      'eval/loss_term_0': -c['log_pxh_given_z0_without_constants'][0][2],
      'eval/neg_log_pxh': c['forward'][0][2], 'eval/log_pN': log_pN,
      'eval/nll_per_molecule': c['forward'][0][2] - log_pN, 'eval/nll_batch_mean': nll})
  model.train()
  rec = Recorder(model, ['phi', 'compute_error', 'kl_prior',
                         'log_pxh_given_z0_without_constants', 'forward'])
  with inject(torch, model, fixed['t_train_int'][:, None], [cast(fixed['eps_train'])]):
    with torch.no_grad():
      nll = losses.compute_loss_and_nll(args, model, nodes_dist, x, h, node_mask, edge_mask,
                                        None)[0]
  rec.close()
  c = rec.calls
  out.update({
      'train/z_t': c['phi'][0][0][0], 'train/net_out': c['phi'][0][2],
      'train/error': c['compute_error'][0][2], 'train/kl_prior': c['kl_prior'][0][2],
      'train/loss_term_0': -c['log_pxh_given_z0_without_constants'][0][2],
      'train/loss_per_molecule': c['forward'][0][2], 'train/nll_batch_mean': nll})
  model.eval()
  return out


def mu_sigma(call):
  """(mu, sigma) of a recorded `sample_normal(mu, sigma, node_mask, fix_noise)` call."""
  args, kwargs, _ = call
  named = dict(zip(('mu', 'sigma', 'node_mask', 'fix_noise'), args), **kwargs)
  return named['mu'], named['sigma']


def sampler_vectors(torch, model, node_mask, edge_mask, fixed, T):
  """One reverse step at T_STEP and at T, and the final p(x, h | z0) (PARITY.md)."""
  out = {}
  B = node_mask.shape[0]
  dtype = next(model.parameters()).dtype
  cast = lambda a: torch.as_tensor(a).to(dtype)
  for suffix, t_int, z, noise in (('_step', T_STEP, fixed['zt_step_in'], fixed['noise_step']),
                                  ('_stepT', T, fixed['zT_prior'], fixed['noise_stepT'])):
    rec = Recorder(model, ['sample_normal'])
    with inject(torch, model, None, [cast(noise)]), torch.no_grad():
      t = torch.full((B, 1), t_int / T, dtype=dtype)
      s = torch.full((B, 1), (t_int - 1) / T, dtype=dtype)
      zs = model.sample_p_zs_given_zt(s, t, cast(z), node_mask, edge_mask, None)
    rec.close()
    mu, sigma = mu_sigma(rec.calls['sample_normal'][0])
    out[f'sample/mu{suffix}'] = mu
    out[f'sample/sigma{suffix}'] = sigma.reshape(B)
    out[f'sample/zs{suffix}'] = zs
  rec = Recorder(model, ['sample_normal'])
  with inject(torch, model, None, [cast(fixed['noise_final'])]), torch.no_grad():
    x, h = model.sample_p_xh_given_z0(cast(fixed['z0_in']), node_mask, edge_mask, None)
  rec.close()
  mu, sigma = mu_sigma(rec.calls['sample_normal'][0])
  out.update({'sample/mu_x_final': mu, 'sample/sigma_x_final': sigma.reshape(B),
              'sample/x_final': x, 'sample/h_cat_final': h['categorical'].to(dtype)})
  return out


def train_vectors(torch, modules, args, model, nodes_dist, batch, fixed_steps, queue_items,
                  K, prefix):
  """K iterations of the original's train_epoch on one batch (TRAIN_PARITY.md keys)."""
  train_test, edm_utils, diffusion_utils, losses = modules
  out = {}
  dtype = next(model.parameters()).dtype
  optim = torch.optim.AdamW(model.parameters(), lr=args.lr, amsgrad=True, weight_decay=1e-12)
  queue = edm_utils.Queue()
  for item in reversed(queue_items):  # Queue.add inserts at the front: newest first.
    queue.add(float(item))
  model_ema = copy.deepcopy(model)
  ema = diffusion_utils.EMA(args.ema_decay)
  step = {'k': 0}
  names = [n for n, _ in model.named_parameters()]
  noises = [torch.as_tensor(f['eps']).to(dtype) for f in fixed_steps]
  t_all = [f['t_int'] for f in fixed_steps]
  stack = contextlib.ExitStack()

  def randint(low, high, size, device=None, **kwargs):
    return torch.as_tensor(np.asarray(t_all[step['k']]).reshape(size), dtype=torch.int64)

  def noise(n_samples, n_nodes, node_mask):
    return noises[step['k']].to(node_mask.dtype)

  original_loss = losses.compute_loss_and_nll
  def compute_loss_and_nll(*a, **kw):
    nll, reg, mean_abs_z = original_loss(*a, **kw)
    out[f'{prefix}step{step["k"]}/nll'] = nll.reshape(())
    out[f'{prefix}step{step["k"]}/loss'] = nll.reshape(())
    return nll, reg, mean_abs_z

  original_clip = edm_utils.gradient_clipping
  def gradient_clipping(flow, gradnorm_queue):
    k = step['k']
    out[f'{prefix}step{k}/queue_before'] = np.array(gradnorm_queue.items, np.float64)
    for n, p in flow.named_parameters():
      if p.grad is not None:
        out[f'{prefix}step{k}/grad/{n}'] = p.grad.clone()
    seen = {}
    original_norm = torch.nn.utils.clip_grad_norm_
    def clip_grad_norm_(parameters, max_norm, norm_type=2.0, **kw):
      total = original_norm(parameters, max_norm=max_norm, norm_type=norm_type, **kw)
      seen.update(max_norm=max_norm, total=total)
      return total
    with patched(torch.nn.utils, 'clip_grad_norm_', clip_grad_norm_):
      grad_norm = original_clip(flow, gradnorm_queue)
    total = seen['total']
    coef = torch.clamp(torch.reciprocal(total + 1e-6) * seen['max_norm'], max=1.0)
    out.update({f'{prefix}step{k}/grad_norm': total.reshape(()),
                f'{prefix}step{k}/max_grad_norm': np.float64(seen['max_norm']),
                f'{prefix}step{k}/clipped': np.bool_(float(total) > seen['max_norm']),
                f'{prefix}step{k}/clip_coef': coef.reshape(()),
                f'{prefix}step{k}/queue_after': np.array(gradnorm_queue.items, np.float64),
                f'{prefix}step{k}/t_int': np.asarray(t_all[k], np.int64).reshape(-1),
                f'{prefix}step{k}/eps': noises[k]})
    return grad_norm

  original_update = ema.update_model_average
  def update_model_average(ma_model, current_model):
    original_update(ma_model, current_model)
    k = step['k']
    for n, p in current_model.named_parameters():
      out[f'{prefix}step{k}/param/{n}'] = p.detach().clone()
    for n, p in ma_model.named_parameters():
      out[f'{prefix}step{k}/ema/{n}'] = p.detach().clone()
    step['k'] += 1

  stack.enter_context(patched(torch, 'randint', randint))
  stack.enter_context(patched(model, 'sample_combined_position_feature_noise', noise))
  stack.enter_context(patched(losses, 'compute_loss_and_nll', compute_loss_and_nll))
  stack.enter_context(patched(edm_utils, 'gradient_clipping', gradient_clipping))
  stack.enter_context(patched(ema, 'update_model_average', update_model_average))
  loader = [batch] * K
  with stack, contextlib.redirect_stdout(sys.stderr):
    train_test.train_epoch(args=args, loader=loader, epoch=0, model=model, model_dp=model,
                           model_ema=model_ema, ema=ema, device=torch.device('cpu'), dtype=dtype,
                           property_norms=None, optim=optim, nodes_dist=nodes_dist,
                           gradnorm_queue=queue, dataset_info=None, prop_dist=None)
  assert step['k'] == K, f'train_epoch ran {step["k"]} steps, not {K}'
  for p in model.parameters():
    if p in optim.state:
      name = names[[q is p for q in model.parameters()].index(True)]
      state = optim.state[p]
      for key in ('exp_avg', 'exp_avg_sq', 'max_exp_avg_sq'):
        out[f'{prefix}opt/{key}/{name}'] = state[key]
      out[f'{prefix}opt/step'] = state['step'].reshape(())
  return out


def clipping_queue(base):
  """TRAIN_PARITY.md's pre-filled queue: 50 items around `base`, newest first."""
  return [round(base * (1 + 0.02 * ((7 * i) % 11 - 5)), 6) for i in range(50)]


def to_numpy(d):
  out = {}
  for k, v in d.items():
    if hasattr(v, 'detach'):
      v = v.detach().cpu().numpy()
      v = v.astype(np.float32) if v.dtype == np.float64 else v
    out[k] = v
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--geom', required=True, help='folder with geom_drugs_30.npy')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--nf', type=int, default=32)
  ap.add_argument('--n_layers', type=int, default=2)
  ap.add_argument('--n_mols', type=int, default=3)
  ap.add_argument('--min_atoms', type=int, default=40)
  ap.add_argument('--max_atoms', type=int, default=181)
  ap.add_argument('--steps', type=int, default=3, help='optimizer steps (train file)')
  ap.add_argument('--clip_base', type=float, default=0.0,
                  help="pre-filled queue's base (0: a third of step 0's gradient norm)")
  ap.add_argument('--out', required=True)
  a = ap.parse_args()
  o = original_modules()
  torch, build_geom_dataset, losses, models = o.torch, o.build_geom_dataset, o.losses, o.models
  train_test, edm_utils, diffusion_utils = o.train_test, o.edm_utils, o.diffusion_utils
  get_dataset_info = o.get_dataset_info
  torch.set_num_threads(2)

  args = argparse.Namespace(**GEOM_ARGS, nf=a.nf, n_layers=a.n_layers, seed=a.seed)
  dataset_info = get_dataset_info('geom', False)
  picked = pick_conformers(a.geom, a.n_mols, a.min_atoms, a.max_atoms, a.seed)
  transform = build_geom_dataset.GeomDrugsTransform(dataset_info, False, torch.device('cpu'),
                                                    False)
  batch = build_geom_dataset.collate_fn([transform(rows) for _, rows in picked])
  torch.manual_seed(a.seed)
  model, nodes_dist, _ = models.get_model(args, torch.device('cpu'), dataset_info, None)
  init_state = {k: v.clone() for k, v in model.state_dict().items()}

  positions = batch['positions'].float()
  node_mask = batch['atom_mask'].float().unsqueeze(2)
  edge_mask = batch['edge_mask'].float()
  one_hot = batch['one_hot'].float()
  B, N = node_mask.shape[:2]
  x = diffusion_utils.remove_mean_with_mask(positions, node_mask)
  h = {'categorical': one_hot, 'integer': torch.zeros(0)}
  T = args.diffusion_steps
  z_numbers = np.array(dataset_info['atomic_nb'])[one_hot.argmax(-1).numpy()] * node_mask[
      ..., 0].numpy()

  torch.manual_seed(1000 + a.seed)
  draw = lambda: model.sample_combined_position_feature_noise(B, N, node_mask)
  fixed = {k: draw() for k in ('eps', 'eps0', 'eps_train', 'eps_step_in', 'noise_step',
                               'zT_prior', 'noise_stepT', 'noise_final')}
  fixed['t_int'] = np.array([EVAL_T[i % len(EVAL_T)] for i in range(B)], np.int64)
  fixed['t_train_int'] = np.array([TRAIN_T[i % len(TRAIN_T)] for i in range(B)], np.int64)
  xn, hn, delta_log_px = model.normalize(x, h, node_mask)
  xh = torch.cat([xn, hn['categorical'], hn['integer']], dim=2)
  gamma = lambda t_int: model.inflate_batch_array(
      model.gamma(torch.full((B, 1), t_int / T)), xh)
  fixed['zt_step_in'] = (model.alpha(gamma(T_STEP), xh) * xh
                         + model.sigma(gamma(T_STEP), xh) * fixed['eps_step_in'])
  fixed['z0_in'] = model.alpha(gamma(0), xh) * xh + model.sigma(gamma(0), xh) * fixed['eps0']

  vectors = {f'param/{k}': v for k, v in init_state.items()}
  vectors.update({
      'input/positions_raw': positions, 'input/x': x, 'input/one_hot': one_hot,
      'input/charges': torch.as_tensor(z_numbers[..., None], dtype=torch.float32),
      'input/node_mask': node_mask, 'input/edge_mask': edge_mask,
      'input/edge_mask_BNN': edge_mask.view(B, N, N),
      'input/num_atoms': np.array([len(r) for _, r in picked], np.int64),
      'input/conformer_ids': np.array([i for i, _ in picked], np.int64),
      'norm/xh': xh, 'norm/delta_log_px': delta_log_px,
      'schedule/gamma': init_state['gamma.gamma'], 'sample/t_step': np.int64(T_STEP)})
  vectors.update({f'fixed/{k}': v for k, v in fixed.items()})
  vectors.update(forward_vectors(torch, model, nodes_dist, losses, args, x, h, node_mask,
                                 edge_mask, fixed, T))
  vectors.update(sampler_vectors(torch, model, node_mask, edge_mask, fixed, T))
  vectors['sample/zt_step_in'] = fixed['zt_step_in']
  vectors['sample/zT_prior'] = fixed['zT_prior']
  vectors['sample/z0_in'] = fixed['z0_in']
  for k in ('noise_step', 'noise_stepT', 'noise_final', 'eps_step_in'):
    vectors[f'sample/{k}'] = fixed[k]

  # The float64 twin: the same model, draws and inputs in float64, for tolerances.
  model64 = copy.deepcopy(model).double()
  fixed64 = {k: (v.double() if hasattr(v, 'double') else v) for k, v in fixed.items()}
  f64 = forward_vectors(torch, model64, nodes_dist, losses, args, x.double(),
                        {'categorical': one_hot.double(), 'integer': torch.zeros(0).double()},
                        node_mask.double(), edge_mask.double(), fixed64, T)
  for key in ('eval/neg_log_pxh', 'eval/net_out', 'train/loss_per_molecule', 'eval/nll_batch_mean',
              'train/nll_batch_mean', 'eval/error', 'eval/loss_term_0', 'eval/kl_prior'):
    vectors[f'f64/{key}'] = f64[key].detach().numpy()

  histogram = {int(k): int(v) for k, v in dataset_info['n_nodes'].items()}
  config = {**GEOM_ARGS, 'nf': a.nf, 'n_layers': a.n_layers, 'seed': a.seed,
            'num_classes': len(dataset_info['atom_decoder']),
            'atom_decoder': dataset_info['atom_decoder'], 'n_nodes_histogram': histogram,
            'geom_dir': os.path.basename(os.path.abspath(a.geom)),
            'torch': torch.__version__, 'edm_commit': os.environ.get('EDM_COMMIT', 'fce07d7')}
  vectors['config_json'] = np.array(json.dumps(config))
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  np.savez_compressed(a.out, **to_numpy(vectors))

  # Training steps: both queue variants from the same initial parameters and draws.
  torch.manual_seed(2000 + a.seed)
  steps = []
  for k in range(a.steps):
    torch.manual_seed(2000 + a.seed + k)
    steps.append({'t_int': torch.randint(0, T + 1, size=(B, 1)).numpy().reshape(-1),
                  'eps': model.sample_combined_position_feature_noise(B, N, node_mask)})
  train = {f'init/param/{k}': v for k, v in init_state.items()}
  train.update({k: vectors[k] for k in vectors if k.startswith('input/')})
  modules = (train_test, edm_utils, diffusion_utils, losses)
  names = [n for n, _ in model.named_parameters()]
  published = [3000.0]
  variants = [('', published)]
  runs = {}
  for prefix, items in variants + [('clipped/', None)]:
    if items is None:  # A third of the published run's first norm: the first steps clip.
      base = a.clip_base or float(runs['']['step0/grad_norm']) / 3
      items = clipping_queue(base)
    m = copy.deepcopy(model)
    m.load_state_dict(init_state)
    batch_f = {k: v for k, v in batch.items()}
    runs[prefix] = train_vectors(torch, modules, args, m, nodes_dist, batch_f, steps, items,
                                 a.steps, prefix)
    train[f'{prefix}queue_init_items'] = np.array(items, np.float64)
    train.update(runs[prefix])
  # float64 twin of the steps (tolerances only).
  for prefix, items in (('', published), ('clipped/', list(train['clipped/queue_init_items']))):
    m = copy.deepcopy(model).double()
    m.load_state_dict({k: v.double() for k, v in init_state.items()})
    steps64 = [{'t_int': s['t_int'], 'eps': s['eps'].double()} for s in steps]
    batch64 = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
    r = train_vectors(torch, modules, args, m, nodes_dist, batch64, steps64, items, a.steps,
                      prefix)
    for k in range(a.steps):
      sp = f'{prefix}step{k}/'
      train[f'f64/{sp}loss'] = r[sp + 'loss'].detach().numpy()
      train[f'f64/{sp}grad_norm'] = r[sp + 'grad_norm'].detach().numpy()
      train[f'f64/{sp}clipped'] = r[sp + 'clipped']
      train[f'f64/{sp}param_max_abs_diff'] = np.float64(max(
          float((r[sp + 'param/' + n] - runs[prefix][sp + 'param/' + n].double()).abs().max())
          for n in names))
      pairs = [(r[sp + 'grad/' + n], runs[prefix][sp + 'grad/' + n].double())
               for n in names if sp + 'grad/' + n in r]
      train[f'f64/{sp}grad_max_abs_diff'] = np.float64(max(
          float((g64 - g32).abs().max()) for g64, g32 in pairs))
      # The relative L2 distance over all gradients: the scale-free float32 noise.
      train[f'f64/{sp}grad_rel_l2_diff'] = np.float64(
          np.sqrt(sum(float(((g64 - g32) ** 2).sum()) for g64, g32 in pairs)
                  / sum(float((g64 ** 2).sum()) for g64, _ in pairs)))
      train[f'f64/{sp}loss_abs_diff'] = np.float64(
          abs(float(r[sp + 'loss']) - float(runs[prefix][sp + 'loss'])))
  train_config = {**config, 'optimizer': {'lr': args.lr, 'betas': [0.9, 0.999], 'eps': 1e-8,
                                          'weight_decay': 1e-12, 'amsgrad': True},
                  'K': a.steps, 'queue_max_len': 50, 'param_names_order': names}
  train['config_json'] = np.array(json.dumps(train_config))
  out_train = a.out[:-len('.npz')] + '_train.npz' if a.out.endswith('.npz') else a.out + '_train'
  np.savez_compressed(out_train, **to_numpy(train))
  rows = [(k, float(train[f'step{k}/loss']), float(train[f'step{k}/grad_norm']),
           float(train[f'f64/step{k}/grad_rel_l2_diff']),
           float(train[f'step{k}/max_grad_norm']), bool(train[f'step{k}/clipped']))
          for k in range(a.steps)]
  print(json.dumps({'out': a.out, 'train': out_train, 'atoms': [len(r) for _, r in picked],
                    'N': N, 'eval_nll': float(vectors['eval/nll_batch_mean']),
                    'steps': rows}))


if __name__ == '__main__':
  main()
