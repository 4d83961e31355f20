"""Faster matmul precisions against float32: parity error and the first steps' loss.

  python launch/precision_study.py --out=workdirs/precision          # on a GPU
  python launch/precision_study.py --precisions=highest --seeds=2    # CPU: float32 only

Trains the same small model (`--preset`, default cpu_small) for `--steps` steps once
per precision (seed 0) and at float32 `highest` with `--seeds` seeds, through
`launch/train.py` (one workdir each under --out; a rerun resumes or skips finished
runs). Each run's logged train loss is averaged over windows of `--window` steps; a
precision is within noise when its mean distance from float32 seed 0 is no larger
than the other float32 seeds' (`benchmarks.against_seed_noise`). It also replays the
parity vectors (`--parity_dir`) at each precision: the arrays out of tolerance and
the largest absolute error. tf32 and bf16 need a GPU (XLA:CPU computes them in float32).
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

from launch import runtime
runtime.configure_process()
import jax  # noqa: E402
import tqdm  # noqa: E402

from edm_zoo import benchmarks  # noqa: E402
from edm_zoo.compat import parity  # noqa: E402
from edm_zoo.training import metrics_log  # noqa: E402
from launch import flags_util  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PRECISIONS = flags.DEFINE_list('precisions', 'highest,tf32,bf16',
                                f'from {sorted(flags_util.MATMUL_PRECISIONS)}')
_SEEDS = flags.DEFINE_integer('seeds', 2, 'float32 (highest) runs, seeds 0.. (>= 2: '
                              'the noise is their spread)')
_STEPS = flags.DEFINE_integer('steps', 2000, 'train steps per run')
_WINDOW = flags.DEFINE_integer('window', 200, 'steps per loss window')
_PRESET = flags.DEFINE_string('preset', 'cpu_small', 'the small config trained')
_DATASET = flags.DEFINE_string('dataset', 'qm9', 'dataset trained on')
_TRAIN_FLAGS = flags.DEFINE_list('train_flags', [], 'more flags for launch/train.py, '
                                 'e.g. --train_flags=--batch_size=64')
_OUT = flags.DEFINE_string('out', 'workdirs/precision_study', 'one workdir per run here')
_PARITY_DIR = flags.DEFINE_string(
    'parity_dir', os.path.join(_ROOT, '..', 'shared', 'parity'),
    "folder with parity_small.npz and train_parity_small.npz ('' skips parity)")
_JSON = flags.DEFINE_string('json', None, 'write the results here as JSON')
_DATA_DIR = flags_util.define_data_dir_flag()


def _runs() -> list[tuple[str, str, int]]:
  runs = [(f'highest_seed{s}', 'highest', s) for s in range(_SEEDS.value)]
  return runs + [(f'{p}_seed0', p, 0) for p in _PRECISIONS.value if p != 'highest']


def _finished(workdir: str) -> bool:
  try:
    return any(r.get('step', 0) >= _STEPS.value and 'loss' in r
               for r in metrics_log.read(workdir))
  except FileNotFoundError:
    return False


def _train(name: str, precision: str, seed: int) -> str:
  """Runs (or resumes) one training run; its workdir."""
  workdir = os.path.join(_OUT.value, name)
  if _finished(workdir):
    return workdir
  os.makedirs(workdir, exist_ok=True)
  cmd = [sys.executable, os.path.join(_ROOT, 'launch', 'train.py'),
         f'--preset={_PRESET.value}', f'--dataset={_DATASET.value}',
         f'--total_steps={_STEPS.value}', f'--seed={seed}',
         f'--matmul_precision={precision}', f'--workdir={workdir}',
         f'--eval_every_steps={_STEPS.value}', f'--checkpoint_every_steps={_STEPS.value}',
         '--log_every_steps=10', '--progress=false'] + _TRAIN_FLAGS.value
  if _DATA_DIR.value:
    cmd.append(f'--data_dir={_DATA_DIR.value}')
  log = os.path.join(workdir, 'train.log')
  with open(log, 'w') as f:
    done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
  if done.returncode:
    with open(log) as f:
      last = ([line.strip() for line in f if line.strip()] or ['(no output)'])[-1]
    raise ValueError(f'run {name} failed ({last}); its log: {log}')
  return workdir


def _parity(precision: str) -> dict[str, float]:
  out = {}
  with jax.default_matmul_precision(flags_util.MATMUL_PRECISIONS[precision]):
    for name, report in (('parity', parity.parity_report),
                         ('train_parity', parity.train_parity_report)):
      r = report(os.path.join(_PARITY_DIR.value, f'{name}_small.npz'))
      out[f'{name}_failing'] = sum(not v['ok'] for v in r.values())
      out[f'{name}_arrays'] = len(r)
      out[f'{name}_worst_abs'] = max(float(v['max_abs']) for v in r.values())
  return out


def main(argv):
  runtime.start_main(argv)
  try:
    unknown = set(_PRECISIONS.value) - set(flags_util.MATMUL_PRECISIONS)
    if unknown:
      raise ValueError(f'--precisions: unknown {sorted(unknown)}; pick from '
                       f'{sorted(flags_util.MATMUL_PRECISIONS)}.')
    if _SEEDS.value < 2:
      raise ValueError('--seeds must be >= 2: the noise is the spread between seeds.')
    for p in _PRECISIONS.value:
      flags_util.check_matmul_precision(p)
    if _PARITY_DIR.value:
      for name in ('parity_small.npz', 'train_parity_small.npz'):
        if not os.path.exists(os.path.join(_PARITY_DIR.value, name)):
          raise ValueError(f'--parity_dir: no {name} in {_PARITY_DIR.value} (give '
                           "--parity_dir='' to skip parity).")
    runs = _runs()
    curves, results = {}, {}
    for name, precision, seed in tqdm.tqdm(runs, desc='training runs', unit='run'):
      records = metrics_log.read(_train(name, precision, seed))
      curves[name] = benchmarks.loss_windows(records, _WINDOW.value, _STEPS.value)
      val = [r['val_nll'] for r in records if 'val_nll' in r]
      results[name] = {'precision': precision, 'seed': seed,
                       'loss_windows': curves[name].tolist(),
                       'val_nll': val[-1] if val else None}
    verdicts = benchmarks.against_seed_noise(
        curves, 'highest_seed0', [n for n, p, s in runs if p == 'highest' and s])
    for name, v in verdicts.items():
      results[name].update(v)
    if _PARITY_DIR.value:
      for p in tqdm.tqdm(['highest'] + [p for p in _PRECISIONS.value if p != 'highest'],
                         desc='parity', unit='precision'):
        results[f'{p}_seed0'].update(_parity(p))
  except ValueError as e:
    runtime.fail(str(e))
  print(f'device {jax.devices()[0].device_kind}; {_PRESET.value}, {_STEPS.value} steps, '
        f'loss windows of {_WINDOW.value}')
  for name, r in results.items():
    line = (f"{name:16s} last window {r['loss_windows'][-1]:.4f}  "
            f"val NLL {r['val_nll'] if r['val_nll'] is None else round(r['val_nll'], 2)}")
    if 'gap' in r:
      line += (f"  gap {r['gap']:.4f} vs seed noise {r['noise']:.4f}: "
               + ('within noise' if r['within_noise'] else 'OUTSIDE noise'))
    if 'parity_failing' in r:
      line += (f"  parity {r['parity_failing']}/{r['parity_arrays']} and train parity "
               f"{r['train_parity_failing']}/{r['train_parity_arrays']} out of tolerance"
               f" (largest abs error {r['parity_worst_abs']:.1e} / "
               f"{r['train_parity_worst_abs']:.1e})")
    print(line)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump({'device': jax.devices()[0].device_kind, 'steps': _STEPS.value,
                 'preset': _PRESET.value, 'runs': results}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
