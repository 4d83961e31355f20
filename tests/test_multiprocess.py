"""Multi-process training on localhost, checkpoints that survive, one-line errors.

The runs are real launcher processes (`launch/train.py`) on the tiny preset; the
session's persistent compilation cache (conftest) keeps restarts short.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from edm_zoo.training import checkpoint, metrics_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
TINY = ['--preset=tiny', '--train_molecules=64', '--eval_molecules=16', '--progress=false',
        '--log_every_steps=1']


@pytest.fixture(scope='module')
def env():
  """The session's compilation cache (conftest), every program in it."""
  return {**os.environ, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def _port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _with_devices(env, count):
  """`env` with `count` host devices, beside the suite's XLA flags (conftest)."""
  return {**env, 'XLA_FLAGS': f"{env.get('XLA_FLAGS', '')} "
                              f'--xla_force_host_platform_device_count={count}'}


def _train(workdir, *flags, env, devices=1, process=None):
  """Starts launch/train.py; `process` = (port, id, count) for a multi-process run."""
  cmd = [PYTHON, 'launch/train.py', f'--workdir={workdir}', *TINY, *flags]
  if process is not None:
    port, pid, count = process
    cmd += [f'--coordinator_address=localhost:{port}', f'--num_processes={count}',
            f'--process_id={pid}']
  if devices > 1:
    env = _with_devices(env, devices)
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(*procs, timeout=300):
  outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def _wait_until(condition, *procs, timeout=240, poll=0.01):
  """Waits until `condition()` while every process runs (a test failure if one ends
  or `timeout` seconds pass first)."""
  deadline = time.time() + timeout
  while not condition():
    assert all(p.poll() is None for p in procs), 'a run ended first'
    assert time.time() < deadline, 'timed out'
    time.sleep(poll)


def _two_processes(workdir, *flags, env):
  port = _port()
  return [_train(workdir, *flags, env=env, process=(port, i, 2)) for i in range(2)]


def _params(workdir, step):
  state, _ = checkpoint.load_state(os.path.join(workdir, 'checkpoints', str(step)))
  return state['params']


def _losses(workdir):
  return {r['step']: r['loss'] for r in metrics_log.read(workdir) if 'loss' in r}


def _max_diff(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a),
                                                        jax.tree.leaves(b)))


@pytest.mark.slow
def test_two_processes_equal_two_devices_and_one_device_and_parts(tmp_path, env):
  steps = ['--total_steps=3', '--eval_every_steps=3', '--checkpoint_every_steps=3']
  runs = {name: tmp_path / name for name in ('one', 'devices', 'processes', 'parts')}
  _finish(_train(runs['one'], *steps, env=env),
          _train(runs['devices'], *steps, env=env, devices=2))
  # Each device's 4 molecules (tiny batches of 8) differentiated as two parts of 2.
  [(_, err)] = _finish(_train(runs['parts'], *steps, '--microbatch_size=2', '--verbosity=0',
                             env=env, devices=2))
  assert '2 device(s) x 2 part(s) of 2 molecules' in err, err[-2000:]
  (out0, _), (out1, _) = _finish(*_two_processes(runs['processes'], *steps, env=env))
  # One writer: one log line per step, the console lines from process 0 only.
  records = metrics_log.read(runs['processes'])
  assert [r['step'] for r in records if 'loss' in r] == [1, 2, 3]
  assert 'done' in out0 and 'done' not in out1
  losses = {k: _losses(w) for k, w in runs.items()}
  for name in ('devices', 'processes', 'parts'):
    np.testing.assert_allclose([losses[name][s] for s in (1, 2, 3)],
                               [losses['one'][s] for s in (1, 2, 3)], rtol=1e-5)
    assert _max_diff(_params(runs[name], 3), _params(runs['one'], 3)) < 1e-5
  nll = {k: {key: r[key] for r in metrics_log.read(w) for key in ('val_nll', 'test_nll')
             if key in r} for k, w in runs.items()}
  # The evaluation is split over processes by batch and summed in batch order.
  assert nll['processes'] == nll['devices']
  for key in ('val_nll', 'test_nll'):
    np.testing.assert_allclose(nll['processes'][key], nll['one'][key], rtol=1e-5)


