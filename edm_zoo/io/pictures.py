"""Pictures: a grid of generated molecules and a denoising chain (PNG strip + GIF)."""

from __future__ import annotations

import io
import math
import textwrap
from typing import Sequence

import numpy as np
from PIL import Image
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Chem.Draw import rdMolDraw2D

from edm_zoo.io.files import atomic_path
from edm_zoo.metrics import rdkit_metrics

_COLORS = {'H': '#dddddd', 'C': '#333333', 'N': '#3050f8', 'O': '#ff0d0d', 'F': '#90e050'}


def caption_lines(index: int, description: dict, width: int = 34) -> list[str]:
  """A molecule's caption: its index and SMILES (wrapped, never cut), or that RDKit
  cannot sanitize it and why."""
  if description['smiles'] is None:
    return [f'{index}: RDKit cannot sanitize it'] + textwrap.wrap(
        f"({description['why']})", width)
  smiles = f"{index}: {description['smiles']}"
  return [smiles[k:k + width] for k in range(0, len(smiles), width)]


def _depiction(positions, types, elements, sanitizes: bool) -> Chem.Mol:
  """A 2D drawing of the heavy atoms and their distance-inferred bonds (as built
  when RDKit cannot sanitize the molecule, `sanitizes` False)."""
  mol = rdkit_metrics.build_molecule(positions, types, elements)
  if sanitizes:
    Chem.SanitizeMol(mol)
    mol = Chem.RemoveHs(mol)
  else:
    mol = Chem.RemoveHs(mol, sanitize=False)
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)  # What the drawing needs of the sanitization.
  AllChem.Compute2DCoords(mol)
  return mol


def _atoms_only(mol: Chem.Mol) -> Chem.Mol:
  bare = Chem.RWMol(mol)
  for bond in list(bare.GetBonds()):
    bare.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
  bare = bare.GetMol()
  bare.UpdatePropertyCache(strict=False)
  Chem.FastFindRings(bare)
  AllChem.Compute2DCoords(bare)
  return bare


def _panel(mol: Chem.Mol, legend: str, width: int, height: int) -> Image.Image:
  """One molecule's drawing with its caption. A dense tangle of inferred bonds (an
  untrained model's output) can leave RDKit zero-length bond vectors it cannot
  draw; then the atoms are drawn without bonds, and the caption says so."""
  for candidate, note in ((mol, ''), (_atoms_only(mol), '\n(too tangled to draw its bonds)')):
    drawer = rdMolDraw2D.MolDraw2DCairo(width, height)
    options = drawer.drawOptions()
    options.legendFraction = min(0.4, (height - width + 6) / height)
    options.legendFontSize = 14
    options.prepareMolsBeforeDrawing = False  # Unsanitized molecules are drawn as built.
    try:
      drawer.DrawMolecule(candidate, legend=legend + note)
    except RuntimeError:
      continue
    drawer.FinishDrawing()
    return Image.open(io.BytesIO(drawer.GetDrawingText())).convert('RGB')
  return Image.new('RGB', (width, height), 'white')


def molecule_grid(molecules: Sequence[dict], elements: tuple[str, ...], path: str,
                  descriptions: Sequence[dict] | None = None, n: int = 24,
                  per_row: int = 6) -> int:
  """2D depictions of the first `n` molecules captioned with their SMILES (or why
  RDKit cannot sanitize them); returns how many.

  Args:
    molecules: dicts with `positions` and `types`.
    elements: the type symbols.
    path: the PNG to write.
    descriptions: `rdkit_metrics.describe` of each molecule (computed if None).
    n: molecules drawn.
    per_row: molecules per row.
  """
  molecules = list(molecules)[:n]
  if descriptions is None:
    descriptions = [rdkit_metrics.describe(m['positions'], m['types'], elements)
                    for m in molecules]
  if not molecules:
    return 0
  legends = ['\n'.join(caption_lines(i, d)) for i, d in enumerate(descriptions[:n])]
  height = 250 + 14 * max(len(legend.splitlines()) + 1 for legend in legends)
  panels = [_panel(_depiction(m['positions'], m['types'], elements, d['smiles'] is not None),
                   legend, 250, height)
            for m, d, legend in zip(molecules, descriptions, legends)]
  columns = min(per_row, len(panels))
  grid = Image.new('RGB', (250 * columns, height * math.ceil(len(panels) / per_row)), 'white')
  for i, panel in enumerate(panels):
    grid.paste(panel, (250 * (i % per_row), height * (i // per_row)))
  with atomic_path(path) as tmp:
    grid.save(tmp, format='PNG')
  return len(panels)


def _scatter(ax, positions, types, elements):
  colors = [_COLORS.get(elements[int(t)], '#ff00ff') for t in types]
  sizes = [40 if elements[int(t)] == 'H' else 120 for t in types]
  ax.scatter(positions[:, 0], positions[:, 1], positions[:, 2], c=colors, s=sizes,
             edgecolors='k', depthshade=True)
  lim = max(2.0, float(np.abs(positions).max()))
  for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
    set_lim(-lim, lim)
  ax.set_axis_off()


def chain_pictures(frames: Sequence[np.ndarray], types_per_frame: Sequence[np.ndarray],
                   elements: tuple[str, ...], png_path: str, gif_path: str,
                   steps: Sequence[int]) -> None:
  """One molecule denoising from noise to structure: a PNG strip and a GIF."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import animation, pyplot as plt  # pylint: disable=g-import-not-at-top
  picks = np.unique(np.linspace(0, len(frames) - 1, min(10, len(frames))).astype(int))
  fig = plt.figure(figsize=(2.2 * len(picks), 2.6))
  for k, i in enumerate(picks):
    ax = fig.add_subplot(1, len(picks), k + 1, projection='3d')
    _scatter(ax, frames[i], types_per_frame[i], elements)
    ax.set_title(f't={steps[i]}', fontsize=9)
  with atomic_path(png_path) as tmp:
    fig.savefig(tmp, format='png', dpi=80)
  plt.close(fig)
  fig = plt.figure(figsize=(3, 3))
  ax = fig.add_subplot(projection='3d')

  def draw(i):
    ax.clear()
    _scatter(ax, frames[i], types_per_frame[i], elements)
    ax.set_title(f't={steps[i]}')
  anim = animation.FuncAnimation(fig, draw, frames=len(frames))
  with atomic_path(gif_path) as tmp:
    anim.save(tmp, writer=animation.PillowWriter(fps=8))
  plt.close(fig)
