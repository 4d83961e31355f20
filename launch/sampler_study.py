"""Quality against network evaluations: every sampler at several step counts on
one trained model.

  python launch/sampler_study.py --ckpt=../shared/models/qm9_cpu_small \
      --out_dir=workdirs/sampler_study --n_samples=1000 \
      --markdown=BENCHMARKS.md --plot=docs/sampler_study_cpu.png

A Bayesian flow model (geobfn) gets one row per --steps (its own Bayesian
updates). Rows of several checkpoints can share an --out_dir (each row names its
model), so one table and plot compare them. Each row samples --n_samples molecules and reports atom
and molecule stability and validity with 95% intervals (Wilson; a bootstrap over
molecules for atom stability), uniqueness (no interval: docs/metrics.md) and
molecules per hour. Rows run from the
cheapest up and are saved to <out_dir>/rows.json as they finish; a rerun skips
the rows already there (a row is timed whole, so an interrupted row starts over).
"""

from absl import app
from absl import flags

from launch import runtime
runtime.configure_process()
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from edm_zoo import benchmarks  # noqa: E402
from edm_zoo import config as config_lib  # noqa: E402
from edm_zoo import methods  # noqa: E402
from edm_zoo import reporting  # noqa: E402
from edm_zoo.methods.diffusion import samplers  # noqa: E402
from edm_zoo.io import files  # noqa: E402
from launch import flags_util  # noqa: E402

_CKPT = flags.DEFINE_string('ckpt', None, 'checkpoint folder')
_OUT_DIR = flags.DEFINE_string('out_dir', 'workdirs/sampler_study', 'output folder')
_N_SAMPLES = flags.DEFINE_integer('n_samples', 1000, 'molecules per row')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 100, 'molecules per sampling batch')
_SEED = flags.DEFINE_integer('seed', 0, 'sampling seed (the same for every row)')
_SAMPLERS = flags.DEFINE_list('samplers', samplers.names(), 'samplers to study')
_STEPS = flags.DEFINE_list('steps', ['1000', '500', '250', '100', '50', '25'],
                           'reverse steps per molecule (NFE = steps + 1)')
_ETA = flags.DEFINE_float('eta', 0.0, "ddim's eta")
_SPACINGS = flags.DEFINE_list('spacings', ['uniform'],
                              f'time grids to study: {list(samplers.SPACINGS)}')
_JIT_STEPS = flags.DEFINE_integer('jit_steps', 25, 'steps per compiled call (every row '
                                  'compiles the same chain length)')
_MARKDOWN = flags.DEFINE_string('markdown', None, 'replace the study table in this file')
_PLOT = flags.DEFINE_string('plot', None, 'write a PNG plot here')
_PLOT_BY_MODEL = flags.DEFINE_bool('plot_by_model', False, 'one line per model in the plot '
                                   '(its rows whatever their sampler and grid)')
_DATA_DIR = flags_util.define_data_dir_flag()
_PROGRESS = flags.DEFINE_bool('progress', True, 'show progress bars')

_BEGIN, _END = '<!-- sampler-study begin -->', '<!-- sampler-study end -->'


def _replace_table(path: str, table: str) -> None:
  text = open(path).read() if os.path.exists(path) else ''
  block = f'{_BEGIN}\n{table}\n{_END}'
  if _BEGIN in text and _END in text:
    text = text[:text.index(_BEGIN)] + block + text[text.index(_END) + len(_END):]
  else:
    text += '\n' + block + '\n'
  with files.atomic_path(path) as tmp, open(tmp, 'w') as f:
    f.write(text)


def main(argv):
  runtime.start_main(argv)
  if not _CKPT.value:
    sys.exit('error: give --ckpt=DIR.')
  try:
    steps = sorted({int(s) for s in _STEPS.value})
    plan = [config_lib.build_sampling(
        n_samples=_N_SAMPLES.value, batch_size=_BATCH_SIZE.value, seed=_SEED.value,
        sampler=name, steps=s, eta=_ETA.value if name == 'ddim' else 0.0,
        spacing=spacing, jit_steps=min(_JIT_STEPS.value, s))
        for s in steps for spacing in _SPACINGS.value for name in _SAMPLERS.value]
    for p in plan:
      samplers.get(p.sampler, eta=p.eta)
  except ValueError as e:
    runtime.fail(str(e))
  ckpt = flags_util.checked_ckpt_path(_CKPT.value)
  out_dir = flags_util.writable_out_dir(_OUT_DIR.value)
  try:
    config, model, params, meta = reporting.load_model(ckpt)
    own = methods.method_of(config.model.name).own_sampler
    if own:
      # One row per step count: the method's own sampler (--samplers and
      # --spacings are diffusion options).
      plan = [config_lib.build_sampling(n_samples=_N_SAMPLES.value, batch_size=_BATCH_SIZE.value,
                                        seed=_SEED.value, steps=s) for s in steps]
    for p in plan:
      methods.check_sampling(model, p)
      methods.steps_of(model, params, p)
  except ValueError as e:
    runtime.fail(str(e))
  types, z = reporting.elements_of(config, meta, flags.FLAGS.data_dir)
  rows_path = os.path.join(out_dir, 'rows.json')
  rows = json.load(open(rows_path)) if os.path.exists(rows_path) else []
  key = lambda r: (r.get('model', config.model.name), r['sampler'], r['eta'],
                   r.get('spacing', 'uniform'), r['steps'], r['molecules'])
  done = {key(r) for r in rows}
  sampler_name = lambda p: own or p.sampler
  for p in plan:
    if (config.model.name, sampler_name(p), p.eta, p.spacing,
        methods.steps_of(model, params, p), p.n_samples) in done:
      continue
    row = benchmarks.sampler_study_row(
        model, params, p, atomic_numbers=z, elements=types, progress=_PROGRESS.value)
    rows.append(row)
    print(benchmarks.sampler_study_table([row]).splitlines()[-1], flush=True)
    with files.atomic_path(rows_path) as tmp, open(tmp, 'w') as f:
      json.dump(rows, f, indent=1)
  spacing = lambda r: r.get('spacing', 'uniform')
  rows.sort(key=lambda r: (r.get('model', ''), r['sampler'], r['eta'], spacing(r) != 'uniform',
                           spacing(r), -r['steps']))
  table = benchmarks.sampler_study_table(rows)
  print(table)
  if _MARKDOWN.value:
    _replace_table(_MARKDOWN.value, table)
  if _PLOT.value:
    name = (' vs '.join(sorted({r.get('model', '?') for r in rows})) if _PLOT_BY_MODEL.value
            else os.path.basename(os.path.normpath(ckpt)))
    benchmarks.sampler_study_plot(rows, _PLOT.value,
                                  f'{name}: '
                                  f'{_N_SAMPLES.value} molecules per point',
                                  by_model=_PLOT_BY_MODEL.value)


if __name__ == '__main__':
  app.run(main)
