"""What `launch/bench.py` measures, on the library's own functions.

Train step (`training.state.make_step_fns`, the step training runs), NLL batches
(`evaluation.make_nll_fn`), sampling (`diffusion.samplers.chain.reverse_steps`,
the samplers' compiled chain), the data pipeline, peak memory and achieved GFLOP/s,
plus the jit study (K reverse steps per compiled call x scan unroll) and the
sampler study (quality against network evaluations per molecule).

Analytic FLOP count (multiply-adds x 2) of one EGNN forward pass with factored
first edge layers, for N real nodes, E directed edges, width f, L blocks:
  per block:  edge MLP  4 N f^2 (node projections) + 2 E f^2 (second layer)
                        + 2 E f (attention)
              node MLP  4 N f^2 + 2 N f^2
              coord MLP 4 N f^2 + 2 E f^2 + 2 E f
  => L (14 N f^2 + 4 E f^2 + 4 E f), plus embeddings (negligible).
A train step costs ~3 forward passes (forward + backward), an NLL batch 2
forwards, a sampler step 1 forward.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edm_zoo import config as config_lib
from edm_zoo import evaluation, generate
from edm_zoo.data import batching, registry, sources
from edm_zoo.methods.diffusion import samplers
from edm_zoo.methods.diffusion.samplers import chain
from edm_zoo import methods
from edm_zoo.methods.diffusion.objective import Diffusion
from edm_zoo.io import export
from edm_zoo.metrics import intervals, own_bonds
from edm_zoo.training import distributed, optimizer, state as train_state


def flops_forward(n_node: float, n_edge: float, nf: int, n_layers: int) -> float:
  return n_layers * (14 * n_node * nf**2 + 4 * n_edge * nf**2 + 4 * n_edge * nf)


def cpu_contention(seconds: float = 1.0) -> float:
  """Cores kept busy by *other* processes over `seconds` while we sleep."""
  def busy_total():
    with open('/proc/stat') as f:
      values = [float(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)
  try:
    b0, t0 = busy_total()
    time.sleep(seconds)
    b1, t1 = busy_total()
  except OSError:
    return 0.0
  return (b1 - b0) / max(t1 - t0, 1e-9) * (os.cpu_count() or 1)


def median_spread(times: Sequence[float]) -> tuple[float, float]:
  """(median, p90 - p10) of a list of timings."""
  t = np.asarray(times)
  return float(np.median(t)), float(np.percentile(t, 90) - np.percentile(t, 10))


def _shape(graphs) -> tuple:
  """What a compiled step depends on: the padded node and edge counts."""
  return (graphs.nodes['positions'].shape, graphs.senders.shape)


def _timed(fn, *args) -> tuple[Any, float]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def sampling_graph(model: Diffusion, n_mol: int, atomic_numbers) -> Any:
  """The placeholder batch of `n_mol` molecules (sizes drawn with seed 0) that
  sampling benchmarks use."""
  hist = model.n_nodes_histogram
  sizes = generate.sample_sizes(hist, n_mol, 0, 0)
  return batching.placeholder_graph(
      sizes, atomic_numbers,
      batching.choose_budget(sizes, batching.default_budgets(n_mol, hist)))


def own_chain_seconds(model, params, graph, *, n_steps: int,
                      atomic_numbers) -> dict[str, float]:
  """Times an `n_steps`-step chain of a method's own sampler (a Bayesian flow's
  updates and final call, SemlaFlow's Euler steps), compiled once beforehand:
  {'compile_s', 'chain_s'} as `chain_seconds`."""
  sampling = config_lib.SamplingConfig(steps=n_steps)
  run = lambda key: methods.sample(model, params, graph, key, sampling,
                                   atomic_numbers=atomic_numbers)['x']
  _, first = _timed(run, jax.random.PRNGKey(0))
  _, warm = _timed(run, jax.random.PRNGKey(1))
  return {'compile_s': max(first - warm, 0.0), 'chain_s': warm}


def chain_seconds(model: Diffusion, params, graph, *, n_steps: int, k: int,
                  unroll: int = 1, sampler=None) -> dict[str, float]:
  """Times the first `n_steps` steps of the full T-step chain, cut into compiled
  calls of `k` steps (EDM's ancestral sampler unless another is given).

  Returns:
    {'compile_s': first call minus a warm call, 'chain_s': the n_steps}.
  """
  sampler = sampler or samplers.get('ancestral')
  grid = jnp.asarray(samplers.time_grid(model.T))
  z = model.sample_noise(jax.random.PRNGKey(0), graph)
  carry = sampler.init(z)
  call = lambda z, carry, i: chain.reverse_steps(
      model, params, graph, z, carry, grid[i:i + k], grid[i + 1:i + k + 1],
      jax.random.PRNGKey(1), sampler=sampler, unroll=unroll)
  _, first_call = _timed(call, z, carry, 0)
  _, one_call = _timed(call, z, carry, 0)
  start = time.perf_counter()
  done = 0
  while done < n_steps:
    z, carry = call(z, carry, done)
    done += k
  jax.block_until_ready(z)
  return {'compile_s': max(first_call - one_call, 0.0),
          'chain_s': time.perf_counter() - start}


def jit_study(model: Diffusion, params, graph, n_mol: int, ks: Sequence[int],
              unrolls: Sequence[int]) -> list[dict[str, float]]:
  """Compile and run time of the whole T-step chain for each K and unroll."""
  T = model.T
  rows = []
  for k in sorted({min(int(k), T) for k in ks}):
    for unroll in sorted({int(u) for u in unrolls}):
      timing = chain_seconds(model, params, graph, n_steps=T, k=k, unroll=unroll)
      rows.append({'K': k, 'unroll': unroll, **timing, 'molecules': n_mol,
                   'molecules_per_hour': 3600 * n_mol / timing['chain_s']})
  return rows


def jit_study_plot(rows, path: str, title: str, T: int) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for unroll in sorted({r['unroll'] for r in rows}):
    rs = [r for r in rows if r['unroll'] == unroll]
    for ax, key in zip(axes, ('compile_s', 'chain_s')):
      ax.plot([r['K'] for r in rs], [r[key] for r in rs], 'o-', label=f'unroll {unroll}')
  for ax, name in zip(axes, ('compile time (s)', f'{T}-step chain (s)')):
    ax.set_xscale('log')
    ax.set_xlabel('reverse steps per compiled call (K)')
    ax.set_title(name)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def jit_study_table(path: str, rows, device: str, T: int) -> None:
  """Replaces (or appends) the jit-study table of `device` in a Markdown file."""
  begin = f'<!-- jit-study {device} begin -->'
  end = f'<!-- jit-study {device} end -->'
  table = [begin, f'| K (steps per call) | unroll | compile (s) | {T}-step chain (s) | '
           'molecules/hour |', '|---|---|---|---|---|']
  table += [f"| {r['K']} | {r['unroll']} | {r['compile_s']:.1f} | {r['chain_s']:.1f} | "
            f"{r['molecules_per_hour']:.0f} |" for r in rows]
  table.append(end)
  text = open(path).read() if os.path.exists(path) else ''
  if begin in text and end in text:
    text = text[:text.index(begin)] + '\n'.join(table) + text[text.index(end) + len(end):]
  else:
    text += '\n' + '\n'.join(table) + '\n'
  with open(path, 'w') as f:
    f.write(text)


def _batches_per_s(batches, count: int) -> float:
  """How many of the next `count` batches an iterator yields per second."""
  start, n = time.perf_counter(), 0
  for _ in batches:
    n += 1
    if n == count:
      break
  return n / (time.perf_counter() - start)


def run(config: config_lib.Config, bench: config_lib.BenchConfig, *,
        data_dir: str | None = None, log=print) -> dict[str, Any]:
  """Every measurement `bench.what` asks for; `log` receives one line per figure.

  Raises:
    ValueError: the dataset is not prepared (one line).
  """
  config = registry.configure(config, data_dir)
  what = set(bench.what)
  load_before = cpu_contention()
  stats = registry.statistics(config.dataset, data_dir)
  hist = stats.n_nodes_histogram
  bs, m = config.train.batch_size, config.model
  results: dict[str, Any] = {
      'device': str(jax.devices()[0].device_kind), 'platform': jax.default_backend(),
      'jax_version': jax.__version__, 'cpu_count': os.cpu_count(),
      'machine': platform.processor() or platform.machine(),
      'matmul_precision': str(jax.config.jax_default_matmul_precision),
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
      'xla_flags': os.environ.get('XLA_FLAGS'),
      'config': {'model': m.name, 'nf': m.nf, 'n_layers': m.n_layers, 'batch_size': bs,
                 'T': config.diffusion.T},
  }
  start = time.perf_counter()
  train_src = registry.load(config.dataset, bench.bench_split, data_dir)
  if 'data' in what:
    results['data_open_s'] = time.perf_counter() - start
    it = batching.batches(train_src, bs, seed=0, epoch=0, n_nodes_histogram=hist)
    next(it)
    results['data_first_batch_s'] = time.perf_counter() - start
    log(f"data: split of {len(train_src):,} molecules opened in "
        f"{results['data_open_s']:.2f} s, first batch after "
        f"{results['data_first_batch_s']:.2f} s")
    results['data_batches_per_s'] = _batches_per_s(it, bench.data_batches)
    log(f"data: {results['data_batches_per_s']:.1f} batches of {bs} per second")
    # The same split with bonds and formal charges on the batches (the switch
    # bond-predicting methods turn on), for what it costs.
    bonded = registry.load(config.dataset, bench.bench_split, data_dir, with_bonds=True)
    it = batching.batches(bonded, bs, seed=0, epoch=0, n_nodes_histogram=hist,
                          with_bonds=True)
    next(it)
    results['data_bonds_batches_per_s'] = _batches_per_s(it, bench.data_batches)
    results['data_bonds_molecules'] = len(bonded)
    log(f"data with bonds: {results['data_bonds_batches_per_s']:.1f} batches of {bs} per "
        f"second ({len(bonded):,} of the {len(train_src):,} molecules have known bonds)")

  model = methods.make(config, hist)
  t = config.train
  tx = optimizer.torch_adamw_amsgrad(t.lr, weight_decay=t.weight_decay,
                                     warmup_steps=t.warmup_steps,
                                     warmup_start_factor=t.warmup_start_factor)
  if config.train.spike_loss:  # As training runs it (GeoBFN's rules).
    tx = optimizer.guarded(tx)
  rules = optimizer.StepRules(skip_grad_norm=config.train.skip_grad_norm,
                              spike_loss=config.train.spike_loss,
                              spike_limit=config.train.spike_limit)
  # Split like training splits a one-device batch (`TrainConfig.microbatch_size`).
  parts = train_state.parts_per_device(bs, config.train.microbatch_size,
                                       jax.default_backend())
  results['train_parts'] = parts
  if model.with_bonds:
    train_src = registry.load(config.dataset, bench.bench_split, data_dir, with_bonds=True)
  batches = [g for (g, _), _ in zip(batching.sharded_batches(
      train_src, bs, parts, seed=0, n_nodes_histogram=hist, with_bonds=model.with_bonds),
      range(bench.repeats + 2))]
  if hasattr(model, 'prepare'):  # Its host-side part runs a batch ahead in training.
    rng = np.random.default_rng(0)
    batches = [model.prepare(g, rng) for g in batches]
  state = train_state.init_state(model, tx, jax.random.PRNGKey(0),
                                 jax.tree.map(lambda a: a[0], batches[0]))
  real_nodes = np.mean([float(g.nodes['mask'].sum()) for g in batches])
  real_edges = np.mean([float(g.edges['mask'].sum()) for g in batches])
  fwd = flops_forward(real_nodes, real_edges, m.nf, m.n_layers)
  results['flops_forward_per_batch'] = fwd
  results['batch_shapes'] = batch_shapes(train_src, bs, hist, bench.data_batches)
  shapes = results['batch_shapes']
  log(f"batches of {bs}: {shapes['real_edges_mean']:.0f} real edges, "
      f"{shapes['padded_edges_mean']:.0f} padded, {shapes['dense_pairs_mean']:.0f} in a dense "
      f"[B, N_max, N_max] layout; ladder {shapes['ladder']}; "
      f"{shapes['shapes_used']} compiled shapes over {shapes['batches']} batches")

  if 'train' in what:
    draw_fn, step_fn = train_state.make_step_fns(
        model, tx, ema_decay=config.train.ema_decay, clip_grad=config.train.clip_grad,
        clip_norm=config.train.clip_norm,
        rules=rules)
    key = jax.random.PRNGKey(1)

    def one_step(state, graphs):
      t_int, eps = draw_fn(graphs, key, state.step)
      return step_fn(state, graphs, t_int, eps)
    (state, _), first = _timed(one_step, state, batches[0])
    results['train_compile_and_first_step_s'] = first
    seen, times = {_shape(batches[0])}, []
    for g in batches[1:]:
      (state, _), seconds = _timed(one_step, state, g)
      if _shape(g) in seen:  # The first call at a new padding level compiles.
        times.append(seconds)
      seen.add(_shape(g))
    results['train_timed_steps'] = len(times)
    med, spread = median_spread(times)
    results.update(train_step_median_s=med, train_step_spread_p10_p90_s=spread,
                   train_gflops_per_s=3 * fwd / med / 1e9)
    log(f'train step: median {med:.3f} s (p90-p10 {spread:.3f} s), '
        f'{3 * fwd / med / 1e9:.1f} GFLOP/s, compile+first {first:.1f} s')

  if 'nll' in what:
    nll_fn = evaluation.make_nll_fn(model)
    valid = list(batching.batches(
        sources.Subset(registry.load(config.dataset, 'valid', data_dir,
                                     with_bonds=model.with_bonds), bs * (bench.repeats + 1)),
        bs, shuffle=False, n_nodes_histogram=hist, with_bonds=model.with_bonds))
    _, first = _timed(nll_fn, state.ema_params, valid[0], jax.random.PRNGKey(0))
    results['nll_compile_and_first_s'] = first
    seen, times = {_shape(valid[0])}, []
    for i, g in enumerate(valid[1:]):
      seconds = _timed(nll_fn, state.ema_params, g, jax.random.PRNGKey(i))[1]
      if _shape(g) in seen:  # The first batch at a new padding level compiles.
        times.append(seconds)
      seen.add(_shape(g))
    med, spread = median_spread(times[1:] if len(times) > 2 else times)
    results.update(nll_batch_median_s=med, nll_batch_spread_s=spread,
                   nll_timed_batches=len(times),
                   nll_real_atoms_mean=float(np.mean([g.nodes['mask'].sum() for g in valid])))
    log(f'NLL: median {med:.3f} s per batch of {bs} (p90-p10 {spread:.3f} s, '
        f"{len(times)} batches timed, {results['nll_real_atoms_mean'] / bs:.1f} atoms "
        'per molecule)')

  graph = None
  if 'sample' in what or 'jit_study' in what:
    graph = sampling_graph(model, bench.sample_molecules, stats.atomic_numbers)
  if 'sample' in what:
    n_mol, T = bench.sample_molecules, model.T
    n_steps = min(bench.sample_steps, T)
    timing = (own_chain_seconds(model, state.ema_params, graph, n_steps=n_steps,
                                atomic_numbers=stats.atomic_numbers)
              if methods.method_of(config.model.name).own_sampler
              else chain_seconds(model, state.ema_params, graph, n_steps=n_steps, k=n_steps))
    per_step = timing['chain_s'] / n_steps
    results.update(sample_compile_s=timing['compile_s'], sample_step_s=per_step,
                   sample_molecules=n_mol,
                   sample_molecules_per_hour=3600 * n_mol / (per_step * T))
    log(f'sampling: {per_step:.3f} s per reverse step for {n_mol} molecules = '
        f"{results['sample_molecules_per_hour']:.0f} molecules/hour at T={T}")

  if 'jit_study' in what:
    rows = jit_study(model, state.ema_params, graph, bench.sample_molecules,
                     bench.jit_study_ks, bench.jit_study_unrolls)
    for r in rows:
      log(f"jit study K={r['K']:5d} unroll={r['unroll']}: compile {r['compile_s']:6.1f} s,"
          f" {model.T}-step chain {r['chain_s']:7.1f} s, {r['molecules_per_hour']:8.0f}"
          ' molecules/h')
    results['jit_study'] = rows

  if 'size_study' in what:
    results['size_study'] = size_study(model, tx, config, bench, data_dir, log)

  results['peak_rss_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  device_peak = device_peak_bytes()
  if device_peak is not None:
    results['device_peak_gib'] = device_peak / 2**30
  results['other_busy_cores_before_after'] = [load_before, cpu_contention()]
  return results


def device_peak_bytes() -> int | None:
  """The accelerator allocator's high-water mark over the process (None on CPU,
  whose allocations RSS counts)."""
  memory = jax.devices()[0].memory_stats()
  return None if not memory else memory.get('peak_bytes_in_use')


def batch_shapes(source, batch_size: int, histogram: dict[int, int],
                 n_batches: int) -> dict[str, Any]:
  """Edges per random batch: real, padded to the ladder, and dense.

  The dense count is what a [B, N_max, N_max] layout computes (the original pads
  each random batch to its largest molecule); `shapes_used` is how many ladder
  levels (compiled shapes) `n_batches` random batches need.
  """
  budgets = batching.default_budgets(batch_size, histogram)
  order = batching.permutation(len(source), 0, 0)[:n_batches * batch_size]
  sizes = np.array([len(m['charges']) for m in sources.fetch(source, order)])
  real, padded, dense, used = [], [], [], set()
  for lo in range(0, len(sizes) - batch_size + 1, batch_size):
    b = sizes[lo:lo + batch_size]
    budget = batching.choose_budget(b, budgets)
    used.add(budget)
    real.append(int((b * (b - 1)).sum()))
    padded.append(budget.n_edge)
    dense.append(batch_size * int(b.max()) ** 2)
  return {'ladder': [(b.n_node, b.n_edge, b.n_graph) for b in budgets],
          'batches': len(real), 'shapes_used': len(used),
          'real_edges_mean': float(np.mean(real)), 'padded_edges_mean': float(np.mean(padded)),
          'dense_pairs_mean': float(np.mean(dense)), 'largest_molecule': int(sizes.max())}


def _joined(molecules: Sequence[dict], k: int) -> list[dict]:
  """Molecules of k molecules each, placed 50 Angstrom apart: the graph sizes of
  GEOM-Drugs' 100+ atom tail (the cost of a step depends on sizes, not chemistry)."""
  out = []
  for lo in range(0, len(molecules) - k + 1, k):
    part = molecules[lo:lo + k]
    out.append({'positions': np.concatenate([m['positions'] + 50.0 * j
                                             for j, m in enumerate(part)]),
                'charges': np.concatenate([m['charges'] for m in part]),
                'index': lo})
  return out


