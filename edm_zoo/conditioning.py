"""Conditioning on molecular properties: the one home of EDM's context.

A conditional model sees, on every node, its molecule's requested properties,
each normalised as (value - mean) / MAD (mean absolute deviation), appended to
the node features after t/T (EDM's `prepare_context` and `EGNN_dynamics_QM9`).
Batches carry the normalised context as `globals[features.CONTEXT]` [n_graph, C]
(`edm_zoo.data.sources.ConditionedSource` adds it to molecules);
`jraph.pad_with_graphs` fills padding graphs with zeros and
`edm_zoo.models.conventions.node_context` masks padding nodes. A batch without
that key is unconditional.

Property values keep the dataset's units (`datasets/qm9/edm_qm9.py`: energies in
eV); `MAE_UNITS` converts to the units of EDM's MAE table (energies in meV).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from edm_zoo.config import Config
from edm_zoo.data import registry
from edm_zoo.data import sources

PROPERTIES = ('alpha', 'gap', 'homo', 'lumo', 'mu', 'Cv')
# Unit and factor from the dataset's unit to the one of EDM's MAE table.
MAE_UNITS = {'alpha': ('Bohr^3', 1.0), 'gap': ('meV', 1000.0), 'homo': ('meV', 1000.0),
             'lumo': ('meV', 1000.0), 'mu': ('D', 1.0), 'Cv': ('cal/(mol K)', 1.0)}


def parse_properties(spec: str | Sequence[str]) -> tuple[str, ...]:
  """'alpha,gap' or ['alpha', 'gap'] -> ('alpha', 'gap'); one-line errors."""
  if isinstance(spec, str):
    spec = spec.split(',')
  names = tuple(s.strip() for s in spec if s.strip())
  unknown = [n for n in names if n not in PROPERTIES]
  if unknown:
    raise ValueError(f'unknown property {unknown[0]!r}; allowed: '
                     f'{list(PROPERTIES)}.')
  if len(set(names)) != len(names):
    raise ValueError(f'conditioning lists a property twice: {list(names)}.')
  return names


def parse_condition(spec: str, properties: Sequence[str]) -> dict[str, float]:
  """'alpha=75.3,gap=6.8' -> {'alpha': 75.3, 'gap': 6.8}, checked against the model's
  properties (every one of them needs a value)."""
  out = {}
  for part in (p.strip() for p in spec.split(',') if p.strip()):
    name, eq, value = part.partition('=')
    name = name.strip()
    if not eq:
      raise ValueError(f'--condition {part!r}: expected name=value (e.g. alpha=75.3).')
    try:
      out[name] = float(value)
    except ValueError:
      raise ValueError(f'--condition {part!r}: {value.strip()!r} is not a number.') from None
    if not np.isfinite(out[name]):
      raise ValueError(f'--condition {part!r}: the value must be finite.')
  if set(out) != set(properties):
    raise ValueError(f'--condition gives {sorted(out)}, the model is conditioned on '
                     f'{list(properties)}: give a value for each of those.')
  return {p: out[p] for p in properties}


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Per-property mean and mean absolute deviation (EDM's `compute_mean_mad`)."""
  properties: tuple[str, ...]
  mean: tuple[float, ...]
  mad: tuple[float, ...]

  @classmethod
  def fit(cls, values: np.ndarray, properties: Sequence[str]) -> 'Normalizer':
    """From `values` [n, P] (columns in `properties` order)."""
    values = np.asarray(values, np.float64)
    mean = values.mean(0)
    return cls(tuple(properties), tuple(float(m) for m in mean),
               tuple(float(d) for d in np.abs(values - mean).mean(0)))

  def normalize(self, values: np.ndarray) -> np.ndarray:
    return ((np.asarray(values, np.float64) - np.array(self.mean)) /
            np.array(self.mad)).astype(np.float32)

  def denormalize(self, context: np.ndarray) -> np.ndarray:
    return np.asarray(context, np.float64) * np.array(self.mad) + np.array(self.mean)

  def to_dict(self) -> dict[str, Any]:
    return {p: {'mean': m, 'mad': d} for p, m, d in zip(self.properties, self.mean, self.mad)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Mapping[str, float]],
                properties: Sequence[str]) -> 'Normalizer':
    return cls(tuple(properties), tuple(float(d[p]['mean']) for p in properties),
               tuple(float(d[p]['mad']) for p in properties))


