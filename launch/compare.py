"""Compares training runs: one table and one plot of their curves.

  python launch/compare.py workdirs/a workdirs/b workdirs/c
  python launch/compare.py W1 W2 --out_dir=cmp
  python launch/compare.py W1 W2 --x=minutes      # against wall-clock minutes

Prints a table of the runs (the config fields that differ between them, steps
taken, the best validation figure, the test figure, and the newest eval report's
NLL and sample metrics where `launch/eval.py` ran on a run) and writes it with the
curves to --out_dir: compare.md, compare.json and compare.png (train loss and
validation figures on shared axes). Runs still in progress and every model of
the zoo (and the property classifiers) read the same way.
"""

import os

from absl import app
from absl import flags
from absl import logging

from edm_zoo import runs
from launch import runtime

_OUT_DIR = flags.DEFINE_string('out_dir', 'compare', 'where compare.md/.json/.png go')
_X = flags.DEFINE_enum('x', 'step', list(runs.X_AXES), 'draw the curves against steps or '
                       'wall-clock minutes of training (setup and compiles included)')


def main(argv):
  paths = argv[1:]
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    table, _ = runs.compare(paths, _OUT_DIR.value, x=_X.value)
  except ValueError as e:
    runtime.fail(str(e))
  print(table)
  print(f'wrote {os.path.join(_OUT_DIR.value, "compare.md")}, compare.json, compare.png')


if __name__ == '__main__':
  app.run(main)