@pytest.mark.slow
def test_a_killed_process_stops_the_other_in_one_line_and_both_resume(tmp_path, env):
  workdir = tmp_path / 'run'
  flags = ['--total_steps=30', '--eval_every_steps=1000', '--checkpoint_every_steps=2']
  procs = _two_processes(workdir, *flags, env=env)
  _wait_until((workdir / 'checkpoints' / '4' / checkpoint.RECORD).exists, *procs)
  procs[1].send_signal(signal.SIGKILL)
  killed = time.time()
  out, err = procs[0].communicate(timeout=60)
  assert time.time() - killed < 60
  assert procs[0].returncode != 0
  assert 'Traceback' not in err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: lost contact'), err
  procs[1].communicate()
  # Restarting both resumes the run from its last checkpoint.
  resumed_from = checkpoint.Checkpointer(workdir).latest_step()
  assert resumed_from >= 4
  (out0, _), _ = _finish(*_two_processes(workdir, *flags, env=env))
  assert "'step': 30" in out0
  steps = [r['step'] for r in metrics_log.read(workdir) if 'loss' in r]
  assert steps == list(range(1, 31))


@pytest.mark.slow
def test_kill_9_at_20_random_moments_ends_with_the_uninterrupted_parameters(
    tmp_path, env):
  flags = ['--total_steps=10', '--eval_every_steps=5', '--checkpoint_every_steps=1',
           '--keep_last=2']
  straight = tmp_path / 'straight'
  _finish(_train(straight, *flags, env=env))  # Also warms the compile cache.
  workdir = tmp_path / 'killed'
  start = time.time()
  proc = _train(workdir, *flags, env=env)
  _wait_until((workdir / 'metrics.jsonl').exists, proc)
  startup = time.time() - start  # Imports, data, compiles: before the first step.
  rng = random.Random(0)
  kills = during_saves = 0
  while kills < 20:
    if kills:
      proc = _train(workdir, *flags, env=env)
    since = time.time()
    # Moments from late start-up (restore, compiles) to a few steps in; every
    # other kill lands while a checkpoint is being written (orbax's temporary
    # folder exists, or a step folder has no commit record yet).
    in_save = kills % 2 == 1
    if not kills:
      deadline = time.time() + rng.uniform(0, 1.0)
    elif in_save:  # Waits for the first write after the restart.
      deadline = time.time() + startup + 3.0
    else:
      deadline = time.time() + startup * rng.uniform(0.6, 1.0) + rng.uniform(0, 1.5)
    while proc.poll() is None and time.time() < deadline:
      if in_save and _saving(workdir, since):
        time.sleep(rng.uniform(0, 0.02))
        break
      time.sleep(0.002)
    if proc.poll() is not None:  # The run finished first: start it again.
      shutil.rmtree(workdir)
      continue
    during_saves += _saving(workdir, since)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kills += 1
  _finish(_train(workdir, *flags, env=env))
  print(f'{kills} kills, {during_saves} during checkpoint writes')
  assert during_saves >= 5
  assert _max_diff(_params(workdir, 10), _params(straight, 10)) == 0.0
  assert _losses(workdir) == _losses(straight)


def _saving(workdir, since: float) -> bool:
  """Whether a checkpoint write started after `since` is under way."""
  folder = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(folder):
    return False
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    try:
      if ('tmp' in name or (name.isdigit() and not os.path.exists(
          os.path.join(path, checkpoint.RECORD)))) and os.path.getmtime(path) >= since:
        return True
    except FileNotFoundError:  # Renamed or removed meanwhile.
      continue
  return False


_FINISHED = ['--total_steps=8', '--eval_every_steps=8', '--checkpoint_every_steps=2']


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, env):
  """A tiny run with checkpoints at steps 4, 6 and 8 (and a best one)."""
  workdir = tmp_path_factory.mktemp('run') / 'w'
  _finish(_train(workdir, *_FINISHED, env=env))
  return workdir


