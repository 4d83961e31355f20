"""Samples molecules from a checkpoint and exports them (no metrics, no NLL).

  python launch/sample.py --ckpt=DIR --n_samples=100 --out_dir=samples/
  python launch/sample.py --ckpt=COND_DIR --condition alpha=75.3   # a requested value

A conditional model without --condition draws (size, property) pairs from its
train split; with it, sizes come from p(size | value) of that split. Values are
in the dataset's units (alpha Bohr^3, energies eV, mu D, Cv cal/(mol K)).
"""

from absl import app
from absl import flags

from launch import runtime
runtime.configure_process()
import os  # noqa: E402

from edm_zoo import reporting  # noqa: E402
from launch import flags_util  # noqa: E402

flags_util.define_sampling_flags()
_CONDITION = flags.DEFINE_string('condition', None,
                                 'requested properties of a conditional model, e.g. '
                                 'alpha=75.3 (dataset units)')


def main(argv):
  runtime.start_main(argv)
  f = flags.FLAGS
  sampling = flags_util.sampling_from_flags()
  ckpt = flags_util.checked_ckpt()
  out_dir = flags_util.writable_out_dir(f.out_dir or os.path.join(ckpt, 'samples'))
  try:
    config, model, params, meta = reporting.load_model(ckpt)
    condition = reporting.condition_for(config, meta, _CONDITION.value, f.data_dir)
    types, _ = reporting.elements_of(config, meta, f.data_dir)
    out = reporting.sample_and_export(model, params, config, out_dir, sampling,
                                      atom_types=types, progress=f.progress,
                                      condition=condition)
  except ValueError as e:
    runtime.fail(str(e))
  for note in out['notes']:
    print(note)
  print(f"sampled {len(out['molecules'])} molecules in "
        f"{out['timings']['sampling_seconds']:.1f} s -> {out_dir}: "
        f"{', '.join(out['written'])}")


if __name__ == '__main__':
  app.run(main)
