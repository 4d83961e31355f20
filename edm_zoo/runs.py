"""Run folders read back and compared: what `launch/compare.py` shows.

A run folder is what `launch/train.py` or `launch/train_classifier.py` writes
(`training/skeleton.py`): `config.json` (the run's config as of its latest
start), `metrics.jsonl` (the step scalars, every
evaluation and the final figures), `checkpoints/` and `best/`, and the
`report.json` of each `launch/eval.py` on it (default `<run>/eval/`). Any model
of the zoo reads back the same way: the train scalar is `loss` (or `l1` for a
classifier), the validation figures are the `val_*` keys, the test figures the
`test_*` keys, whatever the model calls its figure.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Sequence

import matplotlib
from matplotlib import figure as mpl_figure
import numpy as np

from edm_zoo import config as config_lib
from edm_zoo.training import checkpoint, metrics_log, skeleton

_TRAIN_SCALARS = ('loss', 'l1')
# What the curves are drawn against: steps, or wall-clock minutes of training (the
# `elapsed_s` of each record: setup and compiles included, summed over resumes).
X_AXES = ('step', 'minutes')
# The eval report's sample metrics, in the order EDM's table gives them.
_REPORT_METRICS = ('atom_stability', 'mol_stability', 'validity', 'uniqueness',
                   'valid_x_unique', 'novelty')


@dataclasses.dataclass(frozen=True)
class Run:
  """One run folder read back.

  Attributes:
    path: the folder.
    name: its label in tables and plots (the folder's name, or more of its path
      where two runs share a name).
    config: the run's config as a dict ({} when none was written yet).
    records: the lines of `metrics.jsonl`.
    report: the newest `report.json` of an eval on it, or None.
    report_path: where that report is.
  """
  path: str
  name: str
  config: dict[str, Any]
  records: list[dict[str, Any]]
  report: dict[str, Any] | None
  report_path: str | None

  @property
  def step(self) -> int:
    return max((r['step'] for r in self.records), default=0)

  @property
  def total_steps(self) -> int | None:
    train = self.config.get('train', self.config)
    return train.get('total_steps') or None

  def curve(self, key: str, x: str = 'step') -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a logged scalar; x='minutes': (the run's wall-clock
    minutes, values) of the records that carry `elapsed_s`."""
    if x not in X_AXES:
      raise ValueError(f'x must be one of {X_AXES}, got {x!r}.')
    if x == 'minutes':
      pairs = [(r['elapsed_s'] / 60, r[key]) for r in self.records
               if isinstance(r.get(key), (int, float))
               and isinstance(r.get('elapsed_s'), (int, float))]
      return (np.array([p[0] for p in pairs], np.float64),
              np.array([p[1] for p in pairs], np.float64))
    pairs = [(r['step'], r[key]) for r in self.records
             if isinstance(r.get(key), (int, float))]
    return (np.array([p[0] for p in pairs], np.int64),
            np.array([p[1] for p in pairs], np.float64))

  def minutes_at(self, step: int) -> float | None:
    """The run's wall-clock minutes when it logged `step` (None if not known)."""
    for r in self.records:
      if r['step'] == step and isinstance(r.get('elapsed_s'), (int, float)):
        return r['elapsed_s'] / 60
    return None

  @property
  def train_scalar(self) -> str | None:
    for key in _TRAIN_SCALARS:
      if any(key in r for r in self.records):
        return key
    return None

  def figures(self, prefix: str) -> list[str]:
    """The logged figures whose name starts with `prefix` ('val_', 'test_'),
    without their molecule counts."""
    return sorted({k for r in self.records for k in r
                   if k.startswith(prefix) and not k.endswith('_molecules')})

  def best(self, key: str) -> tuple[float, int] | None:
    """(lowest value, its step) of a validation figure."""
    steps, values = self.curve(key)
    if not len(values):
      return None
    i = int(np.argmin(values))
    return float(values[i]), int(steps[i])

  def last(self, key: str) -> tuple[float, int] | None:
    steps, values = self.curve(key)
    return (float(values[-1]), int(steps[-1])) if len(values) else None


def is_run(path: str) -> bool:
  return os.path.isfile(os.path.join(path, 'metrics.jsonl')) or bool(
      glob.glob(os.path.join(path, 'checkpoints', '[0-9]*')))


