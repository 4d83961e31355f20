"""The race's original side, evaluated with its own code: NLL of its snapshots, then samples.

  EDM_REPO=... $EDM_VENV/bin/python instruments/race/original_eval.py --harness=H \
      --out=DIR --what=nll --molecules=2048 --nf 64 --n_layers 3 --batch_size 32 ...
  ... --what=sample --n_samples=1000 --seconds=3600

DIR is `original_train.py`'s folder. --what=nll: every snapshot's EMA model through the
original's `train_test.test` (eval mode, its `compute_loss_and_nll`) on the first
--molecules validation molecules of its own unshuffled validation loader (batches of
--batch_size), one JSON line per snapshot in DIR/nll.jsonl (step, seconds, NLL). Its
estimator draws t and noise from torch's generator, seeded per snapshot.
--what=export: each snapshot's EMA state dict as DIR/snapshots/s{seconds}.npz (+ .json: step,
seconds), for edm_zoo's estimator. --what=sample: the last snapshot's EMA model through the original's `qm9.sampling.sample`
(its full 1,000-step chain, sizes from its `nodes_dist`, batches of 100 as its
`analyze_and_save`) until --n_samples molecules or --seconds have passed, whichever comes
first; written after every batch to DIR/samples.xyz (positions in Angstrom, element
symbols) with DIR/sampling.json (molecules, seconds, molecules per hour).
"""
import argparse
import contextlib
import glob
import json
import os
import sys
import time

import numpy as np


def main():
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument('--harness', required=True, help='../shared/reference/harness')
  sys.path.insert(0, os.path.abspath(pre.parse_known_args()[0].harness))
  import common  # pylint: disable=import-outside-toplevel
  ap = argparse.ArgumentParser(parents=[pre])
  ap.add_argument('--out', required=True)
  ap.add_argument('--what', choices=('nll', 'sample', 'export'), required=True)
  ap.add_argument('--molecules', type=int, default=2048)
  ap.add_argument('--n_samples', type=int, default=1000)
  ap.add_argument('--sample_batch_size', type=int, default=100)
  ap.add_argument('--seconds', type=float, default=3600)
  ap.add_argument('--lr', default='1e-3')
  ap.add_argument('--ema_decay', default='0.999')
  common.add_model_args(ap)
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  snapshots = sorted(glob.glob(os.path.join(out, 'snapshots', 's*.pt')))
  if not snapshots:
    sys.exit(f'error: {out}/snapshots holds no snapshot (run original_train.py first).')
  common.PUBLISHED.update({'--lr': a.lr, '--ema_decay': a.ema_decay})
  with contextlib.redirect_stdout(sys.stderr):
    m, _, _ = common.load_main_qm9(a)
  import torch  # pylint: disable=import-outside-toplevel
  from qm9.sampling import sample  # pylint: disable=import-outside-toplevel
  from train_test import test  # pylint: disable=import-outside-toplevel

  model = m.model
  if a.what == 'export':
    # The EMA weights as plain arrays, so that edm_zoo's estimator can read them
    # (`instruments/race/ours_nll.py --state_dicts`): the same t and noise for both.
    for path in snapshots:
      snap = torch.load(path, map_location='cpu')
      np.savez(path[:-3] + '.npz', **{k: v.numpy() for k, v in snap['model_ema'].items()})
      with open(path[:-3] + '.json', 'w') as f:
        json.dump({'step': snap['step'], 'elapsed_s': snap['elapsed_s'],
                   'mark_s': snap['mark_s']}, f)
    return
  if a.what == 'nll':
    n_batches = -(-a.molecules // a.batch_size)
    batches = common.take_batches(m.dataloaders['valid'], n_batches)
    molecules = sum(int(b['positions'].shape[0]) for b in batches)
    with open(os.path.join(out, 'nll.jsonl'), 'w') as f:
      for path in snapshots:
        snap = torch.load(path, map_location='cpu')
        model.load_state_dict(snap['model_ema'])
        torch.manual_seed(a.seed)
        start = time.time()
        with contextlib.redirect_stdout(sys.stderr):
          value = test(args=m.args, loader=batches, epoch=0, eval_model=model,
                       device=m.device, dtype=m.dtype, property_norms=m.property_norms,
                       nodes_dist=m.nodes_dist, partition='Val')
        line = {'step': snap['step'], 'elapsed_s': snap['elapsed_s'], 'mark_s': snap['mark_s'],
                'val_nll': float(value), 'val_nll_molecules': molecules,
                'eval_seconds': time.time() - start}
        f.write(json.dumps(line) + '\n')
        f.flush()
        print(json.dumps(line), file=sys.stderr)
    return

  snap = torch.load(snapshots[-1], map_location='cpu')
  model.load_state_dict(snap['model_ema'])
  model.eval()
  decoder = m.dataset_info['atom_decoder']
  torch.manual_seed(a.seed)
  start, done = time.time(), 0
  path = os.path.join(out, 'samples.xyz')
  with open(path, 'w') as f:
    while done < a.n_samples and time.time() - start < a.seconds:
      n = min(a.sample_batch_size, a.n_samples - done)
      sizes = m.nodes_dist.sample(n)
      with torch.no_grad():
        one_hot, _, x, node_mask = sample(m.args, m.device, model, m.dataset_info,
                                          m.prop_dist, nodesxsample=sizes)
      types = one_hot.argmax(dim=2)
      for i in range(n):
        k = int(node_mask[i].sum())
        f.write(f'{k}\noriginal EDM, snapshot {os.path.basename(snapshots[-1])}, '
                f'step {snap["step"]}, molecule {done + i}\n')
        for j in range(k):
          p = x[i, j].tolist()
          f.write(f'{decoder[int(types[i, j])]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}\n')
      f.flush()
      done += n
      seconds = time.time() - start
      with open(os.path.join(out, 'sampling.json'), 'w') as g:
        json.dump({'molecules': done, 'seconds': seconds, 'steps': int(model.T),
                   'molecules_per_hour': 3600 * done / seconds, 'snapshot': snapshots[-1],
                   'snapshot_step': snap['step'], 'batch_size': a.sample_batch_size,
                   'threads': torch.get_num_threads()}, g)
      print(f'{done} molecules in {seconds:.0f} s', file=sys.stderr)


if __name__ == '__main__':
  main()
