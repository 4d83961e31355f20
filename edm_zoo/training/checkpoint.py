"""Checkpoints with orbax: the last K plus the best-validation one, verified on read.

A checkpoint directory holds `checkpoints/<step>/` (the last `keep_last`) and
`best/<step>/` (the lowest validation NLL). Each step folder has `state` (the
whole `TrainState`) and `meta` (JSON: config, data position, statistics, ...).
orbax writes to a temporary folder and renames it when complete, marks it with
`commit_success.txt`, and in a multi-process run has every process take part
and one write. After orbax, process 0 adds a commit record, `edm_zoo_commit.json`,
with the SHA-256 of every file of the step, because a truncated or altered array
file may otherwise restore without error or fail deep inside tensorstore.

A step is good when both markers are present and every file matches its record
(folders written before the records existed are accepted on orbax's marker).
Training resumes from the newest good step and moves bad ones to
`<workdir>/corrupt/`; eval and sample refuse a bad step with one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from edm_zoo import config as config_lib
from edm_zoo.training import distributed

_LAST, _BEST = 'checkpoints', 'best'
_ORBAX_MARKER = 'commit_success.txt'
RECORD = 'edm_zoo_commit.json'


class CorruptCheckpointError(ValueError):
  """A checkpoint that is incomplete, altered or unreadable."""


def _ignore_closed_event_loops() -> None:
  """Installed before an orbax read (once per process).

  After a failed read, tensorstore completes its pending reads into the event
  loops orbax has already closed; each raises `RuntimeError('Event loop is
  closed')` in a tensorstore thread, which Python prints as an unraisable
  exception (a traceback under the one-line error, at random moments). Those
  alone are dropped; every other unraisable exception still goes to the
  previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, 'ignores_closed_event_loops', False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and
            str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)
  hook.ignores_closed_event_loops = True
  sys.unraisablehook = hook


def _manager(path: str, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=False, **options))


def _steps(folder: str) -> list[int]:
  """Step folders under `folder`, newest first."""
  if not os.path.isdir(folder):
    return []
  return sorted((int(d) for d in os.listdir(folder)
                 if d.isdigit() and os.path.isdir(os.path.join(folder, d))), reverse=True)


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names if n != RECORD]
  return sorted(out)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def write_record(step_dir: str) -> None:
  """Writes the commit record of a finished step folder (atomically)."""
  record = {'files': {f: _sha256(os.path.join(step_dir, f)) for f in _files(step_dir)}}
  tmp = os.path.join(step_dir, RECORD + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(record, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, RECORD))


def problem(step_dir: str, records_expected: bool = True) -> str | None:
  """Why the step folder is not a good checkpoint, or None when it is.

  Args:
    step_dir: `<folder>/<step>`.
    records_expected: a missing commit record is a problem (False for folders
      written before the records existed).
  """
  if not os.path.exists(os.path.join(step_dir, _ORBAX_MARKER)):
    return f'orbax commit marker {_ORBAX_MARKER} missing (an unfinished write)'
  path = os.path.join(step_dir, RECORD)
  if not os.path.exists(path):
    return 'commit record missing (an unfinished write)' if records_expected else None
  try:
    with open(path) as f:
      recorded = json.load(f)['files']
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f'unreadable commit record ({type(e).__name__})'
  present = set(_files(step_dir))
  for name, digest in sorted(recorded.items()):
    if name not in present:
      return f'{name} missing'
    if _sha256(os.path.join(step_dir, name)) != digest:
      return f'{name} differs from its commit record (truncated or altered)'
  return None


def _records_expected(folder: str) -> bool:
  """Whether the checkpoints of this folder's run carry commit records (runs
  written since the records exist); looks at the sibling folder too."""
  run = os.path.dirname(folder)
  return any(os.path.exists(os.path.join(f, str(s), RECORD))
             for f in (folder, os.path.join(run, _LAST), os.path.join(run, _BEST))
             for s in _steps(f))


