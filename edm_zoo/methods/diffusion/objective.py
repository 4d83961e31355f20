"""EDM's diffusion objective, shared by every zoo model.

`Diffusion` bundles a transformed denoising network with a noise schedule and the
training node-count distribution. Its methods are pure functions of `params`,
the batch and *explicit* t and noise: randomness is drawn outside (from keys
folded with the step), and train vs eval is an argument, never an attribute.

Conventions (those of the original EDM, `en_diffusion.py`):
  * z = [x (3), h_cat (K one-hot / norm_values[1]), h_int (Z / norm_values[2])].
  * alpha_t = sqrt(sigmoid(-gamma_t)), sigma_t = sqrt(sigmoid(gamma_t)).
  * The `l2` training loss divides the squared error by (3 + F) * N where N is the
    *padded* node count of EDM's dense batch, i.e. the largest molecule of the
    batch (its collate drops all-empty columns). We reproduce that with
    N = max(n_node) over the batch's real molecules, for parity; it makes the
    per-molecule loss depend on the batch composition, as in EDM.
  * The eval NLL is -log p(x, h, N) in nats per molecule: KL prior + T * L_t
    (t ~ U{1..T}) + log-normalisers on the (N-1)*3 subspace + L0 (a second network
    pass at t = 0) - log p(N).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from edm_zoo import center_of_gravity
from edm_zoo import masking
from edm_zoo import models
from edm_zoo.config import Config
from edm_zoo.data import batching
from edm_zoo.data import features
from edm_zoo.methods.diffusion import gaussians
from edm_zoo.methods.diffusion import schedules

Params = Any
_LOG_2PI = math.log(2 * math.pi)


def log_pn_table(n_nodes_histogram: dict[int, int], max_n: int = 64) -> np.ndarray:
  """float32 log p(N) per N as EDM's `DistributionNodes` (log(prob + 1e-30))."""
  counts = np.zeros(max(max_n, max(n_nodes_histogram)) + 1, np.float64)
  for n, c in n_nodes_histogram.items():
    counts[n] = c
  prob = (counts / counts.sum()).astype(np.float32)
  return np.log(prob + np.float32(1e-30)).astype(np.float32)


