"""Trains an edm_zoo model (defaults: EDM's published QM9 run).

  python launch/train.py --model=egnn --dataset=qm9
  python launch/train.py --preset=cpu_small --workdir=workdirs/small
  python launch/train.py ... --coordinator_address=host:1234 --num_processes=2 --process_id=0

Re-running with the same --workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runtime  # noqa: E402  pylint: disable=g-import-not-at-top
runtime.configure_process()
import flags_util  # noqa: E402  pylint: disable=g-import-not-at-top

import edm_zoo  # noqa: F401,E402
from edm_zoo.data import qm9  # noqa: E402

flags_util.define_config_flags()
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'run folder (default workdirs/<model>_<dataset>_<preset>)')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default data/tfds)')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'multi-host: host:port')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'multi-host: processes')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'multi-host: this process')
_PROGRESS = flags.DEFINE_bool('progress', True, 'show progress bars')


def main(argv):
  runtime.start_main(argv)
  config = flags_util.config_from_flags()
  if _COORDINATOR.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  from edm_zoo.training import loop  # pylint: disable=g-import-not-at-top
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', f'{config.model.name}_{config.dataset}_{flags.FLAGS.preset}')
  remove_h = qm9.remove_h_for(config.dataset)
  if not qm9.is_prepared(remove_h, _DATA_DIR.value):
    print(f'QM9 ({config.dataset}) is not prepared: building it once ...')
    qm9.prepare(remove_h, _DATA_DIR.value)
  logging.info('config: %s', config)
  print(f'training {config.model.name} on {config.dataset} in {workdir}')
  try:
    result = loop.train(config, workdir, data_dir=_DATA_DIR.value,
                        progress=_PROGRESS.value)
  except (ValueError, loop.TrainingError) as e:
    sys.exit(f'error: {e}')
  print(f'done: {result}')


if __name__ == '__main__':
  app.run(main)
