#!/bin/bash
# The side-by-side run: edm_zoo and the original EDM (its own code, via
# ../shared/reference/harness) timed in one run on this machine, published QM9 config.
#
#   EDM_REPO=$HOME/edm_reference EDM_VENV=$HOME/edm_venv instruments/side_by_side.sh OUT_DIR [ROUNDS]
#
# PARTS (default "rounds batches s100 sizes geom") picks what runs, e.g. PARTS=sizes.
#
# Each round times ours (train, NLL, sampling) then the original's (train, NLL,
# sampling); then both at batch 16 and 32 (how the step grows with the batch) and
# sampling 100 molecules per batch; then both on batches of one molecule size
# (SIZES), and on drug-like molecules of one size under the GEOM-Drugs config
# (GEOM_SIZES). One JSON file per measurement in OUT_DIR; `python instruments/side_by_side_report.py OUT_DIR`
# prints the medians and ratios. Run nothing else meanwhile.
set -euo pipefail
OUT=${1:?give an output folder}
ROUNDS=${2:-2}
PARTS=${PARTS-rounds batches s100 sizes geom}
for p in $PARTS; do
  case $p in rounds|batches|s100|sizes|geom) ;;
    *) echo "error: PARTS has '$p'; pick from: rounds batches s100 sizes geom" >&2; exit 2;; esac
done
: "${EDM_REPO:?set EDM_REPO to a checkout of the original EDM}"
: "${EDM_VENV:?set EDM_VENV to the harness venv}"
export EDM_REPO
HERE=$(cd "$(dirname "$0")/.." && pwd)
H=${EDM_HARNESS:-$HERE/../shared/reference/harness}
PY=$HERE/.venv/bin/python
V=$EDM_VENV/bin/python
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # The harness changes directory.
cat /proc/cpuinfo | grep -m1 'model name' > "$OUT/processor.txt"
for ext in fma avx2 avx512f; do  # The vector extensions this processor has.
  grep -m1 '^flags' /proc/cpuinfo | grep -qw "$ext" && echo -n "$ext " >> "$OUT/processor.txt"
done
echo >> "$OUT/processor.txt"
lscpu | grep -E 'CPU family|Model:|Thread|Core' >> "$OUT/processor.txt"

part() { [[ " $PARTS " == *" $1 "* ]]; }

part rounds && for r in $(seq 1 "$ROUNDS"); do
  "$PY" "$HERE/launch/bench.py" --what=train,nll,sample --repeats=10 --sample_molecules=10 \
    --sample_steps=50 --json="$OUT/ours_r$r.json" > "$OUT/ours_r$r.log" 2>&1
  "$V" "$H/bench_train.py" --iters 6 --warmup 1 > "$OUT/orig_train_r$r.json" 2> "$OUT/orig_train_r$r.log"
  # Batches 2-11 of the validation split on both sides (ours: --repeats=10).
  "$V" "$H/bench_nll.py" --batches 10 --warmup 1 > "$OUT/orig_nll_r$r.json" 2> "$OUT/orig_nll_r$r.log"
  "$V" "$H/bench_sample.py" --n_samples 10 --sample_batch_size 10 --steps 30 \
    > "$OUT/orig_sample_r$r.json" 2> "$OUT/orig_sample_r$r.log"
done
part batches && for bs in 16 32; do
  "$PY" "$HERE/launch/bench.py" --what=train --repeats=10 --batch_size=$bs \
    --json="$OUT/ours_b$bs.json" > "$OUT/ours_b$bs.log" 2>&1
  "$V" "$H/bench_train.py" --iters 6 --warmup 1 --batch_size $bs \
    > "$OUT/orig_train_b$bs.json" 2> "$OUT/orig_train_b$bs.log"