class Diffusion:
  """The E(3) equivariant diffusion model around a zoo network.

  Parameters are one flat Haiku dict: the network's modules and the schedule's
  (empty unless the schedule is learned). They are told apart by the schedule's
  own module names (`schedule_modules`), never by a name prefix.

  Args:
    config: the run configuration.
    n_nodes_histogram: the training {N: count} histogram for log p(N).
  """

  def __init__(self, config: Config, n_nodes_histogram: dict[int, int]):
    d = config.diffusion
    if d.loss_type not in ('l2', 'vlb'):
      raise ValueError(f"unknown loss_type {d.loss_type!r}; allowed: ['l2', 'vlb'].")
    if d.norm_biases[0] not in (None, 0, 0.0):
      raise ValueError('norm_biases[0] (positions) must be None or 0.')
    self.config = config
    self.T = d.T
    self.n_features = config.in_node_nf
    self._net = models.transform(config)
    self.schedule = schedules.NoiseSchedule(d.noise_schedule, d.T, d.noise_precision)
    self.schedule_modules = frozenset(
        jax.eval_shape(self.schedule.init, jax.random.PRNGKey(0)))
    self.log_pn = jnp.asarray(log_pn_table(n_nodes_histogram))
    self.n_nodes_histogram = dict(n_nodes_histogram)

  # --- Parameters and the two learned functions.

  def init(self, rng: jax.Array, graph: jraph.GraphsTuple) -> Params:
    n_node = masking.node_mask(graph).shape[0]
    z = jnp.zeros((n_node, 3 + self.n_features))
    t = jnp.zeros(graph.n_node.shape[0])
    net_rng, gamma_rng = jax.random.split(rng)
    params = dict(self._net.init(net_rng, graph, z, t))
    clash = sorted(self.schedule_modules & set(params))
    if clash:
      raise ValueError(f'the network has modules named like the schedule\'s: {clash}.')
    params.update(self.schedule.init(gamma_rng))
    return params

  def gamma(self, params: Params, t: jax.Array) -> jax.Array:
    """gamma(t) for t [n_graph] in [0, 1]."""
    return self.schedule({k: params[k] for k in self.schedule_modules}, t)

  def eps(self, params: Params, graph: jraph.GraphsTuple, z_t: jax.Array,
          t: jax.Array) -> jax.Array:
    """The network's predicted noise for z_t [n_node, D] at t [n_graph]."""
    net_params = {k: v for k, v in params.items() if k not in self.schedule_modules}
    return self._net.apply(net_params, graph, z_t, t)

  def check_params(self, params: Params) -> None:
    """Raises ValueError unless `params` has exactly this model's names and shapes."""
    check_param_shapes(self.init, params, self.config)

  # --- Data <-> z.

  def normalize(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """(xh [n_node, 3 + F], delta_log_px [n_graph]) from a batch; x made CoG-free."""
    d = self.config.diffusion
    mask = masking.node_mask(graph)[:, None]
    x = center_of_gravity.remove_mean(graph.nodes[features.POSITIONS], graph) / d.norm_values[0]
    h = [(graph.nodes[features.ONE_HOT] - d.norm_biases[1]) / d.norm_values[1] * mask]
    if d.include_charges:
      h.append((graph.nodes[features.CHARGES][:, None] - d.norm_biases[2])
               / d.norm_values[2] * mask)
    delta_log_px = -gaussians.subspace_dim(graph) * math.log(d.norm_values[0])
    return jnp.concatenate([x] + h, axis=-1), delta_log_px

  def sample_noise(self, rng: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
    return gaussians.sample_noise(rng, graph, self.n_features)

  # Independent [n_node, 3 + n_features] draws the objective takes as one `eps`
  # (GeoLDM's latent model also takes its encoder's noise), positions CoG-free.
  noise_blocks = 1
  centred_noise = True
  # What `nll_per_molecule` holds (GeoLDM's stage 1 reports its VAE loss there).
  objective_name = 'nll'
  # Its batches carry no bonds (`batching.build_graph(with_bonds=False)`).
  with_bonds = False
  objective_label = ('NLL', 'nats/molecule')

  def draw_time(self, key: jax.Array) -> jax.Array:
    """One molecule's training t in {0..T} (EDM's t0_always=False)."""
    return jax.random.randint(key, (), 0, self.T + 1)

  def eval_time(self, key: jax.Array, shape) -> jax.Array:
    """Eval-mode t in {1..T} (the t = 0 term is computed apart)."""
    return jax.random.randint(key, shape, 1, self.T + 1)

  @staticmethod
  def loss_units(graphs: jraph.GraphsTuple) -> jax.Array:
    """What the training loss averages over: EDM's mean is over molecules."""
    return masking.graph_mask(graphs)

  # --- Pieces of the objective.

  def kl_prior(self, params, graph, xh) -> jax.Array:
    """[n_graph] KL(q(z_T | x, h) || N(0, I)) on the CoG-free x space and h."""
    gamma_T = self.gamma(params, jnp.ones(graph.n_node.shape[0]))
    alpha_T, sigma_T = schedules.alpha_sigma(gamma_T)
    mu_T = masking.per_node(alpha_T, graph) * xh
    kl_h = gaussians.kl_to_standard_normal(mu_T[:, 3:], masking.per_node(sigma_T, graph),
                                           graph)
    mu_x_norm2 = masking.segment_sum(
        jnp.sum(mu_T[:, :3]**2, -1) * masking.node_mask(graph), graph)
    kl_x = gaussians.kl_to_standard_normal_subspace(
        mu_x_norm2, sigma_T, gaussians.subspace_dim(graph))
    return kl_x + kl_h

  def log_constants_p_x_given_z0(self, params, graph) -> jax.Array:
    gamma_0 = self.gamma(params, jnp.zeros(graph.n_node.shape[0]))
    return gaussians.subspace_dim(graph) * (-0.5 * gamma_0 - 0.5 * _LOG_2PI)

  def _squared_error(self, eps, eps_hat, graph, columns=slice(None)):
    err = jnp.sum((eps[:, columns] - eps_hat[:, columns])**2, -1)
    return masking.segment_sum(err * masking.node_mask(graph), graph)

  def log_p_xh_given_z0(self, graph, xh, z_0, gamma_0, eps, eps_hat,
                        *, l2_normalizer=None) -> dict[str, jax.Array]:
    """log p(x, h | z_0) without constants: Gaussian x, discretised h. [n_graph].

    Args:
      l2_normalizer: divides the x error (the l2 training loss's (3 + F) * N).
    """
    d = self.config.diffusion
    mask = masking.node_mask(graph)
    K = self.config.num_atom_types
    err_x = self._squared_error(eps, eps_hat, graph, slice(0, 3))
    if l2_normalizer is not None:
      err_x = err_x / l2_normalizer
    _, sigma_0 = schedules.alpha_sigma(gamma_0)
    sigma_0 = masking.per_node(sigma_0, graph)
    cdf = gaussians.standard_normal_cdf
    x_cat = xh[:, 3:3 + K] * d.norm_values[1] + d.norm_biases[1]
    z_cat = z_0[:, 3:3 + K] * d.norm_values[1] + d.norm_biases[1]
    sigma_cat = sigma_0 * d.norm_values[1]
    centered = z_cat - 1
    log_prop = jnp.log(cdf((centered + 0.5) / sigma_cat)
                       - cdf((centered - 0.5) / sigma_cat) + 1e-10)
    log_probs = log_prop - jax.nn.logsumexp(log_prop, axis=-1, keepdims=True)
    log_p_cat = masking.segment_sum(jnp.sum(log_probs * x_cat, -1) * mask, graph)
    if d.include_charges:
      x_int = xh[:, -1] * d.norm_values[2] + d.norm_biases[2]
      z_int = z_0[:, -1] * d.norm_values[2] + d.norm_biases[2]
      sigma_int = sigma_0[:, 0] * d.norm_values[2]
      log_p_int = masking.segment_sum(jnp.log(
          cdf((x_int - z_int + 0.5) / sigma_int)
          - cdf((x_int - z_int - 0.5) / sigma_int) + 1e-10) * mask, graph)
    else:
      log_p_int = jnp.zeros_like(log_p_cat)
    return {'L0_log_p_x': -0.5 * err_x, 'L0_log_p_h_int': log_p_int,
            'L0_log_p_h_cat': log_p_cat}

  def z_and_eps_hat(self, params, graph, xh, t, gamma_t, eps
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(alpha_t, sigma_t, z_t = alpha_t xh + sigma_t eps, the network's eps_hat)."""
    alpha_t, sigma_t = schedules.alpha_sigma(gamma_t)
    z_t = masking.per_node(alpha_t, graph) * xh + masking.per_node(sigma_t, graph) * eps
    return alpha_t, sigma_t, z_t, self.eps(params, graph, z_t, t)

  # --- The two modes of the objective, one core.

  def _core(self, params, graph, t_int, eps) -> dict[str, jax.Array]:
    """What both modes compute: z_t at t = t_int / T, the network's eps_hat, the
    squared error, the prior KL and log p(N)."""
    xh, delta_log_px = self.normalize(graph)
    t = t_int.astype(jnp.float32) / self.T
    s = (t_int - 1).astype(jnp.float32) / self.T
    gamma_t, gamma_s = self.gamma(params, t), self.gamma(params, s)
    alpha_t, sigma_t, z_t, net_out = self.z_and_eps_hat(params, graph, xh, t, gamma_t, eps)
    return dict(xh=xh, delta_log_px=delta_log_px, t=t, s=s, gamma_t=gamma_t,
                gamma_s=gamma_s, alpha_t=alpha_t, sigma_t=sigma_t, z_t=z_t,
                net_out=net_out, error=self._squared_error(eps, net_out, graph),
                kl_prior=self.kl_prior(params, graph, xh),
                log_pN=self.log_pn[graph.n_node])

  @staticmethod
  def _loss_term_0(l0: dict[str, jax.Array]) -> jax.Array:
    return -(l0['L0_log_p_x'] + l0['L0_log_p_h_int'] + l0['L0_log_p_h_cat'])

  def eval_terms(self, params: Params, graph: jraph.GraphsTuple, t_int: jax.Array,
                 eps: jax.Array, eps0: jax.Array) -> dict[str, jax.Array]:
    """Every term of EDM's eval-mode NLL estimate (t0_always), per molecule.

    Args:
      params: model parameters.
      graph: the padded batch.
      t_int: [n_graph] integer timesteps in {1..T}.
      eps: [n_node, D] noise for z_t (`sample_noise`).
      eps0: [n_node, D] noise for z_0 (the L0 term).

    Returns:
      Per-molecule arrays [n_graph] named as in PARITY.md (`nll_per_molecule` is
      -log p(x, h, N)), plus `net_out` / `net_out0` [n_node, D].
    """
    c = self._core(params, graph, t_int, eps)
    xh = c.pop('xh')
    delta_log_px = c.pop('delta_log_px')
    snr = schedules.snr_weight(c['gamma_s'], c['gamma_t'])
    loss_t_gt0 = 0.5 * snr * c['error']
    estimator = self.T * loss_t_gt0
    neg_log_constants = -self.log_constants_p_x_given_z0(params, graph)
    zeros = jnp.zeros(graph.n_node.shape[0])
    gamma_0 = self.gamma(params, zeros)
    alpha_0, sigma_0, z_0, net_out0 = self.z_and_eps_hat(params, graph, xh, zeros,
                                                         gamma_0, eps0)
    l0 = self.log_p_xh_given_z0(graph, xh, z_0, gamma_0, eps0, net_out0)
    loss_term_0 = self._loss_term_0(l0)
    loss = c['kl_prior'] + estimator + neg_log_constants + loss_term_0
    neg_log_pxh = loss - delta_log_px
    return dict(
        c, gamma_0=gamma_0, alpha_0=alpha_0, sigma_0=sigma_0, z_0=z_0,
        net_out0=net_out0, SNR_weight=snr, loss_t_gt0=loss_t_gt0,
        estimator_loss_terms=estimator, neg_log_constants=neg_log_constants,
        loss_term_0=loss_term_0, loss=loss, neg_log_pxh=neg_log_pxh,
        nll_per_molecule=neg_log_pxh - c['log_pN'], **l0)

  def train_terms(self, params: Params, graph: jraph.GraphsTuple, t_int: jax.Array,
                  eps: jax.Array, padded_n: jax.Array | None = None
                  ) -> dict[str, jax.Array]:
    """EDM's train-mode objective (t0_always=False), per molecule.

    Args:
      params: model parameters.
      graph: the padded batch.
      t_int: [n_graph] integer timesteps in {0..T}.
      eps: [n_node, D] noise for z_t.
      padded_n: EDM's dense batch width for the l2 normaliser; defaults to this
        batch's largest molecule (pass the global one when a batch is sharded).

    Returns:
      Per-molecule arrays [n_graph]; `loss_per_molecule` is what EDM's
      `model.forward` returns in train mode (before subtracting log p(N)).
    """
    l2 = self.config.diffusion.loss_type == 'l2'
    c = self._core(params, graph, t_int, eps)
    error, delta_log_px = c['error'], c['delta_log_px']
    normalizer = None
    if l2:
      normalizer = (3 + self.n_features) * (
          dense_width(graph) if padded_n is None else padded_n)
      error = error / normalizer
      snr = jnp.ones_like(error)
      neg_log_constants = jnp.zeros_like(error)
      delta_log_px = jnp.zeros_like(delta_log_px)
    else:
      snr = schedules.snr_weight(c['gamma_s'], c['gamma_t'])
      neg_log_constants = -self.log_constants_p_x_given_z0(params, graph)
    loss_t_gt0 = 0.5 * snr * error
    # In train mode L0 reuses the t = 0 draws of the batch (EDM's t0_always=False).
    l0 = self.log_p_xh_given_z0(graph, c['xh'], c['z_t'], c['gamma_t'], eps,
                                c['net_out'], l2_normalizer=normalizer)
    loss_term_0 = self._loss_term_0(l0)
    loss_t = jnp.where(t_int == 0, loss_term_0, loss_t_gt0)
    estimator = loss_t if l2 else (self.T + 1) * loss_t
    loss = c['kl_prior'] + estimator + neg_log_constants
    loss_per_molecule = loss - delta_log_px
    return dict(t=c['t'], gamma_t=c['gamma_t'], z_t=c['z_t'], net_out=c['net_out'],
                error=error, loss_term_0=loss_term_0, loss_t=loss_t,
                kl_prior=c['kl_prior'], loss_per_molecule=loss_per_molecule,
                log_pN=c['log_pN'], nll_per_molecule=loss_per_molecule - c['log_pN'])

  # --- Batch means over real molecules.

  def train_loss(self, params, graph, t_int, eps, padded_n=None) -> jax.Array:
    """The back-propagated scalar: mean over molecules of loss - log p(N)."""
    terms = self.train_terms(params, graph, t_int, eps, padded_n)
    return masking.graph_mean(terms['nll_per_molecule'], graph)

  def nll(self, params, graph, t_int, eps, eps0) -> jax.Array:
    """Mean eval NLL -log p(x, h, N) (nats per molecule) of the batch."""
    terms = self.eval_terms(params, graph, t_int, eps, eps0)
    return masking.graph_mean(terms['nll_per_molecule'], graph)


def check_param_shapes(init: Callable, params: Params, config: Config) -> None:
  """One-line ValueError unless `params` has exactly the names and shapes that
  `init(rng, graph)` creates for a batch of the config's shape."""
  graph = batching.probe_graph(config.num_atom_types, config.context_nf)
  expected = jax.eval_shape(init, jax.random.PRNGKey(0), graph)
  want = {(m, k): v.shape for m, d in expected.items() for k, v in d.items()}
  have = {(m, k): np.shape(v) for m, d in params.items() for k, v in d.items()}
  if want != have:
    missing = sorted(set(want) - set(have))[:3]
    extra = sorted(set(have) - set(want))[:3]
    wrong = [k for k in set(want) & set(have) if want[k] != have[k]][:3]
    raise ValueError(f'state dict does not match the config: missing {missing}, '
                     f'unexpected {extra}, wrong shapes {wrong}.')


def dense_width(graph: jraph.GraphsTuple) -> jax.Array:
  """EDM's dense batch width: the largest real molecule of the batch."""
  return jnp.max(graph.n_node * (masking.graph_mask(graph) > 0))

