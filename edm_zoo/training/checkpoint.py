"""Checkpoints with orbax: the last K plus the best-validation one, atomic writes.

A checkpoint directory holds `checkpoints/<step>/` (the last `keep_last`) and
`best/<step>/` (the lowest validation NLL). Each step folder has `state` (the
whole `TrainState`) and `meta` (JSON: config, data position, statistics, ...).
orbax writes to a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from edm_zoo import config as config_lib

_LAST, _BEST = 'checkpoints', 'best'


def _manager(path: str, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=False, **options))


class Checkpointer:
  """Saves and restores a run's checkpoints under `workdir`.

  Args:
    workdir: the run's folder.
    keep_last: how many recent checkpoints to keep.
    best_metric: name of the validation figure (lower is better) that `best/` tracks.
  """

  def __init__(self, workdir: str, keep_last: int = 3, best_metric: str = 'val_nll'):
    workdir = os.path.abspath(workdir)
    self._metric = best_metric
    self._last = _manager(os.path.join(workdir, _LAST), max_to_keep=keep_last)
    self._best = _manager(os.path.join(workdir, _BEST), max_to_keep=1,
                          best_fn=lambda m: m[best_metric], best_mode='min')

  def latest_step(self) -> int | None:
    return self._last.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any],
           val: float | None = None) -> None:
    """Saves `step`; with a validation figure `val`, also offers it to `best/`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))
    self._last.save(step, args=args, force=True)
    if val is not None:
      self._best.save(step, args=args, metrics={self._metric: float(val)}, force=True)

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
    """(state, meta) of `step` (default the latest), shaped like `template`."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    out = self._last.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out.state, out.meta

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


def load_state(ckpt: str, kind: str = 'generative') -> tuple[dict[str, Any], dict[str, Any]]:
  """(state as a dict, meta) from any checkpoint folder of the given `kind`.

  Args:
    ckpt: a run folder, its `checkpoints`/`best` folder or a step folder.
    kind: 'generative' (launch/train.py) or 'classifier' (launch/train_classifier.py).

  Raises:
    ValueError: one line, for a missing, unreadable or other-kind checkpoint.
  """
  folder, step = find(ckpt)
  manager = _manager(folder)
  try:
    meta = manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
    found = meta.get('kind', 'generative')
    if found != kind:
      raise ValueError(f'--ckpt {ckpt} is a {found} checkpoint; a {kind} one is '
                       'needed here.')
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
  except (KeyError, TypeError, FileNotFoundError) as e:
    raise ValueError(f'--ckpt {ckpt}: unreadable checkpoint at step {step} '
                     f'({type(e).__name__}: {e}).') from e
  finally:
    manager.close()
  state = restored.state
  return (state if isinstance(state, dict) else state._asdict()), meta


def load_for_inference(ckpt: str) -> tuple[config_lib.Config, Any, dict[str, Any]]:
  """(config, EMA params, meta) from any generative checkpoint, for eval and sampling."""
  state, meta = load_state(ckpt, 'generative')
  try:
    config = config_lib.from_dict(meta['config'])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'--ckpt {ckpt}: unreadable config ({type(e).__name__}: {e}).') from e
  return config, state['ema_params'], meta
