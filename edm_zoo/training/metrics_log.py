"""Scalars to a JSONL file and TensorBoard event files in the workdir."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


class MetricsWriter:
  """Appends {'step': s, ...} lines to `metrics.jsonl` and TensorBoard scalars.

  On resume from step s, lines after s (written by the interrupted run after its
  last checkpoint) are dropped so that the log reads as one run.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f
                if line.strip() and json.loads(line)['step'] <= resume_step]
      with open(self.path + '.tmp', 'w') as f:
        f.writelines(kept)
      os.replace(self.path + '.tmp', self.path)
    self._file = open(self.path, 'a')
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    clean = {k: (float(v) if np.ndim(v) == 0 and not isinstance(v, str) else v)
             for k, v in scalars.items()}
    self._file.write(json.dumps({'step': int(step), **clean}) + '\n')
    self._file.flush()
    if self._tb is not None:
      for k, v in clean.items():
        if isinstance(v, float):
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


class NullWriter:
  """What the processes other than process 0 log: nothing."""

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    del step, scalars

  def close(self) -> None:
    pass


def read(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]
