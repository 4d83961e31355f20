"""SemlaFlow parity: vectors written by SemlaFlow's own code
(PARITY_SEMLAFLOW.md, `instruments/semlaflow_parity/generate.py`) replayed
through `edm_zoo.methods.flow.SemlaFlow`, and SemlaFlow checkpoints read as ours.

`parity_report(path)` checks the prior (from the recorded draws), the OT
permutation and rotation, the interpolated inputs, the network with and without
the self-conditioning input, each loss term, every gradient and an Euler
trajectory with its categorical draws; `train_parity_report(path)` replays
three optimizer steps (LinearLR warm-up, clipping at norm 1, Adam with amsgrad,
EMA). Nothing about the configuration is assumed beyond the file's `meta` and
`params/*`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from edm_zoo import config as config_lib
from edm_zoo.compat import parity, state_dict as state_dict_lib
from edm_zoo.methods.flow import integrator, interpolant
from edm_zoo.methods.flow.objective import SemlaFlow
from edm_zoo.training import optimizer

# (absolute, relative) tolerances, PARITY_SEMLAFLOW.md (measured deviations there).
TOL_INPUT = (1e-5, 1e-5)
TOL_NETWORK = (2e-5, 1e-4)
TOL_LOSS = (1e-5, 1e-5)
TOL_GRAD = (1e-5, 1e-3)
TOL_PARAM = (1e-6, 1e-4)
# SemlaFlow's vocabulary (scriptutil.build_vocab): <PAD>, <MASK>, then atoms.
SEMLA_VOCAB = (0, 0, 1, 6, 7, 8, 9, 15, 16, 17, 35, 5, 13, 14, 33, 53, 80, 83)
SEMLA_TOKENS = ('<PAD>', '<MASK>', 'H', 'C', 'N', 'O', 'F', 'P', 'S', 'Cl', 'Br', 'B', 'Al',
                'Si', 'As', 'I', 'Hg', 'Bi')
# Built by its first layer but unused by its forward (`EquiMessagePassingLayer`).
UNUSED = re.compile(r'(^|\.)layers\.0\.edge_feat_norm\.')


def haiku_name(torch_name: str) -> tuple[str, str, bool]:
  """(module, param, transpose?) of a SemlaGenerator state-dict entry."""
  if torch_name == 'size_emb.weight':
    return 'size_emb', 'embeddings', False
  return state_dict_lib.haiku_name(torch_name)


def params_from_state_dict(state: Mapping[str, np.ndarray]) -> dict:
  """Our parameters of a SemlaGenerator state dict (keys as `gen.state_dict()`,
  or prefixed `gen.` / `ema_gen.module.` in its Lightning module)."""
  params: dict = {}
  for name, value in state.items():
    for prefix in ('ema_gen.module.', 'gen.'):
      if name.startswith(prefix):
        name = name[len(prefix):]
    if UNUSED.search(name) or name.startswith('ema_gen.'):
      continue
    module, leaf, transpose = haiku_name(name)
    value = np.asarray(value, np.float32)
    params.setdefault(module, {})[leaf] = jnp.asarray(value.T if transpose else value)
  return params


def torch_view(params: dict, name: str) -> np.ndarray:
  module, leaf, transpose = haiku_name(name)
  value = np.asarray(params[module][leaf])
  return value.T if transpose else value


def config_from_meta(meta: Mapping) -> config_lib.Config:
  """Our Config for a SemlaFlow model's hyper-parameters (the vectors' `meta` or a
  checkpoint's `hyper_parameters`)."""
  get = lambda *names, default=None: next(
      (meta[n] for n in names if n in meta and meta[n] is not None), default)
  config = config_lib.build(
      'published', model='semlaflow', dataset='qm9', n_layers=int(get('n_layers')),
      d_model=int(get('d_model')), d_message=int(get('d_message')),
      d_edge=int(get('d_edge')), n_coord_sets=int(get('n_coord_sets')),
      n_attn_heads=int(get('n_attn_heads')),
      d_message_hidden=int(get('d_message_hidden', default=get('d_message'))),
      size_emb=int(get('size_emb')), size_emb_max=int(get('max_atoms', default=256)),
      coord_norm=str(get('coord_norm', default='length')),
      self_condition=bool(get('self_cond', 'self_condition', default=True)),
      coord_std=float(get('coord_std', 'coord_scale', default=0.0)),
      type_loss_weight=float(get('type_loss_weight', default=0.2)),
      bond_loss_weight=float(get('bond_loss_weight', default=1.0)),
      charge_loss_weight=float(get('charge_loss_weight', default=1.0)),
      cat_noise_level=float(get('cat_noise_level', 'integration-cat-noise-level',
                                default=1.0)),
      coord_noise_std=float(get('coord_noise_std', default=0.2)))
  return dataclasses.replace(config, num_atom_types=int(get('vocab', 'vocab_size')))


