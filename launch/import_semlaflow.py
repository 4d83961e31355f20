"""Converts a SemlaFlow model into an edm_zoo `--model=semlaflow` checkpoint.

  python launch/import_semlaflow.py --ckpt=wandb/.../checkpoints/last.ckpt --out=workdirs/semla_imported

A Lightning `.ckpt` needs torch (its EMA weights are taken when it has them); an
`.npz` of its generator's arrays keyed by the PyTorch names (`feat_proj.0.weight`,
`dynamics.layers.0...`) does not. Widths and depth come from the weights.
"""

from absl import app
from absl import flags

from edm_zoo.compat import importer
from launch import flags_util
from launch import runtime

_CKPT = flags.DEFINE_string('ckpt', None, "SemlaFlow's checkpoint (.ckpt) or state dict (.npz)")
_OUT = flags.DEFINE_string('out', None, 'output checkpoint folder')
_DATASET = flags.DEFINE_string('dataset', 'qm9', 'the dataset it was trained on (sizes '
                               'are drawn from its training histogram)')
_DATA_DIR = flags_util.define_data_dir_flag()
flags.mark_flags_as_required(['ckpt', 'out'])


def main(argv):
  runtime.start_main(argv)
  try:
    out = importer.import_semlaflow(_CKPT.value, _OUT.value, _DATA_DIR.value, _DATASET.value)
  except ValueError as e:
    runtime.fail(str(e))
  print(f'imported {_CKPT.value} into {out}')


if __name__ == '__main__':
  app.run(main)
