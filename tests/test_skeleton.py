"""The training skeleton's start: a run that resumes nothing takes the trainer's
fresh start (e.g. GeoLDM's stage 2 loads stage 1's autoencoder), a resume never does."""

import json
import os
import time
from typing import NamedTuple

import numpy as np
import pytest

from edm_zoo.training import skeleton


def _trainer(fresh_start):
  return skeleton.Trainer(batches=None, step=None, evaluate=None, best_metric='val',
                          meta={'config': {'nf': 8}}, fresh_start=fresh_start)


class _State(NamedTuple):
  step: np.ndarray
  w: np.ndarray


def _state():
  return _State(np.array(0, np.int32), np.zeros(3, np.float32))


def _refuse(state):
  raise AssertionError('a resume called fresh_start')


def test_fresh_start_only_when_nothing_is_resumed(tmp_path):
  workdir = str(tmp_path / 'run')
  ckpt, state, meta = skeleton.resume(
      workdir, _state(), _trainer(lambda s: s._replace(w=s.w + 1)), keep_last=2)
  np.testing.assert_array_equal(state.w, [1, 1, 1])
  ckpt.save(5, state._replace(step=np.array(5, np.int32)), meta)
  ckpt.close()
  ckpt, state, _ = skeleton.resume(workdir, _state(), _trainer(_refuse), keep_last=2)
  ckpt.close()
  assert int(state.step) == 5
  np.testing.assert_array_equal(state.w, [1, 1, 1])


def test_an_interrupted_first_save_is_still_a_fresh_start(tmp_path):
  # A run killed while writing its first checkpoint leaves a step folder without
  # orbax's marker: it is moved aside and the run starts afresh, fresh start included.
  workdir = tmp_path / 'run'
  os.makedirs(workdir / 'checkpoints' / '10' / 'state')
  ckpt, state, _ = skeleton.resume(
      str(workdir), _state(), _trainer(lambda s: s._replace(w=s.w + 2)), keep_last=2)
  ckpt.close()
  np.testing.assert_array_equal(state.w, [2, 2, 2])
  assert os.listdir(workdir / 'corrupt')


def test_a_failing_fresh_start_raises_its_own_error(tmp_path):
  def bad(state):
    raise ValueError('the autoencoder does not fit this model')
  with pytest.raises(ValueError, match='does not fit'):
    skeleton.resume(str(tmp_path / 'run'), _state(), _trainer(bad), keep_last=2)


_FIELDS = ('train.total_steps', 'train.eval_every_steps')


def test_config_difference_splits_schedule_fields_from_the_rest():
  saved = {'model': {'nf': 256}, 'train': {'total_steps': 4, 'eval_every_steps': 2,
                                           'lr': 1e-4}, 'conditioning': ()}
  now = {'model': {'nf': 128}, 'train': {'total_steps': 8, 'eval_every_steps': 2,
                                         'lr': 1e-4}, 'conditioning': []}
  allowed, refused = skeleton.config_difference(saved, now, _FIELDS)
  assert allowed == {'train.total_steps': (4, 8)}
  assert refused == {'model.nf': (256, 128)}
  assert skeleton.config_difference(saved, saved, _FIELDS) == ({}, {})


def test_config_difference_names_a_field_missing_on_either_side():
  _, refused = skeleton.config_difference({'train': {'a': 1}}, {'train': {'b': 1}}, ())
  assert refused == {'train.a': (1, '(absent)'), 'train.b': ('(absent)', 1)}


def test_a_resume_that_changes_the_model_names_each_field(tmp_path):
  workdir = str(tmp_path / 'run')
  ckpt, state, meta = skeleton.resume(workdir, _state(), _trainer(lambda s: s), 2)
  ckpt.save(5, state._replace(step=np.array(5, np.int32)), meta)
  ckpt.close()
  other = skeleton.Trainer(batches=None, step=None, evaluate=None, best_metric='val',
                           meta={'config': {'nf': 4}})
  with pytest.raises(skeleton.TrainingError, match=f'nf: 8 in {workdir}, 4 now'):
    skeleton.resume(workdir, _state(), other, keep_last=2)


def _run(workdir, total_steps, started):
  def batches(epoch, start):
    del epoch, start
    while True:
      yield None, 1

  def step(state, batch):
    del batch
    return state._replace(step=state.step + 1, w=state.w + 1), {'loss': 1.0}

  trainer = skeleton.Trainer(batches=batches, step=step,
                             evaluate=lambda s: ({'val': 1.0}, 'val 1'), best_metric='val',
                             meta={'config': {'nf': 8}})
  schedule = skeleton.Schedule(total_steps=total_steps, epoch_size=1000, eval_every=10**6,
                               checkpoint_every=5, log_every=1, keep_last=3)
  skeleton.run(workdir, _state(), trainer, schedule, progress=False, started=started)


def test_elapsed_seconds_count_from_the_start_and_continue_over_a_resume(tmp_path):
  workdir = str(tmp_path / 'run')
  _run(workdir, 10, started=time.time() - 100.0)  # 100 s of setup before the first step.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    first = [json.loads(line) for line in f]
  assert all(100.0 <= r['elapsed_s'] < 160.0 for r in first)
  at_10 = first[-1]['elapsed_s']
  _run(workdir, 20, started=time.time() - 50.0)  # The resume's own 50 s of setup.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  elapsed = [r['elapsed_s'] for r in lines if 'loss' in r]
  assert [r['step'] for r in lines if 'loss' in r] == list(range(1, 21))
  assert elapsed == sorted(elapsed)  # One clock across both processes...
  assert elapsed[10] >= at_10 + 50.0  # ... continued from the checkpoint, plus setup.
