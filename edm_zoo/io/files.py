"""Atomic file writes: a temporary file that replaces the target only when complete."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path that replaces `path` only if the block succeeds."""
  root, ext = os.path.splitext(path)
  tmp = f'{root}.tmp{os.getpid()}{ext}'  # Keeps the extension for format sniffing.
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
