"""Reading a user's own SDF/XYZ molecules: real QM9 molecules round-trip, bad records
stop the read in one line or are skipped and listed."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from conftest import exportable

from edm_zoo.io import export, readers

ELEMENTS = ('H', 'C', 'N', 'O', 'F')


@pytest.fixture(scope='module')
def molecules(qm9_sources):
  """20 real QM9 molecules as the exporters take them (types index ELEMENTS)."""
  return exportable(qm9_sources['valid'], 20, 97)


@pytest.mark.parametrize('writer,suffix', [(export.write_sdf, 'sdf'),
                                           (export.write_xyz, 'xyz')])
def test_real_molecules_round_trip(molecules, tmp_path, writer, suffix):
  path = tmp_path / f'mols.{suffix}'
  writer(molecules, ELEMENTS, str(path))
  read = readers.read_molecules(str(path))
  assert len(read.molecules) == len(molecules) and not read.bad
  for got, want in zip(read.molecules, molecules):
    np.testing.assert_array_equal(got['charges'], want['charges'])  # H kept as given.
    np.testing.assert_allclose(got['positions'], want['positions'], atol=1e-4)
  assert [m['record'] for m in read.molecules] == list(range(1, 21))


def test_a_folder_reads_its_files_in_order_and_hashes_its_content(molecules, tmp_path):
  export.write_xyz(molecules[:5], ELEMENTS, str(tmp_path / 'a.xyz'))
  export.write_sdf(molecules[5:8], ELEMENTS, str(tmp_path / 'b.sdf'))
  (tmp_path / 'notes.txt').write_text('not a molecule file')
  first = readers.read_molecules(str(tmp_path))
  assert [m['file'].rsplit('/', 1)[1] for m in first.molecules] == ['a.xyz'] * 5 + ['b.sdf'] * 3
  assert readers.read_molecules(str(tmp_path)).content_hash == first.content_hash
  export.write_xyz(molecules[:6], ELEMENTS, str(tmp_path / 'a.xyz'))
  assert readers.read_molecules(str(tmp_path)).content_hash != first.content_hash


def _xyz_with(bad_block: str, molecules, tmp_path):
  """An XYZ file: 3 good molecules, the bad block (record 4), 2 good ones."""
  path = tmp_path / 'mixed.xyz'
  export.write_xyz(molecules[:3], ELEMENTS, str(tmp_path / 'head.xyz'))
  export.write_xyz(molecules[3:5], ELEMENTS, str(tmp_path / 'tail.xyz'))
  path.write_text((tmp_path / 'head.xyz').read_text() + bad_block +
                  (tmp_path / 'tail.xyz').read_text())
  return path


@pytest.mark.parametrize('block,reason', [
    ('2\nbad\nXx 0 0 0\nH 0 0 1\n', "unknown element 'Xx'"),
    ('2\nbad\nC 0 0 0\nH 0 zero 1\n', 'no coordinates'),
])
def test_a_bad_xyz_record_stops_in_one_line_or_is_skipped(molecules, tmp_path, block,
                                                          reason):
  path = _xyz_with(block, molecules, tmp_path)
  with pytest.raises(readers.BadRecordError) as error:
    readers.read_molecules(str(path))
  message = str(error.value)
  assert '\n' not in message and f'{path} record 4: {reason}' in message
  read = readers.read_molecules(str(path), skip_bad=True)
  assert len(read.molecules) == 5
  assert [b.record for b in read.bad] == [4] and reason in read.bad[0].reason


def test_an_unparsable_sdf_block_and_a_large_molecule(molecules, tmp_path):
  export.write_sdf(molecules[:2], ELEMENTS, str(tmp_path / 'a.sdf'))
  good = (tmp_path / 'a.sdf').read_text()
  path = tmp_path / 'mixed.sdf'
  path.write_text(good + 'garbage\n  no counts line here\n\nM  END\n$$$$\n' + good)
  with pytest.raises(readers.BadRecordError, match='record 3: unparsable block'):
    readers.read_molecules(str(path))
  read = readers.read_molecules(str(path), skip_bad=True)
  assert len(read.molecules) == 4 and [b.record for b in read.bad] == [3]
  n = max(len(m['charges']) for m in molecules[:2])
  with pytest.raises(readers.BadRecordError, match=f'{n} atoms, over --max_atoms={n - 1}'):
    readers.read_molecules(str(tmp_path / 'a.sdf'), max_atoms=n - 1)


def test_paths_that_hold_no_molecules_fail_in_one_line(tmp_path):
  with pytest.raises(ValueError, match='no such file or folder'):
    readers.read_molecules(str(tmp_path / 'missing.sdf'))
  with pytest.raises(ValueError, match='no .sdf or .xyz file'):
    readers.read_molecules(str(tmp_path))
  (tmp_path / 'm.mol2').write_text('x')
  with pytest.raises(ValueError, match='expected an .sdf or .xyz file'):
    readers.read_molecules(str(tmp_path / 'm.mol2'))


def test_a_2d_depiction_is_not_a_3d_molecule(tmp_path):
  mol = Chem.AddHs(Chem.MolFromSmiles('CCO'))
  AllChem.Compute2DCoords(mol)
  writer = Chem.SDWriter(str(tmp_path / 'flat.sdf'))
  writer.write(mol)
  writer.close()
  with pytest.raises(readers.BadRecordError, match='record 1: no 3D coordinates'):
    readers.read_molecules(str(tmp_path / 'flat.sdf'))
