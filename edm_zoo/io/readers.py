"""Molecules from SDF and XYZ files (a user's own data), checked record by record.

`read_molecules(path)` reads an SDF file, a multi-molecule XYZ file (as
`export.write_xyz` writes them) or a folder of them (sorted by name, not recursive).
Hydrogens are kept as given. A malformed record stops the read with one line that
names the file and the record number (1-based): an unparsable block, an unknown
element, missing or flat coordinates, or a molecule over `max_atoms`.
With `skip_bad=True` such records are skipped and listed instead; nothing is
dropped silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterator

import numpy as np
from rdkit import Chem
from rdkit import RDLogger

from edm_zoo.data import bonds
from edm_zoo.data import elements

SUFFIXES = ('.sdf', '.xyz')


class BadRecordError(ValueError):
  """A record that cannot become a molecule (one line: file, record, why)."""


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """A skipped record: its file, its 1-based number there, and why."""
  file: str
  record: int
  reason: str

  def __str__(self) -> str:
    return f'{self.file} record {self.record}: {self.reason}'


@dataclasses.dataclass(frozen=True)
class Read:
  """What `read_molecules` found.

  Attributes:
    molecules: dicts with `positions` [n, 3] float32 (Angstrom), `charges` [n]
      int32 (Z), `name`, `file` and `record`; an SDF's also with its bonds
      (`edm_zoo.data.bonds.record`: bonds, bond_orders, formal_charges,
      bonds_status GIVEN).
    bad: the records skipped (only with skip_bad).
    files: the files read, in order.
    content_hash: SHA-256 over the files' names and bytes: the same inputs give
      the same hash.
  """
  molecules: list[dict]
  bad: list[BadRecord]
  files: list[str]
  content_hash: str


def input_files(path: str) -> list[str]:
  """The SDF/XYZ files of `path` (a file, or a folder's files sorted by name).

  Raises:
    ValueError: a missing path, another suffix, or a folder without such files.
  """
  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.lower().endswith(SUFFIXES))
    if not files:
      raise ValueError(f'--from {path}: no .sdf or .xyz file in that folder.')
    return files
  if not os.path.isfile(path):
    raise ValueError(f'--from {path}: no such file or folder.')
  if not path.lower().endswith(SUFFIXES):
    raise ValueError(f'--from {path}: expected an .sdf or .xyz file (or a folder of them).')
  return [path]


def content_hash(files: list[str]) -> str:
  digest = hashlib.sha256()
  for name in files:
    digest.update(os.path.basename(name).encode() + b'\0')
    with open(name, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  return digest.hexdigest()


def _xyz_records(path: str) -> Iterator[tuple[int, dict | str]]:
  """(record number, molecule or why it is bad) for each block of an XYZ file."""
  with open(path, errors='replace') as f:
    lines = f.read().splitlines()
  i, record = 0, 0
  while i < len(lines):
    if not lines[i].strip():
      i += 1
      continue
    record += 1
    head = lines[i].strip()
    if not head.isdigit() or int(head) == 0:
      # Without a count the block's end is unknown: nothing after it can be read.
      yield record, f'unparsable block (line {i + 1}: expected an atom count, got {head!r})'
      return
    n = int(head)
    block = lines[i + 2:i + 2 + n]
    name = lines[i + 1].strip() if i + 1 < len(lines) else ''
    i += 2 + n
    if len(block) < n:
      yield record, f'unparsable block ({n} atoms announced, {len(block)} lines left)'
      return
    symbols, positions = [], []
    for line in block:
      parts = line.split()
      try:
        positions.append([float(v) for v in parts[1:4]])
        if len(parts) < 4:
          raise ValueError
      except ValueError:
        positions = None
        break
      symbols.append(parts[0])
    if positions is None:
      yield record, f'no coordinates (atom line {line.strip()!r})'
      continue
    z = [elements.atomic_number(s) for s in symbols]
    if 0 in z:
      yield record, f'unknown element {symbols[z.index(0)]!r}'
      continue
    yield record, {'positions': np.asarray(positions, np.float32),
                   'charges': np.asarray(z, np.int32), 'name': name}


def _file_bonds(mol: Chem.Mol) -> dict:
  """The bond fields of an SDF record: its bond block and charges, aromatic bonds
  as RDKit perceives them when the molecule sanitizes (as written when it does not)."""
  sanitized = Chem.Mol(mol)
  try:
    Chem.SanitizeMol(sanitized)
  except (ValueError, RuntimeError):  # Kept as the file writes it.
    sanitized = mol
  try:
    return bonds.record(sanitized, mol.GetNumAtoms(), bonds.GIVEN)
  except ValueError as e:
    raise ValueError(f'unsupported bond ({e})') from None


def _sdf_records(path: str) -> Iterator[tuple[int, dict | str]]:
  """(record number, molecule or why it is bad) for each block of an SDF file."""
  RDLogger.DisableLog('rdApp.*')  # Its messages would interleave with ours.
  try:
    supplier = Chem.SDMolSupplier(path, removeHs=False, sanitize=False)
    for record, mol in enumerate(supplier, start=1):
      if mol is None:
        yield record, 'unparsable block'
        continue
      z = [a.GetAtomicNum() for a in mol.GetAtoms()]
      if not z:
        yield record, 'no atoms'
        continue
      if 0 in z:
        yield record, f'unknown element {mol.GetAtomWithIdx(z.index(0)).GetSymbol()!r}'
        continue
      if not mol.GetNumConformers():
        yield record, 'no coordinates'
        continue
      positions = np.asarray(mol.GetConformer().GetPositions(), np.float32)
      if len(z) > 1 and not mol.GetConformer().Is3D():
        yield record, 'no 3D coordinates (a 2D depiction)'
        continue
      try:
        fields = _file_bonds(mol)
      except ValueError as e:
        yield record, str(e)
        continue
      yield record, {'positions': positions, 'charges': np.asarray(z, np.int32),
                     'name': mol.GetProp('_Name') if mol.HasProp('_Name') else '',
                     **fields}
  finally:
    RDLogger.EnableLog('rdApp.*')


def read_molecules(path: str, *, max_atoms: int | None = None,
                   skip_bad: bool = False) -> Read:
  """Every molecule of an SDF/XYZ file or of a folder of them.

  Args:
    path: a .sdf or .xyz file, or a folder holding such files.
    max_atoms: a molecule with more atoms is a bad record (None: no limit).
    skip_bad: skip bad records and list them in `Read.bad` instead of stopping.

  Raises:
    ValueError: a path that holds no such file.
    BadRecordError: the first bad record, in one line (without skip_bad).
  """
  files = input_files(path)
  molecules, bad = [], []
  for name in files:
    records = _sdf_records(name) if name.lower().endswith('.sdf') else _xyz_records(name)
    for record, item in records:
      if isinstance(item, dict) and max_atoms is not None and len(item['charges']) > max_atoms:
        item = f'{len(item["charges"])} atoms, over --max_atoms={max_atoms}'
      if isinstance(item, str):
        problem = BadRecord(name, record, item)
        if not skip_bad:
          raise BadRecordError(f'{problem} (--skip_bad_records skips such records).')
        bad.append(problem)
        continue
      molecules.append({**item, 'file': name, 'record': record})
  return Read(molecules=molecules, bad=bad, files=files, content_hash=content_hash(files))
