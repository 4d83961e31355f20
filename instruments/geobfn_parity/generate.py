"""Writes GeoBFN parity vectors with GeoBFN's own code (PARITY_GEOBFN.md).

Runs in the environment of `setup.sh` (CPU torch), never in ours, and imports
GeoBFN's modules from a checkout named by GEOBFN_REPO; nothing of GeoBFN is
copied. Its code runs on CPU after three run-time patches, each checked here
against what it replaces before any vector is written:

  1. `torch_scatter` (no CPU wheel; GeoBFN uses only `scatter_mean`, for the
     centre of mass): a stand-in module whose `scatter_mean` is a sum by
     `index_add_` over a clamped count; checked equal to torch_geometric's
     `scatter(..., reduce='mean')` on random segments (exactly, float32).
  2. `torch.linspace(..., device='cuda:0')` in `bfn4MolEGNN.__init__` (the
     Gaussian basis centres): during construction only, a cuda device is
     mapped to cpu; checked equal to `torch.linspace` on cpu.
  3. `torch.randn_like` (GeoBFN's only random draw in the flow and the
     sampler): replaced while GeoBFN runs by draws from a seeded NumPy
     generator, each recorded in the file in call order; checked to return
     standard normal arrays of the argument's shape and dtype.

Usage (see setup.sh):
  GEOBFN_REPO=... python generate.py --seed 0 --nf 32 --n_layers 2 \\
      --qm9 .../qm9/temp/qm9/train.npz --out geobfn_parity_small.npz
writes OUT and OUT with `_train` before `.npz` (three optimizer steps).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch

GEOBFN_COMMIT = '89e9a24'
ATOMIC_NB = [1, 6, 7, 8, 9]


# --- Patch 1: torch_scatter.scatter_mean.

def scatter_mean(src, index, dim=0):
  """torch_scatter.scatter_mean for dim 0 and a 1-D index (GeoBFN's only use)."""
  assert dim == 0 and index.dim() == 1
  n = int(index.max()) + 1 if index.numel() else 0
  total = torch.zeros((n,) + tuple(src.shape[1:]), dtype=src.dtype).index_add_(0, index, src)
  count = torch.zeros(n, dtype=src.dtype).index_add_(0, index, torch.ones_like(index, dtype=src.dtype))
  return total / count.clamp(min=1).view(-1, *([1] * (src.dim() - 1)))


def check_scatter_mean():
  from torch_geometric.utils import scatter  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(0)
  for n_seg in (1, 3, 8):
    index = torch.sort(torch.randint(0, n_seg, (50,), generator=g)).values
    src = torch.randn(50, 3, generator=g)
    ours = scatter_mean(src, index, dim=0)
    ref = scatter(src, index, dim=0, reduce='mean', dim_size=int(index.max()) + 1)
    assert torch.equal(ours, ref), 'scatter_mean stand-in differs from torch_geometric'


# --- Patch 2: torch.linspace on a cuda device, during construction.

@contextlib.contextmanager
def linspace_on_cpu():
  original = torch.linspace

  def linspace(*args, device=None, **kwargs):
    if device is not None and str(device).startswith('cuda'):
      device = 'cpu'
    return original(*args, device=device, **kwargs)
  torch.linspace = linspace
  try:
    yield
  finally:
    torch.linspace = original


def check_linspace():
  with linspace_on_cpu():
    patched = torch.linspace(-2, 2, 16, device='cuda:0')
  assert torch.equal(patched, torch.linspace(-2, 2, 16)), 'linspace patch differs'


# --- Patch 3: recorded draws for torch.randn_like.

class Draws:
  """torch.randn_like from a seeded NumPy generator; every draw is kept."""

  def __init__(self, seed: int):
    self.rng = np.random.default_rng(seed)
    self.record: list[np.ndarray] = []

  @contextlib.contextmanager
  def active(self):
    original = torch.randn_like

    def randn_like(x, **kwargs):
      del kwargs
      a = self.rng.standard_normal(tuple(x.shape)).astype(np.float32)
      self.record.append(a)
      return torch.from_numpy(a).to(x.dtype)
    torch.randn_like = randn_like
    try:
      yield self
    finally:
      torch.randn_like = original

  def take(self):
    out, self.record = self.record, []
    return out


def check_draws():
  d = Draws(1)
  with d.active():
    a = torch.randn_like(torch.zeros(4, 3))
  assert a.shape == (4, 3) and a.dtype == torch.float32 and len(d.take()) == 1


# --- GeoBFN's code, imported from the checkout.

def import_geobfn(repo: str):
  sys.modules['torch_scatter'] = types.SimpleNamespace(scatter_mean=scatter_mean)
  sys.path.insert(0, repo)
  from core.model.bfn import bfn_base  # pylint: disable=import-outside-toplevel
  from core.callbacks import basic  # pylint: disable=import-outside-toplevel
  return bfn_base, basic


def commit_of(repo: str) -> str:
  try:
    return subprocess.check_output(['git', '-C', repo, 'rev-parse', 'HEAD'], text=True).strip()
  except (OSError, subprocess.CalledProcessError):
    return GEOBFN_COMMIT


def edges(sizes):
  """QM9Gen's edge_index of a batch: every ordered pair i != j within a molecule,
  row-major, molecules one after the other."""
  rows, cols, start = [], [], 0
  for n in sizes:
    for i in range(n):
      for j in range(n):
        if i != j:
          rows.append(start + i)
          cols.append(start + j)
    start += n
  return torch.tensor([rows, cols], dtype=torch.long)


def qm9_batch(path: str, rng, n: int):
  with np.load(path) as f:
    num = f['num_atoms']
    idx = np.sort(rng.choice(len(num), n, replace=False))
    mols = [(f['charges'][i, :num[i]].astype(np.int64), f['positions'][i, :num[i]].astype(np.float32))
            for i in idx]
  return idx, mols


def build(mols):
  """GeoBFN's training batch: positions zero-CoG (QM9Gen.transform) then / 2,
  charges (2Z - 1) / 9 - 1 (NormalizerCallback)."""
  sizes = [len(z) for z, _ in mols]
  pos = torch.cat([torch.from_numpy(p) - torch.from_numpy(p).mean(0, keepdim=True)
                   for _, p in mols]) / torch.tensor(2.0)
  z = torch.from_numpy(np.concatenate([z for z, _ in mols])).float().view(-1, 1)
  charges = (2 * z - 1) / 9.0 - 1
  seg = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes)])
  return sizes, pos, charges, seg, edges(sizes)


