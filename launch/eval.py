"""Evaluates a checkpoint as the EDM paper does, or the metrics of a real split.

  python launch/eval.py --ckpt=workdirs/egnn_qm9_published
  python launch/eval.py --ckpt=DIR --n_samples=1000 --nll_passes=1 --chain
  python launch/eval.py --reference_split=test       # metrics of real molecules
  python launch/eval.py --ckpt=COND_DIR --classifier=CLF_DIR   # + EDM's MAE protocol

Writes to --out_dir (default <ckpt>/eval): report.json (metrics, NLL, config,
timings), samples.sdf, samples.xyz, grid.png and, with --chain, chain.png/gif;
with --classifier also mae_table.md (the MAE rows beside the paper's).
Sampling batches are kept in <out_dir>/partial/, so an interrupted run resumes.
"""

import json
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
from edm_zoo.data import qm9  # noqa: E402

_REFERENCE_SPLIT = flags.DEFINE_enum('reference_split', None, list(qm9.SPLITS),
                                     'report the metrics of this real split instead')
_DATASET = flags.DEFINE_string('dataset', 'qm9', 'with --reference_split: qm9 or qm9_noh')
_NLL_PASSES = flags.DEFINE_integer('nll_passes', 5, 'passes of the NLL estimator')
_NLL_SPLIT = flags.DEFINE_enum('nll_split', 'test', list(qm9.SPLITS), 'split for the NLL')
_NLL_MOLECULES = flags.DEFINE_integer('nll_molecules', 0, 'first n molecules only (0: all)')
_SKIP_NLL = flags.DEFINE_bool('skip_nll', False, 'skip the NLL')
_CLASSIFIER = flags.DEFINE_string('classifier', None,
                                  'property classifier folder (launch/train_classifier.py):'
                                  ' adds the MAE protocol for a conditional --ckpt')
_ATOMS_CLASSIFIER = flags.DEFINE_string(
    'atoms_classifier', None, "a --model=numnodes classifier for the '#Atoms' row "
    '(default: per-size medians of the first half)')
_MAE_MOLECULES = flags.DEFINE_integer('mae_molecules', 0, 'n evenly spread molecules of the '
                                      'second half for the real-molecule MAE rows (0: all '
                                      '50,000)')


def main(argv):
  runtime.start_main(argv)
  try:
    if _REFERENCE_SPLIT.value:
      metrics = reporting.reference_split_metrics(
          _REFERENCE_SPLIT.value, qm9.remove_h_for(_DATASET.value), sf.DATA_DIR.value)
      print(f'{_REFERENCE_SPLIT.value} split ({metrics["molecules"]} molecules): '
            f'atom stability {100 * metrics["atom_stability"]:.3f}%, molecule stability '
            f'{100 * metrics["mol_stability"]:.3f}%, validity '
            f'{100 * metrics["validity"]:.3f}%, uniqueness '
            f'{100 * metrics["uniqueness"]:.3f}% (stability '
            f'{metrics["stability_seconds"]:.1f} s, RDKit {metrics["rdkit_seconds"]:.1f} s)')
      if sf.OUT_DIR.value:
        reporting.write_report(metrics, os.path.join(
            sf.writable_out_dir(sf.OUT_DIR.value), 'report.json'))
      return
    if not sf.CKPT.value:
      sys.exit('error: give --ckpt=DIR (or --reference_split=test).')
    sf.check_sampling_flags()
    sf.check_checkpoint()
    if _MAE_MOLECULES.value < 0:
      sys.exit(f'error: --mae_molecules must be >= 0, got {_MAE_MOLECULES.value}.')
    if _NLL_PASSES.value <= 0:
      sys.exit(f'error: --nll_passes must be positive, got {_NLL_PASSES.value}.')
    out_dir = sf.writable_out_dir(sf.OUT_DIR.value or os.path.join(sf.CKPT.value, 'eval'))
    report = reporting.evaluate_checkpoint(
        sf.CKPT.value, out_dir, n_samples=sf.N_SAMPLES.value,
        batch_size=sf.BATCH_SIZE.value, nll_passes=_NLL_PASSES.value,
        nll_split=_NLL_SPLIT.value, nll_molecules=_NLL_MOLECULES.value,
        skip_nll=_SKIP_NLL.value, seed=sf.SEED.value, jit_steps=sf.JIT_STEPS.value,
        unroll=sf.UNROLL.value, fix_noise=sf.FIX_NOISE.value, chain=sf.CHAIN.value,
        data_dir=sf.DATA_DIR.value, progress=sf.PROGRESS.value,
        classifier=_CLASSIFIER.value, atoms_classifier=_ATOMS_CLASSIFIER.value,
        mae_molecules=_MAE_MOLECULES.value)
  except ValueError as e:
    sys.exit(f'error: {e}')
  print(json.dumps({k: report[k] for k in ('nll', 'metrics', 'molecules_per_hour')
                    if k in report}, indent=1))
  if 'mae' in report:
    from edm_zoo.property_prediction import protocol  # pylint: disable=g-import-not-at-top
    print(protocol.format_table(report['mae']))
  print(f'wrote {out_dir}/report.json, samples.sdf, samples.xyz, grid.png')


if __name__ == '__main__':
  app.run(main)
