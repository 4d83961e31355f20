#!/bin/bash
# The race: the original EDM (its own code) and edm_zoo train the same QM9 configuration
# for the same wall-clock budget, started together, one core each; then both are
# evaluated from their snapshots, sampled and scored.
#
#   EDM_REPO=$HOME/edm_reference EDM_VENV=$HOME/edm_venv bash instruments/race/race.sh OUT
#
# SECONDS_BUDGET (3600), SNAPSHOT_S (60), NLL_MOLECULES (2048: the first validation
# molecules, the same on both sides), N_SAMPLES (1000), SAMPLE_S (3600: the original samples
# for at most this long) and PARTS ("train nll sample report") change it. The configuration
# is edm_zoo's `cpu_small` preset and the same overrides of the original's published command
# line: EGNN nf 64, 3 layers, batch 32, lr 1e-3, EMA 0.999 (everything else EDM's published
# QM9 settings). Run nothing else meanwhile: each side has one core.
set -euo pipefail
OUT=${1:?give an output folder}
BUDGET=${SECONDS_BUDGET:-3600}
SNAPSHOT_S=${SNAPSHOT_S:-60}
NLL_MOLECULES=${NLL_MOLECULES:-2048}
N_SAMPLES=${N_SAMPLES:-1000}
SAMPLE_S=${SAMPLE_S:-3600}
PARTS=${PARTS-train nll sample report}
for p in $PARTS; do
  case $p in train|nll|sample|report) ;;
    *) echo "error: PARTS has '$p'; pick from: train nll sample report" >&2; exit 2;; esac
done
: "${EDM_REPO:?set EDM_REPO to a checkout of the original EDM}"
: "${EDM_VENV:?set EDM_VENV to the harness venv}"
export EDM_REPO
HERE=$(cd "$(dirname "$0")/../.." && pwd)
H=${EDM_HARNESS:-$HERE/../shared/reference/harness}
PY=$HERE/.venv/bin/python
V=$EDM_VENV/bin/python
MODEL="--nf 64 --n_layers 3 --batch_size 32 --lr 1e-3 --ema_decay 0.999 --threads 1"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
part() { [[ " $PARTS " == *" $1 "* ]]; }

if part train; then
  if [ -e "$OUT/ours" ] || [ -e "$OUT/original" ]; then
    echo "error: $OUT already holds a race; give a new folder" >&2; exit 2
  fi
  grep -m1 'model name' /proc/cpuinfo > "$OUT/processor.txt"
  lscpu | grep -E 'CPU family|Model:|Flags' | sed 's/Flags:.*\(avx512f\).*/Flags: ... avx512f .../' \
    >> "$OUT/processor.txt"
  # One clock for both: each side counts its seconds from here (setup and compiles included).
  export EDM_ZOO_STARTED=$(date +%s.%N)
  echo "{\"started\": $EDM_ZOO_STARTED, \"budget_s\": $BUDGET}" > "$OUT/race.json"
  # Ours stops on SIGTERM at the budget and checkpoints there; in-loop evaluations are off
  # (as the original's, which come every 20 epochs): both are evaluated from snapshots.
  ( cd "$HERE" && timeout -s TERM "$BUDGET" taskset -c 0 "$PY" launch/train.py --model=egnn \
      --dataset=qm9 --preset=cpu_small --total_steps=100000000 --eval_every_steps=1000000000 \
      --checkpoint_every_steps=500 --keep_last=100000 --workdir="$OUT/ours" --noprogress \
      > "$OUT/ours.log" 2>&1 || true ) &
  taskset -c 1 "$V" "$HERE/instruments/race/original_train.py" --harness="$H" \
      --out="$OUT/original" --seconds="$BUDGET" --snapshot_every="$SNAPSHOT_S" $MODEL \
      > "$OUT/original.log" 2>&1 &
  wait
fi

if part nll; then
  # The same first validation molecules, each code's own NLL on its own snapshots.
  ( cd "$HERE" && taskset -c 0 "$PY" instruments/race/ours_nll.py --run="$OUT/ours" \
      --molecules="$NLL_MOLECULES" --out="$OUT/ours_nll.jsonl" > "$OUT/ours_nll.log" 2>&1 ) &
  taskset -c 1 "$V" "$HERE/instruments/race/original_eval.py" --harness="$H" \
      --out="$OUT/original" --what=nll --molecules="$NLL_MOLECULES" $MODEL \
      > "$OUT/original_nll.log" 2>&1 &
  wait
  # And the original's weights through edm_zoo's estimator, with the very t and noise
  # that ours' curve drew: the two curves then differ by the weights alone.
  taskset -c 1 "$V" "$HERE/instruments/race/original_eval.py" --harness="$H" \
      --out="$OUT/original" --what=export $MODEL > "$OUT/original_export.log" 2>&1
  ( cd "$HERE" && "$PY" instruments/race/ours_nll.py --run="$OUT/ours" \
      --state_dicts="$OUT/original/snapshots" --molecules="$NLL_MOLECULES" \
      --out="$OUT/original_nll_paired.jsonl" > "$OUT/original_nll_paired.log" 2>&1 )
fi

if part sample; then
  # The original: its own sampler (1,000 steps) on its last snapshot, for at most SAMPLE_S.
  taskset -c 1 "$V" "$HERE/instruments/race/original_eval.py" --harness="$H" \
      --out="$OUT/original" --what=sample --n_samples="$N_SAMPLES" --seconds="$SAMPLE_S" \
      $MODEL > "$OUT/original_sample.log" 2>&1 &
  # Ours: the last checkpoint at 1,000 and 250 steps, EDM's row and the chemistry checks.
  ( cd "$HERE"
    for steps in 1000 250; do
      taskset -c 0 "$PY" launch/eval.py --ckpt="$OUT/ours" --n_samples="$N_SAMPLES" \
        --steps=$steps --batch_size=100 --seed=0 --skip_nll --chemistry \
        --out_dir="$OUT/ours_eval_$steps" --noprogress > "$OUT/ours_eval_$steps.log" 2>&1
    done ) &
  wait
  ( cd "$HERE" && taskset -c 0 "$PY" launch/eval.py --samples="$OUT/original/samples.xyz" \
      --dataset=qm9 --chemistry --out_dir="$OUT/original_eval" --noprogress \
      > "$OUT/original_eval.log" 2>&1 )
fi

if part report; then
  ( cd "$HERE" && "$PY" instruments/race/report.py --race="$OUT" )
fi
echo "done: $OUT"
