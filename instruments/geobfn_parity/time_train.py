"""Times GeoBFN's own training step on this CPU (its loss, backward and AdamW),
for the side-by-side ratio in BENCHMARKS.md.

  GEOBFN_REPO=... ~/geobfn_venv/bin/python instruments/geobfn_parity/time_train.py \\
      --qm9 .../train.npz --nf 256 --n_layers 9 --batch 64 --iters 8

Prints one JSON line: the median and every step's seconds, and the peak RSS.
Uses the same run-time patches as generate.py (its module, imported, not copied).
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate  # noqa: E402  pylint: disable=wrong-import-position


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--qm9', required=True)
  p.add_argument('--nf', type=int, default=256)
  p.add_argument('--n_layers', type=int, default=9)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--iters', type=int, default=8)
  p.add_argument('--warmup', type=int, default=2)
  args = p.parse_args()
  bfn_base, _ = generate.import_geobfn(os.environ['GEOBFN_REPO'])
  torch.manual_seed(0)
  with generate.linspace_on_cpu():
    model = bfn_base.bfn4MolEGNN(in_node_nf=16, hidden_nf=args.nf, n_layers=args.n_layers,
                                 sigma1_coord=0.001, sigma1_charges=0.15, bins=9, beta1=2.0,
                                 sample_steps=1000, charge_discretised_loss=True,
                                 charge_clamp=True, t_min=0.0001, device='cpu')
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True, weight_decay=1e-12)
  rng = np.random.default_rng(0)
  times = []
  for k in range(args.warmup + args.iters):
    _, mols = generate.qm9_batch(args.qm9, rng, args.batch)
    _, pos, charges, seg, edge_index = generate.build(mols)
    start = time.perf_counter()
    t = torch.rand(args.batch, 1).index_select(0, seg)
    pl, cl, _ = model.loss_one_step(t, x=charges, pos=pos, edge_index=edge_index,
                                    segment_ids=seg)
    opt.zero_grad()
    torch.mean(pl + cl).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9)
    opt.step()
    if k >= args.warmup:
      times.append(time.perf_counter() - start)
  print(json.dumps({'train_step_median_s': float(np.median(times)), 'steps_s': times,
                    'threads': torch.get_num_threads(),
                    'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


if __name__ == '__main__':
  main()
