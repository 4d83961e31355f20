"""TFDS builder for a user's own molecules: SDF or XYZ files, or a folder of them.

`python launch/prepare_data.py --dataset=NAME --from=PATH` builds one config of
`edm_molecules` per NAME. Hydrogens are kept as given; the atom types are the
elements found in the data, sorted by Z. The split is seeded
(`common.seeded_split`, default 80/10/10); the train statistics, the inputs'
content hash, the build options and every skipped record are in the metadata.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from datasets import common
from edm_zoo.data import bonds
from edm_zoo.data import elements
from edm_zoo.io import readers


class MoleculesConfig(tfds.core.BuilderConfig):
  """One user dataset; the build options matter only when it is built.

  Args:
    name: the dataset's name (`--dataset`).
    source: the SDF/XYZ file or folder.
    valid_fraction, test_fraction: the split; train takes the rest.
    seed: the split's seed.
    max_atoms: larger molecules are bad records (None: no limit).
    skip_bad: skip bad records (listed in the metadata) instead of stopping.
  """

  def __init__(self, *, name: str, source: str | None = None,
               valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
               max_atoms: int | None = None, skip_bad: bool = False):
    # 1.1.0: bonds and formal charges (an SDF's own; an XYZ's perceived).
    super().__init__(name=name, version=tfds.core.Version('1.1.0'),
                     description=f'Molecules of {source}' if source else '')
    self.source = source
    self.options = {'valid_fraction': valid_fraction, 'test_fraction': test_fraction,
                    'seed': seed, 'max_atoms': max_atoms, 'skip_bad': skip_bad}


def read(config: MoleculesConfig) -> readers.Read:
  """The config's molecules; one-line ValueErrors for bad inputs."""
  if not config.source:
    raise ValueError(f'dataset {config.name!r} is built from your files: pass --from=PATH '
                     '(an .sdf/.xyz file or a folder of them).')
  return readers.read_molecules(os.path.abspath(config.source),
                                max_atoms=config.options['max_atoms'],
                                skip_bad=config.options['skip_bad'])


def build_key(read_: readers.Read, options: dict) -> str:
  """What a build is made of: the inputs' content hash and the build options."""
  return common.options_key({'content_hash': read_.content_hash, **options})


def decode(item: dict[str, Any]) -> dict[str, Any]:
  item['name'] = item['name'].decode()
  item['file'] = item['file'].decode()
  return item


class EdmMolecules(common.MoleculeBuilder):
  """A user's SDF/XYZ molecules, split with a seed."""

  VERSION = tfds.core.Version('1.1.0')

  def __init__(self, *, config: MoleculesConfig, **kwargs):
    self._read = None
    super().__init__(config=config, **kwargs)

  def read(self) -> readers.Read:
    """The inputs, read once (one-line errors)."""
    if self._read is None:
      self._read = read(self.builder_config)
    return self._read

  def build_key(self) -> str | None:
    """The inputs' content hash and the options (None without --from)."""
    if not self.builder_config.source:
      return None
    return build_key(self.read(), self.builder_config.options)

  def _info(self) -> tfds.core.DatasetInfo:
    return common.info(self, __doc__, name=tfds.features.Text(), file=tfds.features.Text(),
                       record=tfds.features.Scalar(dtype=np.int32))

  def _split_examples(self) -> dict[str, common.SplitExamples]:
    read_ = self.read()
    options = self.builder_config.options
    if not read_.molecules:
      raise ValueError(f'--from {self.builder_config.source}: no readable molecule.')
    z = sorted({int(a) for m in read_.molecules for a in m['charges']})
    types = [elements.symbol(a) for a in z]
    splits = common.seeded_split(len(read_.molecules), options['valid_fraction'],
                                 options['test_fraction'], options['seed'])
    perceived = add_bonds(read_.molecules)
    self.info.metadata.update(common.train_statistics(
        (read_.molecules[i]['charges'] for i in splits['train']), types, z))
    self.info.metadata.update({
        'build_key': build_key(read_, options), 'content_hash': read_.content_hash,
        'options': options, 'files': [os.path.basename(f) for f in read_.files],
        'bad_records': [str(b) for b in read_.bad],
        'bonds': common.bonds_metadata(
            {name: [read_.molecules[i]['bonds_status'] for i in rows]
             for name, rows in splits.items()},
            how=('SDF records: their bond blocks and charges (aromatic bonds as RDKit '
                 'perceives them); XYZ records: perceived from the coordinates (RDKit '
                 'rdDetermineBonds, extended Hückel, total charge 0)'),
            not_perceived=[f"{os.path.basename(m['file'])} record {m['record']}"
                           for m in perceived
                           if m['bonds_status'] == bonds.NOT_PERCEIVED]),
        'split_recipe': (f"np.random.RandomState({options['seed']}).permutation(n): "
                         f"valid {options['valid_fraction']}, test "
                         f"{options['test_fraction']}, train the rest")})
    return {name: common.SplitExamples(len(rows), functools.partial(
        _examples, read_.molecules, rows)) for name, rows in splits.items()}


def add_bonds(molecules: list[dict]) -> list[dict]:
  """Perceives the bonds of the molecules that came without (XYZ records), in place;
  returns those."""
  todo = [m for m in molecules if 'bonds' not in m]
  if todo:
    found = common.perceive_all([(m['positions'], m['charges'], None) for m in todo])
    for m, fields in zip(todo, found):
      m.update(fields)
  return todo


def _examples(molecules, rows, lo: int, hi: int) -> Iterator[dict]:
  for row in rows[lo:hi]:
    m = molecules[row]
    yield {'positions': m['positions'], 'charges': m['charges'],
           'num_atoms': len(m['charges']), 'index': int(row), 'name': m['name'],
           'file': os.path.basename(m['file']), 'record': m['record'],
           **{k: m[k] for k in ('bonds', 'bond_orders', 'formal_charges', 'bonds_status')}}
