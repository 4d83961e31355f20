"""The project's structure: import graph, typed configs of every launcher."""

import os
import subprocess
import sys

import pytest

from conftest import shared_path
from edm_zoo import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_is_a_leaf_and_there_are_no_import_cycles():
  tool = shared_path('tools', 'import_graph.py')
  out = subprocess.run([sys.executable, tool], cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'config is a leaf, no cycles' in out.stdout


def test_launchers_import_without_path_edits():
  out = subprocess.run([sys.executable, '-c', 'import launch.flags_util, launch.runtime'],
                       cwd='/', capture_output=True, text=True)
  assert out.returncode == 0, out.stderr


@pytest.mark.parametrize('build,kwargs,message', [
    (config_lib.build_sampling, {'n_samples': 0}, 'n_samples must be positive'),
    (config_lib.build_sampling, {'jit_steps': -1}, 'jit_steps must be >= 0'),
    (config_lib.build_sampling, {'nfe': 10}, "unknown sampling field 'nfe'"),
    (config_lib.build_sampling, {'steps': -1}, 'steps must be >= 0'),
    (config_lib.build_sampling, {'eta': 2.0}, r'eta must be in \[0, 1\]'),
    (config_lib.build_eval, {'nll_passes': -1}, 'nll_passes must be >= 0'),
    (config_lib.build_eval, {'nll_split': 'val'}, "unknown nll_split 'val'"),
    (config_lib.build_bench, {'what': ('train', 'speed')}, "unknown --what \\['speed'\\]"),
])
def test_bad_config_values_are_one_line(build, kwargs, message):
  with pytest.raises(ValueError, match=message):
    build(**kwargs)


def test_flag_values_fill_the_typed_configs():
  sampling = config_lib.build_sampling(n_samples=7, seed=None, fix_noise=True)
  assert sampling == config_lib.SamplingConfig(n_samples=7, fix_noise=True)
  assert config_lib.build_eval(nll_passes=0).nll_passes == 0
  bench = config_lib.build_bench(what=('all', 'jit_study'), jit_study_ks=('1', '20'))
  assert bench.what == ('train', 'nll', 'sample', 'data', 'jit_study')
  assert bench.jit_study_ks == (1, 20)
