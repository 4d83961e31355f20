"""Evaluates a checkpoint as the EDM paper does, or the metrics of a real split.

  python launch/eval.py --ckpt=workdirs/egnn_qm9_published
  python launch/eval.py --ckpt=DIR --n_samples=1000 --nll_passes=1 --chain
  python launch/eval.py --ckpt=DIR --nll_passes=0     # sample metrics only
  python launch/eval.py --reference_split=test       # metrics of real molecules
  python launch/eval.py --reference_split=test --n_samples=1000   # a seeded subset
  python launch/eval.py --ckpt=COND_DIR --classifier=CLF_DIR   # + EDM's MAE protocol
  python launch/eval.py --samples=other.xyz --dataset=qm9   # score another code's molecules

Writes to --out_dir (default <ckpt>/eval): report.json (metrics, NLL, config,
timings), samples.sdf, samples.xyz, grid.png, samples.html (the first molecules in
3D, rotatable, offline) and, with --chain, chain.png/gif;
with --classifier also mae_table.md (the MAE rows beside the paper's).
Sampling batches are kept in <out_dir>/partial/, so an interrupted run resumes.
"""

from absl import app
from absl import flags

from launch import runtime
runtime.configure_process()
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from edm_zoo import config as config_lib  # noqa: E402
from edm_zoo import reporting  # noqa: E402
from edm_zoo.data import registry  # noqa: E402
from edm_zoo.io import export  # noqa: E402
from edm_zoo.metrics import chemistry  # noqa: E402
from edm_zoo.metrics import own_bonds  # noqa: E402
from edm_zoo.property_prediction import protocol  # noqa: E402
from launch import flags_util  # noqa: E402

flags_util.define_sampling_flags()
flags_util.define_dataclass_flags(config_lib.EvalConfig, section='evaluation')
_REFERENCE_SPLIT = flags.DEFINE_enum('reference_split', None, list(registry.SPLITS),
                                     'report the metrics of this real split instead')
_SAMPLES = flags.DEFINE_string('samples', None, 'score the molecules of this XYZ/SDF file '
                                'or folder (e.g. another code\'s samples) instead')
_DATASET = flags.DEFINE_string('dataset', 'qm9', 'with --reference_split or --samples: the dataset '
                               f'({registry.names()} or your own)')
_SKIP_NLL = flags.DEFINE_bool('skip_nll', False, 'skip the NLL (= --nll_passes=0)')
_CLASSIFIER = flags.DEFINE_string('classifier', None,
                                  'property classifier folder (launch/train_classifier.py):'
                                  ' adds the MAE protocol for a conditional --ckpt')
_ATOMS_CLASSIFIER = flags.DEFINE_string(
    'atoms_classifier', None, "a --model=numnodes classifier for the '#Atoms' row "
    '(default: per-size medians of the first half)')


def _reference_split(out_dir, evaluation_config):
  f = flags.FLAGS
  metrics = reporting.reference_split_metrics(
      _REFERENCE_SPLIT.value, _DATASET.value, f.data_dir,
      n_molecules=f.n_samples if f['n_samples'].present else 0,
      seed=f.seed if f.seed is not None else config_lib.SamplingConfig.seed,
      evaluation_config=evaluation_config, progress=f.progress)
  print(f'{_REFERENCE_SPLIT.value} split ({metrics["molecules"]} molecules): '
        f'atom stability {100 * metrics["atom_stability"]:.3f}%, molecule stability '
        f'{100 * metrics["mol_stability"]:.3f}%, validity '
        f'{100 * metrics["validity"]:.3f}%, uniqueness '
        f'{100 * metrics["uniqueness"]:.3f}% (stability '
        f'{metrics["stability_seconds"]:.1f} s, RDKit {metrics["rdkit_seconds"]:.1f} s)')
  if 'chemistry' in metrics:
    print(chemistry.format_table(metrics['chemistry']))
  items = metrics.pop('items')
  if 'own_bonds' in metrics:
    print(own_bonds.format_table(metrics['own_bonds']))
    print(f"the true bonds of {metrics['own_bonds']['molecules']} molecules"
          + (f" ({metrics['own_bonds']['left_out']} more have no known bonds)"
             if metrics['own_bonds']['left_out'] else ''))
  if out_dir:
    out_dir = flags_util.writable_out_dir(out_dir)
    reporting.write_report(metrics, os.path.join(out_dir, 'report.json'))
    # For inspection: the molecules with their true bonds where they are known.
    export.write_sdf(items, registry.atom_types(_DATASET.value, f.data_dir),
                     os.path.join(out_dir, 'molecules.sdf'), name=_REFERENCE_SPLIT.value)
    print(f'wrote {out_dir}/report.json, molecules.sdf')


def _samples_file(out_dir, evaluation_config):
  f = flags.FLAGS
  metrics = reporting.file_metrics(_SAMPLES.value, _DATASET.value, f.data_dir,
                                   evaluation_config=evaluation_config, progress=f.progress)
  print(f'{_SAMPLES.value} ({metrics["molecules"]} molecules): '
        f'atom stability {100 * metrics["atom_stability"]:.3f}%, molecule stability '
        f'{100 * metrics["mol_stability"]:.3f}%, validity '
        f'{100 * metrics["validity"]:.3f}%, uniqueness {100 * metrics["uniqueness"]:.3f}%')
  if 'chemistry' in metrics:
    print(chemistry.format_table(metrics['chemistry']))
  if out_dir:
    reporting.write_report(metrics, os.path.join(
        flags_util.writable_out_dir(out_dir), 'report.json'))


def main(argv):
  runtime.start_main(argv)
  f = flags.FLAGS
  try:
    values = flags_util.dataclass_values(config_lib.EvalConfig)
    if _SKIP_NLL.value:
      values['nll_passes'] = 0
    evaluation_config = config_lib.build_eval(**values)
    if _REFERENCE_SPLIT.value:
      _reference_split(f.out_dir, evaluation_config)
      return
    if _SAMPLES.value:
      _samples_file(f.out_dir, evaluation_config)
      return
    if not f.ckpt:
      sys.exit('error: give --ckpt=DIR (or --reference_split=test).')
    sampling = flags_util.sampling_from_flags()
  except ValueError as e:
    runtime.fail(f'--{e}' if 'must be' in str(e) else str(e))
  ckpt = flags_util.checked_ckpt()
  out_dir = flags_util.writable_out_dir(f.out_dir or os.path.join(ckpt, 'eval'))
  try:
    report = reporting.evaluate_checkpoint(
        ckpt, out_dir, sampling, evaluation_config, data_dir=f.data_dir,
        progress=f.progress, classifier=_CLASSIFIER.value,
        atoms_classifier=_ATOMS_CLASSIFIER.value)
  except ValueError as e:
    runtime.fail(str(e))
  print(json.dumps({k: report[k] for k in ('nll', 'metrics', 'metrics_intervals',
                                           'molecules_per_hour')
                    if k in report}, indent=1))
  if 'chemistry' in report:
    print(chemistry.format_table(report['chemistry']))
  if 'own_bonds' in report:
    print(own_bonds.format_table(report['own_bonds']))
  if 'mae' in report:
    print(protocol.format_table(report['mae']))
  if 'metrics' in report:
    for note in report['notes']:
      print(note)
    print(f'wrote {out_dir}/report.json, {", ".join(report["files"])}')
  else:  # A stage-1 autoencoder: no samples.
    print(f'wrote {out_dir}/report.json (a stage-1 autoencoder: its loss, no samples)')


if __name__ == '__main__':
  app.run(main)
