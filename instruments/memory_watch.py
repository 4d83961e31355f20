"""Runs a command and reports its wall time and peak memory, anonymous and file-backed apart.

  python instruments/memory_watch.py --json=OUT.json -- python launch/prepare_data.py ...

RSS counts the pages of memory-mapped files that a process touched (page cache it
shares with the kernel) beside its own anonymous memory; a build that maps a 13 GB
input shows a large RSS while its own memory stays small. This samples
/proc/<pid>/status of the command and all its descendants every `--every` seconds
and reports the peaks of their sums: RssAnon (anonymous), RssFile (file-backed,
mapped files), RssShmem, RSS (the three together); also the kernel's own VmHWM
high-water mark of the largest single process, which sampling cannot miss.
Imports nothing of edm_zoo, so it watches the original's code as well as ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_JSON = flags.DEFINE_string('json', None, 'also write the figures here')
_EVERY = flags.DEFINE_float('every', 0.2, 'sampling interval (s)')

_FIELDS = ('RssAnon', 'RssFile', 'RssShmem', 'VmHWM')


def _children(pid: int) -> list[int]:
  try:
    with open(f'/proc/{pid}/task/{pid}/children') as f:
      return [int(c) for c in f.read().split()]
  except OSError:
    return []


def _tree(pid: int) -> list[int]:
  out, todo = [], [pid]
  while todo:
    p = todo.pop()
    out.append(p)
    todo += _children(p)
  return out


def _status(pid: int) -> dict[str, int]:
  """{field: kB} of one process (empty when it is gone)."""
  out = {}
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key in _FIELDS:
          out[key] = int(value.split()[0])
  except OSError:
    pass
  return out


def watch(command: list[str], every: float = 0.2) -> dict[str, float]:
  """Runs `command`; returns {'returncode', 'seconds', 'peak_anon_gb',
  'peak_file_gb', 'peak_shmem_gb', 'peak_rss_gb', 'peak_hwm_gb'}."""
  start = time.time()
  proc = subprocess.Popen(command)
  peaks = {'anon': 0, 'file': 0, 'shmem': 0, 'rss': 0, 'hwm': 0}
  while proc.poll() is None:
    statuses = [_status(p) for p in _tree(proc.pid)]
    anon = sum(s.get('RssAnon', 0) for s in statuses)
    file = sum(s.get('RssFile', 0) for s in statuses)
    shmem = sum(s.get('RssShmem', 0) for s in statuses)
    for key, value in (('anon', anon), ('file', file), ('shmem', shmem),
                       ('rss', anon + file + shmem),
                       ('hwm', max((s.get('VmHWM', 0) for s in statuses), default=0))):
      peaks[key] = max(peaks[key], value)
    time.sleep(every)
  gb = lambda kb: round(kb * 1024 / 1e9, 3)
  return {'returncode': proc.returncode, 'seconds': round(time.time() - start, 1),
          **{f'peak_{k}_gb': gb(v) for k, v in peaks.items()}}


def main(argv):
  command = argv[1:]
  if not command:
    raise app.UsageError('give the command after --')
  figures = watch(command, _EVERY.value)
  figures['command'] = ' '.join(command)
  text = json.dumps(figures, indent=1)
  print(text, file=sys.stderr)
  if _JSON.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, 'w') as f:
      f.write(text + '\n')
  sys.exit(figures['returncode'])


if __name__ == '__main__':
  app.run(main)
