"""The true NLL -log p(x, h, N) of a split (EDM's eval estimator), in nats/molecule."""

from __future__ import annotations

import jax
import numpy as np
import tqdm

from edm_zoo import masking
from edm_zoo.data import batching
from edm_zoo.data import sources
from edm_zoo.diffusion.objective import Diffusion


def make_nll_fn(model: Diffusion):
  """Jitted (params, graph, key) -> (sum of per-molecule NLL, molecules)."""

  @jax.jit
  def fn(params, graph, key):
    k_t, k_eps, k_eps0 = jax.random.split(key, 3)
    t_int = jax.random.randint(k_t, graph.n_node.shape, 1, model.T + 1)
    eps = model.sample_noise(k_eps, graph)
    eps0 = model.sample_noise(k_eps0, graph)
    per = model.eval_terms(params, graph, t_int, eps, eps0)['nll_per_molecule']
    return masking.graph_sum(per, graph)

  return fn


def nll(model: Diffusion, params, source, *, batch_size: int = 64, seed: int = 0,
        passes: int = 1, limit: int = 0, n_nodes_histogram=None,
        nll_fn=None, progress: bool = True, desc: str = 'NLL') -> dict[str, float]:
  """Averages the eval NLL estimator over (the first `limit` molecules of) a split.

  Returns:
    {'nll': mean over molecules and passes, 'nll_std_over_passes', 'molecules'}.
  """
  source = sources.Subset(source, limit)
  nll_fn = nll_fn or make_nll_fn(model)
  budgets = batching.default_budgets(batch_size, n_nodes_histogram or {29: 1})
  means = []
  n_batches = -(-len(source) // batch_size)
  for p in range(passes):
    total, count = 0.0, 0.0
    key = jax.random.fold_in(jax.random.PRNGKey(seed), p)
    it = batching.batches(source, batch_size, shuffle=False, budgets=budgets)
    for i, graph in enumerate(tqdm.tqdm(it, total=n_batches, disable=not progress,
                                        desc=f'{desc} pass {p + 1}/{passes}',
                                        leave=False)):
      s, c = nll_fn(params, graph, jax.random.fold_in(key, i))
      total += float(s)
      count += float(c)
    means.append(total / max(count, 1.0))
  return {'nll': float(np.mean(means)), 'nll_std_over_passes': float(np.std(means)),
          'molecules': len(source)}
