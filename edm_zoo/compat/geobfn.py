"""GeoBFN parity: vectors written by GeoBFN's own code (PARITY_GEOBFN.md,
`instruments/geobfn_parity/generate.py`) replayed through
`edm_zoo.methods.bfn.BayesianFlow`, and GeoBFN checkpoints read as ours.

`parity_report(path)` checks the data normalisation, the Bayesian flow's inputs
at the file's t and noise, the Gaussian basis, the network, the data
predictions, the bin probabilities, every loss term, the gradients and a few
sampler steps with the final call; `train_parity_report(path)` replays three
optimizer steps through GeoBFN's rules (clipping queue from 1, the spike skip,
the norm cap, AdamW-amsgrad, EMA). Nothing about the configuration is assumed
beyond the file's `args` and `param/*`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from edm_zoo import center_of_gravity, config as config_lib
from edm_zoo.compat import parity, state_dict as state_dict_lib
from edm_zoo.data import batching
from edm_zoo.methods.bfn import flow, sampler
from edm_zoo.methods.bfn.objective import BayesianFlow
from edm_zoo.models import geobfn
from edm_zoo.training import optimizer, state as train_state

# (absolute, relative) tolerances, PARITY_GEOBFN.md §8 (measured deviations there).
TOL_INPUT = (1e-6, 1e-6)
TOL_NETWORK = (1e-5, 1e-5)
TOL_LOSS = (5e-3, 1e-4)
TOL_GRAD = (1e-3, 1e-3)
TOL_SAMPLE = (1e-4, 1e-4)
TOL_PARAM = (1e-5, 1e-4)


def config_from_args(args: Mapping) -> config_lib.Config:
  """Our Config for GeoBFN's arguments (its `bfn4MolEGNN` keywords)."""
  if not args.get('charge_discretised_loss', True) or not args.get('charge_clamp', True):
    raise ValueError('only GeoBFN\'s QM9 model (discretised charges, charge_clamp) is '
                     'ported.')
  if args.get('no_diff_coord', False):
    raise ValueError('no_diff_coord=True is not ported (GeoBFN\'s QM9 model predicts '
                     'x_out - mu).')
  config = config_lib.build(
      'published', model='geobfn', nf=int(args['hidden_nf']), n_layers=int(args['n_layers']),
      sigma1_coord=float(args['sigma1_coord']), sigma1_charges=float(args['sigma1_charges']),
      bins=int(args['bins']), beta1=float(args['beta1']), t_min=float(args['t_min']),
      sample_steps=int(args['sample_steps']), basis_nf=int(args['in_node_nf']),
      position_scale=float(args.get('normalizer', {}).get('pos', 2.0)))
  return dataclasses.replace(config, num_atom_types=len(args.get('atomic_nb', [1, 6, 7, 8, 9])))


def params_from_state_dict(state: Mapping[str, np.ndarray]) -> dict:
  """Our parameters of a `bfn4MolEGNN` state dict (keys `egnn.*`, or `dynamics.egnn.*`
  from its LightningModule)."""
  return state_dict_lib.params_from_state_dict(
      {k[len('dynamics.'):] if k.startswith('dynamics.') else k: v for k, v in state.items()})


def read_checkpoint(path: str) -> tuple[dict, dict]:
  """(EMA state dict, hyper-parameters) of a GeoBFN Lightning checkpoint (`.ckpt`)
  or a `.npz` state dict; one-line ValueErrors otherwise."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file.')
  if path.endswith('.npz'):
    return state_dict_lib.read_state_dict(path), {}
  ckpt = state_dict_lib.read_lightning_checkpoint(path)
  return (ckpt.get('ema_state_dict') or ckpt['state_dict'],
          ckpt.get('hyper_parameters', {}))


def _check(ours, ref, tol) -> dict[str, float]:
  return parity.array_error(ours, ref, rtol=tol[1], atol=tol[0])


class Replay:
  """A vectors file's model, parameters and batch on our padded graph."""

  def __init__(self, vectors: Mapping[str, np.ndarray]):
    self.v = vectors
    self.args = json.loads(str(vectors['args']))
    self.config = config_from_args(self.args)
    self.atomic_numbers = self.args['atomic_nb']
    sizes = [int(n) for n in vectors['batch/sizes']]
    self.model = BayesianFlow(self.config, {n: 1 for n in sizes})
    self.params = params_from_state_dict(
        {k[len('param/'):]: a for k, a in vectors.items() if k.startswith('param/')})
    self.model.check_params(self.params)
    bounds = np.cumsum(sizes)[:-1]
    molecules = [{'positions': p, 'charges': z} for p, z in zip(
        np.split(vectors['batch/positions_raw'], bounds),
        np.split(vectors['batch/atomic_numbers'], bounds))]
    self.graph = batching.build_graph(molecules, self.atomic_numbers,
                                      batching.exact_budget(sizes))
    self.n = int(sum(sizes))
    self.n_total = self.graph.nodes['positions'].shape[0]

  def nodes(self, a) -> jax.Array:
    a = np.asarray(a, np.float32)
    pad = np.zeros((self.n_total - len(a),) + a.shape[1:], np.float32)
    return jnp.asarray(np.concatenate([a, pad]))

  def times(self, t) -> jax.Array:
    return jnp.concatenate([jnp.asarray(np.asarray(t, np.float32)), jnp.zeros(1)])

  def noise(self, charge, coord) -> jax.Array:
    return jnp.concatenate([self.nodes(coord), self.nodes(charge)], -1)

  def real(self, a) -> np.ndarray:
    return np.asarray(a)[:self.n]


