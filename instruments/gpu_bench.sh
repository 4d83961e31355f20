#!/usr/bin/env bash
# The one prepared GPU check (BUILD.md, "GPU"): the original EDM and edm_zoo on the same
# GPU in one command, published QM9 config.
#
#   OUT=DIR bash instruments/gpu_bench.sh          # after instruments/gpu_carry.sh, on the GPU
#   SMOKE=1 WHEELS= PY=.venv/bin/python OPY=$HOME/edm_venv/bin/python OUT=DIR \
#     bash instruments/gpu_bench.sh   # a tiny dry run here, on the carried folders
#
# In order of importance (each part adds to $OUT at once, so a run cut short keeps
# what finished):
#   1. train step and NLL, ours at float32 `highest` beside the original (float32;
#      then the original with TF32);
#   2. ours at tf32 and bf16 (`--matmul_precision`);
#   3. sampling at 10 / 100 / 1000 molecules per batch, both;
#   4. launch/precision_study.py: parity error per precision and the train loss of
#      the first 2,000 steps of a small config against float32's seed-to-seed noise.
# PARTS (default "side precisions sampling study") picks the parts. Each measurement
# runs in its own process, so its peak GPU memory is its own.
# Writes $OUT/log.txt, $OUT/results.json (every measurement, by name) and
# $OUT/report.md (instruments/gpu_bench_report.py).
set -uo pipefail
PARTS=${PARTS-side precisions sampling study}
for p in $PARTS; do
  case $p in side|precisions|sampling|study) ;;
    *) echo "error: PARTS has '$p'; pick from: side precisions sampling study" >&2; exit 2;; esac
done
part() { [[ " $PARTS " == *" $1 "* ]]; }
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
PY=${PY:-python3}      # ours (jax)
OPY=${OPY:-python3}    # the original's (torch); one python on the GPU machine
WHEELS=${WHEELS-$HERE/.whl}  # WHEELS= (empty) installs nothing: a dry run here
if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$HERE
fi
export EDM_ZOO_DATA_DIR=${EDM_ZOO_DATA_DIR:-$HERE/.gpudata/tfds}
export EDM_REPO=${EDM_REPO:-$HERE/.gpuorig/edm}
H=${EDM_HARNESS:-$HERE/.gpuorig/harness}
PARITY=${PARITY_DIR:-$HERE/.gpudata}
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/edm_zoo_jax_cache
# One JSON per measurement, merged into $OUT/results.json. A rerun on the same
# (still warm) machine skips what is there; FRESH=1 starts over.
R=/tmp/edm_zoo_gpu_bench
[ "${FRESH:-0}" = 1 ] && rm -rf "$R" /tmp/edm_zoo_precision
mkdir -p "$R"
LOG=$OUT/log.txt

if [ "${SMOKE:-0}" = 1 ]; then  # Tiny sizes: checks the script, measures nothing.
  OURS="--preset=tiny --T=20"; ORIG="--nf 16 --n_layers 2 --batch_size 8"
  REPEATS=3; ITERS="--iters 2 --warmup 1"; NLLB="--batches 2 --warmup 1"
  SAMPLES="2 4"; STEPS=3; STUDY="--preset=tiny --steps=20 --window=10"; PRECISIONS=highest
  STUDY_DATASET=${STUDY_DATASET:-qm9_gpu_subset}
else
  OURS=""; ORIG=""; REPEATS=20; ITERS="--iters 12 --warmup 2"; NLLB="--batches 10 --warmup 1"
  SAMPLES="10 100 1000"; STEPS=30; STUDY="--steps=2000 --window=200"
  PRECISIONS=highest,tf32,bf16
  STUDY_DATASET=${STUDY_DATASET:-qm9_gpu_subset}  # instruments/gpu_carry.sh builds it
fi

merge() {  # $R/*.json -> $OUT/results.json, then the report.
  "$PY" "$HERE/instruments/gpu_bench_report.py" --dir="$R" --json="$OUT/results.json" \
    --markdown="$OUT/report.md" >> "$LOG" 2>&1
}
have() { [ -s "$R/$1.json" ] && echo "== $1: measured earlier, kept" | tee -a "$LOG"; }
ours() {  # NAME ARGS...: launch/bench.py, JSON to $R/NAME.json
  local name=$1; shift
  have "$name" && return
  echo "== ours $name: $*" | tee -a "$LOG"
  "$PY" launch/bench.py --bench_split=valid $OURS "$@" --json="$R/$name.json" 2>&1 \
    | grep -v '^ \|^{\|^}' | tee -a "$LOG"
  merge
}
orig() {  # NAME SCRIPT ARGS...: the harness script through instruments/gpu_original.py
  local name=$1 script=$2; shift 2
  have "$name" && return
  echo "== original $name: $script $*" | tee -a "$LOG"
  "$OPY" instruments/gpu_original.py "$H/$script" $ORIG "$@" > "$R/$name.json" 2>> "$LOG"
  tail -1 "$R/$name.json" | tee -a "$LOG"
  merge
}

{ nvidia-smi -L || echo "no nvidia-smi"; } | tee -a "$LOG"
if part side; then
  ours ours_highest --what=train,nll --repeats=$REPEATS --matmul_precision=highest
  orig orig_train bench_train.py $ITERS
  orig orig_nll bench_nll.py $NLLB
  EDM_ORIG_TF32=1 orig orig_train_tf32 bench_train.py $ITERS
fi
part precisions && for p in ${PRECISIONS//,/ }; do
  [ "$p" = highest ] || ours "ours_$p" --what=train,nll --repeats=$REPEATS --matmul_precision=$p
done
part sampling && for n in $SAMPLES; do
  ours "ours_sample$n" --what=sample --sample_molecules=$n --sample_steps=$STEPS --repeats=2
  orig "orig_sample$n" bench_sample.py --n_samples $n --sample_batch_size $n --steps $STEPS
done
if part study && ! have precision_study; then
  echo "== precision study" | tee -a "$LOG"
  TQDM_DISABLE=1 "$PY" launch/precision_study.py --precisions=$PRECISIONS --seeds=2 $STUDY \
    --dataset="$STUDY_DATASET" --out=/tmp/edm_zoo_precision --parity_dir="$PARITY" \
    --json="$R/precision_study.json" 2>&1 | tee -a "$LOG"
fi
merge
echo "done: $OUT" | tee -a "$LOG"
