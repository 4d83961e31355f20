#!/usr/bin/env bash
# A CPU environment for SemlaFlow's own code, to write parity vectors with it.
# Usage: bash instruments/semlaflow_parity/setup.sh VENV_DIR
# Then:  SEMLA_REPO=/path/to/semla-flow VENV_DIR/bin/python instruments/semlaflow_parity/generate.py \
#          --seed 0 --d_model 32 --n_layers 2 --n_coord_sets 4 --n_mols 4 --steps 3 --out OUT.npz
# SEMLA_REPO: a checkout of rssrwn/semla-flow (commit 2f41e57; `fetch` github:rssrwn/semla-flow).
# Keep the environment and the checkout outside the project tree.
set -euo pipefail
venv=${1:?usage: setup.sh VENV_DIR}
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# The CPU build first: a plain `pip install torch` would choose a CUDA build of several GB.
"$venv/bin/pip" install -q torch==2.13.0 || echo "warning: torch==2.13.0 not found; check that the torch installed next is a CPU build"
# SemlaFlow's imports: lightning and torchmetrics (models/fm.py), scipy (data/interpolate.py),
# rdkit (util/rdkit.py), openbabel-wheel (scriptutil.py imports openbabel), numpy.
"$venv/bin/pip" install -q numpy 'lightning>=2,<3' torchmetrics scipy rdkit openbabel-wheel
echo "ready: $venv/bin/python $(dirname "$0")/generate.py --help"
