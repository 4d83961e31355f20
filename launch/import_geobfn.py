"""Converts an original GeoBFN model into an edm_zoo `--model=geobfn` checkpoint.

  python launch/import_geobfn.py --ckpt=logs/.../checkpoints/last.ckpt --out=workdirs/geobfn_imported

A Lightning `.ckpt` needs torch (its EMA weights are taken when it has them); an
`.npz` of arrays keyed by the PyTorch parameter names (`egnn.embedding.weight`, ...,
or `dynamics.egnn...`) does not. Width and depth come from the weights, the rest
is GeoBFN's QM9 configuration.
"""

from absl import app
from absl import flags

from edm_zoo.compat import importer
from launch import flags_util
from launch import runtime

_CKPT = flags.DEFINE_string('ckpt', None, "GeoBFN's checkpoint (.ckpt) or state dict (.npz)")
_OUT = flags.DEFINE_string('out', None, 'output checkpoint folder')
_DATASET = flags.DEFINE_string('dataset', 'qm9', 'the dataset it was trained on')
_DATA_DIR = flags_util.define_data_dir_flag()
flags.mark_flags_as_required(['ckpt', 'out'])


def main(argv):
  runtime.start_main(argv)
  try:
    out = importer.import_geobfn(_CKPT.value, _OUT.value, _DATA_DIR.value, _DATASET.value)
  except ValueError as e:
    runtime.fail(str(e))
  print(f'imported {_CKPT.value} into {out}')


if __name__ == '__main__':
  app.run(main)
