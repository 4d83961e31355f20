"""The training skeleton shared by every trainer: resume, bookkeeping, evaluation,
checkpoints, logs and the progress bar, around a trainer's own step.

A trainer (the generator in `training/loop.py`, the property classifier in
`property_prediction/training.py`) supplies a `Trainer`: how to take one step,
how to evaluate, and its data. The skeleton owns everything else:

* resume: the latest checkpoint of `workdir` is restored if its config equals
  this run's but for the trainer's `schedule_fields` (how long and how often:
  a finished run can be extended), with the data position (epoch, molecule);
  what changed is appended to `config_changes.jsonl`, any other difference is a
  one-line error naming each field with both values.
* bookkeeping: the position advances by the molecules each batch consumed; a
  finished epoch moves to the next one at molecule 0.
* logs: `metrics.jsonl` + TensorBoard every `log_every` steps, evaluations and
  the final figures; the progress bar shows the step's scalars.
* checkpoints: every `checkpoint_every` steps and after every evaluation (the
  last `keep_last` kept), the lowest `best_metric` in `best/`, and the end; a
  bad latest checkpoint is moved aside and the newest good one resumed.
* stop requests: SIGTERM or SIGUSR1 (a scheduler's preemption notice) end the
  run after the current step with a checkpoint of it (`TrainingStopped`).

In a multi-process run every process runs the skeleton in lockstep (the same
steps, evaluations and saves); process 0 alone writes logs and the progress bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import tqdm

from edm_zoo import config as config_lib
from edm_zoo.io import files
from edm_zoo.training import checkpoint, distributed, metrics_log


class TrainingError(RuntimeError):
  """A run that cannot go on (another run's workdir, repeated non-finite steps)."""


class TrainingStopped(TrainingError):
  """A run stopped on request (SIGTERM, SIGUSR1) after saving its checkpoint."""


# SLURM sends SIGTERM before it kills a job (and SIGUSR1 with --signal=USR1@T).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextlib.contextmanager
def _stop_requests():
  """Yields a list that holds the names of stop signals received meanwhile."""
  received: list[str] = []
  if threading.current_thread() is not threading.main_thread():
    yield received
    return
  previous = {sig: signal.signal(sig, lambda s, _: received.append(signal.Signals(s).name))
              for sig in _STOP_SIGNALS}
  try:
    yield received
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the skeleton does what, in steps.

  Attributes:
    total_steps: the run ends after this step.
    epoch_size: molecules per epoch (the train split's size).
    eval_every: evaluation interval (and always at the last step).
    checkpoint_every: checkpoint interval.
    log_every: JSONL / TensorBoard interval of the step scalars.
    keep_last: checkpoints kept besides the best one.
  """
  total_steps: int
  epoch_size: int
  eval_every: int
  checkpoint_every: int
  log_every: int
  keep_last: int


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a trainer brings to the skeleton.

  Attributes:
    batches: (epoch, start molecule) -> iterator of (batch, molecules consumed).
    step: (state, batch) -> (state, scalars): one step; the scalars are host
      floats, logged every `log_every` steps and shown on the progress bar.
    evaluate: state -> (figures, message): the validation figures (with the
      best metric among them) and a line for the console.
    finish: state -> figures computed once at the end (e.g. the test NLL).
    best_metric: the figure of `evaluate` that `best/` minimises.
    meta: JSON facts saved with every checkpoint; its 'config' must match on
      resume.
    desc: the progress bar's label.
    canonical_config: a saved 'config' -> the same config with the fields added
      since it was saved at their defaults, so that such runs still resume.
    fresh_start: the initial state -> what a run starts from when it resumes
      nothing (e.g. a pretrained part loaded in); a resume never calls it.
    schedule_fields: dotted paths of 'config' ('train.total_steps') that a
      resume may change: they say how long and how often, never which steps
      are taken, so an extended run equals one that was that long from the start.
  """
  batches: Callable[[int, int], Iterator[tuple[Any, int]]]
  step: Callable[[Any, Any], tuple[Any, dict[str, float]]]
  evaluate: Callable[[Any], tuple[dict[str, float], str]]
  best_metric: str
  meta: dict[str, Any]
  finish: Callable[[Any], dict[str, float]] | None = None
  desc: str = 'train'
  canonical_config: Callable[[Any], Any] = lambda config: config
  fresh_start: Callable[[Any], Any] = lambda state: state
  schedule_fields: tuple[str, ...] = ()


CONFIG_CHANGES = 'config_changes.jsonl'
# The run's config as of its latest start, readable before the first checkpoint.
CONFIG_FILE = 'config.json'


def _as_json(value: Any) -> Any:
  """The value as it reads back from a JSON checkpoint (tuples become lists)."""
  return json.loads(json.dumps(value))


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'train.total_steps': 4, ...} of a nested config dict."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, f'{prefix}.{key}' if prefix else str(key)))
  return out


def config_difference(saved: Any, now: Any, schedule_fields: tuple[str, ...]
                      ) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
  """(allowed, refused): {field path: (saved value, value now)} of the fields that
  differ, split by whether they are among `schedule_fields`."""
  if not isinstance(saved, dict):
    return {}, {'config': (saved, now)}
  saved, now = flatten(_as_json(saved)), flatten(_as_json(now))
  allowed, refused = {}, {}
  for path in sorted(set(saved) | set(now)):
    old, new = saved.get(path, '(absent)'), now.get(path, '(absent)')
    if old != new:
      (allowed if path in schedule_fields else refused)[path] = (old, new)
  return allowed, refused


def _log_changes(workdir: str, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
  line = {'step': step, 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
          'changes': {path: list(pair) for path, pair in changes.items()}}
  with open(os.path.join(workdir, CONFIG_CHANGES), 'a') as f:
    f.write(json.dumps(line) + '\n')


def resume(workdir: str, state: Any, trainer: Trainer, keep_last: int
           ) -> tuple[checkpoint.Checkpointer, Any, dict[str, Any]]:
  """(checkpointer, state, meta with bookkeeping) of `workdir`, resumed if it holds
  a run (else `trainer.fresh_start`'s state); raises TrainingError for a run of
  another config (beyond `trainer.schedule_fields`)."""
  ckpt = checkpoint.Checkpointer(workdir, keep_last, best_metric=trainer.best_metric)
  best = f'best_{trainer.best_metric}'
  meta = {**trainer.meta, 'epoch': 0, 'position': 0, best: None, 'elapsed_s': 0.0,
          'jax_version': jax.__version__}
  if ckpt.latest_step() is not None:
    allowed = {}

    def check_config(restored):
      # Before the state is read: another model's arrays would not fit it.
      saved = restored.get('config')
      try:
        saved = trainer.canonical_config(saved)
      except (TypeError, ValueError):  # Not a config this code can read: refused below.
        pass
      changes, refused = config_difference(saved, meta['config'], trainer.schedule_fields)
      if refused:
        fields = '; '.join(f'{config_lib.flag_name(path)}: {old} in {workdir}, {new} now'
                           for path, (old, new) in refused.items())
        free = ', '.join(config_lib.flag_name(path) for path in trainer.schedule_fields)
        raise TrainingError(
            f'{workdir} holds a run with another config ({fields}); use a new '
            f'--workdir or the same flags (a resume may change only {free or "nothing"}).')
      allowed.clear()  # The step finally restored is the one whose changes count.
      allowed.update(changes)

    try:
      state, restored = ckpt.restore(state, check_meta=check_config)
    except TrainingError:
      ckpt.close()
      raise
    for key, value in restored.items():
      if key not in trainer.meta:  # Bookkeeping and what the trainer added since.
        meta[key] = value
    step = int(jax.device_get(state.step))
    if allowed:
      logging.info('resuming with %s', ', '.join(
          f'{config_lib.flag_name(path)} {old} -> {new}' for path, (old, new) in allowed.items()))
      if distributed.is_writer():
        _log_changes(workdir, step, allowed)
    logging.info('resumed from step %d (epoch %d, molecule %d)',
                 step, meta['epoch'], meta['position'])
  else:
    try:
      state = trainer.fresh_start(state)
    except BaseException:
      ckpt.close()
      raise
  return ckpt, state, meta


def run(workdir: str, state: Any, trainer: Trainer, schedule: Schedule, *,
        progress: bool = True, started: float | None = None) -> tuple[Any, dict[str, Any]]:
  """Trains (or resumes) in `workdir` until `schedule.total_steps`.

  Args:
    workdir: the run's folder.
    state: a freshly initialised state (a pytree with a scalar `step`); the
      latest checkpoint replaces it when there is one.
    trainer: the trainer's step, evaluation, data and metadata.
    schedule: the intervals.
    progress: show a progress bar.
    started: when this process began (`time.time()`); its setup then counts in
      the logged `elapsed_s` (default: now).

  Returns:
    (final state, result): the last evaluation's figures, `finish`'s figures,
    `step` and the best metric.
  """
  started = time.time() if started is None else started
  ckpt, state, meta = resume(workdir, state, trainer, schedule.keep_last)
  best = f'best_{trainer.best_metric}'
  # Wall-clock seconds of training, summed over the processes that ran it: a
  # resume continues from its checkpoint's (the steps after it are run again).
  elapsed_before = float(meta.get('elapsed_s') or 0.0)

  def elapsed():
    return elapsed_before + time.time() - started

  step = int(jax.device_get(state.step))
  writing = distributed.is_writer()
  writer = (metrics_log.MetricsWriter(workdir, resume_step=step) if writing
            else metrics_log.NullWriter())
  if writing:
    with files.atomic_path(os.path.join(workdir, CONFIG_FILE)) as tmp, open(tmp, 'w') as f:
      json.dump(meta['config'], f, indent=1)
  saved = [step if ckpt.latest_step() == step else None]  # A resumed step is on disk.

  def save(val=None):
    if saved[0] == step and val is None:
      return
    saved[0] = step
    meta['elapsed_s'] = elapsed()
    # Host arrays: a checkpoint without a device topology restores anywhere (1
    # device, n devices, another machine); orbax still has every process take
    # part and process 0 write.
    ckpt.save(step, jax.device_get(state), meta, val=val)

  bar = tqdm.tqdm(total=schedule.total_steps, initial=step, disable=not (progress and writing),
                  desc=trainer.desc, dynamic_ncols=True)
  last_time, last_step = time.time(), step
  result: dict[str, Any] = {}
  stack = contextlib.ExitStack()
  try:
    stop_requests = stack.enter_context(_stop_requests())
    while step < schedule.total_steps:
      for batch, consumed in trainer.batches(meta['epoch'], meta['position']):
        state, scalars = trainer.step(state, batch)
        step += 1
        meta['position'] += consumed
        if meta['position'] >= schedule.epoch_size:
          meta['epoch'], meta['position'] = meta['epoch'] + 1, 0
        bar.update(1)
        bar.set_postfix({k: f'{v:.4f}' for k, v in scalars.items()
                         if k in ('loss', 'l1')}, epoch=meta['epoch'], refresh=False)
        if step % schedule.log_every == 0:
          now = time.time()
          writer.write(step, {**scalars, 'epoch': meta['epoch'], 'steps_per_s':
                              (step - last_step) / max(now - last_time, 1e-9),
                              'elapsed_s': elapsed()})
          last_time, last_step = now, step
        val = None
        if step % schedule.eval_every == 0 or step == schedule.total_steps:
          figures, message = trainer.evaluate(state)
          writer.write(step, {**figures, 'elapsed_s': elapsed()})
          if writing:
            bar.write(f'step {step}: {message}')
          val = figures[trainer.best_metric]
          if meta[best] is None or val < meta[best]:
            meta[best] = val
            meta.update({f'{k}_at_best': v for k, v in figures.items()
                         if k != trainer.best_metric})
          result.update(figures)
        if step % schedule.checkpoint_every == 0 or val is not None:
          save(val)
        # Every process stops at the same step (signals reach them at different ones).
        if distributed.max_over_processes(len(stop_requests)):
          save()
          raise TrainingStopped(
              f'stopped by {"/".join(stop_requests) or "another process"} at step '
              f'{step}; its checkpoint is in {workdir}: run the same command to resume.')
        if step >= schedule.total_steps:
          break
    bar.close()
    if trainer.finish is not None:
      final = trainer.finish(state)
      writer.write(step, final)
      result.update(final)
    save()
  finally:
    stack.close()
    writer.close()
    ckpt.close()
  result.update(step=step, **{best: meta[best]},
                **{k: v for k, v in meta.items() if k.endswith('_at_best')})
  return state, result