def _config(path: str) -> dict[str, Any]:
  file = os.path.join(path, skeleton.CONFIG_FILE)
  if os.path.isfile(file):
    with open(file) as f:
      config = json.load(f)
  else:
    try:  # Runs written before config.json: the newest checkpoint's meta.
      config = checkpoint.read_meta(path).get('config', {})
    except ValueError:
      return {}
  try:  # A generator's config saved before some fields existed: their defaults.
    return config_lib.to_dict(config_lib.from_dict(config))
  except (TypeError, ValueError):  # A classifier's config: as saved.
    return config


def _newest_report(path: str) -> tuple[dict[str, Any] | None, str | None]:
  found = [p for pattern in ('report.json', '*/report.json', '*/*/report.json')
           for p in glob.glob(os.path.join(path, pattern))]
  for p in sorted(found, key=os.path.getmtime, reverse=True):
    try:
      with open(p) as f:
        report = json.load(f)
    except (OSError, ValueError):
      continue  # Being written, or not ours.
    if isinstance(report, dict) and ('metrics' in report or 'nll' in report):
      return report, p
  return None, None


def _names(paths: Sequence[str]) -> list[str]:
  """The shortest path tails that tell the runs apart."""
  parts = [os.path.abspath(p).rstrip(os.sep).split(os.sep) for p in paths]
  for depth in range(1, max(len(p) for p in parts) + 1):
    names = [os.sep.join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  return [os.path.abspath(p) for p in paths]


def read(paths: Sequence[str]) -> list[Run]:
  """The runs of `paths`.

  Raises:
    ValueError: one line naming a path that is not a run folder.
  """
  if not paths:
    raise ValueError('give one or more run folders (the --workdir of launch/train.py).')
  for path in paths:
    if not os.path.isdir(path):
      raise ValueError(f'{path}: no such folder.')
    if not is_run(path):
      raise ValueError(f'{path} is not a training run (no metrics.jsonl and no '
                       'checkpoints/ in it).')
  runs = []
  for path, name in zip(paths, _names(paths)):
    records = (metrics_log.read(path)
               if os.path.isfile(os.path.join(path, 'metrics.jsonl')) else [])
    report, report_path = _newest_report(path)
    runs.append(Run(path=path, name=name, config=_config(path), records=records,
                    report=report, report_path=report_path))
  return runs


def config_differences(runs: Sequence[Run]) -> dict[str, list[Any]]:
  """{field: [value in each run]} of the config fields that are not the same in
  every run ('?' for a run whose config is not known yet)."""
  flat = [skeleton.flatten(r.config) if r.config else None for r in runs]
  known = [f for f in flat if f is not None]
  fields = sorted({k for f in known for k in f})
  out = {}
  for field in fields:
    values = [('?' if f is None else f.get(field, '-')) for f in flat]
    if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
      out[config_lib.flag_name(field)] = values
  return out


def _fmt(value: Any) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.4g}'
  if isinstance(value, (list, tuple)):
    return ','.join(_fmt(v) for v in value)
  return str(value) if value != '' else "''"


def _figure(pair: tuple[float, int] | None, minutes: float | None = None) -> str:
  if pair is None:
    return '-'
  when = f'step {pair[1]}' + ('' if minutes is None else f', {minutes:.1f} min')
  return f'{pair[0]:.4g} ({when})'


def summary(runs: Sequence[Run]) -> list[dict[str, str]]:
  """One row per run: what differs, steps, best validation, test, eval report."""
  differ = config_differences(runs)
  rows = []
  for i, run in enumerate(runs):
    row = {'run': run.name}
    row.update({field: _fmt(values[i]) for field, values in differ.items()})
    total = run.total_steps
    row['steps'] = f'{run.step}' + (f' / {total}' if total else '')
    for key in run.figures('val_'):
      best = run.best(key)
      row[f'best {key}'] = _figure(best, best and run.minutes_at(best[1]))
    for key in run.figures('test_'):
      row[key] = _figure(run.last(key))
    report = run.report or {}
    nll = report.get('nll')
    if isinstance(nll, dict) and 'nll' in nll:
      row[f'eval {nll.get("figure", "nll")} ({nll.get("split", "test")})'] = (
          f'{nll["nll"]:.4g}')
    metrics = report.get('metrics') or {}
    for key in _REPORT_METRICS:
      if key in metrics:
        row[f'eval {key}'] = f'{100 * metrics[key]:.1f}%'
    if 'molecules' in metrics:
      row['eval samples'] = str(metrics['molecules'])
    rows.append(row)
  return rows


