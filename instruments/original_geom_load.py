"""The original EDM's GEOM-Drugs data setup on a folder of its files: time to the first
train batch, with its own code.

  PYTHONPATH=$EDM_REPO $EDM_VENV/bin/python instruments/original_geom_load.py \\
      --geom_dir=DIR --batch_size=64
  python instruments/memory_watch.py -- <the line above>    # its peak memory

A measuring instrument run with the original's Python (torch), importing nothing of
edm_zoo. It does what the original's `main_geom_drugs.py` does before its first
step, calling the original's functions: `build_geom_dataset.load_split_data` on
DIR/geom_drugs_30.npy (it reads the whole file into memory, cuts it into a list of
per-conformer arrays and reorders it by DIR/geom_permutation.npy), then
`GeomDrugsTransform`, `GeomDrugsDataset` and `GeomDrugsDataLoader` for each split
(published settings: random batches, no charges), and takes the first train batch.
It prints one JSON line: seconds for each stage, the conformers per split, and the
process's memory after each stage (anonymous and file-backed, from
/proc/self/status) with its peak RSS.

Its `load_split_data` was written for numpy < 1.24 (`np.split` of a ragged list);
that one call gets the old behaviour (`original_geom_train._ragged_split`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time

import numpy as np

import original_geom_train  # This folder: the numpy < 1.24 `np.split`.


def memory() -> dict[str, float]:
  """GB of the process now: RssAnon, RssFile; and its peak RSS so far."""
  out = {}
  with open('/proc/self/status') as f:
    for line in f:
      key, _, value = line.partition(':')
      if key in ('RssAnon', 'RssFile'):
        out[key] = round(int(value.split()[0]) * 1024 / 1e9, 3)
  out['peak_rss'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--geom_dir', required=True, help="the original's files")
  ap.add_argument('--batch_size', type=int, default=64)
  ap.add_argument('--seed', type=int, default=0)
  a = ap.parse_args()
  if importlib.util.find_spec('build_geom_dataset') is None:
    sys.exit('error: put the original checkout on PYTHONPATH (PYTHONPATH=$EDM_REPO).')
  import torch  # pylint: disable=g-import-not-at-top
  build_geom_dataset = importlib.import_module('build_geom_dataset')
  datasets_config = importlib.import_module('configs.datasets_config')
  torch.manual_seed(a.seed)
  np.random.seed(a.seed)
  np.split = original_geom_train._ragged_split(np.split)  # pylint: disable=protected-access

  out = {'bench': 'edm_torch_geom_data_setup', 'geom_dir': os.path.abspath(a.geom_dir),
         'batch_size': a.batch_size, 'stages': {}}
  start = last = time.perf_counter()

  def stage(name):
    nonlocal last
    now = time.perf_counter()
    out['stages'][name] = {'seconds': round(now - last, 2), **memory()}
    last = now

  split_data = build_geom_dataset.load_split_data(
      os.path.join(a.geom_dir, 'geom_drugs_30.npy'), val_proportion=0.1,
      test_proportion=0.1, filter_size=None)
  stage('load_split_data')
  out['conformers'] = {k: len(d) for k, d in zip(('train', 'val', 'test'), split_data)}
  transform = build_geom_dataset.GeomDrugsTransform(
      datasets_config.geom_with_h, False, torch.device('cpu'), False)
  loaders = {}
  for key, data_list in zip(('train', 'val', 'test'), split_data):
    dataset = build_geom_dataset.GeomDrugsDataset(data_list, transform=transform)
    loaders[key] = build_geom_dataset.GeomDrugsDataLoader(
        sequential=False, dataset=dataset, batch_size=a.batch_size, shuffle=key == 'train')
  del split_data
  stage('datasets_and_loaders')
  batch = next(iter(loaders['train']))
  stage('first_train_batch')
  out['first_batch_padded_atoms'] = int(batch['positions'].shape[1])
  out['seconds_to_first_batch'] = round(time.perf_counter() - start, 2)
  out['peak_rss_gb'] = memory()['peak_rss']
  print(json.dumps(out))


if __name__ == '__main__':
  main()
