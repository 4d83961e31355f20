"""Benchmarks on real QM9 batches at the published config (nf 256, 9 layers, batch 64).

  python launch/bench.py --what=all --json=bench.json
  python launch/bench.py --what=train,nll --preset=tiny      # a quick smoke run

Prints train step time (median and spread after warm-up, compile apart), NLL time
per batch, sampling molecules per hour (1000 steps), data pipeline batches/s,
peak memory, achieved GFLOP/s, the device, jax version and thread count (and JSON
with --json); warns when another process loads the CPU. The measurements are
`edm_zoo.benchmarks`.
"""

from absl import app
from absl import flags

from launch import runtime
runtime.configure_process()
import json  # noqa: E402

import jax  # noqa: E402

from edm_zoo import benchmarks  # noqa: E402
from edm_zoo import config as config_lib  # noqa: E402
from launch import flags_util  # noqa: E402

flags_util.define_config_flags()
flags_util.define_dataclass_flags(config_lib.BenchConfig, section='bench')
_DATA_DIR = flags_util.define_data_dir_flag()
_PLOT = flags.DEFINE_string('plot', None, 'jit_study: write a PNG plot here')
_MARKDOWN = flags.DEFINE_string('markdown', None,
                                'jit_study: replace the jit-study table in this file')
_JSON = flags.DEFINE_string('json', None, 'write the results here as JSON')


def main(argv):
  runtime.start_main(argv)
  config = flags_util.config_from_flags()
  try:
    flags_util.check_matmul_precision()
    bench = config_lib.build_bench(**flags_util.dataclass_values(config_lib.BenchConfig))
    results = benchmarks.run(config, bench, data_dir=_DATA_DIR.value)
  except ValueError as e:
    runtime.fail(str(e))
  if 'jit_study' in results:
    device = jax.devices()[0].device_kind
    if _PLOT.value:
      benchmarks.jit_study_plot(results['jit_study'], _PLOT.value,
                                f'{device}: {bench.sample_molecules} molecules',
                                config.diffusion.T)
    if _MARKDOWN.value:
      benchmarks.jit_study_table(_MARKDOWN.value, results['jit_study'], device,
                                 config.diffusion.T)
  load = max(results['other_busy_cores_before_after'])
  if load > 0.3:
    print(f'WARNING: other processes kept {load:.2f} cores busy around the run: these '
          'figures are contended.')
  if 'device_peak_gib' in results:
    print(f"peak device memory {results['device_peak_gib']:.2f} GiB")
  print(f"peak RSS {results['peak_rss_gb']:.2f} GB; device {results['device']}, "
        f"jax {results['jax_version']}, {results['cpu_count']} CPUs")
  print(json.dumps(results, indent=1))
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main)
