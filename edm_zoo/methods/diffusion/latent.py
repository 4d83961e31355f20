"""GeoLDM's latent diffusion: EDM's equivariant diffusion on the latent [x, z_h]
of an EGNN autoencoder (`edm_zoo.models.geoldm`), with GeoLDM's losses.

Pure functions of explicit draws, like `objective.Diffusion`: every noise array
and t is an argument. Notation follows PARITY_GEOLDM.md: `noise` arrays are
[n_node, 3 + L] with zero-CoG positions; the latent of a batch is
z = [x_mean, h_mean] + sigma_0 * noise, a constant for autodiff (GeoLDM detaches
it, so the latent objective never trains the encoder).
"""

from __future__ import annotations

import math
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity, masking
from edm_zoo.config import Config
from edm_zoo.methods.diffusion import gaussians, objective, schedules
from edm_zoo.methods.diffusion.objective import check_param_shapes, dense_width, log_pn_table
from edm_zoo.models import egnn, geoldm

Params = Any
_LOG_2PI = math.log(2 * math.pi)
# The stage-1 autoencoder's latent noise scale (GeoLDM's constant, not sigma_0).
VAE_SIGMA = 0.0032
VAE_KL_WEIGHT = 0.01


def _networks(config: Config, n_types: int, latent_nf: int) -> hk.MultiTransformed:
  """encode, decode and the dynamics' eps, sharing one parameter dict."""
  out_nf = n_types + int(config.diffusion.include_charges)

  def fns():
    # Modules built inside one 'vae' scope get GeoLDM's `vae.encoder.*` and
    # `vae.decoder.*` names (a scope entered twice in one function is renamed).
    def encode(graph, x, h):
      with hk.name_scope('vae'):
        return geoldm.Encoder(config=config.model, latent_nf=latent_nf)(x, h, graph)

    def decode(graph, z):
      with hk.name_scope('vae'):
        return geoldm.Decoder(config=config.model, out_nf=out_nf)(z, graph)

    def dynamics(graph, z_t, t):
      return egnn.net_fn(graph, z_t, t, config=config)

    def init(graph, x, h, z, t):
      with hk.name_scope('vae'):
        enc = geoldm.Encoder(config=config.model, latent_nf=latent_nf)(x, h, graph)
        dec = geoldm.Decoder(config=config.model, out_nf=out_nf)(z, graph)
      return enc, dec, dynamics(graph, z, t)
    return init, (encode, decode, dynamics)
  return hk.without_apply_rng(hk.multi_transform(fns))


