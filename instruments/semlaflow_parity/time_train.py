"""Times SemlaFlow's own training step at its published GEOM-Drugs size on CPU:
`MolecularCFM.training_step` (forward with self-conditioning, the four losses),
backward, clip_grad_norm_(1.0), Adam (amsgrad) and its LinearLR step, on one batch
of molecules of an SDF (the data pipeline and its OT are not timed: edm_zoo runs
its OT a batch ahead of the step). Runs in the environment of `setup.sh`.

  SEMLA_REPO=... VENV/bin/python instruments/semlaflow_parity/time_train.py \\
      --sdf instruments/semlaflow_parity/moses3d_45_48_atoms.sdf --threads 2 --repeats 8

Prints one JSON line: per-step seconds (each repeat), their median, the peak RSS
and the anonymous memory at the end (/proc/self/status RssAnon).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import read_molecules  # noqa: E402  pylint: disable=wrong-import-position


def rss_anon_gb() -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('RssAnon:'):
        return int(line.split()[1]) / 1e6
  return float('nan')


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--sdf', required=True)
  p.add_argument('--n_mols', type=int, default=16)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--repeats', type=int, default=8)
  p.add_argument('--d_model', type=int, default=384)
  p.add_argument('--n_layers', type=int, default=12)
  p.add_argument('--coin', type=float, default=0.75, help='the self-conditioning draw '
                 '(> 0.5: with the extra forward pass; steps alternate both when -1)')
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  sys.path.insert(0, os.environ['SEMLA_REPO'])
  import semlaflow.scriptutil as util  # pylint: disable=import-outside-toplevel
  import semlaflow.data.interpolate as interp_mod  # pylint: disable=import-outside-toplevel
  from semlaflow.data.datamodules import GeometricInterpolantDM  # pylint: disable=import-outside-toplevel
  from semlaflow.models.fm import Integrator, MolecularCFM  # pylint: disable=import-outside-toplevel
  from semlaflow.models.semla import EquiInvDynamics, SemlaGenerator  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  vocab = util.build_vocab()
  n_bonds = util.get_n_bond_types('uniform-sample')
  # semlaflow/train.py's GEOM-Drugs defaults.
  dynamics = EquiInvDynamics(args.d_model, 128, 64, args.n_layers, n_attn_heads=32,
                             d_message_hidden=128, d_edge=128, bond_refine=True,
                             self_cond=True, coord_norm='length')
  gen = SemlaGenerator(args.d_model, dynamics, vocab.size, vocab.size + 1, d_edge=128,
                       n_edge_types=n_bonds, self_cond=True, size_emb=64, max_atoms=256)
  model = MolecularCFM(gen, vocab, 3e-4, Integrator(100, type_strategy='uniform-sample',
                                                    bond_strategy='uniform-sample',
                                                    cat_noise_level=1),
                       coord_scale=util.GEOM_COORDS_STD_DEV, type_strategy='ce',
                       bond_strategy='ce', type_loss_weight=0.2, bond_loss_weight=1.0,
                       charge_loss_weight=1.0, pairwise_metrics=False, use_ema=True,
                       compile_model=False, self_condition=True, lr_schedule='constant',
                       warm_up_steps=10_000)
  model.log = lambda *a, **k: None
  mols, _ = read_molecules(args.sdf, args.n_mols)
  data = [util.mol_transform(m, vocab=vocab, n_bonds=n_bonds, coord_std=util.GEOM_COORDS_STD_DEV)
          for m in mols]
  sampler = interp_mod.GeometricNoiseSampler(vocab.size, n_bonds, type_noise='uniform-sample',
                                             bond_noise='uniform-sample', zero_com=True)
  interpolant = interp_mod.GeometricInterpolant(
      sampler, type_interpolation='unmask', bond_interpolation='unmask', coord_noise_std=0.2,
      equivariant_ot=True, time_alpha=2.0, time_beta=1.0)
  batch = GeometricInterpolantDM(None, None, None, 64, train_interpolant=interpolant)._collate(  # pylint: disable=protected-access
      data, 'train')
  conf = model.configure_optimizers()
  opt, sched = conf['optimizer'], conf['lr_scheduler']['scheduler']
  times = []
  original_rand = torch.rand
  for i in range(args.repeats + 2):
    coin = args.coin if args.coin >= 0 else (0.75 if i % 2 else 0.25)
    torch.rand = lambda *a, _c=coin, **k: torch.full((1,), _c)  # The self-conditioning coin.
    start = time.perf_counter()
    opt.zero_grad()
    loss = model.training_step(batch, i)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.gen.parameters(), 1.0)
    opt.step()
    sched.step()
    model.ema_gen.update_parameters(model.gen)
    times.append(time.perf_counter() - start)
    torch.rand = original_rand
  times = times[2:]  # The first two allocate and warm up.
  print(json.dumps({'code': 'semlaflow (original)', 'threads': args.threads,
                    'molecules': len(mols), 'padded_atoms': int(batch[1]['mask'].shape[1]),
                    'params': sum(p.numel() for p in model.gen.parameters()),
                    'coin': args.coin, 'step_s': times, 'median_s': float(np.median(times)),
                    'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                    'rss_anon_gb': rss_anon_gb()}))


if __name__ == '__main__':
  main()
