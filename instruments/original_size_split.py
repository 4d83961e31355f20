"""A view of the original EDM's checkout whose QM9 train split holds molecules of one
size, so that the harness (`../shared/reference/harness`) times the original's train
step against molecule size with its own code and loaders.

  python instruments/original_size_split.py --edm_repo=$EDM_REPO --size=22 --out=DIR
  EDM_REPO=DIR $EDM_VENV/bin/python $H/bench_train.py --iters 4 --warmup 1

DIR links every file of the checkout except `qm9/temp/qm9/train.npz`, which keeps
only the train molecules of `--size` atoms. The original refuses a train split that
lacks one of QM9's elements (sizes above 20 have no fluorine), so for each missing
element the largest smaller molecule that has it is added, and named on stdout: one
molecule in a few thousand, padded to the batch's size by the original's collate.
The valid and test splits are the original's. `--min_molecules` repeats a rare size's
molecules so that no timed batch is a short last one.

With `--dataset=moses3d` (or another prepared dataset of GEOM-Drugs' elements), the
view is one for the original's `main_geom_drugs.py` instead: `data/geom/` holds
`geom_drugs_30.npy` (rows of molecule id, atomic number, x, y, z: the original's
format) with `--min_molecules` of our dataset's train molecules of `--size` atoms
(`--size=0`: molecules of every size, spread over the split), and
`geom_permutation.npy` (in order; the original's split takes 10% / 10% / 80%).
`instruments/original_geom_train.py` then times its train step.
"""

import json
import os

from absl import app
from absl import flags
import numpy as np

from edm_zoo import benchmarks
from edm_zoo.data import registry, sources

_REPO = flags.DEFINE_string('edm_repo', os.environ.get('EDM_REPO'),
                            'a checkout of the original EDM with its QM9 npz files '
                            '(default: $EDM_REPO)')
_SIZE = flags.DEFINE_integer('size', None, 'atoms per train molecule')
_OUT = flags.DEFINE_string('out', None, 'the folder to write the view into')
_MIN = flags.DEFINE_integer('min_molecules', 0,
                            'repeat the molecules of the size up to this many, so that '
                            'every timed batch is full (the loader keeps a short last one)')

_DATASET = flags.DEFINE_string('dataset', 'qm9', "qm9 (the original's QM9 split), or a "
                               "prepared dataset of GEOM-Drugs' elements, e.g. moses3d")
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'our prepared datasets (default: '
                                'EDM_ZOO_DATA_DIR or data/tfds)')

_SPLITS = os.path.join('qm9', 'temp', 'qm9')
_GEOM = os.path.join('data', 'geom')


def _link_tree(src: str, dst: str, keep_out: str) -> None:
  """dst mirrors src with symlinks, except the path `keep_out` (relative), whose
  parent folders are real so that a file can be put there instead."""
  os.makedirs(dst, exist_ok=True)
  head, _, rest = keep_out.partition(os.sep)
  for name in os.listdir(src):
    if name == head and rest:
      _link_tree(os.path.join(src, name), os.path.join(dst, name), rest)
    elif name != head and not os.path.lexists(os.path.join(dst, name)):
      os.symlink(os.path.join(src, name), os.path.join(dst, name))


def split_of_size(train: dict[str, np.ndarray], size: int,
                  min_molecules: int = 0) -> tuple[np.ndarray, list[dict]]:
  """(indices of the molecules to keep, repeated up to `min_molecules`; [the added
  molecules, one per element the size lacks])."""
  n, charges = train['num_atoms'], train['charges']
  keep = np.flatnonzero(n == size)
  if not keep.size:
    raise ValueError(f'the original\'s train split has no molecule of {size} atoms.')
  keep = np.resize(keep, max(keep.size, min_molecules))
  present = set(np.unique(charges[keep]).tolist()) - {0}
  added = []
  for z in sorted(set(np.unique(charges).tolist()) - {0} - present):
    has = np.flatnonzero((charges == z).any(axis=1) & (n <= size))
    pick = int(has[np.argmax(n[has])])
    added.append({'element': int(z), 'index': pick, 'atoms': int(n[pick])})
  return np.concatenate([keep, [a['index'] for a in added]]).astype(int), added


def geom_rows(molecules: list[dict]) -> np.ndarray:
  """The original's GEOM conformer file: one row per atom, (molecule id, atomic
  number, x, y, z)."""
  return np.concatenate([
      np.column_stack([np.full(len(m['charges']), i), m['charges'], m['positions']])
      for i, m in enumerate(molecules)]).astype(np.float64)


def _geom_view(repo: str, out: str) -> None:
  """Writes the GEOM view of `--dataset` molecules of `--size` atoms (0: of every
  size, spread over the train split)."""
  count = max(_MIN.value, 1)
  if _SIZE.value:
    elements = registry.statistics(_DATASET.value, _DATA_DIR.value).atomic_numbers
    ((_, molecules),) = benchmarks.molecules_of_sizes(
        _DATASET.value, (_SIZE.value,), count, elements, _DATA_DIR.value)
  else:
    train = registry.load(_DATASET.value, 'train', _DATA_DIR.value)
    molecules = sources.fetch(sources.Subset(train, count, spread=True), range(count))
  _link_tree(repo, out, os.path.join(_GEOM, 'geom_drugs_30.npy'))
  for name in os.listdir(os.path.join(out, _GEOM)):  # Links to the original's files.
    os.remove(os.path.join(out, _GEOM, name))
  np.save(os.path.join(out, _GEOM, 'geom_drugs_30.npy'), geom_rows(molecules))
  np.save(os.path.join(out, _GEOM, 'geom_permutation.npy'), np.arange(count))
  print(json.dumps({'dataset': _DATASET.value, 'size': _SIZE.value, 'molecules': count,
                    'train_molecules': count - 2 * int(0.1 * count), 'view': out}))


def main(argv):
  del argv
  if _SIZE.value is None or not _OUT.value:
    raise SystemExit('error: give --size=ATOMS and --out=DIR.')
  if _DATASET.value != 'qm9':
    if not _REPO.value or not os.path.isfile(os.path.join(_REPO.value, 'main_geom_drugs.py')):
      raise SystemExit("error: --edm_repo (or $EDM_REPO) must be the original's checkout.")
    try:
      _geom_view(os.path.abspath(_REPO.value), os.path.abspath(_OUT.value))
    except ValueError as e:
      raise SystemExit(f'error: {e}') from None
    return
  if not _REPO.value or not os.path.isdir(os.path.join(_REPO.value, _SPLITS)):
    raise SystemExit('error: --edm_repo (or $EDM_REPO) must be the original\'s checkout '
                     f'with {_SPLITS}/train.npz (the harness setup writes it).')
  repo, out = os.path.abspath(_REPO.value), os.path.abspath(_OUT.value)
  with np.load(os.path.join(repo, _SPLITS, 'train.npz')) as f:
    train = {k: f[k] for k in f.files}
  try:
    rows, added = split_of_size(train, _SIZE.value, _MIN.value)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  target = os.path.join(_SPLITS, 'train.npz')
  _link_tree(repo, out, target)
  path = os.path.join(out, target)
  if os.path.lexists(path):
    os.remove(path)
  np.savez(path, **{k: v[rows] for k, v in train.items()})
  print(json.dumps({'size': _SIZE.value,
                    'molecules': int((train['num_atoms'] == _SIZE.value).sum()),
                    'train_rows': int(rows.size), 'added': added, 'view': out}))


if __name__ == '__main__':
  app.run(main)
