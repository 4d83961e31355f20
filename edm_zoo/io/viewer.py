"""An interactive 3D view of molecules: one self-contained HTML page.

Each molecule gets a panel with a rotatable ball-and-stick model (3Dmol.js, the
npm package `3dmol`, BSD-3-Clause) of its generated coordinates and the bonds
inferred from them (EDM's distance tables, as in samples.sdf), its SMILES (or
why RDKit cannot sanitize it) and whether it is stable and valid. The script is
inlined, so the page opens offline and can be moved or mailed on its own. The
project's setup (`make venv`) puts the script at `installed_script()`.
"""

from __future__ import annotations

import html
import json
import os
import sys
from typing import Sequence

from rdkit import Chem

from edm_zoo.io import export
from edm_zoo.io.files import atomic_path
from edm_zoo.metrics import rdkit_metrics

SCRIPT_NAME = '3Dmol-min.js'


def installed_script() -> str | None:
  """The 3Dmol.js that `make venv` installs into the environment, or None."""
  path = os.path.join(sys.prefix, 'share', 'edm_zoo', SCRIPT_NAME)
  return path if os.path.isfile(path) else None


def mol_block(m: dict, elements: tuple[str, ...]) -> str:
  """A V2000 MOL block of a molecule dict: its own bonds and charges when it
  carries them, else distance-inferred bonds (as built when RDKit cannot sanitize
  it), as `export.to_mol`."""
  mol, _ = export.to_mol(m, elements)
  return Chem.MolToMolBlock(mol, kekulize=False)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 12px; background: #fafafa; }}
h1 {{ font-size: 18px; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.panel {{ width: 300px; background: white; border: 1px solid #ccc; border-radius: 4px; }}
.view {{ width: 300px; height: 260px; position: relative; }}
.caption {{ font-size: 12px; padding: 4px 6px; word-break: break-all; }}
.flag {{ display: inline-block; margin-right: 6px; padding: 0 4px; border-radius: 3px; }}
.yes {{ background: #d9f2d9; }} .no {{ background: #f8d7d7; }}
</style>
<script>{script}</script>
</head><body>
<h1>{title}</h1>
<p>{summary} Drag to rotate, scroll to zoom. {bonds_note}</p>
<div class="grid">
{panels}
</div>
<script>
const molecules = {data};
function drawAll() {{
  for (const [i, block] of molecules.entries()) {{
    const viewer = $3Dmol.createViewer(document.getElementById('view' + i),
                                       {{backgroundColor: 'white'}});
    viewer.addModel(block, 'sdf', {{keepH: true}});
    viewer.setStyle({{}}, {{stick: {{radius: 0.14}}, sphere: {{scale: 0.25}}}});
    viewer.zoomTo();
    viewer.render();
  }}
  document.body.setAttribute('data-drawn', molecules.length);
}}
window.addEventListener('load', drawAll);
</script>
</body></html>
"""


def _flag(name: str, value: bool) -> str:
  return (f'<span class="flag {"yes" if value else "no"}">'
          f'{name if value else "not " + name}</span>')


def write_html(molecules: Sequence[dict], elements: tuple[str, ...], path: str, *,
               script: str, descriptions: Sequence[dict] | None = None, n: int = 24,
               title: str = 'Generated molecules') -> int:
  """Writes the page of the first `n` molecules; returns how many it shows.

  Args:
    molecules: dicts with `positions` and `types`.
    elements: the type symbols.
    path: the HTML file to write.
    script: the 3Dmol.js file to inline (`installed_script()`).
    descriptions: `rdkit_metrics.describe` of each molecule (computed if None).
    n: molecules shown.
    title: the page's heading.
  """
  molecules = list(molecules)[:n]
  if descriptions is None:
    descriptions = [rdkit_metrics.describe(m['positions'], m['types'], elements)
                    for m in molecules]
  with open(script) as f:
    # A '</script>' inside the library would end the inline block early.
    code = f.read().replace('</script', '<\\/script')
  panels, blocks = [], []
  for i, (m, d) in enumerate(zip(molecules, descriptions)):
    blocks.append(mol_block(m, elements))
    text = (html.escape(d['smiles']) if d['smiles'] is not None else
            f'RDKit cannot sanitize it ({html.escape(d["why"])})')
    panels.append(
        f'<div class="panel"><div class="view" id="view{i}"></div><div class="caption">'
        f'<b>{i}</b> ({len(m["types"])} atoms) {_flag("stable", d["stable"])}'
        f'{_flag("valid", d["valid"])}<br>{text}</div></div>')
  shown = descriptions[:len(molecules)]
  summary = (f'The first {len(molecules)} molecules: {sum(d["stable"] for d in shown)} '
             f'stable, {sum(d["valid"] for d in shown)} valid.')
  own = sum(export.has_bonds(m) for m in molecules)
  bonds_note = ('Bonds and formal charges are the molecules\' own (as the model or the '
                'data wrote them), as in the SDF file.' if own == len(molecules) else
                'Bonds are inferred from distances with EDM\'s tables, as in the SDF file.'
                if not own else f'{own} molecules show their own bonds, the others bonds '
                'inferred from distances.')
  page = _PAGE.format(title=html.escape(title), script=code, summary=summary,
                      bonds_note=bonds_note,
                      panels='\n'.join(panels),
                      data=json.dumps(blocks).replace('</', '<\\/'))
  with atomic_path(path) as tmp, open(tmp, 'w') as f:
    f.write(page)
  return len(molecules)
