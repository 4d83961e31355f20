"""The molecule-source protocol: sized, indexable collections of molecule dicts.

A source has `__len__`, `__getitem__(i)` (a dict with `positions` [n, 3], `charges`
[n] (Z), `gdb_index`, and whatever else the dataset stores), optionally a batched
`__getitems__(indices)`, and `atomic_numbers` (Z of each one-hot type, in order).
`SplitView` is a dataset split on disk; `Subset` and `ConditionedSource` are views
of another source; `fetch` reads items in one batched call when it can.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from edm_zoo.data import features


def fetch(source, indices) -> list[dict]:
  """Items at `indices`, in one batched read when the source supports it."""
  if hasattr(source, '__getitems__'):
    return source.__getitems__(list(indices))
  return [source[int(i)] for i in indices]


class SplitView:
  """A sized, indexable view of one split of a prepared dataset.

  Args:
    records: the split's random-access records (`builder.as_data_source(split)`).
    split: the split's name (for messages).
    atomic_numbers: Z of each one-hot type of the dataset.
    path: the dataset's folder (for messages and caches beside it).
    decode: turns one stored record into a molecule dict.
    indices: positions in `records` this view holds (all when None).
  """

  def __init__(self, records, *, split: str, atomic_numbers: Sequence[int], path: str,
               decode: Callable[[dict], dict] = lambda item: item,
               indices: np.ndarray | None = None):
    self._records = records
    self._indices = indices
    self._decode = decode
    self.split = split
    self.atomic_numbers = np.asarray(atomic_numbers)
    self.path = path

  def __len__(self) -> int:
    return len(self._records) if self._indices is None else len(self._indices)

  def _record(self, index: int) -> int:
    return int(index) if self._indices is None else int(self._indices[index])

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._decode(self._records[self._record(index)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    try:
      items = self._records.__getitems__([self._record(i) for i in indices])
    except Exception as e:  # array_record / proto errors are deep and opaque.
      raise ValueError(f'the data in {self.path} is corrupt ({type(e).__name__}:'
                       f' {e}); delete that folder and run `make data`.') from e
    return [self._decode(item) for item in items]

  def subset(self, indices: np.ndarray, split: str) -> 'SplitView':
    """A view of the items at `indices` (positions in this view), named `split`."""
    indices = np.asarray(indices)
    if self._indices is not None:
      indices = self._indices[indices]
    return SplitView(self._records, split=split, atomic_numbers=self.atomic_numbers,
                     path=self.path, decode=self._decode, indices=indices)

  def __repr__(self) -> str:
    return f'SplitView(split={self.split!r}, path={self.path!r}, n={len(self)})'


class Subset:
  """`n` items of a source: the first n, or with `spread` n evenly spaced ones
  (splits are sorted by gdb id, so their first molecules are the smallest; a
  spread subset is representative). n <= 0 keeps the whole source."""

  def __init__(self, source, n: int, spread: bool = False):
    self._source = source
    self._n = min(n, len(source)) if n > 0 else len(source)
    self._step = len(source) / self._n if spread and self._n else 1.0
    self.atomic_numbers = source.atomic_numbers

  def __len__(self) -> int:
    return self._n

  def _index(self, i) -> int:
    return int(i * self._step)

  def __getitem__(self, i):
    if not 0 <= i < self._n:
      raise IndexError(i)
    return self._source[self._index(i)]

  def __getitems__(self, indices):
    return fetch(self._source, [self._index(i) for i in indices])


class ConditionedSource:
  """A source whose molecules carry their normalised `context` [P] (float32).

  Args:
    source: the molecules (with their property values as keys).
    properties: the P property names, in context order.
    normalize: [P] values (dataset units) -> [P] float32 context.
  """

  def __init__(self, source, properties: Sequence[str],
               normalize: Callable[[Sequence[float]], np.ndarray]):
    self._source = source
    self._properties = tuple(properties)
    self._normalize = normalize
    self.atomic_numbers = source.atomic_numbers

  def __len__(self) -> int:
    return len(self._source)

  def _add(self, m: dict) -> dict:
    m[features.CONTEXT] = self._normalize([m[p] for p in self._properties])
    return m

  def __getitem__(self, index: int) -> dict:
    return self._add(self._source[index])

  def __getitems__(self, indices) -> list[dict]:
    return [self._add(m) for m in fetch(self._source, indices)]

