"""Trains an edm_zoo model (defaults: EDM's published QM9 run).

  python launch/train.py --model=egnn --dataset=qm9
  python launch/train.py --preset=cpu_small --workdir=workdirs/small
  python launch/train.py ... --coordinator_address=host:1234 --num_processes=2 --process_id=0

Re-running with the same --workdir resumes from its latest checkpoint.
"""

from absl import app
from absl import flags
from absl import logging

from launch import runtime
runtime.configure_process()
import os  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402

from edm_zoo.training import loop  # noqa: E402
from launch import flags_util  # noqa: E402

flags_util.define_config_flags()
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'run folder (default workdirs/<model>_<dataset>_<preset>)')
_DATA_DIR = flags_util.define_data_dir_flag()
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'multi-host: host:port')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'multi-host: processes')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'multi-host: this process')
_PROGRESS = flags.DEFINE_bool('progress', True, 'show progress bars')


def main(argv):
  runtime.start_main(argv)
  config = flags_util.config_from_flags()
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', f'{config.model.name}_{config.dataset}_{flags.FLAGS.preset}')
  flags_util.ensure_dataset(config.dataset, _DATA_DIR.value)
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
