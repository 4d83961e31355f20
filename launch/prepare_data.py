"""Builds QM9 (TFDS `edm_qm9`, array_record) offline from the qm9pack files.

  python launch/prepare_data.py --dataset=qm9      # with H (default)
  python launch/prepare_data.py --dataset=qm9_noh  # without H
"""

import time

from absl import app
from absl import flags

from edm_zoo.data import qm9
from launch import flags_util
from launch import runtime

_DATASET = flags.DEFINE_string('dataset', 'qm9', f'one of {sorted(qm9.DATASETS)}')
_DATA_DIR = flags_util.define_data_dir_flag()


def main(argv):
  runtime.start_main(argv)
  try:
    remove_h = qm9.remove_h_for(_DATASET.value)
    if qm9.is_prepared(remove_h, _DATA_DIR.value):
      print(f'QM9 ({_DATASET.value}) already prepared in '
            f'{_DATA_DIR.value or qm9.default_data_dir()}.')
      return
    start = time.time()
    path = qm9.prepare(remove_h, _DATA_DIR.value)
  except ValueError as e:
    runtime.fail(str(e))
  sizes = {s: len(qm9.load(s, remove_h, _DATA_DIR.value)) for s in qm9.SPLITS}
  print(f'QM9 ({_DATASET.value}) prepared in {time.time() - start:.1f} s at '
        f'{path}: {sizes}')


if __name__ == '__main__':
  app.run(main)
