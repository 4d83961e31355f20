"""The dataset registry: every `--dataset` name, and the only door to prepared data.

An entry says what a dataset is: its TFDS builder (under `datasets/`), its atom
types and whether charges are a feature, its split recipe, how its samples are
scored (`MetricSet`), its published preset, and the command that builds it. The
train statistics (node-count histogram, type counts) come from the metadata that
the builder recorded at build time. A user's own SDF/XYZ dataset
(`launch/prepare_data.py --dataset=NAME --from=PATH`) is found by its name in the
data folder. Adding a dataset = one builder + one entry in `_ENTRIES`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import logging
import os
import re
import shutil
from typing import Any, Callable

import numpy as np

from datasets.geom_drugs import edm_geom_drugs
from datasets.molecules import edm_molecules
from datasets.moses3d import edm_moses3d
from datasets.qm9 import edm_qm9
from edm_zoo.config import Config
from edm_zoo.data import elements
from edm_zoo.data import sources

SPLITS = ('train', 'valid', 'test')
DATA_DIR_ENV = 'EDM_ZOO_DATA_DIR'
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_NAME = re.compile(r'^[a-z][a-z0-9_]{0,63}$')


class _QuietTfds(logging.Filter):
  """Drops TFDS's warnings about our parametrised builder configs (each user dataset
  is one) and about a dataset folder that is not built yet (we say so ourselves)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith('Using custom data configuration') or
                'has no dataset_info.json' in message)


logging.getLogger('absl').addFilter(_QuietTfds())


def default_data_dir() -> str:
  """`$EDM_ZOO_DATA_DIR`, else `<repo>/data/tfds`."""
  return os.environ.get(DATA_DIR_ENV) or os.path.join(_REPO_ROOT, 'data', 'tfds')


