"""Writes SemlaFlow parity vectors with SemlaFlow's own code (PARITY_SEMLAFLOW.md).

Runs in the environment of `setup.sh` (CPU torch), never in ours, and imports
SemlaFlow's modules from a checkout named by SEMLA_REPO (commit 2f41e57); nothing
of SemlaFlow is copied. Its code runs on CPU unchanged. The only patches replace
its random draws, while its code runs, by draws from one seeded NumPy generator,
each recorded in call order; every stand-in is checked against what it replaces
before any vector is written:

  torch.distributions.Normal.sample, torch.randint, torch.rand, torch.rand_like,
  torch.randn_like, torch.distributions.Beta.sample, numpy.random.rand: the same
  shapes and dtypes, values of the same distribution (moments of 200,000 draws
  within 4 standard errors of the original's).
  torch.distributions.Categorical.sample: the class whose cumulative interval of
  the normalised probabilities holds a uniform u (inverse CDF; the class
  frequencies of 200,000 draws within 4 standard errors of the original's).

Usage (see setup.sh):
  SEMLA_REPO=... python generate.py --seed 0 --d_model 32 --n_layers 2 \\
      --n_coord_sets 4 --n_mols 4 --steps 3 --out semlaflow_parity_small.npz
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import torch

SEMLA_COMMIT = '2f41e57'
HERE = os.path.dirname(os.path.abspath(__file__))


class Draws:
  """Seeded stand-ins for torch's and NumPy's random draws, recording each."""

  def __init__(self, seed: int):
    self.rng = np.random.default_rng(seed)
    self.log: list[tuple[str, np.ndarray]] = []
    self.active = False

  def _keep(self, name, value):
    if self.active:
      self.log.append((name, np.array(value)))
    return value

  def normal_sample(self, dist, sample_shape=torch.Size()):
    shape = tuple(sample_shape) + tuple(dist.batch_shape)
    z = self.rng.standard_normal(shape).astype(np.float32)
    self._keep('normal', z)
    return dist.loc + dist.scale * torch.from_numpy(z)

  def randint(self, low, high=None, size=None, **kwargs):
    if high is None:
      low, high = 0, low
    if size is None:
      size = kwargs.pop('size')
    v = self.rng.integers(low, high, size=tuple(size))
    self._keep('randint', v)
    return torch.from_numpy(v).to(kwargs.get('dtype', torch.int64))

  def rand(self, *size, **kwargs):
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
      size = tuple(size[0])
    v = self.rng.random(size).astype(np.float32)
    self._keep('rand', v)
    return torch.from_numpy(v)

  def rand_like(self, t, **kwargs):
    return self.rand(tuple(t.shape)).to(t.dtype)

  def randn_like(self, t, **kwargs):
    v = self.rng.standard_normal(tuple(t.shape)).astype(np.float32)
    self._keep('randn_like', v)
    return torch.from_numpy(v).to(t.dtype)

  def beta_sample(self, dist, sample_shape=torch.Size()):
    a = dist.concentration1.numpy()
    b = dist.concentration0.numpy()
    shape = tuple(sample_shape) + tuple(dist.batch_shape)
    v = self.rng.beta(a, b, size=shape).astype(np.float32)
    self._keep('beta', v)
    return torch.from_numpy(v)

  def np_rand(self, *size):
    v = self.rng.random(size)
    self._keep('np_rand', v)
    return v

  def categorical_sample(self, dist, sample_shape=torch.Size()):
    probs = dist.probs  # torch normalises the probabilities it was given.
    u = self.rng.random(tuple(probs.shape[:-1])).astype(np.float32)
    self._keep('categorical_u', u)
    return inverse_cdf(probs, torch.from_numpy(u))


def inverse_cdf(probs, u):
  cdf = torch.cumsum(probs, -1)
  cdf = cdf / cdf[..., -1:]
  return torch.clamp((cdf <= u.unsqueeze(-1)).sum(-1), max=probs.shape[-1] - 1)


@contextlib.contextmanager
def patched(draws: Draws):
  """Replaces the random draws SemlaFlow makes while the block runs."""
  originals = {
      (torch.distributions.Normal, 'sample'): torch.distributions.Normal.sample,
      (torch.distributions.Beta, 'sample'): torch.distributions.Beta.sample,
      (torch.distributions.Categorical, 'sample'): torch.distributions.Categorical.sample,
      (torch, 'randint'): torch.randint, (torch, 'rand'): torch.rand,
      (torch, 'rand_like'): torch.rand_like, (torch, 'randn_like'): torch.randn_like,
      (np.random, 'rand'): np.random.rand}
  stand_ins = {
      (torch.distributions.Normal, 'sample'): draws.normal_sample,
      (torch.distributions.Beta, 'sample'): draws.beta_sample,
      (torch.distributions.Categorical, 'sample'): draws.categorical_sample,
      (torch, 'randint'): draws.randint, (torch, 'rand'): draws.rand,
      (torch, 'rand_like'): draws.rand_like, (torch, 'randn_like'): draws.randn_like,
      (np.random, 'rand'): draws.np_rand}
  for (owner, name), fn in stand_ins.items():
    if owner in (torch.distributions.Normal, torch.distributions.Beta,
                 torch.distributions.Categorical):
      setattr(owner, name, lambda self, sample_shape=torch.Size(), _f=fn: _f(self, sample_shape))
    else:
      setattr(owner, name, fn)
  draws.active = True
  try:
    yield
  finally:
    draws.active = False
    for (owner, name), fn in originals.items():
      setattr(owner, name, fn)


def check_stand_ins() -> None:
  """Each stand-in draws from the distribution of the draw it replaces."""
  n = 200_000
  torch.manual_seed(0)
  draws = Draws(1)

  def close(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64).ravel(), np.asarray(theirs, np.float64).ravel()
    assert ours.shape == theirs.shape, what
    for moment in (1, 2):
      a, b = ours**moment, theirs**moment
      se = np.sqrt(a.var() / a.size + b.var() / b.size)
      assert abs(a.mean() - b.mean()) < 4 * se + 1e-12, f'{what}: moment {moment} differs'

  originals = (torch.distributions.Normal(torch.tensor(0.0), torch.tensor(1.0)).sample((n, 3)),
               torch.randint(0, 7, (n,)), torch.rand(n), torch.rand_like(torch.zeros(n)),
               torch.randn_like(torch.zeros(n)),
               torch.distributions.Beta(2.0, 1.0).sample((n,)), np.random.rand(n))
  probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).expand(n, 4)
  original_cat = torch.distributions.Categorical(probs * 3).sample()
  with patched(draws):
    ours = (torch.distributions.Normal(torch.tensor(0.0), torch.tensor(1.0)).sample((n, 3)),
            torch.randint(0, 7, (n,)), torch.rand(n), torch.rand_like(torch.zeros(n)),
            torch.randn_like(torch.zeros(n)),
            torch.distributions.Beta(2.0, 1.0).sample((n,)), np.random.rand(n))
    ours_cat = torch.distributions.Categorical(probs * 3).sample()
  names = ('Normal.sample', 'randint', 'rand', 'rand_like', 'randn_like', 'Beta.sample',
           'np.random.rand')
  for name, a, b in zip(names, ours, originals):
    assert tuple(np.shape(a)) == tuple(np.shape(b)), name
    if isinstance(b, torch.Tensor):
      assert a.dtype == b.dtype, f'{name}: dtype {a.dtype} != {b.dtype}'
    close(a, b, name)
  for k in range(4):
    close(ours_cat == k, original_cat == k, f'Categorical.sample class {k}')
  assert ours_cat.shape == original_cat.shape and ours_cat.dtype == original_cat.dtype


def read_molecules(path, n_mols):
  from rdkit import Chem  # pylint: disable=import-outside-toplevel
  from semlaflow.util.molrepr import GeometricMol  # pylint: disable=import-outside-toplevel
  mols = [m for m in Chem.SDMolSupplier(path, removeHs=False, sanitize=False)][:n_mols]
  return [GeometricMol.from_rdkit(m) for m in mols], [m.GetProp('_Name') for m in mols]


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--d_model', type=int, default=32)
  p.add_argument('--n_layers', type=int, default=2)
  p.add_argument('--n_coord_sets', type=int, default=4)
  p.add_argument('--d_message', type=int, default=16)
  p.add_argument('--d_edge', type=int, default=16)
  p.add_argument('--n_attn_heads', type=int, default=4)
  p.add_argument('--d_message_hidden', type=int, default=16)
  p.add_argument('--size_emb', type=int, default=8)
  p.add_argument('--n_mols', type=int, default=4)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--warm_up_steps', type=int, default=2)
  p.add_argument('--bond_loss_weight', type=float, default=0.5)
  p.add_argument('--sdf', default=os.path.join(HERE, 'qm9_molecules.sdf'))
  p.add_argument('--out', required=True)
  p.add_argument('--ckpt', default='', help='also write a Lightning checkpoint here')
  args = p.parse_args()

  repo = os.environ['SEMLA_REPO']
  sys.path.insert(0, repo)
  commit = subprocess.run(['git', '-C', repo, 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True, check=False).stdout.strip()
  import semlaflow.scriptutil as util  # pylint: disable=import-outside-toplevel
  from semlaflow.data.datamodules import GeometricInterpolantDM  # pylint: disable=import-outside-toplevel
  import semlaflow.data.interpolate as interp_mod  # pylint: disable=import-outside-toplevel
  from semlaflow.models.fm import Integrator, MolecularCFM  # pylint: disable=import-outside-toplevel
  from semlaflow.models.semla import EquiInvDynamics, SemlaGenerator  # pylint: disable=import-outside-toplevel

  check_stand_ins()
  torch.manual_seed(args.seed)
  draws = Draws(args.seed)
  vocab = util.build_vocab()
  n_bonds = util.get_n_bond_types('uniform-sample')
  coord_std = util.QM9_COORDS_STD_DEV

  dynamics = EquiInvDynamics(args.d_model, args.d_message, args.n_coord_sets, args.n_layers,
                             n_attn_heads=args.n_attn_heads,
                             d_message_hidden=args.d_message_hidden, d_edge=args.d_edge,
                             bond_refine=True, self_cond=True, coord_norm='length')
  gen = SemlaGenerator(args.d_model, dynamics, vocab.size, vocab.size + 1, d_edge=args.d_edge,
                       n_edge_types=n_bonds, self_cond=True, size_emb=args.size_emb,
                       max_atoms=256)
  integrator = Integrator(args.steps, type_strategy='uniform-sample',
                          bond_strategy='uniform-sample', cat_noise_level=1)
  model = MolecularCFM(gen, vocab, 3e-4, integrator, coord_scale=coord_std,
                       type_strategy='ce', bond_strategy='ce', type_loss_weight=0.2,
                       bond_loss_weight=args.bond_loss_weight, charge_loss_weight=1.0,
                       pairwise_metrics=False, use_ema=True, compile_model=False,
                       self_condition=True, lr_schedule='constant',
                       warm_up_steps=args.warm_up_steps)
  model.log = lambda *a, **k: None  # No trainer attached: Lightning's logging is a no-op here.
  model.ema_gen.update_parameters(model.gen)  # The EMA's first update copies the weights.
  out = {}
  for name, v in model.gen.state_dict().items():
    out[f'params/{name}'] = v.detach().numpy().copy()

  # Data: SemlaFlow's transform (scale, random rotation, zero CoM, one-hots).
  mols, names = read_molecules(args.sdf, args.n_mols)
  with patched(draws):
    data_mols = [util.mol_transform(m, vocab=vocab, n_bonds=n_bonds, coord_std=coord_std)
                 for m in mols]

  # The interpolant with its OT, recorded; then the datamodule's collation.
  ot_log = []
  lsa, align = interp_mod.linear_sum_assignment, interp_mod.Rotation.align_vectors

  def lsa_rec(cost):
    r = lsa(cost)
    ot_log.append(('perm', np.asarray(r[1])))
    return r

  def align_rec(a, b, *rest, **kw):
    r = align(a, b, *rest, **kw)
    ot_log.append(('rotation', r[0].as_matrix()))
    return r
  interp_mod.linear_sum_assignment = lsa_rec
  interp_mod.Rotation.align_vectors = align_rec
  sampler = interp_mod.GeometricNoiseSampler(vocab.size, n_bonds, coord_noise='gaussian',
                                             type_noise='uniform-sample',
                                             bond_noise='uniform-sample', zero_com=True)
  interpolant = interp_mod.GeometricInterpolant(
      sampler, coord_interpolation='linear', type_interpolation='unmask',
      bond_interpolation='unmask', coord_noise_std=0.2, equivariant_ot=True,
      batch_ot=False, time_alpha=2.0, time_beta=1.0)
  dm = GeometricInterpolantDM(None, None, None, 64, train_interpolant=interpolant)
  with patched(draws):
    prior, data, interpolated, times = dm._collate(data_mols, 'train')  # pylint: disable=protected-access
  interp_mod.linear_sum_assignment, interp_mod.Rotation.align_vectors = lsa, align
  for k, v in (('prior', prior), ('data', data), ('interpolated', interpolated)):
    for key, value in v.items():
      out[f'{k}/{key}'] = value.numpy().copy()
  out['times'] = times.numpy().copy()
  out['ot/perm'] = np.stack([np.pad(v, (0, 64 - len(v)), constant_values=-1)
                             for k, v in ot_log if k == 'perm'])
  out['ot/rotation'] = np.stack([v for k, v in ot_log if k == 'rotation'])

  # Network outputs without and with the self-conditioning input.
  batch = (prior, data, interpolated, times)
  zeros = {'coords': torch.zeros_like(interpolated['coords']),
           'atomics': torch.zeros_like(interpolated['atomics']),
           'bonds': torch.zeros_like(interpolated['bonds'])}
  with torch.no_grad():
    plain = model(interpolated, times, training=True, cond_batch=zeros)
    cond = {'coords': plain[0], 'atomics': torch.softmax(plain[1], -1),
            'bonds': torch.softmax(plain[2], -1)}
    conditioned = model(interpolated, times, training=True, cond_batch=cond)
  for tag, o in (('out_plain', plain), ('out_cond', conditioned)):
    for key, value in zip(('coords', 'atomics', 'bonds', 'charges'), o):
      out[f'{tag}/{key}'] = value.numpy().copy()

  # The loss terms and every gradient of one training step (its coin recorded),
  # then three optimizer steps: Adam (amsgrad) with LinearLR warm-up, clipping at 1.
  losses_log = []
  orig_loss = model._loss  # pylint: disable=protected-access

  def loss_rec(*a):
    terms = orig_loss(*a)
    losses_log.append({k: float(v) for k, v in terms.items()})
    return terms
  model._loss = loss_rec  # pylint: disable=protected-access
  opt_config = model.configure_optimizers()
  opt, sched = opt_config['optimizer'], opt_config['lr_scheduler']['scheduler']
  for step in range(3):
    opt.zero_grad()
    n_before = len(draws.log)
    with patched(draws):
      loss = model.training_step(batch, step)
    coins = [v for name, v in draws.log[n_before:] if name == 'rand' and v.shape == (1,)]
    out[f'step{step}/coin'] = coins[0]
    loss.backward()
    out[f'step{step}/loss'] = np.float32(loss.item())
    for k, v in losses_log[-1].items():
      out[f'step{step}/{k}'] = np.float32(v)
    for name, prm in model.gen.named_parameters():
      g = prm.grad if prm.grad is not None else torch.zeros_like(prm)
      out[f'step{step}/grads/{name}'] = g.numpy().copy()
    norm = torch.nn.utils.clip_grad_norm_(model.gen.parameters(), 1.0)
    out[f'step{step}/grad_norm'] = np.float32(norm.item())
    out[f'step{step}/lr'] = np.float32(opt.param_groups[0]['lr'])
    opt.step()
    sched.step()
    model.ema_gen.update_parameters(model.gen)
    for name, prm in model.gen.named_parameters():
      out[f'step{step}/params/{name}'] = prm.detach().numpy().copy()
    for name, prm in model.ema_gen.module.named_parameters():
      out[f'step{step}/ema/{name}'] = prm.detach().numpy().copy()

  # An Euler trajectory from the batch's prior with the EMA network (its
  # categorical draws recorded), after loading the initial weights back.
  model.ema_gen.module.load_state_dict({k[len('params/'):]: torch.from_numpy(v)
                                        for k, v in out.items() if k.startswith('params/')})
  states = []
  orig_step = integrator.step

  def step_rec(curr, predicted, prior_, t, step_size):
    states.append({'coords': curr['coords'].numpy().copy(),
                   'atomics': curr['atomics'].argmax(-1).numpy().copy(),
                   'bonds': curr['bonds'].argmax(-1).numpy().copy(), 't': t.numpy().copy()})
    return orig_step(curr, predicted, prior_, t, step_size)
  integrator.step = step_rec
  n_before = len(draws.log)
  with patched(draws):
    final = model._generate(prior, args.steps, 'linear')  # pylint: disable=protected-access
  cat_u = [v for name, v in draws.log[n_before:] if name == 'categorical_u']
  for i, st in enumerate(states):
    for k, v in st.items():
      out[f'euler/state{i}/{k}'] = v
    out[f'euler/u_types{i}'] = cat_u[2 * i]
    out[f'euler/u_bonds{i}'] = cat_u[2 * i + 1]
  for k in ('coords', 'atomics', 'bonds', 'charges'):
    out[f'euler/final/{k}'] = final[k].numpy().copy()

  for i, (name, v) in enumerate(draws.log):
    out[f'draws/{i:04d}_{name}'] = np.asarray(v)
  out['meta'] = np.array(json.dumps({
      'semla_commit': commit or SEMLA_COMMIT, 'seed': args.seed, 'd_model': args.d_model,
      'n_layers': args.n_layers, 'n_coord_sets': args.n_coord_sets,
      'd_message': args.d_message, 'd_edge': args.d_edge, 'n_attn_heads': args.n_attn_heads,
      'd_message_hidden': args.d_message_hidden, 'size_emb': args.size_emb,
      'n_mols': len(mols), 'molecules': names, 'steps': args.steps,
      'warm_up_steps': args.warm_up_steps, 'bond_loss_weight': args.bond_loss_weight,
      'type_loss_weight': 0.2, 'charge_loss_weight': 1.0, 'coord_noise_std': 0.2,
      'cat_noise_level': 1, 'coord_std': coord_std, 'lr': 3e-4, 'vocab': vocab.size,
      'torch': torch.__version__}))
  np.savez_compressed(args.out, **out)
  print(f'wrote {args.out}: {len(out)} arrays, {len(draws.log)} recorded draws')
  if args.ckpt:
    import lightning as L  # pylint: disable=import-outside-toplevel
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(args.ckpt)
    print(f'wrote {args.ckpt}')


if __name__ == '__main__':
  main()