def _check(ours, ref, tol) -> dict[str, float]:
  return parity.array_error(ours, ref, rtol=tol[1], atol=tol[0])


class Replay:
  """A vectors file's model, parameters and dense batch."""

  def __init__(self, v: Mapping[str, np.ndarray]):
    self.v = v
    self.meta = json.loads(str(v['meta']))
    self.config = config_from_meta(self.meta)
    self.mask = np.asarray(v['data/mask'], np.float32)
    self.sizes = self.mask.sum(1).astype(int)
    self.width = self.mask.shape[1]
    self.model = SemlaFlow(self.config, {self.width: 1}, SEMLA_VOCAB)
    self.params = params_from_state_dict(
        {k[len('params/'):]: a for k, a in v.items() if k.startswith('params/')})
    self.model.check_params(self.params)
    self.draws = [v[k] for k in sorted(k for k in v if k.startswith('draws/'))]
    self.data = {'coords': jnp.asarray(v['data/coords']),
                 'types': jnp.asarray(v['data/atomics'].argmax(-1)),
                 'bonds': jnp.asarray(v['data/bonds'].argmax(-1)),
                 'charges': jnp.asarray(v['data/charges'].argmax(-1))}
    self.pair = self.mask[:, :, None] * self.mask[:, None, :]

  def draw_table(self):
    """The recorded draws of the interpolant, by molecule (SemlaFlow's call order:
    the data's rotation angles, then per molecule coordinates, types and bonds,
    then the times, then per molecule coordinate noise and type and bond masks)."""
    b = len(self.sizes)
    rest = self.draws[b:]  # The first b are the data rotations' angles.
    prior = [rest[3 * i:3 * i + 3] for i in range(b)]
    times = rest[3 * b]
    interp = [rest[3 * b + 1 + 3 * i:3 * b + 4 + 3 * i] for i in range(b)]
    return prior, times, interp

  def real(self, a, pairs=False):
    """Zero outside the real atoms (pairs), where SemlaFlow's values are unread."""
    m = self.pair if pairs else self.mask
    a = np.asarray(a)
    return a * m.reshape(m.shape + (1,) * (a.ndim - m.ndim))


def replay_interpolant(r: Replay) -> dict[str, np.ndarray]:
  """The prior, the OT and the interpolated inputs from the recorded draws."""
  prior_draws, times, interp_draws = r.draw_table()
  n_max, b = r.width, len(r.sizes)
  out = {k: np.zeros(s, np.float32) for k, s in (
      ('prior_coords', (b, n_max, 3)), ('coord_noise', (b, n_max, 3)),
      ('type_unmask', (b, n_max)), ('bond_unmask', (b, n_max, n_max)))}
  for k in ('prior_types', 'bond_prior'):
    out[k] = np.zeros((b, n_max) if k == 'prior_types' else (b, n_max, n_max), np.int64)
  out['perm'], out['rotation'] = [], []
  data = np.asarray(r.v['data/coords'], np.float64)
  for i, n in enumerate(r.sizes):
    normal, types, pairs = prior_draws[i]
    x0 = interpolant.prior_coords(np.asarray(normal, np.float64), n)
    perm, rotation = interpolant.ot_match(data[i, :n], x0)
    out['perm'].append(perm)
    out['rotation'].append(rotation)
    out['prior_coords'][i, :n] = x0[perm] @ rotation.T
    out['prior_types'][i, :n] = np.asarray(types)[:n][perm]
    # SemlaFlow reads its interpolated pairs transposed (interpolant.py).
    out['bond_prior'][i, :n, :n] = interpolant.prior_bonds(
        np.asarray(pairs).reshape(n_max, n_max), n, perm).T
    noise, type_u, bond_u = interp_draws[i]
    out['coord_noise'][i, :n] = noise
    out['type_unmask'][i, :n] = type_u
    out['bond_unmask'][i, :n, :n] = np.asarray(bond_u).T
  out['times'] = np.asarray(times, np.float32)
  return out