def parity_report(path: str) -> dict[str, dict[str, float]]:
  """Every checked quantity of a GeoBFN vectors file -> its error summary
  (`ok` says whether it is inside the spec's tolerance)."""
  v = parity.load_vectors(path)
  r = Replay(v)
  model, params, graph = r.model, r.params, r.graph
  report = {}
  x, c = model.data(graph)
  report['data/pos'] = _check(r.real(x), v['batch/pos'], TOL_INPUT)
  report['data/charges'] = _check(r.real(c), v['batch/charges'], TOL_INPUT)
  t = r.times(v['rand/t'])
  eps = r.noise(v['rand/noise_charge'], v['rand/noise_coord'])
  inputs = model.flow_inputs(graph, x, c, t, eps)
  for ours, ref in (('mu_x', 'mu_coord'), ('mu_charge', 'mu_charge'),
                    ('gamma_x', 'gamma_coord'), ('gamma_charge', 'gamma_charge')):
    report[f'flow/{ref}'] = _check(r.real(inputs[ours]), v[f'fwd/{ref}'], TOL_INPUT)
  report['network/basis'] = _check(
      r.real(geobfn.gaussian_basis(inputs['mu_charge'], model.config.bfn.basis_nf)),
      v['fwd/basis'], TOL_INPUT)
  terms = model.train_terms(params, graph, t, eps)
  # GeoBFN's heads: clamp(CoG(x_out - mu)), clamp(h_out) from the EGNN's raw outputs.
  ref_eps = center_of_gravity.remove_mean(r.nodes(v['fwd/egnn_x'] - v['fwd/mu_coord']),
                                         graph)
  report['network/eps_x'] = _check(r.real(terms['eps_x']), np.clip(r.real(ref_eps), -10, 10),
                                   TOL_NETWORK)
  report['network/charge_heads'] = _check(
      np.concatenate([r.real(terms['mu_eps']), r.real(terms['ln_sigma_eps'])], -1),
      np.clip(v['fwd/egnn_h'], -10, 10), TOL_NETWORK)
  report['predict/coord_pred'] = _check(r.real(terms['x_pred']), v['fwd/coord_pred'],
                                        TOL_NETWORK)
  report['predict/p'] = _check(r.real(terms['p']), v['fwd/p'], TOL_NETWORK)
  report['predict/k_hat'] = _check(r.real(terms['k_hat']), v['fwd/k_hat'], TOL_NETWORK)
  report['loss/posloss'] = _check(r.real(terms['pos_loss']), v['fwd/posloss'], TOL_LOSS)
  report['loss/charge_loss'] = _check(r.real(terms['charge_loss']), v['fwd/charge_loss'],
                                      TOL_LOSS)
  loss, grads = jax.value_and_grad(model.train_loss)(params, graph, t, eps)
  report['loss/loss'] = _check(loss, v['fwd/loss'], TOL_LOSS)
  report.update(_grad_errors(grads, v, 'grad/', TOL_GRAD))
  report.update(_sampler_errors(r, v))
  for k in report:
    report[k]['ok'] = bool(report[k]['ok'])
  return report


