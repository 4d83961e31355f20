"""Converts an original PyTorch EDM (or GeoLDM) model into an edm_zoo checkpoint.

  python launch/import_edm.py --state_dict=outputs/edm_qm9/generative_model_ema.npy \
      --args=outputs/edm_qm9/args.pickle --out=workdirs/edm_qm9_imported

`.npy`/`.pt` state dicts need torch (an optional extra); an `.npz` of arrays keyed
by the PyTorch parameter names does not. `--args` takes args.pickle or JSON; GeoLDM's
(its args have `latent_nf`) become `--model=geoldm` checkpoints.
"""


from absl import app
from absl import flags

from edm_zoo.compat import importer
from launch import flags_util
from launch import runtime

_STATE_DICT = flags.DEFINE_string('state_dict', None, 'EDM state dict (.npy/.pt/.npz)')
_ARGS = flags.DEFINE_string('args', None, "EDM's args.pickle (or .json)")
_OUT = flags.DEFINE_string('out', None, 'output checkpoint folder')
_DATA_DIR = flags_util.define_data_dir_flag()
flags.mark_flags_as_required(['state_dict', 'args', 'out'])


def main(argv):
  runtime.start_main(argv)
  try:
    out = importer.import_checkpoint(_STATE_DICT.value, _ARGS.value, _OUT.value,
                                     _DATA_DIR.value)
  except ValueError as e:
    runtime.fail(str(e))
  print(f'imported {_STATE_DICT.value} into {out}')


if __name__ == '__main__':
  app.run(main)