def inputs(r: Replay, d: dict) -> tuple:
  m = jnp.asarray(r.mask)
  return r.model.interpolate(r.data, jnp.asarray(d['prior_coords']),
                             jnp.asarray(d['prior_types']), jnp.asarray(d['bond_prior']),
                             jnp.asarray(d['times']), jnp.asarray(d['coord_noise']),
                             jnp.asarray(d['type_unmask']), jnp.asarray(d['bond_unmask']), m)


def step_loss(model: SemlaFlow, params, coords, types, bonds, mask, t, data, coin):
  """SemlaFlow's `training_step` loss on a dense batch: (mean total, terms)."""
  out = model.predict(params, coords, types, bonds, mask, t, self_condition=coin > 0.5)
  terms = model.losses(out, data, mask, mask.shape[1])
  means = {k: jnp.mean(v) for k, v in terms.items()}
  return means['loss'], means


def parity_report(path: str) -> dict[str, dict[str, float]]:
  """Every check of the file's forward vectors: {name: error dict with 'ok'}."""
  v = parity.load_vectors(path)
  r = Replay(v)
  rep: dict[str, dict[str, float]] = {}
  d = replay_interpolant(r)
  ref_perm = v['ot/perm']
  rep['ot/perm'] = {'max_abs': float(max(np.abs(p - ref_perm[i, :len(p)]).max()
                                         for i, p in enumerate(d['perm']))),
                    'ok': all(np.array_equal(p, ref_perm[i, :len(p)])
                              for i, p in enumerate(d['perm']))}
  rep['ot/rotation'] = _check(np.stack(d['rotation']), v['ot/rotation'], TOL_INPUT)
  det = [float(np.linalg.det(q)) for q in d['rotation']]
  rep['ot/proper_rotation'] = {'max_abs': max(abs(x - 1) for x in det),
                               'ok': all(abs(x - 1) < 1e-6 for x in det)}
  rep['prior/coords'] = _check(d['prior_coords'], r.real(v['prior/coords']), TOL_INPUT)
  rep['prior/atomics'] = _check(d['prior_types'], r.real(v['prior/atomics'].argmax(-1)),
                                (0, 0))
  rep['prior/bonds'] = _check(r.real(d['bond_prior'].transpose(0, 2, 1), True),
                              r.real(v['prior/bonds'].argmax(-1), True), (0, 0))
  rep['times'] = _check(d['times'], v['times'], (0, 0))
  coords, types, bonds = inputs(r, d)
  rep['interpolated/coords'] = _check(coords, r.real(v['interpolated/coords']), TOL_INPUT)
  rep['interpolated/atomics'] = _check(types, r.real(v['interpolated/atomics']), (0, 0))
  rep['interpolated/bonds'] = _check(bonds, r.real(v['interpolated/bonds'], True), (0, 0))

  # The network on the file's own inputs.
  m, t = jnp.asarray(r.mask), jnp.asarray(v['times'])
  x_in = jnp.asarray(v['interpolated/coords'])
  ty_in = jnp.asarray(r.real(v['interpolated/atomics']), jnp.float32)
  b_in = jnp.asarray(r.real(v['interpolated/bonds'], True), jnp.float32)
  network = jax.jit(r.model.network)
  plain = network(r.params, x_in, ty_in, b_in, m, t)
  cond = r.model.conditioning({k: jnp.asarray(v[f'out_plain/{k}']) for k in
                               ('coords', 'atomics', 'bonds')})
  conditioned = network(r.params, x_in, ty_in, b_in, m, t, cond)
  for tag, out in (('out_plain', plain), ('out_cond', conditioned)):
    for k in ('coords', 'atomics', 'bonds', 'charges'):
      rep[f'{tag}/{k}'] = _check(r.real(out[k], k == 'bonds'),
                                 r.real(v[f'{tag}/{k}'], k == 'bonds'), TOL_NETWORK)

  # Loss terms and gradients of the first training step (its coin from the file).
  (loss, terms), grads = jax.jit(jax.value_and_grad(
      lambda p: step_loss(r.model, p, x_in, ty_in, b_in, m, t, r.data, v['step0/coin'][0]),
      has_aux=True))(r.params)
  for ours, theirs in (('coord_loss', 'coord-loss'), ('type_loss', 'type-loss'),
                       ('bond_loss', 'bond-loss'), ('charge_loss', 'charge-loss'),
                       ('loss', 'loss')):
    rep[f'loss/{ours}'] = _check(terms[ours], v[f'step0/{theirs}'], TOL_LOSS)
  for name in (k[len('step0/grads/'):] for k in v if k.startswith('step0/grads/')):
    if UNUSED.search(name):
      continue
    rep[f'grad/{name}'] = _check(torch_view(grads, name), v[f'step0/grads/{name}'], TOL_GRAD)

  # The Euler trajectory from the file's prior with its categorical draws.
  steps = int(r.meta['steps'])
  start = {'coords': jnp.asarray(v['prior/coords']),
           'types': jnp.asarray(v['prior/atomics'].argmax(-1)),
           'bonds': jnp.asarray(v['prior/bonds'].argmax(-1))}
  us = [(jnp.asarray(v[f'euler/u_types{i}']), jnp.asarray(v[f'euler/u_bonds{i}']))
        for i in range(steps)]
  stacked = tuple(jnp.stack(u) for u in zip(*us))
  final, states = jax.jit(lambda p: integrator.integrate(
      r.model, p, start, m, lambda i: (stacked[0][i], stacked[1][i]), steps))(r.params)
  for i in range(steps):
    rep[f'euler/state{i}/coords'] = _check(r.real(states['coords'][i]),
                                           r.real(v[f'euler/state{i}/coords']), TOL_NETWORK)
    rep[f'euler/state{i}/t'] = _check(states['t'][i], v[f'euler/state{i}/t'], TOL_INPUT)
    for k, ref in (('types', 'atomics'), ('bonds', 'bonds')):
      rep[f'euler/state{i}/{k}'] = _check(r.real(states[k][i], k == 'bonds'),
                                          r.real(v[f'euler/state{i}/{ref}'], k == 'bonds'),
                                          (0, 0))
  scale = r.model.coord_std
  rep['euler/final/coords'] = _check(r.real(final['coords'] * scale),
                                     r.real(v['euler/final/coords']), TOL_NETWORK)
  for k in ('atomics', 'bonds', 'charges'):
    rep[f'euler/final/{k}'] = _check(r.real(final[k], k == 'bonds'),
                                     r.real(v[f'euler/final/{k}'], k == 'bonds'), TOL_NETWORK)
  return rep


