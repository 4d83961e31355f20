"""Generating molecules in batches, resumable: sizes from the histogram (and, for a
conditional model, property values), the sampler, and per-batch partial results
on disk."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import tqdm

from edm_zoo import conditioning
from edm_zoo.config import SamplingConfig
from edm_zoo.data import batching
from edm_zoo.data import bonds as bonds_lib
from edm_zoo import methods
from edm_zoo.io.files import atomic_path


def sample_sizes(histogram: dict[int, int], n: int, seed: int, batch: int) -> np.ndarray:
  """Molecule sizes drawn from the training histogram (EDM's DistributionNodes)."""
  sizes = np.array(sorted(histogram))
  probs = np.array([histogram[s] for s in sizes], np.float64)
  rng = np.random.default_rng([seed, batch])
  return rng.choice(sizes, size=n, p=probs / probs.sum())


@dataclasses.dataclass(frozen=True)
class Condition:
  """What a conditional model is asked for.

  Attributes:
    normalizer: the model's property normaliser (from its checkpoint).
    distribution: p(properties | size) of its conditional train split.
    target: [P] requested values (dataset units); None draws (size, values)
      pairs jointly from the split as the reference does.
  """
  normalizer: conditioning.Normalizer
  distribution: conditioning.PropertyDistribution
  target: np.ndarray | None = None

  def size_histogram(self, histogram: dict[int, int]) -> dict[int, float]:
    """The sizes to draw from: the split's, or p(size | target)."""
    if self.target is None:
      return histogram
    probs = self.distribution.size_probs_given(self.target)
    if not probs:
      lo, hi = self.distribution.range()
      ranges = ', '.join(f'{p} in [{a:.4g}, {b:.4g}]'
                         for p, a, b in zip(self.normalizer.properties, lo, hi))
      asked = {p: float(v) for p, v in zip(self.normalizer.properties, self.target)}
      raise ValueError(f'no molecule of the conditional split has properties near '
                       f'{asked} (dataset units; the split has {ranges}).')
    return probs

  def values(self, sizes: np.ndarray, seed: int, batch: int) -> np.ndarray:
    """[len(sizes), P] property values of a batch (dataset units)."""
    if self.target is not None:
      return np.tile(self.target, (len(sizes), 1))
    return self.distribution.sample(sizes, np.random.default_rng([seed, batch, 1]))


def unflatten_molecules(sizes, positions, types, charges) -> list[dict]:
  """Flat per-node arrays of consecutive molecules -> one dict per molecule."""
  bounds = np.cumsum(sizes)[:-1]
  return [{'positions': p, 'types': t, 'charges': c} for p, t, c in zip(
      np.split(positions, bounds), np.split(types, bounds), np.split(charges, bounds))]


def sample_batch(model: methods.Model, params, sizes: np.ndarray, key: jax.Array, *,
                 atomic_numbers, budgets, sampling: SamplingConfig = SamplingConfig(),
                 chain_every: int = 0, context: np.ndarray | None = None
                 ) -> dict[str, Any]:
  """Samples molecules of the given sizes; returns numpy arrays per molecule.

  Args:
    model, params: the generative model and its (EMA) parameters.
    sizes: [n] atoms of each molecule.
    key: the batch's key.
    atomic_numbers: Z of each one-hot type.
    budgets: the padding ladder the batch is padded to.
    sampling: the sampler, its steps, jit_steps, unroll and fix_noise.
    chain_every: also return the state every this many steps.
    context: [len(sizes), C] normalised properties, for a conditional model.

  Returns:
    {'molecules': [{'positions' [n, 3], 'types' [n], 'charges' [n] (and
     'bonds', 'bond_orders', 'formal_charges' from a method that writes them)}],
     'chain': [frames, n_node, D] of the batch (if chain_every)}.
  """
  graph = batching.placeholder_graph(
      sizes, atomic_numbers, batching.choose_budget(sizes, budgets), context)
  out = methods.sample(model, params, graph, key, sampling,
                       atomic_numbers=atomic_numbers, chain_every=chain_every)
  out = jax.device_get(out)
  n = int(np.sum(sizes))
  result = {'molecules': unflatten_molecules(
      sizes, np.asarray(out['x'][:n], np.float32),
      np.argmax(out['h_cat'][:n], -1).astype(np.int32),
      np.asarray(out['h_int'][:n, 0]).astype(np.int32))}
  if 'bond_orders' in out:  # A method that writes bonds: each molecule's own.
    lo = 0
    for m, size in zip(result['molecules'], np.asarray(sizes, int)):
      m['bonds'], m['bond_orders'] = bonds_lib.from_dense(
          np.asarray(out['bond_orders'][lo:lo + size, :size]))
      m['formal_charges'] = np.asarray(out['formal_charges'][lo:lo + size], np.int32)
      lo += size
  if chain_every:
    result['chain'] = np.asarray(out['chain'])
  return result


def _claim_partial_dir(partial_dir: str, request: dict[str, Any]) -> None:
  """Resuming is only right for the same request: refuse another one's batches."""
  os.makedirs(partial_dir, exist_ok=True)
  path = os.path.join(partial_dir, 'request.json')
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous != request:
      raise ValueError(f'{partial_dir} holds batches sampled for {previous}, not '
                       f'{request}; use another --out_dir or delete that folder.')
    return
  with atomic_path(path) as tmp, open(tmp, 'w') as f:
    json.dump(request, f)


def generate(model: methods.Model, params, sampling: SamplingConfig, *,
             histogram: dict[int, int], atomic_numbers, partial_dir: str | None = None,
             progress: bool = True, condition: Condition | None = None) -> list[dict]:
  """`sampling.n_samples` molecules in batches; with `partial_dir`, a rerun resumes.

  Batch b draws its sizes from `(seed, b)` (and its property values from
  `(seed, b, 1)`) and its noise from `fold_in(key(seed), b)`, and is saved as
  `partial_dir/batch_<b>.npz`, so an interrupted run continues where it stopped
  with the same molecules. With a `condition`, each molecule also holds the
  `properties` [P] it was asked for (dataset units).
  """
  n_samples, batch_size, seed = sampling.n_samples, sampling.batch_size, sampling.seed
  if n_samples <= 0:
    raise ValueError(f'n_samples must be positive, got {n_samples}.')
  methods.check_sampling(model, sampling)  # One-line errors before any work.
  steps = methods.steps_of(model, params, sampling)
  budgets = batching.default_budgets(batch_size, histogram)
  size_histogram = condition.size_histogram(histogram) if condition else histogram
  if partial_dir:
    # EDM's chain keeps the request of earlier versions, which had no other.
    other = ({} if (sampling.sampler, steps, sampling.eta) == ('ancestral', model.T, 0.0)
             else {'sampler': sampling.sampler, 'steps': steps, 'eta': sampling.eta,
                   'spacing': sampling.spacing})
    _claim_partial_dir(partial_dir, {**other,
        'seed': seed, 'batch_size': batch_size, 'fix_noise': sampling.fix_noise,
        'conditioning': list(condition.normalizer.properties) if condition else [],
        'target': (None if condition is None or condition.target is None
                   else [float(v) for v in condition.target])})
  n_batches = -(-n_samples // batch_size)
  molecules: list[dict] = []
  bar = tqdm.tqdm(total=n_samples, disable=not progress, desc='sampling', unit='mol')
  for b in range(n_batches):
    n = min(batch_size, n_samples - b * batch_size)
    path = os.path.join(partial_dir, f'batch_{b:05d}.npz') if partial_dir else None
    if path and os.path.exists(path):
      with np.load(path) as f:
        sizes, pos, types, charges = f['sizes'], f['positions'], f['types'], f['charges']
        values = f['properties'] if 'properties' in f.files else None
        batch = unflatten_molecules(sizes, pos, types, charges)
        if 'n_bonds' in f.files:  # A method's own bonds, per molecule.
          cut = np.cumsum(f['n_bonds'])[:-1]
          for m, pairs, orders, q in zip(batch, np.split(f['bonds'], cut),
                                         np.split(f['bond_orders'], cut),
                                         np.split(f['formal_charges'], np.cumsum(sizes)[:-1])):
            m.update(bonds=pairs, bond_orders=orders, formal_charges=q)
    else:
      sizes = sample_sizes(size_histogram, n, seed, b)
      values = condition.values(sizes, seed, b) if condition else None
      batch = sample_batch(
          model, params, sizes, jax.random.fold_in(jax.random.PRNGKey(seed), b),
          atomic_numbers=atomic_numbers, budgets=budgets, sampling=sampling,
          context=None if values is None else condition.normalizer.normalize(values)
      )['molecules']
      if path:
        extra = {} if values is None else {'properties': values}
        if batch and 'bonds' in batch[0]:
          extra.update(n_bonds=[len(m['bond_orders']) for m in batch],
                       bonds=np.concatenate([m['bonds'] for m in batch]).reshape(-1, 2),
                       bond_orders=np.concatenate([m['bond_orders'] for m in batch]),
                       formal_charges=np.concatenate([m['formal_charges'] for m in batch]))
        with atomic_path(path) as tmp, open(tmp, 'wb') as f:
          np.savez(f, sizes=sizes,
                   positions=np.concatenate([m['positions'] for m in batch]),
                   types=np.concatenate([m['types'] for m in batch]),
                   charges=np.concatenate([m['charges'] for m in batch]), **extra)
    if values is not None:
      for m, v in zip(batch, values):
        m['properties'] = v
    molecules.extend(batch)
    bar.update(n)
  bar.close()
  return molecules