def molecules_of_sizes(dataset: str, sizes: Sequence[int], count: int,
                       atomic_numbers: Sequence[int],
                       data_dir: str | None) -> list[tuple[str, list[dict]]]:
  """[(name, `count` train molecules of `dataset` with exactly n atoms)] per n in `sizes`.

  A size with fewer molecules repeats them (the step's cost depends on the sizes,
  not on which molecules they are); molecules with elements outside
  `atomic_numbers` are left out.

  Raises:
    ValueError: a size has no molecule (one line).
  """
  histogram = registry.statistics(dataset, data_dir).n_nodes_histogram
  empty = [n for n in sizes if not histogram.get(n)]
  if empty:
    raise ValueError(f'{dataset} has no training molecule of {empty} atoms; pick '
                     f'--size_study_sizes among {sorted(histogram)}.')
  train = registry.load(dataset, 'train', data_dir)
  found: dict[int, list[dict]] = {n: [] for n in sizes}
  chunk = 4096
  for lo in range(0, len(train), chunk):
    for m in sources.fetch(train, range(lo, min(lo + chunk, len(train)))):
      n = len(m['charges'])
      if (n in found and len(found[n]) < count
          and np.isin(m['charges'], atomic_numbers).all()):
        found[n].append(m)
    if all(len(v) == count for v in found.values()):
      break
  empty = [n for n, v in found.items() if not v]
  if empty:
    raise ValueError(f'no {dataset} training molecule of {empty} atoms has only elements '
                     f'the model knows ({list(atomic_numbers)}).')
  return [(f'{dataset} {n} atoms', [v[i % len(v)] for i in range(count)])
          for n, v in found.items()]


