"""Times the original EDM's GEOM-Drugs train step with its own code, on a view of its
checkout whose GEOM file holds molecules of one size (`instruments/original_size_split.py
--dataset=moses3d`).

  PYTHONPATH=VIEW $EDM_VENV/bin/python instruments/original_geom_train.py --view=VIEW \\
      --harness=../shared/reference/harness --batch_size=16 --iters=4 --warmup=1

A measuring instrument run with the original's Python (torch), importing nothing of
edm_zoo: the GEOM counterpart of the harness's `bench_train.py`, which imports
`main_qm9`. It imports the view's `main_geom_drugs.py` with the published GEOM-Drugs
command line (the original's README) plus `--no-cuda --no_wandb`; at module level
that builds the data, model, optimizer and gradient-norm queue. Then it runs the
original's `train_epoch` over pre-collated batches, each iteration timed by the
harness's `TimedLoader`, and prints one JSON line as the harness does.

The original was written for numpy < 1.24: its `load_split_data` calls `np.split`
on its list of molecules, which numpy 2 refuses when their sizes differ. For that
data setup only, `np.split` of such a list behaves as it did then (an object array
of the molecules, split); the timed loop is untouched.
"""

import argparse
import contextlib
import copy
import importlib
import importlib.util
import os
import sys
import time

import numpy as np

# The original's README, "GEOM-Drugs"; --batch_size is this script's flag.
PUBLISHED_GEOM = [
    '--n_epochs', '3000', '--exp_name', 'edm_geom_drugs_bench', '--n_stability_samples',
    '500', '--diffusion_noise_schedule', 'polynomial_2', '--diffusion_steps', '1000',
    '--diffusion_noise_precision', '1e-5', '--diffusion_loss_type', 'l2', '--nf', '256',
    '--n_layers', '4', '--lr', '1e-4', '--normalize_factors', '[1,4,10]', '--test_epochs',
    '1', '--ema_decay', '0.9999', '--normalization_factor', '1', '--model',
    'egnn_dynamics', '--visualize_every_batch', '10000']


def _ragged_split(split):
  """`np.split` that splits a list of arrays of different shapes as numpy < 1.24
  did: as a 1-D object array."""
  def ragged_split(ary, indices_or_sections, axis=0):
    if isinstance(ary, list) and len({getattr(a, 'shape', None) for a in ary}) > 1:
      boxed = np.empty(len(ary), dtype=object)
      for i, a in enumerate(ary):
        boxed[i] = a
      ary = boxed
    return split(ary, indices_or_sections, axis)
  return ragged_split


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--view', required=True, help='the view (also on PYTHONPATH)')
  ap.add_argument('--harness', required=True, help='../shared/reference/harness')
  ap.add_argument('--batch_size', type=int, default=16)
  ap.add_argument('--iters', type=int, default=4)
  ap.add_argument('--warmup', type=int, default=1)
  ap.add_argument('--seed', type=int, default=0)
  a = ap.parse_args()
  view = os.path.abspath(a.view)
  if importlib.util.find_spec('main_geom_drugs') is None:
    sys.exit(f'error: put the view on PYTHONPATH (PYTHONPATH={view}).')
  os.environ['EDM_REPO'] = view  # What the harness's common module reads.
  spec = importlib.util.spec_from_file_location(
      'common', os.path.join(a.harness, 'common.py'))
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(a.seed)
  np.random.seed(a.seed)
  np.split = _ragged_split(np.split)

  argv = PUBLISHED_GEOM + ['--batch_size', str(a.batch_size), '--no-cuda', '--no_wandb']
  os.chdir(view)
  sys.argv = ['main_geom_drugs.py'] + argv
  start = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):
    m = importlib.import_module('main_geom_drugs')
  setup_s = time.perf_counter() - start
  train_test = importlib.import_module('train_test')
  diffusion_utils = importlib.import_module('equivariant_diffusion.utils')

  args = m.args
  model_ema = copy.deepcopy(m.model)  # As main_geom_drugs.main() does with ema_decay > 0.
  ema = diffusion_utils.EMA(args.ema_decay)
  batches = common.take_batches(m.dataloaders['train'], a.warmup + a.iters)
  loader = common.TimedLoader(batches)
  # Epoch 0: in any other epoch the original samples and draws chains at iteration 0
  # (GEOM's --visualize_every_batch 10000), which is not a train step.
  with contextlib.redirect_stdout(sys.stderr):
    train_test.train_epoch(args=args, loader=loader, epoch=0, model=m.model,
                           model_dp=m.model, model_ema=model_ema, ema=ema, device=m.device,
                           dtype=m.dtype, property_norms=m.property_norms, optim=m.optim,
                           nodes_dist=m.nodes_dist, gradnorm_queue=m.gradnorm_queue,
                           dataset_info=m.dataset_info, prop_dist=m.prop_dist)
  deltas = loader.deltas()[a.warmup:]
  n_nodes = [int(b['positions'].shape[1]) for b in batches[a.warmup:]]
  out = {'bench': 'edm_torch_geom_train_iter', 'iters': a.iters, 'warmup': a.warmup,
         'nf': args.nf, 'n_layers': args.n_layers, 'batch_size': args.batch_size,
         'n_params': sum(p.numel() for p in m.model.parameters()),
         'padded_nodes_per_batch_mean': sum(n_nodes) / len(n_nodes), 'setup_s': setup_s}
  out.update(common.stats(deltas))
  out.update(common.env_info())
  out['argv'] = ' '.join(argv)
  common.emit(out)


if __name__ == '__main__':
  main()