def markdown(rows: Sequence[dict[str, str]]) -> str:
  """A markdown table of the rows (a column for every key any row has)."""
  columns = list(dict.fromkeys(k for row in rows for k in row))
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(row.get(c, '-') for c in columns) + ' |' for row in rows]
  return '\n'.join(lines)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
  if window <= 1 or len(values) < window:
    return values
  kernel = np.ones(window) / window
  head = np.cumsum(values[:window - 1]) / np.arange(1, window)
  return np.concatenate([head, np.convolve(values, kernel, mode='valid')])


def plot(runs: Sequence[Run], path: str, *, smooth: int = 0, x: str = 'step') -> None:
  """Train loss and validation figures of every run, one panel each, shared axes
  across runs.

  Args:
    runs: the runs.
    path: the PNG to write.
    smooth: moving-average window of the train loss in logged points (0: 1/50
      of each run's curve).
    x: 'step', or 'minutes' of wall-clock training (records with `elapsed_s`).
  """
  # A Figure without pyplot: no global backend is chosen or changed (notebooks).
  fig = mpl_figure.Figure(figsize=(12, 4.5))
  ax_train, ax_val = fig.subplots(1, 2)
  colors = matplotlib.rcParams['axes.prop_cycle'].by_key()['color']
  for i, run in enumerate(runs):
    color = colors[i % len(colors)]
    if run.train_scalar:
      steps, values = run.curve(run.train_scalar, x)
      window = smooth or max(1, len(values) // 50)
      ax_train.plot(steps, values, color=color, alpha=0.2, lw=0.8)
      ax_train.plot(steps, _smooth(values, window), color=color, lw=1.5,
                    label=f'{run.name} ({run.train_scalar})')
    for key, style in zip(run.figures('val_'), ('o-', 's--', '^:')):
      steps, values = run.curve(key, x)
      ax_val.plot(steps, values, style, color=color, ms=4, label=f'{run.name} ({key})')
  xlabel = 'step' if x == 'step' else 'wall-clock minutes (setup and compiles included)'
  ax_train.set(xlabel=xlabel, ylabel='train loss', title=(
      f'train loss (moving average of {smooth} logged points)' if smooth
      else 'train loss (moving average over 2% of each run)'))
  ax_val.set(xlabel=xlabel, ylabel='validation figure', title='validation (EMA)')
  for ax in (ax_train, ax_val):
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend(fontsize=8)
      values = [ln.get_ydata() for ln in ax.get_lines()]
      finite = np.concatenate([np.asarray(v, float) for v in values])
      finite = finite[np.isfinite(finite)]
      # Log scale where the curves span a decade or more (losses fall fast early).
      if len(finite) and finite.min() > 0 and finite.max() / finite.min() >= 10:
        ax.set_yscale('log')
    else:
      ax.text(0.5, 0.5, 'nothing logged yet', ha='center', va='center',
              transform=ax.transAxes)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)


def compare(paths: Sequence[str], out_dir: str, *, x: str = 'step'
            ) -> tuple[str, list[dict[str, str]]]:
  """Reads the runs, writes `compare.md`, `compare.json` and `compare.png` (curves
  against `x`: 'step' or 'minutes') to `out_dir`; returns (markdown table, rows)."""
  if x not in X_AXES:
    raise ValueError(f'--x must be one of {X_AXES}, got {x!r}.')
  runs = read(paths)
  rows = summary(runs)
  table = markdown(rows)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'compare.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(out_dir, 'compare.json'), 'w') as f:
    json.dump({'runs': [os.path.abspath(r.path) for r in runs], 'rows': rows,
               'differences': config_differences(runs),
               'reports': [r.report_path for r in runs]}, f, indent=1, default=str)
  plot(runs, os.path.join(out_dir, 'compare.png'), x=x)
  return table, rows