def train_parity_report(path: str) -> dict[str, dict[str, float]]:
  """Three optimizer steps of the file (each with its own self-conditioning coin):
  the loss, gradient norm, learning rate, parameters and EMA after each."""
  v = parity.load_vectors(path)
  r = Replay(v)
  meta = r.meta
  tx = optimizer.torch_adamw_amsgrad(float(meta['lr']), weight_decay=0.0,
                                     warmup_steps=int(meta['warm_up_steps']),
                                     warmup_start_factor=0.01)
  m, t = jnp.asarray(r.mask), jnp.asarray(v['times'])
  x_in = jnp.asarray(v['interpolated/coords'])
  ty_in = jnp.asarray(r.real(v['interpolated/atomics']), jnp.float32)
  b_in = jnp.asarray(r.real(v['interpolated/bonds'], True), jnp.float32)
  params, ema = r.params, r.params
  opt_state = tx.init(params)
  rep: dict[str, dict[str, float]] = {}
  names = [k[len('params/'):] for k in v if k.startswith('params/')
           and not UNUSED.search(k[len('params/'):])]
  def train_step(params, opt_state, ema, coin):
    (loss, _), grads = jax.value_and_grad(
        lambda p: step_loss(r.model, p, x_in, ty_in, b_in, m, t, r.data, coin),
        has_aux=True)(params)
    grads, info = optimizer.clip_by_norm(grads, 1.0)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(jnp.add, params, updates)
    return params, opt_state, optimizer.ema_update(ema, params, 0.999), loss, info
  train_step = jax.jit(train_step, static_argnums=3)
  for step in range(3):
    params, opt_state, ema, loss, info = train_step(
        params, opt_state, ema, bool(v[f'step{step}/coin'][0] > 0.5))
    rep[f'step{step}/loss'] = _check(loss, v[f'step{step}/loss'], TOL_LOSS)
    rep[f'step{step}/grad_norm'] = _check(info['grad_norm'], v[f'step{step}/grad_norm'],
                                          (1e-4, 1e-4))
    for name in names:
      # Elements whose gradient is zero but for float noise (a bias before a
      # softmax over neighbours) take Adam steps of noise / |noise| on both sides:
      # up to lr each, compared within that; all others strictly.
      noise = np.all([np.abs(v[f'step{k}/grads/{name}']) < 1e-6 for k in range(step + 1)], 0)
      bound = (step + 1) * float(meta['lr'])
      for what, tree in (('params', params), ('ema', ema)):
        ours, ref = torch_view(tree, name), v[f'step{step}/{what}/{name}']
        check = _check(np.where(noise, ref, ours), ref, TOL_PARAM)
        loose = float(np.max(np.abs(ours - ref) * noise, initial=0.0))
        check.update(noise_elements=int(noise.sum()), noise_max_abs=loose,
                     ok=check['ok'] and loose <= bound)
        rep[f'step{step}/{what}/{name}'] = check
  return rep


