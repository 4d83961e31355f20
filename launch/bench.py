"""Benchmarks on real QM9 batches at the published config (nf 256, 9 layers, batch 64).

  python launch/bench.py --what=all --json=bench.json
  python launch/bench.py --what=train,nll --preset=tiny      # a quick smoke run

Prints a table (and JSON with --json): train step time (median and spread after
warm-up, compile apart), NLL evaluation time per batch, sampling molecules per
hour (1000 steps), data pipeline batches/s, peak memory, achieved GFLOP/s, the
device, jax version and thread count. Warns when another process loads the CPU.

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

import json
import os
import platform
import resource
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runtime  # noqa: E402  pylint: disable=g-import-not-at-top
runtime.configure_process()
import flags_util  # noqa: E402  pylint: disable=g-import-not-at-top

import edm_zoo  # noqa: F401,E402

flags_util.define_config_flags()
_WHAT = flags.DEFINE_list('what', ['all'],
                          'train,nll,sample,data,jit_study or all (all = the first four)')
_KS = flags.DEFINE_list('jit_study_ks', ['1', '10', '100', '1000'],
                        'jit_study: reverse steps per compiled call')
_UNROLLS = flags.DEFINE_list('jit_study_unrolls', ['1', '4'], 'jit_study: scan unrolls')
_PLOT = flags.DEFINE_string('plot', None, 'jit_study: write a PNG plot here')
_MARKDOWN = flags.DEFINE_string('markdown', None,
                                'jit_study: replace the jit-study table in this file')
_JSON = flags.DEFINE_string('json', None, 'write the results here as JSON')
_REPEATS = flags.DEFINE_integer('repeats', 10, 'timed repetitions after warm-up')
_SAMPLE_MOLECULES = flags.DEFINE_integer('sample_molecules', 10,
                                         'molecules per sampling batch')
_SAMPLE_STEPS = flags.DEFINE_integer(
    'sample_steps', 50, 'reverse steps timed (scaled to T for molecules/hour)')
_SPLIT = flags.DEFINE_enum('bench_split', 'train', ['train', 'valid', 'test'],
                           'split whose molecules make the train/data batches')
_DATA_BATCHES = flags.DEFINE_integer('data_batches', 300, 'batches for --what=data')


def flops_forward(n_node: float, n_edge: float, nf: int, n_layers: int) -> float:
  return n_layers * (14 * n_node * nf**2 + 4 * n_edge * nf**2 + 4 * n_edge * nf)


def _cpu_contention(seconds: float = 1.0) -> float:
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


def _median_spread(times):
  import numpy as np  # pylint: disable=g-import-not-at-top
  t = np.asarray(times)
  return float(np.median(t)), float(np.percentile(t, 90) - np.percentile(t, 10))


def _jit_study(model, params, hist, remove_h, n_mol):
  """Compile and run time of the full chain for K steps per call and unrolls."""
  import jax  # pylint: disable=g-import-not-at-top
  from edm_zoo import generate  # pylint: disable=g-import-not-at-top
  from edm_zoo.data import batching, qm9  # pylint: disable=g-import-not-at-top
  from edm_zoo.diffusion import sampler  # pylint: disable=g-import-not-at-top
  T = model.T
  sizes = generate.sample_sizes(hist, n_mol, 0, 0)
  graph = generate.placeholder_graph(
      sizes, qm9.atomic_numbers(remove_h), batching.default_budgets(n_mol, hist))
  rows = []
  for k in sorted({min(int(k), T) for k in _KS.value}):
    for unroll in sorted({int(u) for u in _UNROLLS.value}):
      z = model.sample_noise(jax.random.PRNGKey(0), graph)
      call = lambda z, first: sampler.reverse_steps(
          model, params, graph, z, jax.numpy.int32(first), jax.random.PRNGKey(1),
          n_steps=k, unroll=unroll)
      start = time.perf_counter()
      jax.block_until_ready(call(z, T - 1))
      first_call = time.perf_counter() - start
      start = time.perf_counter()
      jax.block_until_ready(call(z, T - 1))
      one_call = time.perf_counter() - start
      start = time.perf_counter()
      done, zz = 0, z
      while done < T:
        zz = call(zz, T - 1 - done)
        done += k
      jax.block_until_ready(zz)
      run = time.perf_counter() - start
      row = {'K': k, 'unroll': unroll, 'compile_s': max(first_call - one_call, 0.0),
             'chain_s': run, 'molecules': n_mol,
             'molecules_per_hour': 3600 * n_mol / run}
      rows.append(row)
      print(f"jit study K={k:5d} unroll={unroll}: compile {row['compile_s']:6.1f} s, "
            f"{T}-step chain {run:7.1f} s, {row['molecules_per_hour']:8.0f} molecules/h")
  if _PLOT.value:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for unroll in sorted({r['unroll'] for r in rows}):
      rs = [r for r in rows if r['unroll'] == unroll]
      axes[0].plot([r['K'] for r in rs], [r['compile_s'] for r in rs], 'o-',
                   label=f'unroll {unroll}')
      axes[1].plot([r['K'] for r in rs], [r['chain_s'] for r in rs], 'o-',
                   label=f'unroll {unroll}')
    for ax, title in zip(axes, ('compile time (s)', f'{T}-step chain (s)')):
      ax.set_xscale('log')
      ax.set_xlabel('reverse steps per compiled call (K)')
      ax.set_title(title)
      ax.legend()
    fig.suptitle(f'{jax.devices()[0].device_kind}: {n_mol} molecules')
    fig.tight_layout()
    fig.savefig(_PLOT.value, dpi=90)
  if _MARKDOWN.value:
    _write_table(_MARKDOWN.value, rows, jax.devices()[0].device_kind, T)
  return rows


def _write_table(path, rows, device, T):
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


def main(argv):
  runtime.start_main(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from edm_zoo import evaluation, generate  # pylint: disable=g-import-not-at-top
  from edm_zoo.data import batching, qm9  # pylint: disable=g-import-not-at-top
  from edm_zoo.diffusion import Diffusion, sampler  # pylint: disable=g-import-not-at-top
  from edm_zoo.training import optimizer, state as train_state  # pylint: disable=g-import-not-at-top

  config = flags_util.config_from_flags()
  what = set(_WHAT.value)
  if 'all' in what:
    what = (what - {'all'}) | {'train', 'nll', 'sample', 'data'}
  unknown = what - {'train', 'nll', 'sample', 'data', 'jit_study'}
  if unknown:
    sys.exit(f'error: unknown --what {sorted(unknown)}; allowed: train, nll, sample, '
             'data, jit_study, all.')
  load_before = _cpu_contention()
  remove_h = qm9.remove_h_for(config.dataset)
  if not qm9.is_prepared(remove_h):
    sys.exit('error: QM9 is not prepared: run `make data`.')
  stats = qm9.statistics(remove_h)
  hist = stats.n_nodes_histogram
  bs = config.train.batch_size
  m = config.model
  results = {
      'device': str(jax.devices()[0].device_kind), 'platform': jax.default_backend(),
      'jax_version': jax.__version__, 'cpu_count': os.cpu_count(),
      'machine': platform.processor() or platform.machine(),
      'matmul_precision': flags.FLAGS.matmul_precision,
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
      'xla_flags': os.environ.get('XLA_FLAGS'),
      'config': {'model': m.name, 'nf': m.nf, 'n_layers': m.n_layers, 'batch_size': bs,
                 'T': config.diffusion.T},
  }
  train_src = qm9.load(_SPLIT.value, remove_h)
  if 'data' in what:
    it = batching.batches(train_src, bs, seed=0, epoch=0, n_nodes_histogram=hist)
    next(it)
    start = time.perf_counter()
    n = 0
    for _ in it:
      n += 1
      if n == _DATA_BATCHES.value:
        break
    results['data_batches_per_s'] = n / (time.perf_counter() - start)
    print(f"data: {results['data_batches_per_s']:.1f} batches of {bs} per second")

  model = Diffusion(config, hist)
  tx = optimizer.torch_adamw_amsgrad(config.train.lr)
  batches = [g for g, _ in zip(batching.sharded_batches(
      train_src, bs, 1, seed=0, n_nodes_histogram=hist), range(_REPEATS.value + 2))]
  batches = [g for g, _ in batches]
  graph0 = jax.tree.map(lambda a: a[0], batches[0])
  state = train_state.init_state(model, tx, jax.random.PRNGKey(0), graph0)
  real_nodes = np.mean([float(g.nodes['mask'].sum()) for g in batches])
  real_edges = np.mean([float(g.edges['mask'].sum()) for g in batches])
  fwd = flops_forward(real_nodes, real_edges, m.nf, m.n_layers)
  results['flops_forward_per_batch'] = fwd

  if 'train' in what:
    step = jax.jit(lambda s, g, k: train_state.train_step(
        s, g, k, model=model, tx=tx, ema_decay=config.train.ema_decay),
        donate_argnums=0)
    key = jax.random.PRNGKey(1)
    start = time.perf_counter()
    state, metrics = step(state, batches[0], key)
    jax.block_until_ready(metrics)
    results['train_compile_and_first_step_s'] = time.perf_counter() - start
    shapes = {jax.tree.map(np.shape, g).n_node for g in batches}
    times = []
    for g in batches[1:]:
      start = time.perf_counter()
      state, metrics = step(state, g, key)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    # The first call at a new padding budget compiles: drop those from the timing.
    times = times[len(shapes) - 1:] if len(times) > len(shapes) else times
    med, spread = _median_spread(times)
    results.update(train_step_median_s=med, train_step_spread_p10_p90_s=spread,
                   train_gflops_per_s=3 * fwd / med / 1e9)
    print(f'train step: median {med:.3f} s (p90-p10 {spread:.3f} s), '
          f'{3 * fwd / med / 1e9:.1f} GFLOP/s, compile+first '
          f"{results['train_compile_and_first_step_s']:.1f} s")

  if 'nll' in what:
    nll_fn = evaluation.make_nll_fn(model)
    valid = list(batching.batches(evaluation.Subset(qm9.load('valid', remove_h),
                                                    bs * (_REPEATS.value + 1)),
                                  bs, shuffle=False, n_nodes_histogram=hist))
    start = time.perf_counter()
    jax.block_until_ready(nll_fn(state.ema_params, valid[0], jax.random.PRNGKey(0)))
    results['nll_compile_and_first_s'] = time.perf_counter() - start
    times = []
    for i, g in enumerate(valid[1:]):
      start = time.perf_counter()
      jax.block_until_ready(nll_fn(state.ema_params, g, jax.random.PRNGKey(i)))
      times.append(time.perf_counter() - start)
    med, spread = _median_spread(times[1:] if len(times) > 2 else times)
    results.update(nll_batch_median_s=med, nll_batch_spread_s=spread)
    print(f'NLL: median {med:.3f} s per batch of {bs} (p90-p10 {spread:.3f} s)')

  if 'sample' in what:
    n_mol = _SAMPLE_MOLECULES.value
    T = config.diffusion.T
    sizes = generate.sample_sizes(hist, n_mol, 0, 0)
    graph = generate.placeholder_graph(sizes, qm9.atomic_numbers(remove_h),
                                       batching.default_budgets(n_mol, hist))
    n_steps = min(_SAMPLE_STEPS.value, T)

    @jax.jit
    def chain(params, z, key):
      def body(z, s_int):
        noise = model.sample_noise(jax.random.fold_in(key, s_int), graph)
        s = jax.numpy.full(n_mol + 1, s_int, jax.numpy.float32) / T
        t = jax.numpy.full(n_mol + 1, s_int + 1, jax.numpy.float32) / T
        return sampler.p_zs_given_zt(model, params, graph, s, t, z, noise)['z_s'], None
      return jax.lax.scan(body, z, jax.numpy.arange(n_steps - 1, -1, -1))[0]

    z = model.sample_noise(jax.random.PRNGKey(0), graph)
    start = time.perf_counter()
    jax.block_until_ready(chain(state.ema_params, z, jax.random.PRNGKey(1)))
    results['sample_compile_and_first_s'] = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(chain(state.ema_params, z, jax.random.PRNGKey(2)))
    per_step = (time.perf_counter() - start) / n_steps
    results.update(sample_step_s=per_step, sample_molecules=n_mol,
                   sample_molecules_per_hour=3600 * n_mol / (per_step * T))
    print(f'sampling: {per_step:.3f} s per reverse step for {n_mol} molecules = '
          f"{results['sample_molecules_per_hour']:.0f} molecules/hour at T={T}")

  if 'jit_study' in what:
    results['jit_study'] = _jit_study(model, state.ema_params, hist, remove_h,
                                      _SAMPLE_MOLECULES.value)

  results['peak_rss_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  load_after = _cpu_contention()
  results['other_busy_cores_before_after'] = [load_before, load_after]
  if max(load_before, load_after) > 0.3:
    print(f'WARNING: other processes kept {max(load_before, load_after):.2f} cores busy '
          'around the run: these figures are contended.')
  print(f"peak RSS {results['peak_rss_gb']:.2f} GB; device {results['device']}, "
        f"jax {results['jax_version']}, {results['cpu_count']} CPUs")
  print(json.dumps(results, indent=1))
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main)