def _corrupt(step_dir, how):
  files = sorted(os.path.join(root, n) for root, _, names in os.walk(step_dir / 'state')
                 for n in names if os.path.getsize(os.path.join(root, n)) > 64)
  target = max(files, key=os.path.getsize)
  if how == 'truncated':
    with open(target, 'r+b') as f:
      f.truncate(os.path.getsize(target) // 2)
  elif how == 'data_truncated':
    # An OCDBT data file may hold superseded nodes that a restore never reads, so one
    # truncated file need not break a checkpoint that carries no record to check.
    for name in files:
      if os.path.basename(os.path.dirname(name)) != 'd':
        continue
      with open(name, 'r+b') as f:
        f.truncate(os.path.getsize(name) // 2)
  elif how == 'altered':
    with open(target, 'r+b') as f:
      f.seek(os.path.getsize(target) // 2)
      byte = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte[0] ^ 0xFF]))
  elif how == 'no_commit_marker':
    os.remove(step_dir / 'commit_success.txt')


@pytest.mark.parametrize('how', ['truncated', 'altered', 'no_commit_marker'])
def test_a_bad_latest_checkpoint_is_moved_aside_and_the_previous_one_resumed(
    finished_run, tmp_path, how, caplog):
  workdir = tmp_path / 'w'
  shutil.copytree(finished_run, workdir)
  _corrupt(workdir / 'checkpoints' / '8', how)
  with pytest.raises(checkpoint.CorruptCheckpointError, match='incomplete or corrupt'):
    checkpoint.load_state(str(workdir / 'checkpoints' / '8'))
  ckpt = checkpoint.Checkpointer(workdir)
  assert ckpt.latest_step() == 6
  ckpt.close()
  assert 'moved to' in caplog.text
  assert [d.split('_')[1] for d in os.listdir(workdir / 'corrupt')] == ['8']
  state, _ = checkpoint.load_state(str(workdir / 'checkpoints'))
  assert _max_diff(state['params'], _params(finished_run, 6)) == 0.0


