#!/usr/bin/env bash
# A CPU environment for GeoBFN's own code, to write parity vectors with it.
# Usage: bash instruments/geobfn_parity/setup.sh VENV_DIR
# Then:  GEOBFN_REPO=/path/to/GeoBFN VENV_DIR/bin/python instruments/geobfn_parity/generate.py \
#          --seed 0 --nf 32 --n_layers 2 --qm9 QM9_TRAIN_NPZ --out OUT.npz
# GEOBFN_REPO: a checkout of AlgoMole/GeoBFN (commit 89e9a24; `fetch` github:AlgoMole/GeoBFN).
# QM9_TRAIN_NPZ: EDM's train.npz (reference/harness/convert_qm9pack_to_edm.py writes it).
# Keep the environment and the checkout outside the project tree.
set -euo pipefail
venv=${1:?usage: setup.sh VENV_DIR}
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# The CPU build first: a plain `pip install torch` would choose a CUDA build of several GB.
"$venv/bin/pip" install -q torch==2.13.0 || echo "warning: torch==2.13.0 not found; check that the torch installed next is a CPU build"
# GeoBFN's imports: torch_geometric (bfn_base), torchdiffeq (bfn_base), absl-py,
# pytorch_lightning and overrides (its callbacks). torch_scatter has no CPU wheel:
# generate.py stands in for its one function (scatter_mean), see PARITY_GEOBFN.md.
"$venv/bin/pip" install -q numpy torch_geometric torchdiffeq absl-py 'pytorch_lightning>=2,<3' overrides
echo "ready: $venv/bin/python $(dirname "$0")/generate.py --help"