def state_arrays(module, prefix):
  return {f'{prefix}{k}': v.detach().numpy().copy() for k, v in module.state_dict().items()}


def float64_replay(model, t, charges, pos, edge_index, seg, noise):
  """The same forward and backward in float64 (GeoBFN's code on a double copy, the
  same draws): what the float32 vectors deviate from (the spec's tolerances)."""
  m64 = copy.deepcopy(model).double()
  m64.zero_grad(set_to_none=True)
  queue = [torch.from_numpy(a).double() for a in noise]
  original = torch.randn_like
  torch.randn_like = lambda x, **kw: queue.pop(0)
  try:
    posloss, charge_loss, assets = m64.loss_one_step(
        t.double(), x=charges.double(), pos=pos.double(), edge_index=edge_index,
        segment_ids=seg)
  finally:
    torch.randn_like = original
  loss = torch.mean(posloss + charge_loss)
  loss.backward()
  out = {'f64/posloss': posloss.detach().numpy(), 'f64/charge_loss': charge_loss.detach().numpy(),
         'f64/loss': np.float64(loss.item()), 'f64/coord_pred': assets[2].detach().numpy(),
         'f64/k_hat': assets[3].detach().numpy()}
  out.update({'f64/grad/' + n: q.grad.detach().numpy().copy() for n, q in m64.named_parameters()})
  return out