class LatentDiffusion:
  """GeoLDM: an EGNN VAE and EDM's diffusion on its latent.

  Args:
    config: the run configuration (`model.latent_nf` is L).
    n_nodes_histogram: {molecule size: count} of the train split (log p(N)).
    n_types: atom types of the one-hot (the charge column comes on top when
      `include_charges`).
  """

  # eps holds two noise blocks: the diffusion's and the encoder's latent noise.
  noise_blocks = 2
  centred_noise = True
  with_bonds = False
  draw_time = objective.Diffusion.draw_time
  eval_time = objective.Diffusion.eval_time
  loss_units = staticmethod(objective.Diffusion.loss_units)
  # Module names of the autoencoder (`_networks` builds them in the 'vae' scope).
  AE_PREFIX = 'vae/'

  def __init__(self, config: Config, n_nodes_histogram: dict[int, int], n_types: int):
    if config.conditioning:
      raise ValueError('geoldm is unconditional here: drop --conditioning.')
    self.config = config
    # Stage 1 trains the autoencoder alone; the diffusion stage trains the
    # dynamics, and the decoder too when it is trainable (GeoLDM's --trainable_ae).
    self.stage = config.train.stage
    self.trainable_ae = config.train.trainable_ae
    # What `nll_per_molecule` holds: stage 1's loss is no likelihood.
    self.objective_name = 'vae_loss' if self.stage == 'autoencoder' else 'nll'
    self.objective_label = (('stage-1 VAE loss', 'per molecule') if self.stage == 'autoencoder'
                            else ('NLL', 'nats/molecule'))
    self.latent_nf = config.model.latent_nf
    self.n_features = self.latent_nf
    self.n_nodes_histogram = dict(n_nodes_histogram)
    self.n_types = n_types
    self.T = config.diffusion.T
    d = config.diffusion
    self.table = jnp.asarray(schedules.gamma_table(d.noise_schedule, d.T, d.noise_precision))
    self.log_pn = jnp.asarray(log_pn_table(n_nodes_histogram))
    self._nets = _networks(config, n_types, self.latent_nf)

  def init(self, rng: jax.Array, graph: jraph.GraphsTuple) -> Params:
    n = graph.nodes['positions'].shape[0]
    x, h = self.data(graph)
    z = jnp.zeros((n, 3 + self.latent_nf))
    return self._nets.init(rng, graph, x, h, z, jnp.zeros(graph.n_node.shape[0]))

  def sample_noise(self, rng: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
    """[n_node, 3 + L]: zero-CoG positions, masked latent features."""
    return gaussians.sample_noise(rng, graph, self.latent_nf)

  def _split(self, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(diffusion noise, the latent's noise) of a two-block eps."""
    width = 3 + self.latent_nf
    return eps[:, :width], eps[:, width:2 * width]

  def check_params(self, params: Params) -> None:
    """Raises ValueError (one line) unless `params` has exactly this model's
    names and shapes."""
    check_param_shapes(self.init, params, self.config)

  @classmethod
  def autoencoder(cls, params: Params) -> Params:
    """The encoder's and decoder's parameters of a full parameter dict."""
    return {k: v for k, v in params.items() if k.startswith(cls.AE_PREFIX)}

  def with_autoencoder(self, params: Params, ae_params: Params) -> Params:
    """`params` with its autoencoder replaced by `ae_params` (this model's
    autoencoder modules, names and shapes, else a one-line ValueError)."""
    ours = self.autoencoder(params)
    if set(ours) != set(ae_params):
      raise ValueError(f'the autoencoder has modules {sorted(ae_params)[:3]}..., '
                       f'this model {sorted(ours)[:3]}...')
    merged = {**params, **{k: jax.tree.map(jnp.asarray, v) for k, v in ae_params.items()}}
    try:
      self.check_params(merged)
    except ValueError as e:
      raise ValueError(f'the autoencoder does not fit this model ({e})') from None
    return merged

  # --- The networks.

  def data(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """(x, h = [one-hot, charge]) of a batch: x moved to zero CoG (as GeoLDM's
    train and test loops do), nothing scaled (nothing is normalised on GeoLDM's
    latent path)."""
    mask = masking.node_mask(graph)[:, None]
    h = [graph.nodes['one_hot']]
    if self.config.diffusion.include_charges:
      h.append(graph.nodes['charges'][:, None])
    x = center_of_gravity.remove_mean(graph.nodes['positions'] * mask, graph)
    return x, jnp.concatenate(h, -1) * mask

  def encode(self, params, graph, x, h) -> dict[str, jax.Array]:
    return self._nets.apply[0](params, graph, x, h)

  def decode(self, params, graph, z) -> dict[str, jax.Array]:
    return self._nets.apply[1](params, graph, z)

  def eps(self, params, graph, z_t, t) -> jax.Array:
    """The dynamics' eps prediction [n_node, 3 + L] at t in [0, 1] ([n_graph])."""
    return self._nets.apply[2](params, graph, z_t, t)

  def gamma(self, params: Params, t: jax.Array) -> jax.Array:
    """gamma at t in [0, 1], as `objective.Diffusion.gamma` (so the zoo's samplers
    run on the latent)."""
    del params  # GeoLDM's schedule is fixed.
    return schedules.lookup(self.table, t)

  def _gamma_int(self, t_int: jax.Array) -> jax.Array:
    return self.table[t_int]

  # --- Pieces of the objectives.

  def latent(self, params, graph, x, h, noise, sigma) -> dict[str, jax.Array]:
    """The encoder's outputs and z = [x_mean, h_mean] + sigma * noise (detached)."""
    enc = self.encode(params, graph, x, h)
    mean = jnp.concatenate([enc['x_mean'], enc['h_mean']], -1)
    sigma = masking.per_node(jnp.broadcast_to(sigma, graph.n_node.shape), graph)
    z = jax.lax.stop_gradient(mean + sigma * noise)
    return dict(enc, mean=mean, z=z)

  def reconstruction(self, graph, x, h, dec) -> dict[str, jax.Array]:
    """Per molecule: squared position error, the type cross-entropy over all
    padded slots of GeoLDM's dense batch (log K at each empty one) and the
    squared charge error."""
    mask = masking.node_mask(graph)
    K = self.n_types
    e_x = masking.segment_sum(jnp.sum((dec['x'] - x)**2, -1) * mask, graph)
    logits = dec['h'][:, :K]
    target = jnp.argmax(h[:, :K], -1)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[:, None], -1)[:, 0]
    width = dense_width(graph)
    e_cat = (masking.segment_sum(ce * mask, graph) +
             (width - graph.n_node).astype(jnp.float32) * math.log(K))
    e_q = jnp.zeros_like(e_x)
    if self.config.diffusion.include_charges:
      e_q = masking.segment_sum((dec['h'][:, K] - h[:, K])**2 * mask, graph)
    return {'x_sqerr': e_x, 'cat_ce': e_cat, 'charge_sqerr': e_q, 'ce_per_node': ce,
            'sum': e_x + e_cat + e_q}

  def kl_prior(self, graph, z) -> jax.Array:
    """[n_graph] KL(q(z_T | z) || N(0, I)) on zero-CoG x and the latent h."""
    gamma_T = self._gamma_int(jnp.full(graph.n_node.shape, self.T))
    alpha_T, sigma_T = schedules.alpha_sigma(gamma_T)
    mu = masking.per_node(alpha_T, graph) * z
    kl_h = gaussians.kl_to_standard_normal(mu[:, 3:], masking.per_node(sigma_T, graph), graph)
    mu_x2 = masking.segment_sum(jnp.sum(mu[:, :3]**2, -1) * masking.node_mask(graph), graph)
    return kl_h + gaussians.kl_to_standard_normal_subspace(
        mu_x2, sigma_T, gaussians.subspace_dim(graph))

  def _diffuse(self, params, graph, z, t_int, eps) -> dict[str, jax.Array]:
    gamma_t = self._gamma_int(t_int)
    alpha_t, sigma_t = schedules.alpha_sigma(gamma_t)
    z_t = masking.per_node(alpha_t, graph) * z + masking.per_node(sigma_t, graph) * eps
    t = t_int.astype(jnp.float32) / self.T
    eps_hat = self.eps(params, graph, z_t, t)
    error = masking.segment_sum(jnp.sum((eps - eps_hat)**2, -1) * masking.node_mask(graph),
                                graph)
    return {'gamma_t': gamma_t, 'z_t': z_t, 't': t, 'eps_hat': eps_hat, 'error': error}

  # --- The objectives, per molecule.

  def train_terms(self, params, graph, t_int, eps, padded_n=None) -> dict[str, jax.Array]:
    """GeoLDM's training objective (`--train_diffusion --trainable_ae`), §5.2.

    Args:
      params: all parameters.
      graph: the padded batch.
      t_int: [n_graph] integer times in {0..T}.
      eps: [n_node, 2 (3 + L)]: the diffusion noise, then the latent's noise.
      padded_n: GeoLDM's dense batch width for the normalisers; defaults to this
        batch's largest molecule (pass the global one when a batch is sharded).

    In stage 1 (`stage='autoencoder'`) the objective is `vae_terms`' (t_int and
    the diffusion noise unused); with a frozen decoder (`trainable_ae` off) the
    reconstruction term is left out, as GeoLDM does.
    """
    eps, enc_noise = self._split(eps)
    if self.stage == 'autoencoder':
      return self.vae_terms(params, graph, enc_noise, padded_n=padded_n)
    x, h = self.data(graph)
    gamma_0 = self._gamma_int(jnp.zeros_like(t_int))
    lat = self.latent(params, graph, x, h, enc_noise, schedules.alpha_sigma(gamma_0)[1])
    width = (dense_width(graph) if padded_n is None else padded_n).astype(jnp.float32)
    d = self._diffuse(params, graph, lat['z'], t_int, eps)
    error = d['error'] / ((3 + self.latent_nf) * width)
    kl = self.kl_prior(graph, lat['z'])
    loss_ld = kl + 0.5 * error
    rec = self._reconstruction_terms(params, graph, x, h, lat['z'])
    recon = rec['recon'] / ((3 + h.shape[-1]) * width)
    neg_log_pxh = loss_ld + recon
    log_pN = self.log_pn[graph.n_node]
    return dict(latent=lat, **{**rec, 'recon': recon}, **d, error_t=error,
                kl_prior=kl, loss_ld=loss_ld, neg_log_pxh=neg_log_pxh, log_pN=log_pN,
                nll_per_molecule=neg_log_pxh - log_pN)

  def _reconstruction_terms(self, params, graph, x, h, z) -> dict[str, jax.Array]:
    """{'dec', 'rec', 'recon'} of a trainable decoder; a frozen one is not run and
    its reconstruction term is 0 (GeoLDM's `loss_recon = 0`)."""
    if not self.trainable_ae:
      return {'recon': jnp.zeros(graph.n_node.shape, jnp.float32)}
    dec = self.decode(params, graph, z)
    rec = self.reconstruction(graph, x, h, dec)
    return {'dec': dec, 'rec': rec, 'recon': rec['sum']}

  def eval_terms(self, params, graph, t_int, eps, eps0) -> dict[str, jax.Array]:
    """GeoLDM's eval-mode NLL (validation and test), §5.3; t_int in {1..T}; eps
    holds the diffusion and the latent's noise (`train_terms`), eps0 the t = 0 draw.

    Stage 1 reports its own loss in eval mode (`vae_terms`, reconstruction not
    normalised); a frozen decoder's reconstruction term is 0, as in training.
    """
    eps, enc_noise = self._split(eps)
    if self.stage == 'autoencoder':
      return self.vae_terms(params, graph, enc_noise, normalise=False)
    x, h = self.data(graph)
    zeros = jnp.zeros_like(t_int)
    gamma_0 = self._gamma_int(zeros)
    alpha_0, sigma_0 = schedules.alpha_sigma(gamma_0)
    lat = self.latent(params, graph, x, h, enc_noise, sigma_0)
    z = lat['z']
    d = self._diffuse(params, graph, z, t_int, eps)
    w = schedules.snr_weight(self._gamma_int(t_int - 1), d['gamma_t'])
    d0 = self._diffuse(params, graph, z, zeros, eps0)
    n = graph.n_node.astype(jnp.float32)
    log_const = -0.5 * gamma_0 - 0.5 * _LOG_2PI
    log_const_x = gaussians.subspace_dim(graph) * log_const
    # GeoLDM counts 3 (n_dims) latent features per atom here, whatever L is.
    log_const_h = n * 3 * log_const
    kl = self.kl_prior(graph, z)
    loss_ld = kl + self.T * 0.5 * w * d['error'] - log_const_x + 0.5 * d0['error']
    rec = self._reconstruction_terms(params, graph, x, h, z)
    neg_log_pxh = loss_ld + rec['recon'] - log_const_h
    log_pN = self.log_pn[graph.n_node]
    return dict(latent=lat, **rec, **d, error_t=d['error'],
                error_0=d0['error'], eps_hat0=d0['eps_hat'], z_0=d0['z_t'], SNR_weight=w,
                log_const_x=log_const_x, log_const_h=log_const_h, kl_prior=kl,
                loss_ld=loss_ld, neg_log_pxh=neg_log_pxh, log_pN=log_pN,
                nll_per_molecule=neg_log_pxh - log_pN)

  def vae_terms(self, params, graph, noise, padded_n=None, normalise: bool = True
                ) -> dict[str, jax.Array]:
    """The stage-1 autoencoder loss (§5.4): reconstruction + 0.01 KL with q's
    sigma taken as 1, the latent drawn with sigma 0.0032.

    Args:
      noise: [n_node, 3 + L] the latent's noise.
      padded_n: the dense batch width of the normaliser (`train_terms`).
      normalise: divide the reconstruction by (3 + F) * width (train mode); eval
        mode does not.
    """
    x, h = self.data(graph)
    enc = self.encode(params, graph, x, h)
    mean = jnp.concatenate([enc['x_mean'], enc['h_mean']], -1)
    z = mean + VAE_SIGMA * noise
    mask = masking.node_mask(graph)
    kl_h = masking.segment_sum(0.5 * jnp.sum(enc['h_mean']**2, -1) * mask, graph)
    kl_x = masking.segment_sum(0.5 * jnp.sum(enc['x_mean']**2, -1) * mask, graph)
    dec = self.decode(params, graph, z)
    rec = self.reconstruction(graph, x, h, dec)
    recon = rec['sum']
    if normalise:
      width = dense_width(graph) if padded_n is None else padded_n
      recon = recon / ((3 + h.shape[-1]) * jnp.asarray(width, jnp.float32))
    loss = recon + VAE_KL_WEIGHT * (kl_h + kl_x)
    log_pN = self.log_pn[graph.n_node]
    return dict(latent={**enc, 'mean': mean, 'z': z}, dec=dec, rec=rec, recon=recon,
                kl_h=kl_h, kl_x=kl_x, vae_loss=loss, log_pN=log_pN,
                nll_per_molecule=loss - log_pN)

  # --- Sampling: EDM's reverse chain on the latent (the zoo's samplers), then
  # p(z_x, z_h | z_0) and the decoder.

  def p_z_given_z0(self, params, graph, z_0, noise) -> jax.Array:
    """z = (z_0 - sigma_0 eps_hat) / alpha_0 + exp(gamma_0 / 2) * noise: the
    latent h is sampled, not rounded (GeoLDM's `sample_p_xh_given_z0`)."""
    zeros = jnp.zeros(graph.n_node.shape[0])
    gamma_0 = self.gamma(params, zeros)
    alpha_0, sigma_0 = schedules.alpha_sigma(gamma_0)
    node = lambda v: masking.per_node(v, graph)
    eps_hat = self.eps(params, graph, z_0, zeros)
    mean = (z_0 - node(sigma_0) * eps_hat) / node(alpha_0)
    return mean + node(jnp.exp(0.5 * gamma_0)) * noise

  def decode_molecules(self, params, graph, z) -> dict[str, jax.Array]:
    """The decoder's molecules: positions, one-hot of the argmax type and the
    charge rounded half to even, zero on padding."""
    mask = masking.node_mask(graph)[:, None]
    dec = self.decode(params, graph, z)
    K = self.n_types
    one_hot = jax.nn.one_hot(jnp.argmax(dec['h'][:, :K], -1), K) * mask
    out = {'x': dec['x'], 'one_hot': one_hot, 'dec': dec}
    if self.config.diffusion.include_charges:
      out['charges'] = jnp.round(dec['h'][:, K:K + 1]) * mask
    return out

  def p_xh_given_z0(self, params, graph, z_0, noise) -> dict[str, jax.Array]:
    """The sampler's last step (`samplers.chain.final_step`): p(z | z_0), then the
    decoder's molecule as `x`, one-hot `h_cat` and charges `h_int`."""
    mol = self.decode_molecules(params, graph, self.p_z_given_z0(params, graph, z_0, noise))
    return {'x': mol['x'], 'h_cat': mol['one_hot'],
            'h_int': mol.get('charges', jnp.zeros_like(mol['x'][:, :1]))}

  def train_loss(self, params, graph, t_int, eps, padded_n=None) -> jax.Array:
    return masking.graph_mean(
        self.train_terms(params, graph, t_int, eps, padded_n)['nll_per_molecule'], graph)

  def nll(self, params, graph, t_int, eps, eps0) -> jax.Array:
    return masking.graph_mean(
        self.eval_terms(params, graph, t_int, eps, eps0)['nll_per_molecule'], graph)
