"""Trains a property classifier (EDM's property-prediction EGNN) for the MAE protocol.

  python launch/train_classifier.py --property=alpha
  python launch/train_classifier.py --property=alpha --model=numnodes   # '#Atoms'
  python launch/train_classifier.py --property=gap --preset=cpu_small --workdir=W

Trains on the first half of the train split, validates on the valid split and
tests on the second half (the conditional generators' half). Re-running with the
same --workdir resumes. The best-validation model is in <workdir>/best/. Several
processes: the flags of launch/train.py (--coordinator_address, --num_processes,
--process_id or --distributed).
"""

from absl import app
from absl import flags

from launch import runtime
runtime.configure_process()
import os  # noqa: E402

from edm_zoo.property_prediction import training  # noqa: E402
from edm_zoo.training import distributed  # noqa: E402
from launch import flags_util  # noqa: E402

flags_util.define_classifier_flags()
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'run folder (default workdirs/classifier_<property>_<model>_<preset>)')
_DATA_DIR = flags_util.define_data_dir_flag()
_PROGRESS = flags.DEFINE_bool('progress', True, 'show progress bars')
_DISTRIBUTED = flags_util.define_distributed_flags()


def main(argv):
  runtime.start_main(argv)
  config = flags_util.classifier_config_from_flags(training.check)
  try:
    flags_util.join_run(_DISTRIBUTED)
  except ValueError as e:
    runtime.fail(str(e))
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', f'classifier_{config.property}_{config.model}_{flags.FLAGS.preset}')
  try:
    flags_util.ensure_dataset(config.dataset, _DATA_DIR.value)
  except ValueError as e:
    runtime.fail(str(e))
  if distributed.is_writer():
    print(f'training a {config.model} classifier for {config.property} in {workdir}')
  flags_util.run_trainer(lambda: training.train(
      config, workdir, data_dir=_DATA_DIR.value, progress=_PROGRESS.value), workdir)


if __name__ == '__main__':
  app.run(main)