def size_study(model: Diffusion, tx, config: config_lib.Config,
               bench: config_lib.BenchConfig, data_dir: str | None, log) -> list[dict]:
  """Train-step time and memory against molecule size, one model for all: QM9
  batches, batches of the config's dataset, and 100+ atom molecules (three of the
  dataset's joined), each padded to its own ladder; or, with
  `bench.size_study_sizes`, batches of the dataset's molecules of one size each,
  smallest first (peak RSS is the process's, so it grows with the largest size so
  far)."""
  bs = config.train.batch_size
  z = registry.statistics(config.dataset, data_dir).atomic_numbers
  if bench.size_study_sizes:
    groups = molecules_of_sizes(config.dataset, bench.size_study_sizes,
                                bs * (bench.repeats + 2), z, data_dir)
  else:
    own = registry.load(config.dataset, 'train', data_dir)
    n_own = min(len(own), 3 * bs * (bench.repeats + 2))
    own_molecules = sources.fetch(sources.Subset(own, n_own, spread=True), range(n_own))
    groups = [(config.dataset, own_molecules[:bs * (bench.repeats + 2)]),
              (f'{config.dataset} x3 joined', _joined(own_molecules, 3))]
  if (not bench.size_study_sizes and config.dataset != 'qm9'
      and registry.is_prepared('qm9', data_dir)):
    # QM9's molecules whose elements the model knows.
    qm9 = sources.fetch(sources.Subset(registry.load('qm9', 'train', data_dir),
                                       bs * (bench.repeats + 2), spread=True),
                        range(bs * (bench.repeats + 2)))
    qm9 = [m for m in qm9 if np.isin(m['charges'], z).all()]
    groups.insert(0, ('qm9', qm9))
  draw_fn, step_fn = train_state.make_step_fns(
      model, tx, ema_decay=config.train.ema_decay, clip_grad=config.train.clip_grad,
      clip_norm=config.train.clip_norm)
  key = jax.random.PRNGKey(1)
  rows, params = [], None
  parts = train_state.parts_per_device(bs, config.train.microbatch_size,
                                       jax.default_backend())
  per_part = bs // parts
  for name, molecules in groups:
    sizes = [len(m['charges']) for m in molecules]
    hist = {n: sizes.count(n) for n in set(sizes)}
    # The random-batch ladder: the study times steps on repeated shapes.
    budgets = batching.default_budgets(per_part, hist, small_quantiles=())
    graphs = []
    for lo in range(0, len(molecules) - bs + 1, bs):
      split = [molecules[lo + j * per_part:lo + (j + 1) * per_part] for j in range(parts)]
      budget = budgets[batching.common_level(split, budgets)]
      graphs.append(batching.stack([batching.build_graph(p, z, budget) for p in split]))
    if params is None:  # The parameters do not depend on the molecules' sizes.
      params = train_state.init_state(model, tx, jax.random.PRNGKey(0),
                                      jax.tree.map(lambda a: a[0], graphs[0])).params
    state = train_state.new_state(jax.tree.map(jnp.copy, params), tx)

    def one_step(state, graphs):
      t_int, eps = draw_fn(graphs, key, state.step)
      return step_fn(state, graphs, t_int, eps)
    times, shapes, error = [], set(), None
    try:
      for g in graphs:
        shape = _shape(g)
        (state, _), seconds = _timed(one_step, state, g)
        if shape in shapes:  # A new shape compiles: not a step time.
          times.append(seconds)
        shapes.add(shape)
    except jax.errors.JaxRuntimeError as e:
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      error = f'out of memory: {distributed.first_line(e)}'
    med, _ = median_spread(times) if times else (float('nan'), 0.0)
    nodes = float(np.mean([g.nodes['mask'].sum() for g in graphs]))
    edges = float(np.mean([g.edges['mask'].sum() for g in graphs]))
    row = {'molecules': name, 'batch_size': bs, 'parts': parts, 'error': error,
           'mean_atoms': float(np.mean(sizes)), 'max_atoms': max(sizes),
           'real_nodes': nodes, 'real_edges': edges,
           'padded_edges': float(np.mean([g.n_edge.sum() for g in graphs])),
           'dense_pairs': float(np.mean([bs * max(sizes[lo:lo + bs]) ** 2
                                         for lo in range(0, len(sizes) - bs + 1, bs)])),
           'train_step_median_s': med,
           'gflops_per_s': 3 * flops_forward(nodes, edges, config.model.nf,
                                             config.model.n_layers) / med / 1e9,
           'timed_steps': len(times), 'compiled_shapes': len(shapes),
           'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    rows.append(row)
    log(f"size study {name}: {row['mean_atoms']:.1f} atoms (max {row['max_atoms']}), "
        f"{edges:.0f} real edges/batch, step {med:.3f} s, {row['gflops_per_s']:.1f} GFLOP/s, "
        f"peak RSS {row['peak_rss_gb']:.2f} GB" + (f' ({error})' if error else ''))
    del state
  return rows


# --- Quality versus network evaluations: the sampler study.

METRICS = ('atom_stability', 'mol_stability', 'validity', 'uniqueness')


def sampler_study_row(model: Diffusion, params, sampling: config_lib.SamplingConfig, *,
                      atomic_numbers, elements, progress: bool = True) -> dict[str, Any]:
  """One row of the study: sample with `sampling`, time it, score the molecules.

  Before the clock starts, the same batches on a short grid compile every
  padding shape of the run (the sampler's chain of `sampling.jit_steps` steps
  runs any grid, and batch b's sizes depend on (seed, b) only), so molecules per
  hour measure sampling, not compiling.
  """
  steps = methods.steps_of(model, params, sampling)
  own = methods.method_of(model.config.model.name).own_sampler
  if own:
    # Its chain compiles per step count and padding shape: compile each shape
    # the run will meet, with the row's steps.
    _compile_shapes(model, params, sampling, atomic_numbers)
  else:
    warm_steps = min(sampling.jit_steps, steps) if sampling.jit_steps else steps
    generate.generate(model, params, dataclasses.replace(sampling, steps=warm_steps),
                      histogram=model.n_nodes_histogram, atomic_numbers=atomic_numbers,
                      progress=False)
  start = time.perf_counter()
  molecules = generate.generate(model, params, sampling, histogram=model.n_nodes_histogram,
                                atomic_numbers=atomic_numbers, progress=progress)
  seconds = time.perf_counter() - start
  row = {'model': model.config.model.name,
         'sampler': own or sampling.sampler,
         'eta': sampling.eta, 'spacing': sampling.spacing, 'steps': steps,
         'nfe': steps + 1, 'sampling_seconds': seconds,
         'molecules_per_hour': 3600 * len(molecules) / max(seconds, 1e-9)}
  row.update(intervals.metrics_with_intervals(intervals.molecule_outcomes(
      [(m['positions'], m['types']) for m in molecules], elements)))
  if molecules and all(export.has_bonds(m) for m in molecules):
    # A method that writes bonds: its molecules as written, beside EDM's row.
    own = own_bonds.evaluate(molecules, atomic_numbers)
    for key in ('atom_stability', 'mol_stability', 'validity', 'valid_and_connected'):
      row.update({f'own_{key}': own[key]['value'], f'own_{key}_lo': own[key]['lo'],
                  f'own_{key}_hi': own[key]['hi']})
  return row


def _compile_shapes(model, params, sampling, atomic_numbers) -> None:
  hist = model.n_nodes_histogram
  budgets = batching.default_budgets(sampling.batch_size, hist)
  seen = {}
  for b in range(-(-sampling.n_samples // sampling.batch_size)):
    n = min(sampling.batch_size, sampling.n_samples - b * sampling.batch_size)
    sizes = generate.sample_sizes(hist, n, sampling.seed, b)
    seen.setdefault(batching.choose_budget(sizes, budgets), sizes)
  for budget, sizes in seen.items():
    graph = batching.placeholder_graph(sizes, atomic_numbers, budget)
    jax.block_until_ready(methods.sample(model, params, graph, jax.random.PRNGKey(0),
                                         sampling, atomic_numbers=atomic_numbers)['x'])


def _label(row) -> str:
  """'ddim (eta 0)', 'ancestral, quadratic grid', 'geobfn: bayesian_updates', ..."""
  name = row['sampler'] + (f" (eta {row['eta']:g})" if row['sampler'] == 'ddim' else '')
  spacing = row.get('spacing', 'uniform')
  name = name if spacing == 'uniform' else f'{name}, {spacing} grid'
  return f"{row['model']}: {name}" if row.get('model') else name


def sampler_study_table(rows) -> str:
  """Markdown: one line per (sampler, NFE), metrics in % with 95% intervals."""
  lines = ['| sampler | NFE | atom stability | molecule stability | validity | '
           'uniqueness | molecules/h |', '|---|---|---|---|---|---|---|']
  for r in rows:
    name = _label(r)
    cells = [f"{100 * r[k]:.1f}" + (f" [{100 * r[k + '_lo']:.1f}, {100 * r[k + '_hi']:.1f}]"
                                     if r.get(k + '_lo') is not None else '')
             for k in METRICS]
    lines.append(f"| {name} | {r['nfe']} | {' | '.join(cells)} | "
                 f"{r['molecules_per_hour']:,.0f} |")
  return '\n'.join(lines)


def sampler_study_plot(rows, path: str, title: str, by_model: bool = False) -> None:
  """Quality and speed against NFE, one line per sampler (per model with
  `by_model`: each model's rows on one line, whatever sampler and grid each
  point took)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
  line = (lambda r: r.get('model', '')) if by_model else _label
  keys = ('atom_stability', 'mol_stability', 'validity')
  for i, label in enumerate(sorted({line(r) for r in rows})):
    rs = sorted((r for r in rows if line(r) == label), key=lambda r: r['nfe'])
    nfe = [r['nfe'] for r in rs]
    color = f'C{i}'
    for ax, key in zip(axes, keys):
      # Bonds inferred from distances (EDM's row); dashed: the molecule's own bonds
      # and charges, for a method that writes them.
      for prefix, style in (('', '-'), ('own_', '--')):
        k = prefix + key
        if all(k in r for r in rs):
          ax.errorbar(nfe, [100 * r[k] for r in rs],
                      yerr=[[100 * (r[k] - r[k + '_lo']) for r in rs],
                            [100 * (r[k + '_hi'] - r[k]) for r in rs]],
                      marker='o', capsize=3, color=color, linestyle=style,
                      label=label + (', own bonds' if prefix else ''))
    axes[3].plot(nfe, [r['molecules_per_hour'] for r in rs], 'o-', color=color, label=label)
  for ax, name in zip(axes, ('atom stability (%)', 'molecule stability (%)', 'validity (%)',
                             'molecules / hour')):
    ax.set_xscale('log')
    ax.set_xlabel('network evaluations per molecule (NFE)')
    ax.set_title(name)
  axes[3].set_yscale('log')
  axes[0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def loss_windows(records: Sequence[dict[str, Any]], window: int,
                 total_steps: int) -> np.ndarray:
  """Mean logged train loss over steps (0, window], (window, 2 window], ...

  Args:
    records: `metrics.jsonl` lines of one run (those without 'loss' are skipped).
    window: steps per window; must divide `total_steps`.
    total_steps: the run's length.

  Raises:
    ValueError: a window with no logged loss (a run that stopped early).
  """
  if window <= 0 or total_steps % window:
    raise ValueError(f'a window of {window} steps does not divide {total_steps} steps.')
  sums = np.zeros(total_steps // window)
  counts = np.zeros(total_steps // window)
  for r in records:
    if 'loss' in r and 0 < r['step'] <= total_steps:
      sums[(r['step'] - 1) // window] += r['loss']
      counts[(r['step'] - 1) // window] += 1
  if not counts.all():
    missing = int(np.argmin(counts > 0))
    raise ValueError(f'no train loss logged in steps {missing * window + 1}-'
                     f'{(missing + 1) * window}: did the run finish?')
  return sums / counts


def against_seed_noise(curves: dict[str, np.ndarray], reference: str,
                       other_seeds: Sequence[str]) -> dict[str, dict[str, Any]]:
  """How far each curve strays from `reference` beside how far other seeds do.

  Args:
    curves: {run: windowed mean losses} (`loss_windows`), equal lengths.
    reference: the float32 run the others share a seed (init, data, noise) with.
    other_seeds: float32 runs with other seeds: their distance from `reference`
      is the noise.

  Returns:
    {run: {gap: mean |run - reference| over the windows, noise: the same for
    the other seeds (their mean), ratio, within_noise: ratio <= 1, final_gap}}
    for every run but the reference and the other seeds.

  Raises:
    ValueError: no other seed to measure the noise with.
  """
  if not other_seeds:
    raise ValueError('the noise needs float32 runs with at least two seeds.')
  ref = curves[reference]
  noise = float(np.mean([np.mean(np.abs(curves[s] - ref)) for s in other_seeds]))
  out = {}
  for name, curve in curves.items():
    if name == reference or name in other_seeds:
      continue
    gap = float(np.mean(np.abs(curve - ref)))
    out[name] = {'gap': gap, 'noise': noise,
                 'ratio': gap / noise if noise else float('inf'),
                 'within_noise': gap <= noise,
                 'final_gap': float(abs(curve[-1] - ref[-1]))}
  return out