class Stub(torch.nn.Module):
  """What GeoBFN's callbacks read of its LightningModule."""

  def __init__(self, dynamics):
    super().__init__()
    self.dynamics = dynamics
    self.cfg = types.SimpleNamespace(optimization=types.SimpleNamespace(batch_size=64))
    self.global_rank = 0
    self.logged = {}

  def log(self, name, value, **kwargs):
    del kwargs
    self.logged[name] = float(value)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--nf', type=int, default=32)
  p.add_argument('--n_layers', type=int, default=2)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--sample_molecules', type=int, default=4)
  p.add_argument('--sample_steps', type=int, default=5)
  p.add_argument('--qm9', required=True, help="EDM's QM9 train.npz")
  p.add_argument('--out', required=True)
  args = p.parse_args()
  repo = os.environ.get('GEOBFN_REPO')
  if not repo:
    sys.exit('set GEOBFN_REPO to a checkout of AlgoMole/GeoBFN')
  torch.set_num_threads(1)
  check_scatter_mean()
  check_linspace()
  check_draws()
  bfn_base, basic = import_geobfn(repo)

  rng = np.random.default_rng(args.seed)
  torch.manual_seed(args.seed)  # The initialisation (recorded as param/*).
  config = dict(in_node_nf=16, hidden_nf=args.nf, n_layers=args.n_layers, sigma1_coord=0.001,
                sigma1_charges=0.15, bins=9, beta1=2.0, sample_steps=args.sample_steps,
                no_diff_coord=False, charge_discretised_loss=True, charge_clamp=True,
                t_min=0.0001)
  with linspace_on_cpu():
    model = bfn_base.bfn4MolEGNN(device='cpu', **config)
  draws = Draws(args.seed + 1)
  idx, mols = qm9_batch(args.qm9, rng, args.batch)
  sizes, pos, charges, seg, edge_index = build(mols)
  n_total = len(seg)
  meta = {'seed': args.seed, 'geobfn_commit': commit_of(repo), 'torch': torch.__version__,
          'qm9_train_indices': idx.tolist(), 'sizes': sizes, 'atomic_nb': ATOMIC_NB,
          'normalizer': {'pos': 2.0, 'charges': 9.0}, **config}
  out = {'param/' + k: v for k, v in state_arrays(model, '').items()}
  out['meta/param_order'] = np.array(json.dumps([n for n, _ in model.named_parameters()]))
  out['batch/positions_raw'] = np.concatenate([m for _, m in mols])
  out['batch/atomic_numbers'] = np.concatenate([z for z, _ in mols]).astype(np.int32)
  out['batch/sizes'] = np.asarray(sizes, np.int32)
  out['batch/pos'] = pos.numpy()
  out['batch/charges'] = charges.numpy()
  out['batch/edge_index'] = edge_index.numpy()

  # --- One training-mode forward, the loss and every gradient.
  t_mol = rng.uniform(size=(args.batch, 1)).astype(np.float32)
  t_mol[0] = 0.5 * config['t_min']  # Below t_min: the flow's input is zeroed.
  t = torch.from_numpy(t_mol).index_select(0, seg)
  seen = {}
  hook = model.egnn.register_forward_hook(
      lambda m, i, o: seen.update(egnn_h=o[0].detach().numpy().copy(),
                                  egnn_x=o[1].detach().numpy().copy()))
  with draws.active():
    posloss, charge_loss, assets = model.loss_one_step(
        t, x=charges, pos=pos, edge_index=edge_index, segment_ids=seg)
  noise_charge, noise_coord = draws.take()
  loss = torch.mean(posloss + charge_loss)
  model.zero_grad()
  loss.backward()
  hook.remove()
  mu_coord, mu_charge, coord_pred, k_hat, gamma_coord, gamma_charge = assets
  with torch.no_grad():
    p_bins = model.interdependency_modeling(
        torch.clamp(t, min=config['t_min']), mu_charge_t=mu_charge, mu_pos_t=mu_coord,
        gamma_coord=gamma_coord, gamma_charge=gamma_charge, edge_index=edge_index,
        segment_ids=seg)[1]
    basis = model.gaussian_basis(mu_charge)
  out.update({
      'rand/t': t_mol[:, 0], 'rand/noise_charge': noise_charge, 'rand/noise_coord': noise_coord,
      'fwd/mu_coord': mu_coord.detach().numpy(), 'fwd/mu_charge': mu_charge.detach().numpy(),
      'fwd/gamma_coord': gamma_coord.detach().numpy(),
      'fwd/gamma_charge': gamma_charge.detach().numpy(), 'fwd/basis': basis.numpy(),
      'fwd/egnn_h': seen['egnn_h'], 'fwd/egnn_x': seen['egnn_x'],
      'fwd/coord_pred': coord_pred.detach().numpy(), 'fwd/k_hat': k_hat.detach().numpy(),
      'fwd/p': p_bins[..., 0].numpy(), 'fwd/posloss': posloss.detach().numpy(),
      'fwd/charge_loss': charge_loss.detach().numpy(), 'fwd/loss': np.float32(loss.item())})
  for name, prm in model.named_parameters():
    out['grad/' + name] = prm.grad.detach().numpy().copy()
  out.update(float64_replay(model, t, charges, pos, edge_index, seg,
                            [noise_charge, noise_coord]))

  # --- The sampler: a few Bayesian updates and the final call.
  s_idx, s_mols = qm9_batch(args.qm9, rng, args.sample_molecules)
  s_sizes = [len(z) for z, _ in s_mols]
  s_seg = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(s_sizes)])
  with torch.no_grad(), draws.active():
    traj = model(n_nodes=len(s_seg), edge_index=edges(s_sizes), sample_steps=args.sample_steps,
                 segment_ids=s_seg)
  sample_draws = draws.take()
  out.update({
      'sample/sizes': np.asarray(s_sizes, np.int32),
      'sample/noise_coord': np.stack(sample_draws[0::2]),
      'sample/noise_charge': np.stack(sample_draws[1::2]),
      'sample/coord_pred': np.stack([c.numpy() for c, _ in traj]),
      'sample/charge': np.stack([k.numpy() for _, k in traj])})
  meta['sample_sizes'] = s_sizes
  out['args'] = np.array(json.dumps(meta))
  np.savez(args.out, **out)
  print(f'wrote {args.out}: loss {loss.item():.6g}, {n_total} atoms, '
        f'{len(out)} arrays')

  # --- Three optimizer steps through GeoBFN's callbacks, Lightning's order.
  train = dict(out)
  model.load_state_dict({k[len('param/'):]: torch.from_numpy(v) for k, v in out.items()
                         if k.startswith('param/')})
  stub = Stub(model)
  opt = torch.optim.AdamW(stub.parameters(), lr=1e-4, amsgrad=True, weight_decay=1e-12)
  recover = basic.RecoverCallback(latest_ckpt='/nonexistent/last*.ckpt',
                                  recover_trigger_loss=500.0, skip_count_limit=3)
  clip = basic.Gradient_clip(Q=basic.Queue(3000), maximum_allowed_norm=10000.0)
  ema = basic.EMACallback(decay=0.9999)
  ema.on_train_start(None, stub)
  recover.on_train_epoch_start(None, stub)
  steps_meta = []
  for k in range(3):
    tk = rng.uniform(size=(args.batch, 1)).astype(np.float32)
    opt.zero_grad()
    with draws.active():
      pl, cl, _ = model.loss_one_step(torch.from_numpy(tk).index_select(0, seg), x=charges,
                                      pos=pos, edge_index=edge_index, segment_ids=seg)
    nc, nx = draws.take()
    loss_k = torch.mean(pl + cl)
    loss_k.backward()
    if k == 0:
      # The spike trigger just below step 0's loss: step 0 is a spike, so step 1's
      # gradients are zeroed (the skip is exercised); the norm cap stays GeoBFN's.
      recover.recover_trigger_loss = trigger = 0.99 * float(loss_k.item())
    raw = {n: q.grad.detach().numpy().copy() for n, q in model.named_parameters()}
    threshold = 1.5 * clip.gradnorm_queue.mean() + 2 * clip.gradnorm_queue.std()
    skipped_by_spike = recover.skip_step
    recover.on_before_optimizer_step(None, stub, opt)
    clip.on_before_optimizer_step(None, stub, opt)
    applied = all(q.grad is not None for q in model.parameters())
    opt.step()
    recover.on_train_batch_end(None, stub, {'loss': loss_k.detach()}, None, k)
    ema.on_train_batch_end(None, stub)
    pre = f'train/step{k}/'
    train.update({pre + 't': tk[:, 0], pre + 'noise_charge': nc, pre + 'noise_coord': nx,
                  pre + 'loss': np.float32(loss_k.item()),
                  pre + 'grad_norm': np.float64(stub.logged['grad_norm']),
                  pre + 'clip_threshold': np.float64(threshold),
                  pre + 'queue': np.asarray(clip.gradnorm_queue.items, np.float64)})
    train.update({pre + 'grad/' + n: g for n, g in raw.items()})
    train.update({pre + 'param/' + n: q.detach().numpy().copy()
                  for n, q in model.named_parameters()})
    train.update({pre + 'ema/' + n[len('dynamics.'):]: v.numpy().copy()
                  for n, v in ema.ema_state_dict.items()})
    steps_meta.append({'skipped_by_spike': bool(skipped_by_spike), 'applied': applied,
                       'spike': bool(recover.skip_step), 'count_skip': recover.count_skip})
  meta.update(lr=1e-4, weight_decay=1e-12, ema_decay=0.9999, recover_trigger_loss=trigger,
              skip_count_limit=3, maximum_allowed_norm=10000.0, queue_start=[1],
              queue_len=3000, steps=steps_meta)
  train['args'] = np.array(json.dumps(meta))
  path = args.out[:-4] + '_train.npz' if args.out.endswith('.npz') else args.out + '_train'
  np.savez(path, **train)
  print(f'wrote {path}: steps {steps_meta}')


if __name__ == '__main__':
  main()
