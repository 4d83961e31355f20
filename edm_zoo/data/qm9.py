"""The only door to the prepared QM9 dataset (TFDS `edm_qm9`, array_record)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from datasets.qm9 import edm_qm9

SPLITS = ('train', 'valid', 'test')
# --dataset name -> (remove_h, which half of the train split). The halves are the
# reference's: conditional generators train on the second, property classifiers
# on the first; valid and test stay whole.
DATASETS = {'qm9': (False, None), 'qm9_noh': (True, None),
            'qm9_first_half': (False, 'first'), 'qm9_second_half': (False, 'second')}
DATA_DIR_ENV = 'EDM_ZOO_DATA_DIR'
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def default_data_dir() -> str:
  """`$EDM_ZOO_DATA_DIR`, else `<repo>/data/tfds`."""
  return os.environ.get(DATA_DIR_ENV) or os.path.join(_REPO_ROOT, 'data', 'tfds')


def remove_h_for(dataset: str) -> bool:
  """Maps a `--dataset` name to `remove_h`, with a one-line error otherwise."""
  if dataset not in DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; allowed: {sorted(DATASETS)}.')
  return DATASETS[dataset][0]


def atom_types(remove_h: bool) -> tuple[str, ...]:
  return edm_qm9.ATOM_TYPES_WITHOUT_H if remove_h else edm_qm9.ATOM_TYPES_WITH_H


def atomic_numbers(remove_h: bool) -> np.ndarray:
  return np.array([edm_qm9.ATOMIC_NUMBER[t] for t in atom_types(remove_h)])


def _config(remove_h: bool) -> str:
  return 'without_h' if remove_h else 'with_h'


def _builder(remove_h: bool, data_dir: str | None):
  return edm_qm9.EdmQm9(data_dir=data_dir or default_data_dir(),
                        config=_config(remove_h), file_format='array_record')


def is_prepared(remove_h: bool = False, data_dir: str | None = None) -> bool:
  return _builder(remove_h, data_dir).is_prepared()


def prepare(remove_h: bool = False, data_dir: str | None = None) -> str:
  """Builds the dataset once (offline, from qm9pack); returns its folder."""
  builder = _builder(remove_h, data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder.data_dir


def _prepared_builder(remove_h: bool, data_dir: str | None):
  builder = _builder(remove_h, data_dir)
  if not builder.is_prepared():
    raise ValueError(
        f'QM9 ({_config(remove_h)}) is not prepared in '
        f'{data_dir or default_data_dir()}: run `make data` (or `python '
        f'launch/prepare_data.py{" --remove_h" if remove_h else ""}`).')
  return builder


class Qm9Source:
  """A sized, indexable view of one split; items are dicts of numpy arrays.

  Items hold `positions` [n, 3] float32, `charges` [n] int32 (Z), `num_atoms`,
  `gdb_index`, `smiles` (str) and every property (float64, units in
  `datasets/qm9/edm_qm9.py`).
  """

  def __init__(self, source, *, split: str, remove_h: bool, path: str,
               indices: np.ndarray | None = None):
    self._source = source
    self._indices = indices
    self.split = split
    self.remove_h = remove_h
    self.path = path

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else len(self._indices)

  def _record(self, index: int) -> int:
    if self._indices is None:
      return int(index)
    return int(self._indices[index])

  def _fix(self, item: dict[str, Any]) -> dict[str, Any]:
    item['smiles'] = item['smiles'].decode()
    item.update(zip(edm_qm9.PROPERTY_NAMES, item.pop('properties')))
    return item

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._fix(self._source[self._record(index)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    try:
      items = self._source.__getitems__([self._record(i) for i in indices])
    except Exception as e:  # array_record / proto errors are deep and opaque.
      raise ValueError(f'QM9 data in {self.path} is corrupt ({type(e).__name__}:'
                       f' {e}); delete that folder and run `make data`.') from e
    return [self._fix(item) for item in items]

  def subset(self, indices: np.ndarray, split: str) -> 'Qm9Source':
    """A view of the items at `indices` (positions in this source), named `split`."""
    indices = np.asarray(indices)
    if self._indices is not None:
      indices = self._indices[indices]
    return Qm9Source(self._source, split=split, remove_h=self.remove_h, path=self.path,
                     indices=indices)

  def __repr__(self) -> str:
    return f'Qm9Source(split={self.split!r}, remove_h={self.remove_h}, n={len(self)})'


def load(split: str, remove_h: bool = False,
         data_dir: str | None = None) -> Qm9Source:
  """Opens a prepared split.

  Args:
    split: 'train', 'valid' or 'test'.
    remove_h: the without-H config (types C, N, O, F).
    data_dir: TFDS data dir; defaults to `default_data_dir()`.

  Returns:
    A `Qm9Source`.

  Raises:
    ValueError: unknown split, or a dataset that is missing or corrupt.
  """
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; allowed: {list(SPLITS)}.')
  builder = _prepared_builder(remove_h, data_dir)
  try:
    source = builder.as_data_source(split=split)
    expected = builder.info.splits[split].num_examples
    if len(source) != expected:
      raise ValueError(f'{len(source)} records, metadata says {expected}')
    source[0]  # Fails fast on unreadable files.
  except Exception as e:
    raise ValueError(f'QM9 data in {builder.data_dir} is corrupt ({type(e).__name__}:'
                     f' {e}); delete that folder and run `make data`.') from e
  return Qm9Source(source, split=split, remove_h=remove_h, path=builder.data_dir)


def load_dataset(dataset: str, split: str, data_dir: str | None = None) -> Qm9Source:
  """A split of a `--dataset`: the half datasets narrow 'train' to their half.

  Raises:
    ValueError: unknown dataset or split, or a dataset that is missing or corrupt.
  """
  remove_h = remove_h_for(dataset)
  source = load(split, remove_h, data_dir)
  half = DATASETS[dataset][1]
  if split != 'train' or half is None:
    return source
  return source.subset(edm_qm9.half_positions(half, len(source)), f'train[{half}_half]')


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Train-split statistics the model needs.

  Attributes:
    atom_types: type names in one-hot order.
    type_counts: atoms of each type in the train split.
    n_nodes_histogram: {number of atoms: number of train molecules}.
  """
  atom_types: tuple[str, ...]
  type_counts: tuple[int, ...]
  n_nodes_histogram: dict[int, int]

  @property
  def max_n_nodes(self) -> int:
    return max(self.n_nodes_histogram)

  def n_nodes_probs(self) -> np.ndarray:
    """[max_n_nodes + 1] probability of each molecule size (0 where unseen)."""
    counts = np.zeros(self.max_n_nodes + 1, np.float64)
    for n, c in self.n_nodes_histogram.items():
      counts[n] = c
    return counts / counts.sum()


def statistics(remove_h: bool = False, data_dir: str | None = None,
               half: str | None = None) -> Statistics:
  """Train statistics recorded when the dataset was built (of a train `half`:
  'first' or 'second', when given)."""
  meta = _prepared_builder(remove_h, data_dir).info.metadata
  try:
    if half is not None:
      meta = meta['halves'][half]
    return Statistics(
        atom_types=tuple(meta['atom_types']),
        type_counts=tuple(int(c) for c in meta['type_counts']),
        n_nodes_histogram={int(k): int(v)
                           for k, v in meta['n_nodes_histogram'].items()})
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'QM9 metadata in {data_dir or default_data_dir()} is '
                     f'corrupt ({e}); delete that folder and run `make data`.') from e


def dataset_statistics(dataset: str, data_dir: str | None = None) -> Statistics:
  """Train statistics of a `--dataset` (of its half for the half datasets)."""
  remove_h = remove_h_for(dataset)
  return statistics(remove_h, data_dir, DATASETS[dataset][1])
