"""Generating molecules in batches, resumable: sizes from the histogram, the sampler,
and per-batch partial results on disk."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import tqdm

from edm_zoo.data import batching
from edm_zoo.diffusion import sampler
from edm_zoo.diffusion.objective import Diffusion
from edm_zoo.io.files import atomic_path


def sample_sizes(histogram: dict[int, int], n: int, seed: int, batch: int) -> np.ndarray:
  """Molecule sizes drawn from the training histogram (EDM's DistributionNodes)."""
  sizes = np.array(sorted(histogram))
  probs = np.array([histogram[s] for s in sizes], np.float64)
  rng = np.random.default_rng([seed, batch])
  return rng.choice(sizes, size=n, p=probs / probs.sum())


def placeholder_graph(sizes, atomic_numbers, budgets):
  """A padded batch of molecules of the given sizes (their data are never read)."""
  molecules = [{'positions': np.zeros((int(n), 3), np.float32),
                'charges': np.full(int(n), atomic_numbers[0]), 'gdb_index': -1}
               for n in sizes]
  budget = batching.choose_budget(sizes, budgets)
  return batching.build_graph(molecules, atomic_numbers, budget)


def split_molecules(sizes, positions, types, charges) -> list[dict]:
  """Flat per-node arrays of consecutive molecules -> one dict per molecule."""
  bounds = np.cumsum(sizes)[:-1]
  return [{'positions': p, 'types': t, 'charges': c} for p, t, c in zip(
      np.split(positions, bounds), np.split(types, bounds), np.split(charges, bounds))]


def sample_batch(model: Diffusion, params, sizes: np.ndarray, key: jax.Array, *,
                 atomic_numbers, budgets, jit_steps=None, unroll: int = 1,
                 fix_noise: bool = False, chain_every: int = 0) -> dict[str, Any]:
  """Samples molecules of the given sizes; returns numpy arrays per molecule.

  Returns:
    {'molecules': [{'positions' [n, 3], 'types' [n], 'charges' [n]}],
     'chain': [frames, n_node, D] of the batch (if chain_every)}.
  """
  graph = placeholder_graph(sizes, atomic_numbers, budgets)
  out = sampler.sample(model, params, graph, key, jit_steps=jit_steps, unroll=unroll,
                       fix_noise=fix_noise, chain_every=chain_every)
  out = jax.device_get(out)
  n = int(np.sum(sizes))
  result = {'molecules': split_molecules(
      sizes, np.asarray(out['x'][:n], np.float32),
      np.argmax(out['h_cat'][:n], -1).astype(np.int32),
      np.asarray(out['h_int'][:n, 0]).astype(np.int32))}
  if chain_every:
    result['chain'] = np.asarray(out['chain'])
  return result


def generate(model: Diffusion, params, n_samples: int, *, histogram: dict[int, int],
             atomic_numbers, batch_size: int = 100, seed: int = 0,
             partial_dir: str | None = None, jit_steps=None, unroll: int = 1,
             fix_noise: bool = False, progress: bool = True) -> list[dict]:
  """`n_samples` molecules in batches; with `partial_dir`, a rerun resumes.

  Batch b draws its sizes from `(seed, b)` and its noise from
  `fold_in(key(seed), b)`, and is saved as `partial_dir/batch_<b>.npz`, so an
  interrupted run continues where it stopped with the same molecules.
  """
  if n_samples <= 0:
    raise ValueError(f'n_samples must be positive, got {n_samples}.')
  budgets = batching.default_budgets(batch_size, histogram)
  if partial_dir:
    os.makedirs(partial_dir, exist_ok=True)
  n_batches = -(-n_samples // batch_size)
  molecules: list[dict] = []
  bar = tqdm.tqdm(total=n_samples, disable=not progress, desc='sampling', unit='mol')
  for b in range(n_batches):
    n = min(batch_size, n_samples - b * batch_size)
    path = os.path.join(partial_dir, f'batch_{b:05d}.npz') if partial_dir else None
    if path and os.path.exists(path):
      with np.load(path) as f:
        sizes, pos, types, charges = f['sizes'], f['positions'], f['types'], f['charges']
      batch = split_molecules(sizes, pos, types, charges)
    else:
      sizes = sample_sizes(histogram, n, seed, b)
      batch = sample_batch(model, params, sizes, jax.random.fold_in(
          jax.random.PRNGKey(seed), b), atomic_numbers=atomic_numbers, budgets=budgets,
                           jit_steps=jit_steps, unroll=unroll, fix_noise=fix_noise)['molecules']
      if path:
        with atomic_path(path) as tmp, open(tmp, 'wb') as f:
          np.savez(f, sizes=sizes,
                   positions=np.concatenate([m['positions'] for m in batch]),
                   types=np.concatenate([m['types'] for m in batch]),
                   charges=np.concatenate([m['charges'] for m in batch]))
    molecules.extend(batch)
    bar.update(n)
  bar.close()
  return molecules
