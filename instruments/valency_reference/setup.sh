#!/usr/bin/env bash
# A CPU environment for the valency check of "GEOM-Drugs Revisited", to write
# verdicts with its own code (geom_utils.molecule_stability).
# Usage: bash instruments/valency_reference/setup.sh VENV_DIR
# Then:  REFERENCE_REPO=/path/to/geom-drugs-3dgen-evaluation VENV_DIR/bin/python \
#          instruments/valency_reference/generate.py --sdf MOLECULES.sdf.gz --out VERDICTS.json
# REFERENCE_REPO: a checkout of isayevlab/geom-drugs-3dgen-evaluation (commit bfc5bed;
# `fetch` github:isayevlab/geom-drugs-3dgen-evaluation, then
# `git --git-dir=SNAPSHOT archive HEAD | tar -x -C DIR`).
# Keep the environment and the checkout outside the project tree.
set -euo pipefail
venv=${1:?usage: setup.sh VENV_DIR}
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# The CPU build first: a plain `pip install torch` would choose a CUDA build of several GB.
"$venv/bin/pip" install -q torch==2.13.0 || echo "warning: torch==2.13.0 not found; check that the torch installed next is a CPU build"
# The reference imports torch, tqdm and rdkit; the same RDKit as the project reads the molecules.
"$venv/bin/pip" install -q numpy tqdm rdkit==2026.9.1
echo "ready: $venv/bin/python $(dirname "$0")/generate.py --help"
