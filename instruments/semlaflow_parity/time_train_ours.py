"""Times edm_zoo's semlaflow training step on the molecules `time_train.py` times
SemlaFlow's own on: the same model size, batch and dense width (the batch's
largest molecule, as SemlaFlow pads a bucket), self-conditioning on or off as the
coin says. The step is what `launch/train.py` jits: the draws, forward, the four
losses, backward, clipping at norm 1, Adam (amsgrad) with the LinearLR warm-up and
the EMA; the host's OT runs a batch ahead in training and is timed apart here.

  python instruments/semlaflow_parity/time_train_ours.py \\
      --sdf instruments/semlaflow_parity/moses3d_45_48_atoms.sdf --repeats 8

Prints one JSON line (as time_train.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

import jax
import numpy as np

from edm_zoo import config as config_lib, methods
from edm_zoo.data import batching, features
from edm_zoo.io import readers
from edm_zoo.training import optimizer, state as train_state


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
  p.add_argument('--repeats', type=int, default=8)
  p.add_argument('--d_model', type=int, default=384)
  p.add_argument('--n_layers', type=int, default=12)
  p.add_argument('--coin', type=float, default=0.75)
  args = p.parse_args()
  molecules = readers.read_molecules(args.sdf).molecules[:args.n_mols]
  z = sorted({int(a) for m in molecules for a in m['charges']})
  sizes = [len(m['charges']) for m in molecules]
  missing = [m['record'] for m in molecules if features.BONDS not in m]
  if missing:
    raise SystemExit(f'{args.sdf}: record {missing[0]} has no bond block.')
  config = config_lib.build('published', model='semlaflow', dataset='geom_drugs',
                            n_layers=args.n_layers, d_model=args.d_model, batch_size=len(sizes),
                            microbatch_size=len(sizes))
  config = dataclasses.replace(config, num_atom_types=len(z))
  model = methods.make(config, {max(sizes): 1})
  graph = batching.build_graph(molecules, z, batching.exact_budget(sizes), with_bonds=True)
  t = config.train
  tx = optimizer.torch_adamw_amsgrad(t.lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
                                     warmup_start_factor=t.warmup_start_factor)
  start = time.perf_counter()
  graphs = model.prepare(batching.stack([graph]), np.random.default_rng(0))
  ot_s = time.perf_counter() - start
  state = train_state.init_state(model, tx, jax.random.PRNGKey(0),
                                 jax.tree.map(lambda a: a[0], graphs),
                                 optimizer.init_clip_queue())
  draw_fn, step_fn = train_state.make_step_fns(model, tx, ema_decay=t.ema_decay,
                                               clip_grad=t.clip_grad, clip_norm=t.clip_norm)
  key = jax.random.PRNGKey(1)
  # The coin is the self-conditioning draw of the first atom's column 8 (`split_noise`).
  times = []
  for i in range(args.repeats + 2):
    coin = args.coin if args.coin >= 0 else (0.75 if i % 2 else 0.25)
    begin = time.perf_counter()
    t_int, eps = draw_fn(graphs, key, state.step)
    eps = eps.at[:, 0, 8].set(float(jax.scipy.stats.norm.ppf(coin)))
    state, metrics = step_fn(state, graphs, t_int, eps)
    float(metrics['loss'])
    times.append(time.perf_counter() - begin)
  times = times[2:]
  print(json.dumps({'code': 'edm_zoo semlaflow', 'devices': str(jax.devices()),
                    'molecules': len(sizes), 'padded_atoms': model.width,
                    'params': sum(int(np.size(a)) for a in jax.tree.leaves(state.params)),
                    'coin': args.coin, 'step_s': times, 'median_s': float(np.median(times)),
                    'ot_s': ot_s, 'peak_rss_gb': resource.getrusage(
                        resource.RUSAGE_SELF).ru_maxrss / 1e6,
                    'rss_anon_gb': rss_anon_gb()}))


if __name__ == '__main__':
  main()