@dataclasses.dataclass(frozen=True)
class MetricSet:
  """How a dataset's samples are scored (EDM's choices per dataset).

  Attributes:
    rdkit_single_bonds: RDKit molecules get single bonds only (EDM's GEOM
      `build_xae_molecule`, `limit_bonds_to_one=True`); stability always uses
      bond orders.
    novelty: compare valid samples with the train split's SMILES.
  """
  rdkit_single_bonds: bool = False
  novelty: bool = True


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A registry entry.

  Attributes:
    name: the `--dataset` name.
    make_builder: (data_dir, build options) -> its TFDS builder.
    atom_types: the one-hot types in order (None: recorded in the metadata).
    charges_feature: Z is a node feature (`include_charges`), as EDM's run on it.
    split_recipe: how train/valid/test are made (for --help and the docs).
    metrics: how samples are scored.
    preset: the published run's preset in `edm_zoo.config.PRESETS`, if any.
    half: a QM9 train half ('first', 'second') this name narrows 'train' to.
    base: the dataset whose train SMILES novelty compares with (a half's 'qm9').
    properties: molecular properties stored per molecule (conditioning).
    decode: one stored record -> a molecule dict.
    prepare: the command that builds it.
    builds_itself: a launcher may build it when missing (it needs no input and
      takes under a minute).
    needs_source: it is built from the user's files (`--from`).
  """
  name: str
  make_builder: Callable[[str, dict], Any]
  atom_types: tuple[str, ...] | None
  charges_feature: bool = True
  split_recipe: str = ''
  metrics: MetricSet = MetricSet()
  preset: str | None = None
  half: str | None = None
  base: str | None = None
  properties: tuple[str, ...] = ()
  decode: Callable[[dict], dict] = lambda item: item
  prepare: str = ''
  builds_itself: bool = False
  needs_source: bool = False


def _qm9(name: str, remove_h: bool, half: str | None = None) -> Dataset:
  def make(data_dir, options):
    del options  # QM9 has none.
    return edm_qm9.EdmQm9(data_dir=data_dir, config='without_h' if remove_h else 'with_h',
                          file_format='array_record')
  return Dataset(
      name=name, make_builder=make,
      atom_types=edm_qm9.ATOM_TYPES_WITHOUT_H if remove_h else edm_qm9.ATOM_TYPES_WITH_H,
      split_recipe=('np.random.seed(0) permutation of the gdb-sorted molecules: '
                    'train 100,000, valid 17,748, test 13,083 (EDM)' +
                    (f'; train narrowed to its {half} half (seed 42)' if half else '')),
      half=half, base='qm9_noh' if remove_h else 'qm9', properties=edm_qm9.PROPERTY_NAMES,
      decode=edm_qm9.decode, builds_itself=True,
      prepare=f'python launch/prepare_data.py --dataset={"qm9_noh" if remove_h else "qm9"}')


def _geom(name: str, remove_h: bool) -> Dataset:
  def make(data_dir, options):
    return edm_geom_drugs.EdmGeomDrugs(
        data_dir=data_dir, config=edm_geom_drugs.GeomConfig(remove_h=remove_h, **options),
        file_format='array_record')
  return Dataset(
      name=name, make_builder=make,
      atom_types=(edm_geom_drugs.ATOM_TYPES_WITHOUT_H if remove_h
                  else edm_geom_drugs.ATOM_TYPES_WITH_H),
      charges_feature=False, split_recipe=edm_geom_drugs.SPLIT_RECIPE,
      metrics=MetricSet(rdkit_single_bonds=True, novelty=False),
      preset='geom_drugs', decode=edm_geom_drugs.decode, needs_source=True,
      prepare=f'python launch/prepare_data.py --dataset={name} --from=DIR')


def _moses3d() -> Dataset:
  def make(data_dir, options):
    return edm_moses3d.EdmMoses3d(data_dir=data_dir,
                                  config=edm_moses3d.Moses3dConfig(**options),
                                  file_format='array_record')
  return Dataset(
      name='moses3d', make_builder=make, atom_types=edm_geom_drugs.ATOM_TYPES_WITH_H,
      charges_feature=False, split_recipe=edm_moses3d.SPLIT_RECIPE,
      metrics=MetricSet(rdkit_single_bonds=True, novelty=True), preset='geom_drugs',
      decode=edm_moses3d.decode,
      prepare='python launch/prepare_data.py --dataset=moses3d [--molecules=N]')


_ENTRIES = {d.name: d for d in (
    _qm9('qm9', False), _qm9('qm9_noh', True),
    _qm9('qm9_first_half', False, 'first'), _qm9('qm9_second_half', False, 'second'),
    _geom('geom_drugs', False), _geom('geom_drugs_noh', True), _moses3d())}


def names() -> list[str]:
  """The registered names (a user's own datasets come on top)."""
  return sorted(_ENTRIES)


def _user_dataset(name: str) -> Dataset:
  def make(data_dir, options):
    return edm_molecules.EdmMolecules(
        data_dir=data_dir, config=edm_molecules.MoleculesConfig(name=name, **options),
        file_format='array_record')
  return Dataset(name=name, make_builder=make, atom_types=None,
                 split_recipe='seeded random split (metadata: split_recipe)',
                 decode=edm_molecules.decode, needs_source=True,
                 prepare=f'python launch/prepare_data.py --dataset={name} --from=PATH')


def check_name(name: str) -> None:
  """One-line ValueError for a name that cannot be a dataset."""
  if name not in _ENTRIES and not _NAME.match(name or ''):
    raise ValueError(f'unknown dataset {name!r}; registered: {names()}, or your own '
                     'built with `python launch/prepare_data.py --dataset=NAME '
                     '--from=PATH` (NAME: lowercase letters, digits, _).')


def get(name: str, data_dir: str | None = None, *, for_build: bool = False) -> Dataset:
  """The entry of `name`: registered, or a user dataset built in `data_dir`.

  Args:
    name: a `--dataset` name.
    data_dir: the datasets' folder (`default_data_dir()` when None).
    for_build: a name that is neither registered nor built yet becomes a new user
      dataset (prepare_data with --from).

  Raises:
    ValueError: an unknown name (one line naming the registered ones and the
      command that builds your own).
  """
  check_name(name)
  if name in _ENTRIES:
    return _ENTRIES[name]
  entry = _user_dataset(name)
  if for_build or os.path.isdir(os.path.join(data_dir or default_data_dir(),
                                             'edm_molecules', name)):
    return entry
  raise ValueError(f'unknown dataset {name!r}: neither registered ({names()}) nor built '
                   f'in {data_dir or default_data_dir()}; build your own with '
                   f'`{entry.prepare}`.')


def metrics(name: str) -> MetricSet:
  """How samples of `name` are scored (no data needed: a checkpoint's dataset may
  live elsewhere)."""
  return _ENTRIES[name].metrics if name in _ENTRIES else MetricSet()


def _builder(entry: Dataset, data_dir: str | None, options: dict | None = None):
  return entry.make_builder(data_dir or default_data_dir(), dict(options or {}))


def is_prepared(name: str, data_dir: str | None = None) -> bool:
  return _builder(get(name, data_dir, for_build=True), data_dir).is_prepared()


def prepare(name: str, data_dir: str | None = None, *, options: dict | None = None,
            rebuild: bool = False) -> str:
  """Builds a dataset once (offline); returns its folder.

  A dataset already built is kept when it was built from the same inputs and
  options (a builder's `build_key()`; None when the call names no inputs).

  Args:
    name: the `--dataset`.
    data_dir: the datasets' folder.
    options: the builder's build options (`source` (--from), split, seed, ...).
    rebuild: build again, replacing what is there (needed when the inputs or
      options changed).

  Raises:
    ValueError: bad inputs (one line), or a dataset of that name built from other
      inputs or options without `rebuild`.
  """
  entry = get(name, data_dir, for_build=True)
  builder = _builder(entry, data_dir, options)
  if builder.is_prepared():
    wanted = builder.build_key() if hasattr(builder, 'build_key') else None
    same = wanted is None or wanted == builder.info.metadata.get('build_key')
    if same and not rebuild:
      return builder.data_dir
    if not rebuild:
      raise ValueError(f'dataset {name!r} in {builder.data_dir} was built from other '
                       'inputs or options; pass --rebuild to replace it (or use another '
                       '--dataset name).')
    # Moved aside, not deleted, until the new build has succeeded.
    aside = builder.data_dir.rstrip('/') + '.replaced'
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(builder.data_dir, aside)
    try:
      path = _build(entry, name, data_dir, options)
    except BaseException:
      shutil.rmtree(_builder(entry, data_dir, options).data_dir, ignore_errors=True)
      os.rename(aside, builder.data_dir)
      raise
    shutil.rmtree(aside)
    return path
  return _build(entry, name, data_dir, options)


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str):
  """Holds `<config folder>/.build.lock` for one build; a second build of the same
  dataset meanwhile is refused in one line."""
  parent = os.path.dirname(data_dir.rstrip('/'))
  os.makedirs(parent, exist_ok=True)
  with open(os.path.join(parent, '.build.lock'), 'w') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise ValueError(f'another process is building {name!r} in {parent}; wait for it '
                       'to finish.') from None
    yield


def stale_builds(data_dir: str) -> list[str]:
  """What killed builds of this dataset left: TFDS writes a build into
  `incomplete.<random>_<version>` beside its final folder and renames it when it
  is complete, so such a folder never holds a usable dataset."""
  parent, version = os.path.split(data_dir.rstrip('/'))
  return sorted(glob.glob(os.path.join(parent, f'incomplete.*_{version}')))


def _build(entry: Dataset, name: str, data_dir: str | None, options: dict | None) -> str:
  builder = _builder(entry, data_dir, options)
  if entry.needs_source and not (options or {}).get('source'):
    raise ValueError(f'{name!r} is not prepared in {data_dir or default_data_dir()} and '
                     f'is built from your files: run `{entry.prepare}`.')
  if hasattr(builder, 'build_key'):
    builder.build_key()  # Reads what it can, so bad inputs fail before TFDS starts.
  with _build_lock(builder.data_dir, name):
    # A killed build starts again from scratch; what it wrote is removed first.
    for stale in stale_builds(builder.data_dir):
      logging.warning('removing %s, left by an interrupted build of %s', stale, name)
      shutil.rmtree(stale)
    builder.download_and_prepare()
  return builder.data_dir


def _or_make(entry: Dataset) -> str:
  return ' (or `make data`)' if entry.name in ('qm9', 'qm9_first_half', 'qm9_second_half') \
      else ''


def older_versions(builder) -> list[str]:
  """Versions of this dataset prepared by an older edm_zoo beside the current one
  (before bonds and formal charges were stored)."""
  parent, version = os.path.split(builder.data_dir.rstrip('/'))
  if not os.path.isdir(parent):
    return []
  return sorted(v for v in os.listdir(parent) if v != version and re.match(r'^\d+\.\d+\.\d+$', v)
                and os.path.isfile(os.path.join(parent, v, 'dataset_info.json')))


def _prepared_builder(entry: Dataset, data_dir: str | None):
  builder = _builder(entry, data_dir)
  if not builder.is_prepared():
    old = older_versions(builder)
    if old:
      raise ValueError(
          f'dataset {entry.name!r} in {data_dir or default_data_dir()} was prepared by an '
          f'older edm_zoo (version {old[-1]}, without bonds and formal charges): rebuild it '
          f'with `{entry.prepare}`{_or_make(entry)}.')
    raise ValueError(f'dataset {entry.name!r} is not prepared in '
                     f'{data_dir or default_data_dir()}: run `{entry.prepare}`'
                     f'{_or_make(entry)}.')
  return builder


def load(name: str, split: str, data_dir: str | None = None, *,
         with_bonds: bool = False) -> sources.SplitView:
  """A split of a prepared dataset (a QM9 half narrows 'train' to its half).

  Args:
    name: the `--dataset`.
    split: 'train', 'valid' or 'test'.
    data_dir: the datasets' folder.
    with_bonds: the bond-aware split: without the molecules whose bonds are not
      known (`edm_zoo.data.bonds.LEFT_OUT`, listed in the metadata). Off, the split
      is EDM's, whole.

  Returns:
    A `sources.SplitView`; items hold `positions` [n, 3] float32 (Angstrom),
    `charges` [n] int32 (Z), the bond fields (`edm_zoo.data.bonds`) and what the
    dataset stores besides (QM9: `gdb_index`, `smiles`, each property; others:
    `index`, the molecule's place in the inputs).

  Raises:
    ValueError: unknown dataset or split, or data that is missing or corrupt.
  """
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; allowed: {list(SPLITS)}.')
  entry = get(name, data_dir)
  builder = _prepared_builder(entry, data_dir)
  try:
    records = builder.as_data_source(split=split)
    expected = builder.info.splits[split].num_examples
    if len(records) != expected:
      raise ValueError(f'{len(records)} records, metadata says {expected}')
    records[0]  # Fails fast on unreadable files.
  except Exception as e:
    raise ValueError(f'the data of {name!r} in {builder.data_dir} is corrupt '
                     f'({type(e).__name__}: {e}); delete that folder and run '
                     f'`{entry.prepare}`{_or_make(entry)}.') from e
  source = sources.SplitView(records, split=split,
                             atomic_numbers=_statistics(entry, builder, data_dir).atomic_numbers,
                             path=builder.data_dir, decode=entry.decode)
  if split == 'train' and entry.half is not None:
    source = source.subset(edm_qm9.half_positions(entry.half, len(source)),
                           f'train[{entry.half}_half]')
    left_out = _left_out(entry, builder, 'train') if with_bonds else []
    if len(left_out):
      keep = ~np.isin(edm_qm9.half_positions(entry.half, len(records)), left_out)
      source = source.subset(np.flatnonzero(keep), source.split)
    return source
  if with_bonds:
    left_out = _left_out(entry, builder, split)
    if len(left_out):
      keep = np.ones(len(source), bool)
      keep[left_out] = False
      source = source.subset(np.flatnonzero(keep), f'{split}[bonds]')
  return source


def _left_out(entry: Dataset, builder, split: str) -> np.ndarray:
  """Places in `split` of the molecules without known bonds; a one-line error for
  a dataset prepared without bonds."""
  info = builder.info.metadata.get('bonds')
  if not info or 'left_out' not in info:
    raise ValueError(f'dataset {entry.name!r} in {builder.data_dir} has no bonds (prepared '
                     f'by an older edm_zoo): rebuild it with `{entry.prepare}`.')
  return np.asarray(info['left_out'].get(split, []), np.int64)


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Train-split statistics the model needs, recorded at build time.

  Attributes:
    atom_types: type symbols in one-hot order.
    atomic_numbers: Z of each type.
    type_counts: atoms of each type in the train split.
    n_nodes_histogram: {number of atoms: number of train molecules}.
  """
  atom_types: tuple[str, ...]
  atomic_numbers: np.ndarray
  type_counts: tuple[int, ...]
  n_nodes_histogram: dict[int, int]


def statistics(name: str, data_dir: str | None = None) -> Statistics:
  """The train statistics of a prepared dataset (of its half for a QM9 half)."""
  entry = get(name, data_dir)
  return _statistics(entry, _prepared_builder(entry, data_dir), data_dir)


def _statistics(entry: Dataset, builder, data_dir: str | None) -> Statistics:
  name, meta = entry.name, builder.info.metadata
  try:
    if entry.half is not None:
      meta = meta['halves'][entry.half]
    types = tuple(meta['atom_types'])
    if entry.atom_types is not None and types != tuple(entry.atom_types):
      raise ValueError(f'types {types}, expected {entry.atom_types}')
    return Statistics(
        atom_types=types, atomic_numbers=elements.atomic_numbers(types),
        type_counts=tuple(int(c) for c in meta['type_counts']),
        n_nodes_histogram={int(k): int(v) for k, v in meta['n_nodes_histogram'].items()})
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'the metadata of {name!r} in {data_dir or default_data_dir()} is '
                     f'corrupt ({e}); delete that folder and run `{entry.prepare}`'
                     f'{_or_make(entry)}.') from e


def metadata(name: str, data_dir: str | None = None) -> dict[str, Any]:
  """Everything the builder recorded (statistics, build options, skipped records)."""
  return dict(_prepared_builder(get(name, data_dir), data_dir).info.metadata)


def atom_types(name: str, data_dir: str | None = None) -> tuple[str, ...]:
  """The one-hot types of a dataset (a user dataset's from its metadata)."""
  entry = get(name, data_dir)
  if entry.atom_types is not None:
    return tuple(entry.atom_types)
  return statistics(name, data_dir).atom_types


def configure(config: Config, data_dir: str | None = None) -> Config:
  """`config` with its dataset's atom-type count, and `include_charges` off for a
  dataset whose EDM run has no charge feature (GEOM-Drugs); one-line ValueErrors
  for an unknown dataset or conditioning on properties it does not store."""
  entry = get(config.dataset, data_dir)
  missing = [p for p in config.conditioning if p not in entry.properties]
  if missing:
    raise ValueError(f'dataset {config.dataset!r} has no property {missing[0]!r} to '
                     f'condition on{"" if entry.properties else " (it stores none)"}.')
  diffusion = config.diffusion
  if not entry.charges_feature:
    diffusion = dataclasses.replace(diffusion, include_charges=False)
  return dataclasses.replace(config, num_atom_types=len(atom_types(config.dataset, data_dir)),
                             diffusion=diffusion)
