"""Looking at molecules: grid.png captions and the offline 3D page samples.html."""

import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Chem.Draw import rdMolDraw2D

from edm_zoo.io import pictures, viewer
from edm_zoo.metrics import rdkit_metrics

ELEMENTS = ('H', 'C', 'N', 'O', 'F')


def _embedded(smiles: str, seed: int = 0) -> dict:
  """An RDKit ETKDG conformer of `smiles` as a generated molecule."""
  mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
  assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
  AllChem.MMFFOptimizeMolecule(mol)
  return {'positions': mol.GetConformer().GetPositions().astype(np.float32),
          'types': np.array([ELEMENTS.index(a.GetSymbol()) for a in mol.GetAtoms()])}


def _overvalent_carbon() -> dict:
  """A carbon with five carbons at bond length: RDKit cannot sanitize it."""
  directions = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]],
                        np.float32)
  return {'positions': np.concatenate([np.zeros((1, 3), np.float32), 1.5 * directions]),
          'types': np.ones(6, np.int64)}


def test_captions_are_canonical_smiles_with_implicit_hydrogens():
  ethanol = _embedded('CCO')
  d = rdkit_metrics.describe(ethanol['positions'], ethanol['types'], ELEMENTS)
  assert d == {'smiles': 'CCO', 'why': '', 'valid': True, 'stable': True}
  # Two molecules far apart: both fragments, joined by '.'.
  water = _embedded('O')
  pair = {'positions': np.concatenate([ethanol['positions'], water['positions'] + 10]),
          'types': np.concatenate([ethanol['types'], water['types']])}
  d = rdkit_metrics.describe(pair['positions'], pair['types'], ELEMENTS)
  assert d['smiles'] == 'CCO.O' and d['valid']


def test_a_molecule_rdkit_cannot_sanitize_says_so():
  m = _overvalent_carbon()
  d = rdkit_metrics.describe(m['positions'], m['types'], ELEMENTS)
  assert d['smiles'] is None and not d['valid'] and not d['stable']
  assert 'valence' in d['why']
  lines = pictures.caption_lines(3, d)
  assert lines[0] == '3: RDKit cannot sanitize it' and 'valence' in ' '.join(lines)


def test_long_smiles_are_wrapped_not_cut():
  smiles = 'CC(C)Cc1ccc(cc1)C(C)C(=O)OCCOC(=O)C(C)c1ccc(CC(C)C)cc1'
  lines = pictures.caption_lines(12, {'smiles': smiles, 'why': ''})
  assert ''.join(lines) == f'12: {smiles}' and len(lines) > 1


def test_the_grid_draws_every_molecule_including_unsanitizable_ones(tmp_path):
  molecules = [_embedded('CCO'), _overvalent_carbon(), _embedded('c1ccccc1O')]
  assert pictures.molecule_grid(molecules, ELEMENTS, str(tmp_path / 'grid.png')) == 3
  image = Image.open(tmp_path / 'grid.png')
  assert image.size[0] == 3 * 250 and image.size[1] > 250


def _page(tmp_path, molecules):
  script = viewer.installed_script()
  if script is None:
    pytest.skip('3Dmol.js is not installed in this environment (`make venv` installs it)')
  path = str(tmp_path / 'samples.html')
  assert viewer.write_html(molecules, ELEMENTS, path, script=script) == len(molecules)
  return path


def test_the_page_is_self_contained_with_one_panel_per_molecule(tmp_path):
  molecules = [_embedded('CCO'), _overvalent_carbon(), _embedded('CC(=O)N')]
  with open(_page(tmp_path, molecules)) as f:
    page = f.read()
  assert '<script src' not in page and 'http' not in page.split('<script>')[0]
  assert page.count('class="panel"') == 3 and page.count('id="view') == 3
  assert '$3Dmol' in page and 'V2000' in page
  assert '<br>CCO</div>' in page and 'RDKit cannot sanitize it (Explicit valence' in page
  assert 'CC(N)=O' in page and 'not valid' in page and '>valid<' in page


def _chromium():
  for name in ('chromium', 'chromium-browser', 'google-chrome'):
    if shutil.which(name):
      return shutil.which(name)
  return None


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None,
                    reason='no headless browser: `apt-get install chromium` to run it')
def test_a_real_browser_draws_the_atoms(tmp_path):
  path = _page(tmp_path, [_embedded('OCC(O)CO'), _embedded('CC(=O)O')])
  shot = tmp_path / 'shot.png'
  subprocess.run(
      [_chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--use-angle=swiftshader',
       '--enable-unsafe-swiftshader', '--window-size=800,500', '--virtual-time-budget=5000',
       f'--screenshot={shot}', f'file://{path}'],
      capture_output=True, timeout=120, check=True)
  pixels = np.asarray(Image.open(shot).convert('RGB')).astype(int)
  r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
  # 3Dmol draws oxygen red and carbon grey; the page's own colours are pale.
  red = (r > 170) & (g < 60) & (b < 60)
  grey = (abs(r - g) < 12) & (abs(g - b) < 12) & (r > 90) & (r < 200)
  assert red.sum() > 200, f'{red.sum()} red pixels: no oxygen atoms drawn'
  assert grey.sum() > 500, f'{grey.sum()} grey pixels: no carbon atoms drawn'


# 19 carbons in a tangle, as a barely trained model samples them: RDKit's 2D
# drawing of their 98 inferred bonds fails ("Cannot normalize a zero length vector").
_TANGLE = [[-1.57, -0.257, -1.794], [-0.256, -0.843, 0.642], [-0.749, 0.546, 0.216],
           [0.236, 0.027, -1.514], [-0.255, -0.529, 1.001], [0.454, 0.766, -0.033],
           [0.754, -0.846, 0.066], [0.095, -0.141, 0.221], [-0.878, -0.166, -0.451],
           [-0.261, 1.114, 0.033], [-0.192, -1.004, 0.264], [-0.297, -0.334, 0.492],
           [0.829, 0.877, 0.899], [0.642, 0.005, -0.252], [-0.189, -0.091, 0.678],
           [0.538, 1.337, -0.838], [-0.055, 0.246, -0.222], [-0.168, -0.636, 0.629],
           [1.322, -0.069, -0.035]]


def test_a_tangle_rdkit_cannot_draw_is_drawn_as_atoms_and_says_so(tmp_path):
  tangle = {'positions': np.array(_TANGLE, np.float32), 'types': np.ones(19, np.int64)}
  depiction = pictures._depiction(  # pylint: disable=protected-access
      tangle['positions'], tangle['types'], ELEMENTS, sanitizes=False)
  drawer = rdMolDraw2D.MolDraw2DCairo(250, 292)
  drawer.drawOptions().prepareMolsBeforeDrawing = False
  with pytest.raises(RuntimeError, match='zero length'):
    drawer.DrawMolecule(depiction)
  molecules = [_embedded('CCO'), tangle, _embedded('CC(=O)N')]
  assert pictures.molecule_grid(molecules, ELEMENTS, str(tmp_path / 'grid.png')) == 3
  image = np.asarray(Image.open(tmp_path / 'grid.png').convert('L'))
  assert image.shape[1] == 3 * 250
  panel = image[:, 250:500]
  assert (panel < 128).sum() > 200  # Its atoms and caption are drawn, not a blank.
