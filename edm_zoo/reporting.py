"""What `launch/eval.py` and `launch/sample.py` do, as library functions."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from edm_zoo import config as config_lib
from edm_zoo import evaluation, generate
from edm_zoo.compat import edm_torch
from edm_zoo.data import batching, qm9
from edm_zoo.diffusion.objective import Diffusion
from edm_zoo.io import export, files, pictures
from edm_zoo.metrics import rdkit_metrics, stability
from edm_zoo.training import checkpoint


def molecule_metrics(molecules, elements, reference_smiles=None) -> dict[str, float]:
  """Stability, validity, uniqueness (and novelty) of (positions, types) pairs."""
  start = time.time()
  out = stability.stability(molecules, elements)
  out['stability_seconds'] = time.time() - start
  start = time.time()
  smiles = rdkit_metrics.valid_smiles(molecules, elements)
  out.update(rdkit_metrics.validity_uniqueness_novelty(smiles, reference_smiles))
  out['rdkit_seconds'] = time.time() - start
  return out


def reference_split_metrics(split: str, remove_h: bool = False,
                            data_dir: str | None = None) -> dict[str, float]:
  """The metrics of a real split (the 'Data' row of EDM's tables)."""
  source = qm9.load(split, remove_h, data_dir)
  molecules = rdkit_metrics.split_molecules(source)
  return molecule_metrics(molecules, qm9.atom_types(remove_h))


def load_model(ckpt: str) -> tuple[config_lib.Config, Diffusion, Any, dict]:
  """(config, model, EMA params, meta) of a checkpoint; one-line errors."""
  config, params, meta = checkpoint.load_for_inference(ckpt)
  hist = {int(k): int(v) for k, v in meta['statistics']['n_nodes_histogram'].items()}
  model = Diffusion(config, hist)
  try:
    edm_torch.check_params(model, params, edm_torch.probe_graph(config.dataset == 'qm9_noh'))
  except ValueError as e:
    raise ValueError(f'--ckpt {ckpt}: its parameters do not fit its config ({e})') from e
  return config, model, params, meta


def sample_and_export(model: Diffusion, params, config: config_lib.Config,
                      out_dir: str, *, n_samples: int, batch_size: int, seed: int,
                      jit_steps=None, unroll: int = 1, fix_noise: bool = False,
                      chain: bool = False, progress: bool = True) -> dict[str, Any]:
  """Samples (resumably, via `out_dir/partial/`), writes SDF/XYZ/pictures."""
  remove_h = config.dataset == 'qm9_noh'
  elements = qm9.atom_types(remove_h)
  start = time.time()
  molecules = generate.generate(
      model, params, n_samples, histogram=model.n_nodes_histogram, batch_size=batch_size,
      atomic_numbers=qm9.atomic_numbers(remove_h), seed=seed,
      partial_dir=os.path.join(out_dir, 'partial'), jit_steps=jit_steps, unroll=unroll,
      fix_noise=fix_noise, progress=progress)
  timings = {'sampling_seconds': time.time() - start}
  export.write_sdf(molecules, elements, os.path.join(out_dir, 'samples.sdf'))
  export.write_xyz(molecules, elements, os.path.join(out_dir, 'samples.xyz'))
  pictures.molecule_grid(molecules, elements, os.path.join(out_dir, 'grid.png'))
  if chain:
    _chain_pictures(model, params, config, out_dir, seed, elements)
  return {'molecules': molecules, 'timings': timings}


def _chain_pictures(model, params, config, out_dir, seed, elements):
  remove_h = config.dataset == 'qm9_noh'
  hist = model.n_nodes_histogram
  size = generate.sample_sizes(hist, 1, seed, 10_000_000)
  every = max(1, model.T // 50)
  while model.T % every:
    every -= 1
  out = generate.sample_batch(
      model, params, size, jax.random.PRNGKey(seed + 1),
      atomic_numbers=qm9.atomic_numbers(remove_h),
      budgets=batching.default_budgets(1, hist), chain_every=every)
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
  with files.atomic_path(path) as tmp, open(tmp, 'w') as f:
    json.dump(report, f, indent=1, default=float)


def evaluate_checkpoint(ckpt: str, out_dir: str, *, n_samples: int, batch_size: int,
                        nll_passes: int, nll_split: str = 'test', nll_batch_size: int = 64,
                        nll_molecules: int = 0, skip_nll: bool = False,
                        seed: int = 0, jit_steps=None, unroll: int = 1,
                        fix_noise: bool = False, chain: bool = False,
                        data_dir: str | None = None, progress: bool = True
                        ) -> dict[str, Any]:
  """Everything EDM reports for a model, written to `out_dir/report.json`."""
  config, model, params, meta = load_model(ckpt)
  remove_h = config.dataset == 'qm9_noh'
  report: dict[str, Any] = {'ckpt': os.path.abspath(ckpt), 'config':
                            config_lib.to_dict(config), 'timings': {}}
  if not skip_nll:
    start = time.time()
    report['nll'] = evaluation.nll(
        model, params, qm9.load(nll_split, remove_h, data_dir), batch_size=nll_batch_size,
        seed=seed, passes=nll_passes, limit=nll_molecules,
        n_nodes_histogram=model.n_nodes_histogram, progress=progress)
    report['nll']['split'] = nll_split
    report['timings']['nll_seconds'] = time.time() - start
  out = sample_and_export(model, params, config, out_dir, n_samples=n_samples,
                          batch_size=batch_size, seed=seed, jit_steps=jit_steps,
                          unroll=unroll, fix_noise=fix_noise, chain=chain,
                          progress=progress)
  report['timings'].update(out['timings'])
  report['molecules_per_hour'] = 3600 * n_samples / max(out['timings']['sampling_seconds'], 1e-9)
  reference = rdkit_metrics.training_smiles(remove_h, data_dir, progress)
  molecules = [(m['positions'], m['types']) for m in out['molecules']]
  report['metrics'] = molecule_metrics(molecules, qm9.atom_types(remove_h), reference)
  write_report(report, os.path.join(out_dir, 'report.json'))
  return report