def check_step(folder: str, step: int) -> None:
  """Raises CorruptCheckpointError (one line) unless `folder/step` is good."""
  why = problem(os.path.join(folder, str(step)), _records_expected(folder))
  if why is not None:
    good = [s for s in _steps(folder) if s != step and problem(
        os.path.join(folder, str(s)), _records_expected(folder)) is None]
    hint = (f'; an earlier good one: {os.path.join(folder, str(good[0]))}' if good
            else '; no other good checkpoint there')
    raise CorruptCheckpointError(
        f'checkpoint {os.path.join(folder, str(step))} is incomplete or corrupt '
        f'({why}){hint}.')


def quarantine(workdir: str, folder: str, step: int, why: str) -> None:
  """Moves a step folder the run cannot use to `<workdir>/corrupt/` (process 0),
  with a warning that says why."""
  if distributed.is_writer():
    target = os.path.join(workdir, 'corrupt',
                          f'{os.path.basename(folder)}_{step}_{int(time.time())}')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(os.path.join(folder, str(step)), target)
    logging.warning('checkpoint %s/%d set aside (%s); moved to %s.', folder, step,
                    why, target)
  distributed.barrier(f'quarantine_{os.path.basename(folder)}_{step}')


class Checkpointer:
  """Saves and restores a run's checkpoints under `workdir` (every process calls
  it; process 0 writes).

  On construction the bad step folders of the run (see the module docstring)
  are moved to `<workdir>/corrupt/`, so the newest step left is the newest good
  one.

  Args:
    workdir: the run's folder.
    keep_last: how many recent checkpoints to keep.
    best_metric: name of the validation figure (lower is better) that `best/` tracks.
  """

  def __init__(self, workdir: str, keep_last: int = 3, best_metric: str = 'val_nll'):
    self._workdir = workdir = os.path.abspath(workdir)
    self._metric = best_metric
    self._keep_last = keep_last
    self._folders = {name: os.path.join(workdir, name) for name in (_LAST, _BEST)}
    expected = any(_records_expected(f) for f in self._folders.values())
    for folder in self._folders.values():
      for step in _steps(folder):
        why = problem(os.path.join(folder, str(step)), expected)
        # Process 0 judges: every process must move the same folders.
        if distributed.broadcast(why is not None):
          quarantine(workdir, folder, step, why or 'judged bad by process 0')
    self._open()

  def _open(self) -> None:
    # cleanup_tmp_directories: what a killed save left behind.
    self._last = _manager(self._folders[_LAST], max_to_keep=self._keep_last,
                          cleanup_tmp_directories=True)
    self._best = _manager(self._folders[_BEST], max_to_keep=1,
                          cleanup_tmp_directories=True,
                          best_fn=lambda m: m[self._metric], best_mode='min')

  def latest_step(self) -> int | None:
    return self._last.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any],
           val: float | None = None) -> None:
    """Saves `step`; with a validation figure `val`, also offers it to `best/`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))
    self._last.save(step, args=args, force=True)
    self._commit(_LAST, step)
    if val is not None:
      if self._best.save(step, args=args, metrics={self._metric: float(val)}, force=True):
        self._commit(_BEST, step)

  def _commit(self, name: str, step: int) -> None:
    step_dir = os.path.join(self._folders[name], str(step))
    if distributed.is_writer() and os.path.isdir(step_dir):
      write_record(step_dir)
    distributed.barrier(f'commit_{name}_{step}')

  def restore(self, template: Any, check_meta: Callable[[dict], None] | None = None
              ) -> tuple[Any, dict]:
    """(state, meta) of the newest readable step, shaped (and sharded) like
    `template`; unreadable steps are moved aside on the way.

    Args:
      template: the state's structure, shapes and shardings.
      check_meta: called with a step's meta before its state is read; what it
        raises (e.g. a run of another model, whose state cannot take the
        template's shapes) propagates and leaves the step where it is.

    Raises:
      CorruptCheckpointError: when steps exist but none can be read.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    _ignore_closed_event_loops()
    while (step := self.latest_step()) is not None:
      try:
        meta = self._last.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
      except Exception as e:  # tensorstore / orbax errors: deep and multi-line.
        self._set_aside(step, e)
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        state = self._last.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract))).state
      except Exception as e:  # tensorstore / orbax errors: deep and multi-line.
        self._set_aside(step, e)
        continue
      self._drop_best_after(step)
      return state, meta
    raise CorruptCheckpointError(f'no readable checkpoint left in {self._workdir}; '
                                 f'the bad ones are in {self._workdir}/corrupt.')

  def _set_aside(self, step: int, error: Exception) -> None:
    self.close()
    quarantine(self._workdir, self._folders[_LAST], step,
               f'unreadable: {distributed.first_line(error)}')
    self._open()

  def _drop_best_after(self, step: int) -> None:
    """A best checkpoint newer than the resumed step belongs to steps the run
    will take again (after a bad latest checkpoint was moved aside)."""
    newer = [s for s in _steps(self._folders[_BEST]) if s > step]
    if newer:
      self.close()
      for s in newer:
        quarantine(self._workdir, self._folders[_BEST], s,
                   f'newer than step {step}, where the run resumes')
      self._open()

  def close(self) -> None:
    self._last.close()
    self._best.close()


