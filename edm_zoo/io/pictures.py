"""Pictures: a grid of generated molecules and a denoising chain (PNG strip + GIF)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, Draw

from edm_zoo.io.files import atomic_path
from edm_zoo.metrics import rdkit_metrics

_COLORS = {'H': '#dddddd', 'C': '#333333', 'N': '#3050f8', 'O': '#ff0d0d', 'F': '#90e050'}


def molecule_grid(molecules: Sequence[dict], elements: tuple[str, ...], path: str,
                  n: int = 24, per_row: int = 6) -> int:
  """2D depictions of the first `n` molecules that sanitize; returns how many."""
  mols, legends = [], []
  for i, m in enumerate(molecules):
    mol = rdkit_metrics.build_molecule(m['positions'], m['types'], elements)
    smiles = rdkit_metrics.mol_to_smiles(mol)
    if smiles is None:
      continue
    mol = Chem.RemoveHs(mol, sanitize=False)
    AllChem.Compute2DCoords(mol)
    mols.append(mol)
    legends.append(f'{i}: {smiles}'[:40])
    if len(mols) == n:
      break
  if mols:
    image = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(250, 250),
                                 legends=legends)
    with atomic_path(path) as tmp:
      image.save(tmp, format='PNG')
  return len(mols)


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
