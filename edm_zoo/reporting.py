"""What `launch/eval.py` and `launch/sample.py` do, as library functions."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

from edm_zoo import conditioning
from edm_zoo import config as config_lib
from edm_zoo import evaluation, generate
from edm_zoo.config import SamplingConfig
from edm_zoo.data import batching, bonds as bonds_lib, elements as elements_lib
from edm_zoo.data import registry, sources
from edm_zoo import methods
from edm_zoo.methods.diffusion.objective import Diffusion
from edm_zoo.io import export, files, pictures, readers, viewer
from edm_zoo.metrics import chemistry, intervals, own_bonds, rdkit_metrics
from edm_zoo.property_prediction import protocol
from edm_zoo.property_prediction import training as clf_training
from edm_zoo.training import checkpoint


# Molecules shown in grid.png and samples.html.
PICTURED = 24


def molecule_metrics(molecules, elements, reference_smiles=None, *,
                     single_bonds: bool = False) -> dict[str, float]:
  """Stability, validity, uniqueness (and novelty) of (positions, types) pairs;
  `single_bonds`: RDKit molecules get single bonds (EDM's GEOM-Drugs scoring)."""
  return molecule_scores(molecules, elements, reference_smiles, single_bonds=single_bonds)[0]


def molecule_scores(molecules, elements, reference_smiles=None, *,
                    single_bonds: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
  """(`molecule_metrics`' figures, the same figures with counts and 95% intervals),
  from one pass of the stability and RDKit checks."""
  start = time.time()
  stable = intervals.stability_outcomes(molecules, elements)
  out = {'atom_stability': int(stable['stable_atoms'].sum()) / max(int(stable['atoms'].sum()), 1),
         'mol_stability': int(stable['mol_stable'].sum()) / max(len(molecules), 1),
         'molecules': len(molecules), 'stability_seconds': time.time() - start}
  start = time.time()
  smiles = rdkit_metrics.valid_smiles(molecules, elements, single_bonds=single_bonds)
  out.update(rdkit_metrics.validity_uniqueness_novelty(smiles, reference_smiles))
  out['rdkit_seconds'] = time.time() - start
  with_intervals = intervals.metrics_with_intervals(
      {**stable, 'valid': np.array([s is not None for s in smiles], bool),
       'smiles': np.array([s or '' for s in smiles], object)})
  return out, with_intervals


def reference_split_metrics(split: str, dataset: str = 'qm9',
                            data_dir: str | None = None, *, n_molecules: int = 0,
                            seed: int = 0,
                            evaluation_config: config_lib.EvalConfig | None = None,
                            progress: bool = False) -> dict[str, Any]:
  """The metrics of a real split (the 'Data' row of EDM's tables): EDM's on the
  whole split (or, with `n_molecules`, a seeded subset of that many), and with an
  `evaluation_config` whose `chemistry` is on, the chemistry checks on the same
  molecules under 'chemistry'; where their bonds are known, the figures of the true
  bonds and charges under 'own_bonds' (`edm_zoo.metrics.own_bonds`); the molecule
  dicts themselves under 'items' (`reference_split_molecules`)."""
  if not isinstance(seed, (int, np.integer)):
    raise ValueError(f'the subset seed must be an integer, got {seed!r}.')
  items = reference_split_molecules(split, dataset, data_dir, n_molecules=n_molecules,
                                    seed=seed)
  molecules = [(m['positions'], m['types']) for m in items]
  types = registry.atom_types(dataset, data_dir)
  out, out['intervals'] = molecule_scores(
      molecules, types, single_bonds=registry.metrics(dataset).rdkit_single_bonds)
  out.update(split=split, dataset=dataset, seed=seed)
  if evaluation_config is not None and evaluation_config.chemistry:
    out['chemistry'] = chemistry_checks(molecules, types, evaluation_config, progress)
  known = [m for m in items if export.has_bonds(m)]
  if known:
    # The true bonds: every real molecule should pass; those whose bonds are not
    # known (left out of the bond-aware splits) are counted apart.
    out['own_bonds'] = own_bonds.evaluate(known, elements_lib.atomic_numbers(types))
    out['own_bonds']['left_out'] = len(items) - len(known)
  out['items'] = items
  return out


def reference_split_molecules(split: str, dataset: str = 'qm9', data_dir: str | None = None,
                              *, n_molecules: int = 0, seed: int = 0) -> list[dict]:
  """The molecules of a real split (all, or a seeded subset of `n_molecules`) as
  molecule dicts: `positions`, `types` (indices of the dataset's atom types) and,
  where their bonds are known, `bonds`, `bond_orders` and `formal_charges`."""
  source = registry.load(dataset, split, data_dir)
  indices = np.arange(len(source))
  if n_molecules and n_molecules < len(source):
    indices = np.sort(np.random.default_rng(seed).choice(len(source), n_molecules,
                                                         replace=False))
  lookup = {int(z): i for i, z in enumerate(source.atomic_numbers)}
  out = []
  for item in sources.fetch(source, indices.tolist()):
    m = {'positions': item['positions'],
         'types': np.array([lookup[int(z)] for z in item['charges']], np.int64)}
    if item.get('bonds_status', bonds_lib.NOT_PERCEIVED) not in bonds_lib.LEFT_OUT:
      m.update({k: item[k] for k in ('bonds', 'bond_orders', 'formal_charges')})
    out.append(m)
  return out


def file_metrics(path: str, dataset: str = 'qm9', data_dir: str | None = None, *,
                 evaluation_config: config_lib.EvalConfig | None = None,
                 progress: bool = False) -> dict[str, Any]:
  """EDM's row (with intervals) and, with an `evaluation_config` whose `chemistry` is
  on, the chemistry checks of the molecules of an XYZ/SDF file or folder: another
  code's samples scored as edm_zoo scores its own, in `dataset`'s element vocabulary.

  Raises:
    ValueError: one line, for an unreadable file or an element `dataset` lacks.
  """
  read = readers.read_molecules(path)
  if not read.molecules:
    raise ValueError(f'{path} holds no molecule.')
  types = registry.atom_types(dataset, data_dir)
  index = {int(z): i for i, z in enumerate(elements_lib.atomic_numbers(types))}
  molecules = []
  for m in read.molecules:
    missing = sorted({int(z) for z in m['charges'] if int(z) not in index})
    if missing:
      raise ValueError(
          f'{m["file"]} record {m["record"]}: atomic number(s) {missing} are not among '
          f"{dataset}'s elements {list(types)}.")
    molecules.append((np.asarray(m['positions'], np.float32),
                      np.array([index[int(z)] for z in m['charges']], np.int32)))
  out, out['intervals'] = molecule_scores(
      molecules, types, single_bonds=registry.metrics(dataset).rdkit_single_bonds)
  out.update(source=os.path.abspath(path), dataset=dataset)
  if evaluation_config is not None and evaluation_config.chemistry:
    out['chemistry'] = chemistry_checks(molecules, types, evaluation_config, progress)
  return out


def chemistry_checks(molecules, types: tuple[str, ...], e: config_lib.EvalConfig,
                     progress: bool = False) -> dict[str, Any]:
  """`edm_zoo.metrics.chemistry.evaluate` of (positions, type indices) molecules;
  skipped, with the reason, for a dataset without hydrogen atoms."""
  if 'H' not in types:
    # Bond perception needs every atom: on heavy atoms alone it fails on every
    # molecule, and a table of zeros would say nothing about the molecules.
    return {**chemistry.skipped_report(
        len(molecules), 'the dataset has no hydrogen atoms, and RDKit perceives bonds only '
        'from every atom (use a dataset with hydrogens, e.g. qm9 or geom_drugs)'),
            'seconds': 0.0}
  start = time.time()
  out = chemistry.evaluate([(p, [types[int(t)] for t in ts]) for p, ts in molecules],
                           xtb_molecules=e.xtb_molecules,
                           energy_molecules=e.energy_molecules, workers=e.chemistry_workers,
                           progress=progress)
  out['seconds'] = time.time() - start
  return out


def elements_of(config: config_lib.Config, meta: dict,
                data_dir: str | None = None) -> tuple[tuple[str, ...], np.ndarray]:
  """(type symbols, Z) of a checkpoint's one-hot types: from its own statistics,
  so that sampling needs no dataset (imports older than that ask the registry)."""
  types = meta.get('statistics', {}).get('atom_types')
  types = tuple(types) if types else registry.atom_types(config.dataset, data_dir)
  return types, elements_lib.atomic_numbers(types)


def load_model(ckpt: str) -> tuple[config_lib.Config, Diffusion, Any, dict]:
  """(config, model, EMA params, meta) of a checkpoint; one-line errors."""
  config, params, meta = checkpoint.load_for_inference(ckpt)
  hist = {int(k): int(v) for k, v in meta['statistics']['n_nodes_histogram'].items()}
  model = methods.make(config, hist)
  try:
    model.check_params(params)
  except ValueError as e:
    raise ValueError(f'--ckpt {ckpt}: its parameters do not fit its config ({e})') from e
  if config.conditioning and 'property_norms' not in meta:
    raise ValueError(f'--ckpt {ckpt}: a conditional model without its property_norms.')
  return config, model, params, meta


def condition_for(config: config_lib.Config, meta: dict, target: str | None = None,
                  data_dir: str | None = None) -> generate.Condition | None:
  """What a conditional checkpoint samples: `target` ('alpha=75.3', dataset units)
  or, without one, (size, properties) pairs drawn from its train split."""
  if not config.conditioning:
    if target:
      raise ValueError('--condition needs a conditional model; this one is '
                       'unconditional (trained without --conditioning).')
    return None
  normalizer = conditioning.Normalizer.from_dict(meta['property_norms'], config.conditioning)
  values = None
  if target:
    values = np.array(list(conditioning.parse_condition(
        target, config.conditioning).values()))
  return generate.Condition(normalizer, conditioning.property_distribution(config, data_dir),
                            values)


def sample_and_export(model: Diffusion, params, config: config_lib.Config,
                      out_dir: str, sampling: SamplingConfig, *,
                      atom_types: tuple[str, ...], progress: bool = True,
                      condition: generate.Condition | None = None) -> dict[str, Any]:
  """Samples (resumably, via `out_dir/partial/`), writes SDF/XYZ/pictures with the
  model's `atom_types` (`elements_of`)."""
  if config.train.stage == 'autoencoder':
    raise ValueError('this checkpoint is a stage-1 autoencoder (--stage=autoencoder): '
                     'it has no trained diffusion to sample from; train one on it with '
                     '--ae_ckpt=DIR.')
  elements = tuple(atom_types)
  z = elements_lib.atomic_numbers(elements)
  start = time.time()
  molecules = generate.generate(
      model, params, sampling, histogram=model.n_nodes_histogram,
      atomic_numbers=z,
      partial_dir=os.path.join(out_dir, 'partial'), progress=progress,
      condition=condition)
  timings = {'sampling_seconds': time.time() - start}
  names = config.conditioning
  export.write_sdf(molecules, elements, os.path.join(out_dir, 'samples.sdf'), names)
  export.write_xyz(molecules, elements, os.path.join(out_dir, 'samples.xyz'), names)
  written = ['samples.sdf', 'samples.xyz', 'grid.png']
  single = registry.metrics(config.dataset).rdkit_single_bonds
  shown = molecules[:PICTURED]
  descriptions = [rdkit_metrics.describe(m['positions'], m['types'], elements, single)
                  for m in shown]
  pictures.molecule_grid(shown, elements, os.path.join(out_dir, 'grid.png'), descriptions)
  notes = []
  script = viewer.installed_script()
  if script is not None:
    viewer.write_html(shown, elements, os.path.join(out_dir, 'samples.html'),
                      script=script, descriptions=descriptions,
                      title=f'{config.model.name} on {config.dataset}: generated molecules')
    written.append('samples.html')
  else:
    notes.append('samples.html not written: 3Dmol.js is not installed in this '
                 'environment (`make venv` installs it)')
  if sampling.chain:
    _chain_pictures(model, params, config, out_dir, sampling.seed, elements, condition)
    written += ['chain.png', 'chain.gif']
  return {'molecules': molecules, 'timings': timings, 'written': written, 'notes': notes}


def _chain_pictures(model, params, config, out_dir, seed, elements, condition=None):
  hist = condition.size_histogram(model.n_nodes_histogram) if condition else \
      model.n_nodes_histogram
  size = generate.sample_sizes(hist, 1, seed, 10_000_000)
  context = (condition.normalizer.normalize(condition.values(size, seed, 10_000_000))
             if condition else None)
  every = max(1, model.T // 50)
  while model.T % every:
    every -= 1
  out = generate.sample_batch(
      model, params, size, jax.random.PRNGKey(seed + 1),
      atomic_numbers=elements_lib.atomic_numbers(elements),
      budgets=batching.default_budgets(1, model.n_nodes_histogram), chain_every=every,
      context=context)
  d = config.diffusion
  n = int(size[0])
  frames = [f[:n, :3] * d.norm_values[0] for f in out['chain']]
  types = [np.argmax(f[:n, 3:3 + len(elements)], -1) for f in out['chain']]
  frames.append(out['molecules'][0]['positions'])
  types.append(out['molecules'][0]['types'])
  steps = [model.T - k * every for k in range(len(out['chain']))] + [0]
  pictures.chain_pictures(frames, types, elements, os.path.join(out_dir, 'chain.png'),
                          os.path.join(out_dir, 'chain.gif'), steps)


def write_report(report: dict[str, Any], path: str) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with files.atomic_path(path) as tmp, open(tmp, 'w') as f:
    json.dump(report, f, indent=1, default=float)


def evaluate_checkpoint(ckpt: str, out_dir: str, sampling: SamplingConfig,
                        evaluation_config: config_lib.EvalConfig = config_lib.EvalConfig(),
                        *, data_dir: str | None = None, progress: bool = True,
                        classifier: str | None = None,
                        atoms_classifier: str | None = None) -> dict[str, Any]:
  """Everything EDM reports for a model, written to `out_dir/report.json`.

  For a conditional model the NLL uses each molecule's own properties as context,
  samples draw (size, properties) pairs from its train split, and with a
  `classifier` folder the MAE protocol is added (`report['mae']`, and
  `out_dir/mae_table.md`).

  Args:
    ckpt: the checkpoint folder.
    out_dir: where the report, samples and pictures go.
    sampling: how many molecules and how they are drawn.
    evaluation_config: the NLL (`nll_passes` 0 skips it) and the MAE rows.
    data_dir: the datasets' folder.
    progress: show progress bars.
    classifier: a property classifier folder (the MAE protocol).
    atoms_classifier: a '#Atoms' classifier folder for that protocol.
  """
  e = evaluation_config
  config, model, params, meta = load_model(ckpt)
  types, _ = elements_of(config, meta, data_dir)
  scoring = registry.metrics(config.dataset)
  if classifier and not config.conditioning:
    raise ValueError('--classifier needs a conditional model; this one is unconditional.')
  clf = atoms = None
  if classifier:  # Fail on a bad classifier before hours of sampling.
    clf = clf_training.load(classifier)
    atoms = clf_training.load(atoms_classifier) if atoms_classifier else None
    protocol.check_classifiers(config.conditioning, clf, atoms)
  condition = condition_for(config, meta, None, data_dir)
  report: dict[str, Any] = {'ckpt': os.path.abspath(ckpt), 'config':
                            config_lib.to_dict(config),
                            'sampling': dataclasses.asdict(sampling), 'timings': {}}
  if e.nll_passes:
    start = time.time()
    nll_source = registry.load(config.dataset, e.nll_split, data_dir,
                               with_bonds=model.with_bonds)
    if condition:
      nll_source = conditioning.conditioned(nll_source, condition.normalizer)
    report['nll'] = evaluation.nll(
        model, params, nll_source, batch_size=e.nll_batch_size,
        seed=sampling.seed, passes=e.nll_passes, limit=e.nll_molecules,
        n_nodes_histogram=model.n_nodes_histogram, progress=progress)
    report['nll']['split'] = e.nll_split
    report['nll']['figure'] = model.objective_name
    report['timings']['nll_seconds'] = time.time() - start
  if config.train.stage == 'autoencoder':  # Nothing to sample: the loss is the report.
    write_report(report, os.path.join(out_dir, 'report.json'))
    return report
  out = sample_and_export(model, params, config, out_dir, sampling, atom_types=types,
                          progress=progress, condition=condition)
  report['timings'].update(out['timings'])
  report['files'], report['notes'] = out['written'], out['notes']
  report['molecules_per_hour'] = 3600 * sampling.n_samples / max(
      out['timings']['sampling_seconds'], 1e-9)
  reference = (rdkit_metrics.training_smiles(config.dataset, data_dir, progress)
               if scoring.novelty else None)
  molecules = [(m['positions'], m['types']) for m in out['molecules']]
  # EDM's figures unchanged, and beside them with their count and 95% intervals.
  report['metrics'], report['metrics_intervals'] = molecule_scores(
      molecules, types, reference, single_bonds=scoring.rdkit_single_bonds)
  if e.chemistry:
    report['chemistry'] = chemistry_checks(molecules, types, e, progress)
    report['timings']['chemistry_seconds'] = report['chemistry']['seconds']
  if out['molecules'] and all(export.has_bonds(m) for m in out['molecules']):
    # A method that writes bonds and charges: the molecule as it wrote it.
    report['own_bonds'] = own_bonds.evaluate(out['molecules'],
                                             elements_lib.atomic_numbers(types))
  if clf is not None:
    start = time.time()
    report['mae'] = protocol.evaluate(
        clf, out['molecules'], config.conditioning,
        second_half=sources.Subset(registry.load('qm9_second_half', 'train', data_dir),
                                   e.mae_molecules, spread=True),
        first_half=registry.load('qm9_first_half', 'train', data_dir),
        atoms_classifier=atoms, seed=sampling.seed, progress=progress)
    report['mae']['classifier'] = os.path.abspath(classifier)
    report['timings']['mae_seconds'] = time.time() - start
    with files.atomic_path(os.path.join(out_dir, 'mae_table.md')) as tmp, open(tmp, 'w') as f:
      f.write(protocol.format_table(report['mae']) + '\n')
  write_report(report, os.path.join(out_dir, 'report.json'))
  return report