def find(ckpt: str) -> tuple[str, int]:
  """(manager folder, step) for a run dir, a `checkpoints`/`best` dir or a step dir.

  Raises:
    ValueError: one line naming what was expected, if nothing is found.
  """
  path = os.path.abspath(ckpt)
  if not os.path.isdir(path):
    raise ValueError(f'--ckpt {ckpt}: no such directory.')
  candidates = []
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, 'state')):
    return os.path.dirname(path), int(base)
  for sub in (_BEST, _LAST, ''):
    folder = os.path.join(path, sub) if sub else path
    if os.path.isdir(folder):
      steps = [int(d) for d in os.listdir(folder)
               if d.isdigit() and os.path.isdir(os.path.join(folder, d, 'state'))]
      if steps:
        candidates.append((folder, max(steps)))
  if not candidates:
    raise ValueError(f'--ckpt {ckpt} holds no edm_zoo checkpoint (expected '
                     f'{_LAST}/<step>/ or {_BEST}/<step>/ from launch/train.py).')
  return candidates[0]


def _read(ckpt: str, folder: str, step: int, **items) -> Any:
  """orbax's restore of `items` (meta=..., state=...) at `folder/step`; one-line
  CorruptCheckpointError when it fails."""
  manager = _manager(folder)
  _ignore_closed_event_loops()
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # tensorstore / orbax errors: deep and multi-line.
    raise CorruptCheckpointError(
        f'--ckpt {ckpt}: unreadable checkpoint at step {step} '
        f'({type(e).__name__}: {distributed.first_line(e)}).') from None
  finally:
    manager.close()


def read_meta(ckpt: str) -> dict[str, Any]:
  """The meta (config, statistics, bookkeeping) of any checkpoint folder, without
  its state; one-line ValueError where there is none or it cannot be read."""
  folder, step = find(ckpt)
  return _read(ckpt, folder, step, meta=ocp.args.JsonRestore()).meta


def load_state(ckpt: str, kind: str = 'generative') -> tuple[dict[str, Any], dict[str, Any]]:
  """(state as a dict, meta) from any checkpoint folder of the given `kind`.

  Args:
    ckpt: a run folder, its `checkpoints`/`best` folder or a step folder.
    kind: 'generative' (launch/train.py) or 'classifier' (launch/train_classifier.py).

  Raises:
    ValueError: one line, for a missing, unreadable or other-kind checkpoint.
  """
  folder, step = find(ckpt)
  try:
    check_step(folder, step)
  except CorruptCheckpointError as e:
    raise CorruptCheckpointError(f'--ckpt {ckpt}: {e}') from None
  meta = _read(ckpt, folder, step, meta=ocp.args.JsonRestore()).meta
  found = meta.get('kind', 'generative')
  if found != kind:
    raise ValueError(f'--ckpt {ckpt} is a {found} checkpoint; a {kind} one is '
                     'needed here.')
  state = _read(ckpt, folder, step, state=ocp.args.StandardRestore()).state
  return (state if isinstance(state, dict) else state._asdict()), meta


def load_for_inference(ckpt: str) -> tuple[config_lib.Config, Any, dict[str, Any]]:
  """(config, EMA params, meta) from any generative checkpoint, for eval and sampling."""
  state, meta = load_state(ckpt, 'generative')
  try:
    config = config_lib.from_dict(meta['config'])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'--ckpt {ckpt}: unreadable config ({type(e).__name__}: {e}).') from e
  return config, state['ema_params'], meta