@pytest.mark.slow
def test_training_resumes_past_a_corrupt_checkpoint_and_sample_refuses_it(
    finished_run, tmp_path, env):
  workdir = tmp_path / 'w'
  shutil.copytree(finished_run, workdir)
  _corrupt(workdir / 'checkpoints' / '8', 'truncated')
  out = subprocess.run([PYTHON, 'launch/sample.py', f'--ckpt={workdir}/checkpoints/8',
                        '--n_samples=2', f'--out_dir={tmp_path}/s'], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
  assert 'incomplete or corrupt' in out.stderr and 'checkpoints/6' in out.stderr
  (out, err), = _finish(_train(workdir, *_FINISHED, env=env))
  assert 'moved to' in err and "'step': 8" in out
  steps = [r['step'] for r in metrics_log.read(workdir) if 'loss' in r]
  assert steps == list(range(1, 9))
  assert _max_diff(_params(workdir, 8), _params(finished_run, 8)) == 0.0


def test_an_unreadable_legacy_checkpoint_fails_in_one_line_without_asyncio_noise(
    finished_run, tmp_path, env):
  # Without commit records (as written before they existed), orbax itself fails.
  workdir = tmp_path / 'w'
  shutil.copytree(finished_run / 'checkpoints' / '8', workdir / 'checkpoints' / '8')
  os.remove(workdir / 'checkpoints' / '8' / checkpoint.RECORD)
  _corrupt(workdir / 'checkpoints' / '8', 'data_truncated')
  out = subprocess.run([PYTHON, 'launch/sample.py', f'--ckpt={workdir}', '--n_samples=2',
                        f'--out_dir={tmp_path}/s'], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert out.returncode == 1
  assert out.stderr.startswith('error: ') and out.stderr.count('\n') == 1, out.stderr
  assert 'unreadable checkpoint' in out.stderr


@pytest.mark.parametrize('flags,message', [
    (['--coordinator_address=localhost:1', '--num_processes=2', '--process_id=2'],
     'out of range'),
    (['--coordinator_address=localhost', '--num_processes=2', '--process_id=0'],
     'not host:port'),
    (['--num_processes=2', '--process_id=0'], 'go together'),
    (['--coordinator_address=localhost:{port}', '--num_processes=2', '--process_id=1',
      '--join_timeout=3'], 'could not join the run'),
])
def test_bad_multi_process_flags_fail_in_one_line(tmp_path, env, flags, message):
  flags = [f.format(port=_port()) for f in flags]
  out = subprocess.run([PYTHON, 'launch/train.py', f'--workdir={tmp_path}', *TINY, *flags],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert out.stderr.startswith('error: ') and out.stderr.count('\n') == 1, out.stderr
  assert message in out.stderr


def test_a_batch_the_devices_do_not_divide_fails_in_one_line(tmp_path, env):
  out = subprocess.run(
      [PYTHON, 'launch/train.py', f'--workdir={tmp_path}', *TINY, '--batch_size=7'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=_with_devices(env, 2))
  assert out.returncode == 1
  assert out.stderr.strip() == out.stderr.strip().splitlines()[-1], out.stderr
  assert 'not divisible by the 2 devices' in out.stderr


@pytest.mark.slow
def test_rerunning_a_finished_run_of_an_older_config_format_is_a_no_op(
    finished_run, tmp_path, env):
  workdir = tmp_path / 'w'
  shutil.copytree(finished_run, workdir)
  # As saved before TrainConfig.data_augmentation existed.
  for meta in workdir.glob('*/*/meta/metadata'):
    d = json.loads(meta.read_text())
    del d['config']['train']['data_augmentation']
    meta.write_text(json.dumps(d))
    checkpoint.write_record(str(meta.parent.parent))
  (out, err), = _finish(_train(workdir, *_FINISHED, env=env))
  assert "'step': 8" in out and 'another config' not in err
  assert _max_diff(_params(workdir, 8), _params(finished_run, 8)) == 0.0


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_run_resumes(tmp_path, env):
  workdir = tmp_path / 'w'
  flags = ['--total_steps=30', '--eval_every_steps=1000', '--checkpoint_every_steps=10']
  proc = _train(workdir, *flags, env=env)
  log = workdir / 'metrics.jsonl'
  _wait_until(lambda: log.exists() and log.stat().st_size, proc)  # Past the first step.
  proc.send_signal(signal.SIGTERM)  # What SLURM sends before it kills a job.
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  stopped = int(err.split('at step ')[1].split(';')[0])
  assert 0 < stopped < 30 and err.startswith('stopped by SIGTERM')
  assert (workdir / 'checkpoints' / str(stopped) / checkpoint.RECORD).exists()
  (out, _), = _finish(_train(workdir, *flags, env=env))
  assert "'step': 30" in out
  assert [r['step'] for r in metrics_log.read(workdir) if 'loss' in r] == list(range(1, 31))


@pytest.mark.slow
def test_a_finished_run_extended_equals_the_longer_run(finished_run, tmp_path, env):
  workdir = tmp_path / 'w'
  short = ['--total_steps=4', '--eval_every_steps=8', '--checkpoint_every_steps=2']
  (out, _), = _finish(_train(workdir, *short, env=env))
  assert "'step': 4" in out
  (out, err), = _finish(_train(workdir, *_FINISHED, env=env))
  assert "'step': 8" in out and 'another config' not in err
  assert _losses(workdir) == _losses(finished_run)
  assert _max_diff(_params(workdir, 8), _params(finished_run, 8)) == 0.0
  changes = [json.loads(line) for line in
             (workdir / 'config_changes.jsonl').read_text().splitlines()]
  assert [(c['step'], c['changes']) for c in changes] == [
      (4, {'train.total_steps': [4, 8]})]


@pytest.mark.slow
def test_a_resume_with_another_model_names_each_field_in_one_line(
    finished_run, tmp_path, env):
  workdir = tmp_path / 'w'
  shutil.copytree(finished_run, workdir)
  out = subprocess.run(
      [PYTHON, 'launch/train.py', f'--workdir={workdir}', *TINY, *_FINISHED,
       '--nf=32', '--lr=0.002'], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=120)
  assert out.returncode == 1
  assert out.stderr.startswith('error: ') and out.stderr.count('\n') == 1, out.stderr
  assert f'lr: 0.001 in {workdir}, 0.002 now' in out.stderr
  assert f'nf: 16 in {workdir}, 32 now' in out.stderr
  assert not (workdir / 'config_changes.jsonl').exists()
  # The run's checkpoints stay where they are (another model's arrays do not fit the
  # new state: they must not be taken for corrupt ones).
  assert not (workdir / 'corrupt').exists()
  assert sorted(os.listdir(workdir / 'checkpoints')) == sorted(
      os.listdir(finished_run / 'checkpoints'))
