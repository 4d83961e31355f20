"""Trains an edm_zoo model (defaults: EDM's published QM9 run).

  python launch/train.py --model=egnn --dataset=qm9
  python launch/train.py --preset=cpu_small --workdir=workdirs/small
  python launch/train.py ... --coordinator_address=host:1234 --num_processes=2 --process_id=0
  srun python launch/train.py ... --distributed      # SLURM: JAX reads the job's layout

Re-running with the same --workdir resumes from its latest good checkpoint (in a
multi-process run: every process, with the same flags).
"""

from absl import app
from absl import flags
from absl import logging

from launch import runtime
runtime.configure_process()
import os  # noqa: E402

from edm_zoo.training import distributed  # noqa: E402
from edm_zoo.training import loop  # noqa: E402
from launch import flags_util  # noqa: E402

flags_util.define_config_flags()
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'run folder (default workdirs/<model>_<dataset>_<preset>)')
_DATA_DIR = flags_util.define_data_dir_flag()
_PROGRESS = flags.DEFINE_bool('progress', True, 'show progress bars')
_DISTRIBUTED = flags_util.define_distributed_flags()


def main(argv):
  runtime.start_main(argv)
  try:
    config = flags_util.config_from_flags()
    flags_util.join_run(_DISTRIBUTED)
    flags_util.check_matmul_precision()
  except ValueError as e:
    runtime.fail(str(e))
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', f'{config.model.name}_{config.dataset}_{flags.FLAGS.preset}')
  try:
    flags_util.ensure_dataset(config.dataset, _DATA_DIR.value)
  except ValueError as e:
    runtime.fail(str(e))
  logging.info('config: %s', config)
  if distributed.is_writer():
    print(f'training {config.model.name} on {config.dataset} in {workdir}')
  flags_util.run_trainer(lambda: loop.train(
      config, workdir, data_dir=_DATA_DIR.value, progress=_PROGRESS.value,
      started=runtime.started()), workdir)


if __name__ == '__main__':
  app.run(main)
