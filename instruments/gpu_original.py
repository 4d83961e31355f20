"""Runs one of the harness's scripts for the original EDM on the GPU when torch sees one.

  EDM_REPO=DIR python instruments/gpu_original.py HARNESS/bench_train.py --iters 12 --warmup 2

A measuring instrument for `instruments/gpu_bench.sh`, run with the original's Python
(torch), not ours: it imports nothing of edm_zoo. The harness
(`../shared/reference/harness`) times the original with its own code on CPUs; its
`common.FLAGS` carries `--no-cuda`, which this drops where torch sees a GPU (its
README: "drop --no-cuda ... in your carried copy"), leaving the copy unchanged.
The JSON line the script prints gains `device` and `cuda_peak_gib`
(`torch.cuda.max_memory_allocated`). `EDM_ORIG_TF32=1` lets torch use TF32 for
float32 matmuls (off by default in torch, as in the original's runs).

Where wandb is not installed (the GPU machine), a stand-in for its disabled mode is
imported instead: the harness runs the original with `--no_wandb`, under which the
original only calls `wandb.init(mode='disabled')`, `wandb.save` and `wandb.log`.
"""

import importlib.util
import os
import runpy
import sys
import types


def _disabled_wandb() -> types.ModuleType:
  module = types.ModuleType('wandb')
  module.Settings = lambda **kwargs: kwargs
  for name in ('init', 'save', 'log', 'finish'):
    setattr(module, name, lambda *args, **kwargs: None)
  return module


def main() -> None:
  if len(sys.argv) < 2 or not os.path.isfile(sys.argv[1]):
    sys.exit('usage: EDM_REPO=DIR python instruments/gpu_original.py HARNESS/bench_X.py [ARGS]')
  if not os.environ.get('EDM_REPO'):
    sys.exit('error: set EDM_REPO to a checkout of the original EDM.')
  script = os.path.abspath(sys.argv[1])
  if importlib.util.find_spec('wandb') is None:
    sys.modules['wandb'] = _disabled_wandb()
  # The harness's scripts `import common`: the copy loaded here, with its flags.
  spec = importlib.util.spec_from_file_location(
      'common', os.path.join(os.path.dirname(script), 'common.py'))
  common = importlib.util.module_from_spec(spec)
  sys.modules['common'] = common
  spec.loader.exec_module(common)
  import torch  # pylint: disable=g-import-not-at-top  (the original's Python only)

  cuda = torch.cuda.is_available()
  if cuda:
    common.FLAGS = [f for f in common.FLAGS if f != '--no-cuda']
    tf32 = os.environ.get('EDM_ORIG_TF32') == '1'
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
  emit = common.emit

  def emit_with_device(d):
    d['device'] = torch.cuda.get_device_name() if cuda else 'cpu'
    if cuda:
      d['cuda_peak_gib'] = torch.cuda.max_memory_allocated() / 2**30
      d['tf32'] = torch.backends.cuda.matmul.allow_tf32
    emit(d)

  common.emit = emit_with_device
  sys.argv = [script] + sys.argv[2:]
  runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
  main()
