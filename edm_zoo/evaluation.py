"""The true NLL -log p(x, h, N) of a split (EDM's eval estimator), in nats/molecule."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from edm_zoo import masking
from edm_zoo.data import batching
from edm_zoo.data import sources
from edm_zoo.methods.diffusion.objective import Diffusion


def make_nll_fn(model: Diffusion):
  """Jitted (params, graph, key) -> (sum of per-molecule NLL, molecules)."""

  @jax.jit
  def fn(params, graph, key):
    k_t, k_eps, k_eps0 = jax.random.split(key, 3)
    t = model.eval_time(k_t, graph.n_node.shape)
    # Block 0 from k_eps itself (EDM's draw), block b > 0 from fold_in(k_eps, b).
    eps = jnp.concatenate([model.sample_noise(
        k_eps if b == 0 else jax.random.fold_in(k_eps, b), graph)
        for b in range(model.noise_blocks)], -1)
    eps0 = model.sample_noise(k_eps0, graph)
    per = model.eval_terms(params, graph, t, eps, eps0)['nll_per_molecule']
    return masking.graph_sum(per, graph)

  return fn


def nll(model: Diffusion, params, source, *, batch_size: int = 64, seed: int = 0,
        passes: int = 1, limit: int = 0, n_nodes_histogram=None,
        nll_fn=None, progress: bool = True, desc: str = 'NLL',
        part: tuple[int, int] = (0, 1),
        combine: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
  """Averages the eval NLL estimator over (the first `limit` molecules of) a split.

  Batch i of pass p draws from `fold_in(fold_in(key(seed), p), i)`, so the
  figure does not depend on who evaluates which batch.

  Args:
    part: (index, count): evaluate only batches i with i % count == index (a
      process's share of a multi-process evaluation).
    combine: sums the [passes, batches, 2] per-batch (NLL sum, molecules) array
      over the parts (`distributed.sum_over_processes`); needed with count > 1.
    (the rest): the model, its parameters, the split and the estimator's settings.

  Returns:
    {'nll': mean over molecules and passes, 'nll_std_over_passes', its 95%
    interval 'nll_lo' / 'nll_hi' (a bootstrap over batches), 'molecules'}.
  """
  index, count = part
  source = sources.Subset(source, limit)
  nll_fn = nll_fn or make_nll_fn(model)
  budgets = batching.default_budgets(batch_size, n_nodes_histogram or {29: 1})
  n_batches = -(-len(source) // batch_size)
  sums = np.zeros([passes, n_batches, 2])
  for p in range(passes):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), p)
    mine = range(index, n_batches, count)
    graphs = batching.batches(source, batch_size, shuffle=False, budgets=budgets,
                              only=mine, with_bonds=model.with_bonds)
    for i, graph in tqdm.tqdm(zip(mine, graphs), total=len(mine), disable=not progress,
                              leave=False, desc=f'{desc} pass {p + 1}/{passes}'):
      sums[p, i] = jax.device_get(nll_fn(params, graph, jax.random.fold_in(key, i)))
  if combine is not None:
    sums = combine(sums)
  means = []
  for p in range(passes):
    total, molecules = 0.0, 0.0
    for s, c in sums[p]:  # In batch order: the same float sum whoever evaluated.
      total += float(s)
      molecules += float(c)
    means.append(total / max(molecules, 1.0))
  lo, hi = _interval(sums)
  return {'nll': float(np.mean(means)), 'nll_std_over_passes': float(np.std(means)),
          'nll_lo': lo, 'nll_hi': hi, 'molecules': len(source)}


def _interval(sums: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
  """A 95% interval of the figure: a bootstrap over batches (each holds its
  molecules' sum and count, averaged over passes), the molecules' own t and noise
  being the estimator's randomness."""
  per_batch = sums.sum(0)  # [batches, 2]
  if len(per_batch) < 2:
    return float('nan'), float('nan')
  idx = np.random.default_rng(seed).integers(0, len(per_batch), (resamples, len(per_batch)))
  picked = per_batch[idx]
  ratios = picked[..., 0].sum(1) / np.maximum(picked[..., 1].sum(1), 1.0)
  lo, hi = np.percentile(ratios, [2.5, 97.5])
  return float(lo), float(hi)
