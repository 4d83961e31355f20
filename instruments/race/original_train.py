"""The original EDM trained for a wall-clock budget with its own code: the race's other side.

  EDM_REPO=... EDM_ZOO_STARTED=$(date +%s.%N) $EDM_VENV/bin/python \
      instruments/race/original_train.py --harness=H --out=DIR --seconds=3600 \
      --nf 64 --n_layers 3 --batch_size 32 --lr 1e-3 --ema_decay 0.999 --threads 1

The original's `main_qm9.py` is imported with its published QM9 command line and these
overrides (the harness's `common.load_main_qm9`: its dataloaders, `get_model`, `get_optim`
and gradient-norm queue), and its `train_epoch` runs unchanged, epoch after epoch, on its
own shuffled train loader. What this adds sits between the loader and `train_epoch`: before
each batch it notes (step, seconds since EDM_ZOO_STARTED), every --snapshot_every seconds it
saves the EMA model's state dict (`snapshots/s{seconds}.pt`, what both codes evaluate), and
at --seconds it ends the epoch. The original's per-epoch test and 1,000-molecule stability
sampling (epoch 0 and every 20th) are not run: both codes are evaluated afterwards from
their snapshots, outside the budget. Its own per-step log lines go to DIR/train.log; the
stamps to DIR/stamps.json.
"""
import argparse
import contextlib
import copy
import json
import os
import sys
import time

STARTED = float(os.environ.get('EDM_ZOO_STARTED') or time.time())


class BudgetLoader:
  """The original's train loader, stamped, snapshotting and stopped by the clock."""

  def __init__(self, loader, *, save, seconds, every, stamps):
    self.loader, self.save, self.seconds, self.every = loader, save, seconds, every
    self.stamps = stamps
    self.next_mark = every
    self.done = False

  def __len__(self):
    return len(self.loader)

  def __iter__(self):
    for batch in self.loader:
      now = time.time() - STARTED
      while now >= self.next_mark and self.next_mark <= self.seconds:
        self.save(self.next_mark)
        self.next_mark += self.every
      if now >= self.seconds:
        self.done = True
        return
      self.stamps.append((len(self.stamps), now))
      yield batch


def main():
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument('--harness', required=True, help='../shared/reference/harness')
  sys.path.insert(0, os.path.abspath(pre.parse_known_args()[0].harness))
  import common  # pylint: disable=import-outside-toplevel
  ap = argparse.ArgumentParser(parents=[pre])
  ap.add_argument('--out', required=True)
  ap.add_argument('--seconds', type=float, default=3600)
  ap.add_argument('--snapshot_every', type=float, default=60)
  ap.add_argument('--lr', default='1e-3')
  ap.add_argument('--ema_decay', default='0.999')
  common.add_model_args(ap)
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  os.makedirs(os.path.join(out, 'snapshots'), exist_ok=True)
  common.PUBLISHED.update({'--lr': a.lr, '--ema_decay': a.ema_decay})
  log = open(os.path.join(out, 'train.log'), 'w')
  with contextlib.redirect_stdout(log):
    m, argv, setup_s = common.load_main_qm9(a)
  import torch  # pylint: disable=import-outside-toplevel
  from equivariant_diffusion import utils as flow_utils  # pylint: disable=import-outside-toplevel
  from train_test import train_epoch  # pylint: disable=import-outside-toplevel

  args, model = m.args, m.model
  model_ema = copy.deepcopy(model)  # As its main(): EMA on (ema_decay > 0).
  ema = flow_utils.EMA(args.ema_decay)
  stamps = []

  def save(mark):
    step = len(stamps)
    torch.save({'step': step, 'elapsed_s': time.time() - STARTED, 'mark_s': mark,
                'model_ema': model_ema.state_dict()},
               os.path.join(out, 'snapshots', f's{int(mark):05d}.pt'))

  loader = BudgetLoader(m.dataloaders['train'], save=save, seconds=a.seconds,
                        every=a.snapshot_every, stamps=stamps)
  epoch = 1  # Not a test epoch (0, 20, ...): no sampling inside train_epoch.
  with contextlib.redirect_stdout(log):
    while not loader.done:
      train_epoch(args=args, loader=loader, epoch=epoch, model=model, model_dp=model,
                  model_ema=model_ema, ema=ema, device=m.device, dtype=m.dtype,
                  property_norms=m.property_norms, nodes_dist=m.nodes_dist,
                  dataset_info=m.dataset_info, gradnorm_queue=m.gradnorm_queue,
                  optim=m.optim, prop_dist=m.prop_dist)
      epoch += 1
      if epoch % args.test_epochs == 0:
        epoch += 1
  log.close()
  with open(os.path.join(out, 'stamps.json'), 'w') as f:
    json.dump({'steps': len(stamps), 'stamps': stamps, 'setup_s': setup_s, 'argv': argv,
               'seconds': a.seconds, 'threads': torch.get_num_threads(),
               'torch_version': torch.__version__, 'epochs_begun': epoch - 1}, f)


if __name__ == '__main__':
  main()
