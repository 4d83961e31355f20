"""The process settings the launchers re-execute with (`launch/runtime.py`)."""

import json
import os
import subprocess
import sys

import pytest

from launch import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tunables(env):
  return env['GLIBC_TUNABLES'].split(':')


def test_defaults_add_huge_pages_and_wide_vectors_once():
  env = runtime.reexec_env({'PATH': '/bin'}, avx512=True)
  assert _tunables(env) == ['glibc.malloc.hugetlb=1']
  assert env['XLA_FLAGS'] == '--xla_cpu_prefer_vector_width=512'
  assert env['EDM_ZOO_NO_REEXEC'] == '1' and env['PATH'] == '/bin'
  assert 'XLA_FLAGS' not in runtime.reexec_env({}, avx512=False)
  # The user's own choices stand.
  own = runtime.reexec_env({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0',
                            'XLA_FLAGS': '--xla_cpu_prefer_vector_width=256'}, avx512=True)
  assert _tunables(own) == ['glibc.malloc.hugetlb=0']
  assert own['XLA_FLAGS'] == '--xla_cpu_prefer_vector_width=256'


def test_retain_keeps_one_arena_that_never_maps_or_trims():
  env = runtime.reexec_env({'EDM_ZOO_MALLOC': 'retain',
                            'GLIBC_TUNABLES': 'glibc.rtld.optional_static_tls=1'},
                           avx512=False)
  tunables = _tunables(env)
  assert tunables[:2] == ['glibc.rtld.optional_static_tls=1', 'glibc.malloc.hugetlb=1']
  for t in ('glibc.malloc.arena_max=1', 'glibc.malloc.mmap_max=0'):
    assert t in tunables
  # An explicit mmap_max is the user's: nothing of retain's is added over it.
  own = runtime.reexec_env({'EDM_ZOO_MALLOC': 'retain',
                            'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=4'}, avx512=False)
  assert _tunables(own) == ['glibc.malloc.mmap_max=4', 'glibc.malloc.hugetlb=1']
  with pytest.raises(ValueError, match="EDM_ZOO_MALLOC='keep': leave it unset or set it"):
    runtime.reexec_env({'EDM_ZOO_MALLOC': 'keep'}, avx512=False)


@pytest.mark.slow
def test_a_launcher_runs_with_retain_and_refuses_a_bad_value(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'EDM_ZOO_NO_REEXEC'}
  out = tmp_path / 'bench.json'
  subprocess.run([sys.executable, 'launch/bench.py', '--preset=tiny', '--what=train',
                  '--repeats=2', f'--json={out}'], cwd=REPO, check=True,
                 capture_output=True, env={**env, 'EDM_ZOO_MALLOC': 'retain'})
  result = json.loads(out.read_text())
  assert 'glibc.malloc.mmap_max=0' in result['glibc_tunables']
  assert result['train_step_median_s'] > 0
  bad = subprocess.run([sys.executable, 'launch/bench.py', '--preset=tiny'], cwd=REPO,
                       capture_output=True, text=True, env={**env, 'EDM_ZOO_MALLOC': 'yes'})
  assert bad.returncode == 1
  assert bad.stderr.strip() == ("error: EDM_ZOO_MALLOC='yes': leave it unset or set it "
                                'to retain.')