done
# Sampling 100 molecules per batch (the original pads them all to 29 atoms).
if part s100; then
  "$PY" "$HERE/launch/bench.py" --what=sample --sample_molecules=100 --sample_steps=10 \
    --repeats=2 --json="$OUT/ours_s100.json" > "$OUT/ours_s100.log" 2>&1
  "$V" "$H/bench_sample.py" --n_samples 100 --sample_batch_size 100 --steps 10 \
    > "$OUT/orig_sample_s100.json" 2> "$OUT/orig_sample_s100.log"
fi
# How the train step grows with molecule size: batches of 64 QM9 molecules that all
# have SIZES atoms (the original through a view of its checkout whose train split
# holds that size, instruments/original_size_split.py).
part sizes && for n in ${SIZES-10 14 18 22 27}; do
  "$PY" "$HERE/launch/bench.py" --what=size_study --size_study_sizes=$n --repeats=4 \
    --json="$OUT/ours_size$n.json" > "$OUT/ours_size$n.log" 2>&1
  "$PY" "$HERE/instruments/original_size_split.py" --edm_repo="$EDM_REPO" --size=$n \
    --min_molecules=384 --out="$OUT/orig_view$n" > "$OUT/orig_view$n.json"
  EDM_REPO="$OUT/orig_view$n" "$V" "$H/bench_train.py" --iters 4 --warmup 1 \
    > "$OUT/orig_size$n.json" 2> "$OUT/orig_size$n.log"
  rm -rf "$OUT/orig_view$n"
done
# Drug-like molecules under the GEOM-Drugs config (nf 256, 4 layers), batches of 16
# moses3d molecules that all have GEOM_SIZES atoms: the original through a view whose
# GEOM file holds them (its main_geom_drugs.py, loader and train_epoch; its Python
# needs msgpack, which main_geom_drugs imports), ours through the size study.
part geom && for n in ${GEOM_SIZES-20 30 40 50 60}; do
  "$PY" "$HERE/launch/bench.py" --dataset=moses3d --what=size_study --size_study_sizes=$n \
    --batch_size=16 --repeats=4 --json="$OUT/ours_geom$n.json" > "$OUT/ours_geom$n.log" 2>&1
  "$PY" "$HERE/instruments/original_size_split.py" --edm_repo="$EDM_REPO" --dataset=moses3d \
    --size=$n --min_molecules=128 --out="$OUT/geom_view$n" > "$OUT/geom_view$n.json" \
    2> "$OUT/geom_view$n.log"
  PYTHONPATH="$OUT/geom_view$n" "$V" "$HERE/instruments/original_geom_train.py" \
    --view="$OUT/geom_view$n" --harness="$H" --batch_size=16 --iters=4 --warmup=1 \
    > "$OUT/orig_geom$n.json" 2> "$OUT/orig_geom$n.log"
  rm -rf "$OUT/geom_view$n"
done
# ... and random batches of 16 moses3d molecules of every size (ours: the size study's
# moses3d row; the original pads each batch to its largest molecule).
if part geom; then
  "$PY" "$HERE/launch/bench.py" --dataset=moses3d --what=size_study --batch_size=16 \
    --repeats=4 --json="$OUT/ours_geom_mixed.json" > "$OUT/ours_geom_mixed.log" 2>&1
  "$PY" "$HERE/instruments/original_size_split.py" --edm_repo="$EDM_REPO" --dataset=moses3d \
    --size=0 --min_molecules=400 --out="$OUT/geom_view_mixed" \
    > "$OUT/geom_view_mixed.json" 2> "$OUT/geom_view_mixed.log"
  PYTHONPATH="$OUT/geom_view_mixed" "$V" "$HERE/instruments/original_geom_train.py" \
    --view="$OUT/geom_view_mixed" --harness="$H" --batch_size=16 --iters=6 --warmup=1 \
    > "$OUT/orig_geom_mixed.json" 2> "$OUT/orig_geom_mixed.log"
  rm -rf "$OUT/geom_view_mixed"
fi
echo "done: $OUT"
