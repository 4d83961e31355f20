"""Samples molecules from a checkpoint and exports them (no metrics, no NLL).

  python launch/sample.py --ckpt=DIR --n_samples=100 --out_dir=samples/
  python launch/sample.py --ckpt=COND_DIR --condition alpha=75.3   # a requested value

A conditional model without --condition draws (size, property) pairs from its
train split; with it, sizes come from p(size | value) of that split. Values are
in the dataset's units (alpha Bohr^3, energies eV, mu D, Cv cal/(mol K)).
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runtime  # noqa: E402  pylint: disable=g-import-not-at-top
runtime.configure_process()
import sampling_flags as sf  # noqa: E402  pylint: disable=g-import-not-at-top

import edm_zoo  # noqa: F401,E402
from edm_zoo import reporting  # noqa: E402

_CONDITION = flags.DEFINE_string('condition', None,
                                 'requested properties of a conditional model, e.g. '
                                 'alpha=75.3 (dataset units)')


def main(argv):
  runtime.start_main(argv)
  if not sf.CKPT.value:
    sys.exit('error: give --ckpt=DIR.')
  sf.check_sampling_flags()
  sf.check_checkpoint()
  out_dir = sf.writable_out_dir(sf.OUT_DIR.value or os.path.join(sf.CKPT.value, 'samples'))
  try:
    config, model, params, meta = reporting.load_model(sf.CKPT.value)
    condition = reporting.condition_for(config, meta, _CONDITION.value, sf.DATA_DIR.value)
    out = reporting.sample_and_export(
        model, params, config, out_dir, n_samples=sf.N_SAMPLES.value,
        batch_size=sf.BATCH_SIZE.value, seed=sf.SEED.value, jit_steps=sf.JIT_STEPS.value,
        unroll=sf.UNROLL.value, fix_noise=sf.FIX_NOISE.value, chain=sf.CHAIN.value,
        progress=sf.PROGRESS.value, condition=condition)
  except ValueError as e:
    sys.exit(f'error: {e}')
  print(f"sampled {len(out['molecules'])} molecules in "
        f"{out['timings']['sampling_seconds']:.1f} s -> {out_dir}")


if __name__ == '__main__':
  app.run(main)
