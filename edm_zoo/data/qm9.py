"""The prepared QM9 dataset (TFDS `edm_qm9`, array_record): names, splits, statistics.

The `--dataset` names this module knows (`DATASETS`) are the dataset registry of
the zoo: `configure` checks a config's dataset and sets its number of atom types.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from datasets.qm9 import edm_qm9
from edm_zoo.config import Config
from edm_zoo.data import sources

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


def configure(config: Config) -> Config:
  """`config` with the atom-type count of its dataset; a one-line ValueError for
  an unknown dataset name."""
  return dataclasses.replace(
      config, num_atom_types=len(atom_types(remove_h_for(config.dataset))))


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


def _decode(item: dict[str, Any]) -> dict[str, Any]:
  """A stored record -> a molecule dict with each property under its own name."""
  item['smiles'] = item['smiles'].decode()
  item.update(zip(edm_qm9.PROPERTY_NAMES, item.pop('properties')))
  return item


def load(split: str, remove_h: bool = False,
         data_dir: str | None = None) -> sources.SplitView:
  """Opens a prepared split.

  Args:
    split: 'train', 'valid' or 'test'.
    remove_h: the without-H config (types C, N, O, F).
    data_dir: TFDS data dir; defaults to `default_data_dir()`.

  Returns:
    A `sources.SplitView`; items hold `positions` [n, 3] float32, `charges` [n]
    int32 (Z), `num_atoms`, `gdb_index`, `smiles` (str) and every property
    (float64, units in `datasets/qm9/edm_qm9.py`).

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
  return sources.SplitView(source, split=split, atomic_numbers=atomic_numbers(remove_h),
                           path=builder.data_dir, decode=_decode)


def load_dataset(dataset: str, split: str,
                 data_dir: str | None = None) -> sources.SplitView:
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
