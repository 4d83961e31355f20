#!/usr/bin/env bash
# Prepares, on this machine, what instruments/gpu_bench.sh needs on a GPU machine that has
# jax, torch and no network (BUILD.md, "GPU"); all three folders are git-ignored:
#   .whl/      wheels for Python 3.12 of what that machine lacks (rdkit, haiku, jraph,
#              TFDS without TensorFlow, ...), pinned as requirements.txt pins them;
#   .gpudata/  the parity vectors; QM9's validation split (what the benchmarks read);
#              qm9_gpu_subset, the first N_TRAIN QM9 train molecules as a dataset of
#              our own (what the precision study trains on: QM9's train file alone
#              is 54 MB of the 64 MiB a run may carry);
#   .gpuorig/  the original's code (no data blobs), the harness, and its QM9 files cut
#              to N_TRAIN (6,000) / 1,000 / 1,000 molecules (timing needs batches, not epochs).
#
#   EDM_REPO=$HOME/edm_reference bash instruments/gpu_carry.sh
#   then on the GPU: OUT=... bash instruments/gpu_bench.sh, carrying .whl .gpudata .gpuorig
set -euo pipefail
: "${EDM_REPO:?set EDM_REPO to the checkout of the original EDM (with qm9/temp/qm9/*.npz)}"
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
PY=${PY:-$HERE/.venv/bin/python}
H=${EDM_HARNESS:-$HERE/../shared/reference/harness}
SHARED=${SHARED:-$HERE/../shared}
N_TRAIN=${N_TRAIN:-6000}
QM9=data/tfds/edm_qm9/with_h/1.1.0
[ -f "$QM9/dataset_info.json" ] || { echo "error: run 'make data' first" >&2; exit 2; }

rm -rf .whl .gpudata .gpuorig
pin() { grep -i "^$1==" requirements.txt; }
WHEELS=""
for p in dm-haiku jraph optax orbax-checkpoint tensorflow-datasets array-record dm-tree \
         immutabledict simple-parsing tensorflow-metadata termcolor toml \
         googleapis-common-protos docstring_parser importlib_resources jmp tensorboardX \
         rdkit; do
  WHEELS="$WHEELS $(pin "$p")"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $WHEELS
python3 -m pip wheel -q --no-deps -w .whl "$(pin promise)"  # sdist only on PyPI

mkdir -p ".gpudata/tfds/edm_qm9/with_h/1.1.0"
cp "$QM9"/{dataset_info.json,features.json,metadata.json} "$QM9"/edm_qm9-valid.* \
  ".gpudata/tfds/edm_qm9/with_h/1.1.0/"
cp "$SHARED"/parity/parity_small.npz "$SHARED"/parity/train_parity_small.npz .gpudata/
XYZ=$(mktemp -d)/qm9_train.xyz
"$PY" - "$XYZ" "$N_TRAIN" <<'PY'
import sys
import numpy as np
from edm_zoo.data import registry
from edm_zoo.io import export
path, n = sys.argv[1], int(sys.argv[2])
types = registry.atom_types('qm9')
numbers = list(registry.statistics('qm9').atomic_numbers)
train = registry.load('qm9', 'train')
export.write_xyz([{'positions': np.asarray(m['positions']),
                   'types': np.array([numbers.index(c) for c in m['charges']])}
                  for m in (train[i] for i in range(n))], types, path)
PY
EDM_ZOO_NO_REEXEC=1 "$PY" launch/prepare_data.py --dataset=qm9_gpu_subset --from="$XYZ" \
  --data_dir=.gpudata/tfds
rm -f "$XYZ"

mkdir -p .gpuorig/edm/qm9/temp/qm9
tar -C "$EDM_REPO" --exclude=./.git --exclude=./generated_samples --exclude=./outputs \
  --exclude=./qm9/temp --exclude=./data --exclude=__pycache__ -cf - . | tar -x -C .gpuorig/edm
cp -r "$H" .gpuorig/harness
"$PY" - "$EDM_REPO/qm9/temp/qm9" .gpuorig/edm/qm9/temp/qm9 "$N_TRAIN" <<'PY'
import sys
import numpy as np
src, dst, n_train = sys.argv[1], sys.argv[2], int(sys.argv[3])
for split, n in (('train', n_train), ('valid', 1000), ('test', 1000)):
  with np.load(f'{src}/{split}.npz') as d:
    np.savez_compressed(f'{dst}/{split}.npz', **{k: d[k][:n] for k in d.files})
PY
du -sh .whl .gpudata .gpuorig
echo "carry: .whl .gpudata .gpuorig ($(du -smc .whl .gpudata .gpuorig | tail -1 | cut -f1) MB;" \
  "the run's limit is 64 MiB with the working tree)"
