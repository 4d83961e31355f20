#!/usr/bin/env bash
# One prepared GPU check (see BUILD.md): parity at float32 'highest' precision, then
# the benchmark at the published config, TF32 vs highest, the jit study, batch 100.
# Expects carried wheels in .whl/ and a data dir with the valid/test splits in
# .gpudata/tfds (plus the parity files in .gpudata/); writes JSON/PNG to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD EDM_ZOO_DATA_DIR=$PWD/.gpudata/tfds PYTHONUNBUFFERED=1
nvidia-smi -L
python3 - <<'PY' 2>&1 | tee "$OUT/parity.txt"
import json, os, jax
jax.config.update('jax_default_matmul_precision', 'highest')
import edm_zoo
from edm_zoo.compat import parity
print(jax.devices(), jax.__version__)
out = {}
for name, fn in (('parity', parity.parity_report), ('train_parity', parity.train_parity_report)):
  r = fn(f'.gpudata/{name}_small.npz')
  out[name] = r
  bad = [k for k, v in r.items() if not v['ok']]
  print(name, 'arrays', len(r), 'failing', bad,
        'worst rel', max(v['max_rel'] for v in r.values() if v['max_abs'] > 1e-5))
json.dump(out, open(os.environ['OUT'] + '/parity.json', 'w'), default=float, indent=1)
PY
B="python3 launch/bench.py --bench_split=valid --repeats=20"
$B --what=train,nll,data --matmul_precision=default --json=$OUT/bench_tf32.json 2>&1 | grep -v '^ \|^{\|^}'
$B --what=train,nll,sample,data,jit_study --sample_molecules=10 --sample_steps=200 \
   --jit_study_ks=1,10,100,1000 --jit_study_unrolls=1,2 --plot=$OUT/jit_study_gpu.png \
   --json=$OUT/bench_highest.json 2>&1 | grep -v '^ \|^{\|^}'
$B --what=sample --sample_molecules=100 --sample_steps=200 --json=$OUT/bench_sample100.json \
   2>&1 | grep -v '^ \|^{\|^}'