def _grad_errors(grads, v, prefix: str, tol) -> dict[str, dict[str, float]]:
  names = [k[len(prefix):] for k in v if k.startswith(prefix)]
  ours = {n: state_dict_lib.torch_view(grads, n.removeprefix('dynamics.')) for n in names}
  errors = [_check(ours[n], v[prefix + n], tol) for n in names]
  worst = max(errors, key=lambda e: e['max_abs'])
  return {prefix.rstrip('/'): {**worst, 'ok': all(e['ok'] for e in errors),
                               'arrays': len(errors)}}


def _sampler_errors(r: Replay, v) -> dict[str, dict[str, float]]:
  sizes = [int(n) for n in v['sample/sizes']]
  graph = batching.placeholder_graph(sizes, r.atomic_numbers, batching.exact_budget(sizes))
  n_total = graph.nodes['positions'].shape[0]
  steps = v['sample/noise_coord'].shape[0]
  pad = lambda a: np.concatenate([a, np.zeros((a.shape[0], n_total - a.shape[1], a.shape[2]),
                                              np.float32)], 1)
  noise = jnp.asarray(np.concatenate([pad(v['sample/noise_coord']),
                                      pad(v['sample/noise_charge'])], -1))
  out = sampler.chain(r.model, r.params, graph, noise, n=steps, record=True)
  n = sum(sizes)
  centres = jax.vmap(lambda k: flow.nearest_centre(k, r.config.bfn.bins))(out['frames']['k_hat'])
  ours_x = np.concatenate([np.asarray(out['frames']['x_pred'])[:, :n],
                           np.asarray(out['x_pred'])[None, :n]])
  ours_c = np.concatenate([np.asarray(centres)[:, :n], np.asarray(out['charge'])[None, :n]])
  return {'sample/coord_pred': _check(ours_x, v['sample/coord_pred'], TOL_SAMPLE),
          'sample/charge': _check(ours_c, v['sample/charge'], TOL_SAMPLE)}


def train_parity_report(path: str) -> dict[str, dict[str, float]]:
  """Three optimizer steps of a `_train` vectors file replayed through our train
  step (`training.state.apply_gradients` with GeoBFN's `StepRules`)."""
  v = parity.load_vectors(path)
  r = Replay(v)
  a = r.args
  tx = optimizer.guarded(optimizer.torch_adamw_amsgrad(a['lr'], weight_decay=a['weight_decay']))
  rules = optimizer.StepRules(skip_grad_norm=a['maximum_allowed_norm'],
                              spike_loss=a['recover_trigger_loss'],
                              spike_limit=a['skip_count_limit'])
  state = train_state.new_state(
      r.params, tx, optimizer.init_clip_queue(tuple(a['queue_start']), a['queue_len']))
  value_and_grad = jax.jit(jax.value_and_grad(r.model.train_loss))
  step = jax.jit(lambda s, g, l: train_state.apply_gradients(
      s, g, l, tx=tx, ema_decay=a['ema_decay'], rules=rules))
  report = {}
  for k, expected in enumerate(a['steps']):
    pre = f'train/step{k}/'
    eps = r.noise(v[pre + 'noise_charge'], v[pre + 'noise_coord'])
    loss, grads = value_and_grad(state.params, r.graph, r.times(v[pre + 't']), eps)
    report[pre + 'loss'] = _check(loss, v[pre + 'loss'], TOL_LOSS)
    report.update(_grad_errors(grads, v, pre + 'grad/', TOL_GRAD))
    state, metrics = step(state, grads, loss)
    report[pre + 'grad_norm'] = _check(metrics['grad_norm'], v[pre + 'grad_norm'], TOL_LOSS)
    report[pre + 'clip_threshold'] = _check(metrics['max_grad_norm'], v[pre + 'clip_threshold'],
                                            TOL_LOSS)
    queue = np.asarray(state.clip_queue.items)[:int(state.clip_queue.count)]
    report[pre + 'queue'] = (_check(queue, v[pre + 'queue'], TOL_LOSS)
                             if queue.shape == v[pre + 'queue'].shape
                             else {'ok': False, 'max_abs': float('inf')})
    skipped = bool(metrics['skipped'])
    report[pre + 'skip'] = {'ok': skipped == (not expected['applied']),
                            'max_abs': float(skipped != (not expected['applied']))}
    report.update(_grad_errors(state.params, v, pre + 'param/', TOL_PARAM))
    report.update(_grad_errors(state.ema_params, v, pre + 'ema/', TOL_PARAM))
  for k in report:
    report[k]['ok'] = bool(report[k]['ok'])
  return report
