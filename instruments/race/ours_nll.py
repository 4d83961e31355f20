"""The race's edm_zoo side: validation NLL of every checkpoint of a run, against its clock.

  python instruments/race/ours_nll.py --run=RACE/ours --molecules=2048 --out=RACE/ours_nll.jsonl

Every `checkpoints/<step>` of the run (EMA parameters), the first --molecules validation
molecules, EDM's eval NLL estimator (`edm_zoo.evaluation.nll`, one pass, seed 0); one JSON
line per checkpoint: step, the run's `elapsed_s` when it was saved (setup and compiles
included), the NLL and its 95% interval.

With --state_dicts=DIR (the original's snapshots exported by `original_eval.py
--what=export`) the same estimator, with the same t and noise for every molecule, reads
the original's EMA weights instead (the run's config and statistics): the two codes'
curves then differ by their weights alone, not by the estimator's draws, which for one
pass over 2,048 molecules are far from negligible.
"""

import functools
import glob
import json
import os
import time

from absl import app
from absl import flags

from launch import runtime
runtime.configure_process()
from edm_zoo import evaluation  # noqa: E402
from edm_zoo import reporting  # noqa: E402
from edm_zoo.compat import state_dict  # noqa: E402
from edm_zoo.data import registry  # noqa: E402

_RUN = flags.DEFINE_string('run', None, 'a launch/train.py run folder')
_MOLECULES = flags.DEFINE_integer('molecules', 2048, 'the first n validation molecules')
_OUT = flags.DEFINE_string('out', None, 'the JSONL file to write')
_STATE_DICTS = flags.DEFINE_string('state_dicts', None, "the original's exported snapshots "
                                   '(s*.npz with s*.json) to evaluate instead')


def _ours(step_dir):
  """(step, elapsed_s, EMA params) of one of our checkpoints."""
  _, _, params, meta = reporting.load_model(step_dir)
  return int(os.path.basename(step_dir)), meta.get('elapsed_s'), params


def _original(path):
  """(step, elapsed_s, params) of an exported snapshot of the original."""
  with open(path[:-4] + '.json') as f:
    info = json.load(f)
  params = state_dict.params_from_state_dict(state_dict.read_state_dict(path))
  return info['step'], info['elapsed_s'], params


def main(argv):
  runtime.start_main(argv)
  folder = os.path.join(_RUN.value or '', 'checkpoints')
  steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(
      folder) else []
  if not steps or not _OUT.value:
    runtime.fail(f'give --run=DIR (a run folder with checkpoints/; {folder} has none) '
                 'and --out=FILE.')
  config, model, _, meta = reporting.load_model(os.path.join(folder, str(steps[-1])))
  # One compiled estimator for every checkpoint.
  nll_fn = evaluation.make_nll_fn(model)
  source = registry.load(config.dataset, 'valid')
  hist = {int(k): int(v) for k, v in meta['statistics']['n_nodes_histogram'].items()}
  if _STATE_DICTS.value:
    found = sorted(glob.glob(os.path.join(_STATE_DICTS.value, 's*.npz')))
    if not found:
      runtime.fail(f'--state_dicts {_STATE_DICTS.value} holds no s*.npz (run '
                   'original_eval.py --what=export).')
    todo = [functools.partial(_original, path) for path in found]
  else:
    todo = [functools.partial(_ours, os.path.join(folder, str(step))) for step in steps]
  with open(_OUT.value, 'w') as f:
    for read in todo:
      step, elapsed, params = read()
      model.check_params(params)
      start = time.time()
      out = evaluation.nll(model, params, source, batch_size=64, seed=0, passes=1,
                           limit=_MOLECULES.value, n_nodes_histogram=hist, nll_fn=nll_fn,
                           progress=False)
      line = {'step': step, 'elapsed_s': elapsed, 'val_nll': out['nll'],
              'val_nll_lo': out['nll_lo'], 'val_nll_hi': out['nll_hi'],
              'val_nll_molecules': out['molecules'], 'eval_seconds': time.time() - start}
      f.write(json.dumps(line) + '\n')
      f.flush()
      print(json.dumps(line))


if __name__ == '__main__':
  flags.mark_flags_as_required(['run', 'out'])
  app.run(main)