def config_from_weights(state: Mapping[str, np.ndarray], hparams: Mapping,
                        dataset: str) -> config_lib.Config:
  """Our Config for a SemlaGenerator state dict: widths and depth from its
  weights, loss weights and the coordinate scale from its hyper-parameters (else
  SemlaFlow's defaults for `dataset`)."""
  name = lambda k: next((n for n in state if n.endswith(k)), None)
  need = ('feat_proj.2.weight', 'edge_in_proj.2.weight', 'dynamics.coord_head.weight',
          'size_emb.weight', 'atom_classifier_head.2.weight', 'dynamics.coord_proj.weight',
          'dynamics.layers.0.message_ff.node_proj.weight')
  missing = [k for k in need if name(k) is None]
  if missing:
    raise ValueError(f'not a SemlaFlow generator: no {missing[0]} among its weights.')
  shape = lambda k: np.shape(state[name(k)])
  layers = {int(m.group(1)) for k in state if (m := re.search(r'dynamics\.layers\.(\d+)\.', k))}
  n_sets = shape('dynamics.coord_head.weight')[1]
  first_out = shape('dynamics.layers.0.message_ff.message_mlp.2.weight')[0]
  hidden = (shape('dynamics.layers.1.message_ff.message_mlp.0.weight')[0]
            if len(layers) > 2 else int(hparams.get('d_message_hidden') or first_out))
  meta = dict(hparams, d_model=shape('feat_proj.2.weight')[0], n_layers=len(layers),
              d_message=shape('dynamics.layers.0.message_ff.node_proj.weight')[0],
              d_edge=shape('edge_in_proj.2.weight')[0], n_coord_sets=n_sets,
              n_attn_heads=first_out - n_sets, d_message_hidden=hidden,
              size_emb=shape('size_emb.weight')[1], max_atoms=shape('size_emb.weight')[0],
              self_condition=shape('dynamics.coord_proj.weight')[1] == 2,
              vocab=shape('atom_classifier_head.2.weight')[0])
  config = config_from_meta(meta)
  return dataclasses.replace(config, dataset=dataset)


def read_checkpoint(path: str) -> tuple[dict, dict]:
  """(EMA state dict, hyper-parameters) of a SemlaFlow Lightning checkpoint (or an
  `.npz` of its generator's state dict); one-line ValueErrors otherwise."""
  if path.endswith('.npz'):
    return state_dict_lib.read_state_dict(path), {}
  ckpt = state_dict_lib.read_lightning_checkpoint(path)
  state = ckpt['state_dict']
  ema = {k[len('ema_gen.module.'):]: a for k, a in state.items()
         if k.startswith('ema_gen.module.')}
  return (ema or {k[len('gen.'):]: a for k, a in state.items() if k.startswith('gen.')},
          dict(ckpt.get('hyper_parameters', {})))