def property_table(source, properties: Sequence[str], chunk: int = 4096
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(values [n, P] float64, number of atoms [n]) of every molecule of `source`."""
  values, sizes = [], []
  for lo in range(0, len(source), chunk):
    for m in sources.fetch(source, range(lo, min(lo + chunk, len(source)))):
      values.append([m[p] for p in properties])
      sizes.append(len(m['charges']))
  return (np.array(values, np.float64).reshape(-1, len(properties)),
          np.array(sizes, np.int64))


def conditioned(source, normalizer: Normalizer) -> sources.ConditionedSource:
  """`source` whose molecules carry their normalised properties as context."""
  return sources.ConditionedSource(source, normalizer.properties, normalizer.normalize)


class PropertyDistribution:
  """p(property | number of atoms) as histograms (EDM's `DistributionProperty`).

  For every molecule size of the conditional split and every property: 1,000
  equal bins between that size's min and max; a draw picks a bin by its count
  and a value uniformly inside it. Properties are drawn independently given the
  size, as in the reference.

  Args:
    values: [n, P] property values.
    sizes: [n] number of atoms of each molecule.
    properties: the P property names.
    num_bins: bins per (size, property).
  """

  def __init__(self, values: np.ndarray, sizes: np.ndarray, properties: Sequence[str],
               num_bins: int = 1000):
    values = np.asarray(values, np.float64).reshape(len(sizes), len(properties))
    self._values, self._sizes = values, np.asarray(sizes)
    self._std = values.std(0)
    self.properties = tuple(properties)
    self.num_bins = num_bins
    # {size: (lo [P], hi [P], probs [P, bins])}
    self._tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for n in np.unique(self._sizes).tolist():
      v = values[self._sizes == n]
      lo, hi = v.min(0), v.max(0)
      # The reference pads the range by 1e-12 and moves a value landing on
      # the upper edge into the last bin.
      idx = np.minimum(((v - lo) / (hi - lo + 1e-12) * num_bins).astype(np.int64),
                       num_bins - 1)
      probs = np.stack([np.bincount(idx[:, p], minlength=num_bins)
                        for p in range(len(self.properties))]).astype(np.float64)
      self._tables[n] = (lo, hi, probs / probs.sum(1, keepdims=True))

  @property
  def sizes(self) -> tuple[int, ...]:
    return tuple(sorted(self._tables))

  def range(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(min [P], max [P]) of the property values (of molecules with n atoms)."""
    if n is None:
      return self._values.min(0), self._values.max(0)
    lo, hi, _ = self._tables[n]
    return lo, hi

  def sample(self, sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """[len(sizes), P] values drawn given each molecule's size."""
    unknown = sorted({int(n) for n in sizes} - set(self._tables))
    if unknown:
      raise ValueError(f'no molecule of {unknown[0]} atoms in the conditional split; '
                       f'sizes there: {list(self.sizes)}.')
    out = np.zeros((len(sizes), len(self.properties)))
    for i, n in enumerate(sizes):
      lo, hi, probs = self._tables[int(n)]
      for p in range(len(self.properties)):
        b = rng.choice(self.num_bins, p=probs[p])
        width = (hi[p] - lo[p]) / self.num_bins
        out[i, p] = lo[p] + (b + rng.random()) * width
    return out

  def size_probs_given(self, target: np.ndarray, width: float = 0.25) -> dict[int, float]:
    """p(size | properties near `target`): the sizes of the split's molecules
    whose every property is within `width` standard deviations of the target.

    Empty when no molecule is that close (the 1,000-bin histograms are too fine
    to condition on one value: most of their bins are empty).
    """
    near = np.all(np.abs(self._values - np.asarray(target, np.float64)) <=
                  width * self._std, axis=1)
    sizes, counts = np.unique(self._sizes[near], return_counts=True)
    return {int(n): float(c) / float(counts.sum()) for n, c in zip(sizes, counts)}


def fit_normalizer(config: Config, data_dir: str | None = None) -> Normalizer:
  """The config's property normaliser, fitted on `config.context_norm_split`."""
  properties = parse_properties(config.conditioning)
  source = registry.load(config.dataset, config.context_norm_split, data_dir)
  values, _ = property_table(source, properties)
  return Normalizer.fit(values, properties)


def property_distribution(config: Config,
                          data_dir: str | None = None) -> PropertyDistribution:
  """p(properties | size) of the config's train split (its conditional half)."""
  properties = parse_properties(config.conditioning)
  source = registry.load(config.dataset, 'train', data_dir)
  values, sizes = property_table(source, properties)
  return PropertyDistribution(values, sizes, properties)
