"""GeoBFN's objective: the Bayesian flow of coordinates (continuous) and charges
(discretised) around the zoo's geobfn network, its continuous-time loss and its
evaluation figure.

`BayesianFlow` speaks the interface the training skeleton, evaluation and
sampling call (`init`, `draw_time`, `eval_time`, `sample_noise`, `train_terms`,
`eval_terms`, `check_params`); its methods are pure functions of explicit t and
noise like `methods.diffusion.Diffusion`.

Conventions (GeoBFN's `bfn4MolEGNN.loss_one_step` and `geobfn_train.py`):
  * x = positions moved to zero CoG, divided by `position_scale` (2); the charge
    c = (2 Z - 1) / K - 1, the centre of Z's bin (K = bins = 9).
  * t ~ U(0, 1) per molecule; the flow's input is zero where t <= t_min, and t is
    then clamped to t_min everywhere (the network sees the clamped t).
  * noise [n_node, 4] is standard normal, *not* projected: mu_x is clamped to
    +-10, zeroed below t_min and then moved to zero CoG.
  * the training loss is the mean over the batch's *atoms* of
    L^inf_x + L^inf_c (GeoBFN's `torch.mean(posloss + charge_loss)`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity, masking, models
from edm_zoo.config import Config
from edm_zoo.data import features
from edm_zoo.methods.bfn import flow
from edm_zoo.methods.diffusion.objective import check_param_shapes, log_pn_table

Params = Any
# GeoBFN clamps the flow's means (and the sampler's observations) to this range.
MEAN_CLAMP = 10.0
# charge_clamp: the charge's predicted mean and sigma before binning.
CHARGE_MU_CLAMP = 2.0
CHARGE_SIGMA_CLAMP = (1e-6, 4.0)


class BayesianFlow:
  """GeoBFN: a Bayesian flow network of coordinates and discretised charges.

  Args:
    config: the run configuration (`bfn`, `model`).
    n_nodes_histogram: {molecule size: count} of the train split (sampling sizes).
  """

  # The flow's noise: coordinates and the charge, not projected to zero CoG.
  noise_blocks = 1
  centred_noise = False
  objective_name = 'bfn_loss'
  # Its batches carry no bonds (`batching.build_graph(with_bonds=False)`).
  with_bonds = False
  objective_label = ('BFN loss L^inf', 'nats/molecule')

  def __init__(self, config: Config, n_nodes_histogram: dict[int, int]):
    if config.conditioning:
      raise ValueError("geobfn is unconditional here (GeoBFN's code has no "
                       'conditional model): drop --conditioning.')
    if not config.diffusion.include_charges:
      raise ValueError('geobfn generates atoms by their charge: it needs '
                       '--include_charges.')
    b = config.bfn
    self.config = config
    self.n_features = 1
    # The default number of sampling steps (what `--steps=0` means).
    self.T = b.sample_steps
    self.n_nodes_histogram = dict(n_nodes_histogram)
    self.log_pn = jnp.asarray(log_pn_table(n_nodes_histogram))
    self._net = models.transform(config)

  # --- Parameters and the network.

  def init(self, rng: jax.Array, graph: jraph.GraphsTuple) -> Params:
    n = masking.node_mask(graph).shape[0]
    return self._net.init(rng, graph, jnp.zeros((n, 3)), jnp.zeros((n, 1)),
                          jnp.zeros(graph.n_node.shape[0]))

  def check_params(self, params: Params) -> None:
    """Raises ValueError unless `params` has exactly this model's names and shapes."""
    check_param_shapes(self.init, params, self.config)

  def network(self, params, graph, mu_x, mu_charge, t) -> dict[str, jax.Array]:
    """The network's clamped outputs (`edm_zoo.models.geobfn.net_fn`)."""
    return self._net.apply(params, graph, mu_x, mu_charge, t)

  # --- Randomness (drawn outside, passed in).

  @staticmethod
  def draw_time(key: jax.Array) -> jax.Array:
    """One molecule's training t ~ U(0, 1) (clamped later, in `train_terms`)."""
    return jax.random.uniform(key, ())

  @staticmethod
  def eval_time(key: jax.Array, shape) -> jax.Array:
    return jax.random.uniform(key, shape)

  def sample_noise(self, rng: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
    """[n_node, 4] standard normal (coordinates, charge), zero on padding."""
    n = masking.node_mask(graph).shape[0]
    return jax.random.normal(rng, (n, 4)) * masking.node_mask(graph)[:, None]

  # --- Data.

  def data(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """(x [n_node, 3], c [n_node, 1]): zero-CoG positions / position_scale and the
    charge's bin centre (2 Z - 1) / K - 1, zero on padding."""
    b = self.config.bfn
    mask = masking.node_mask(graph)[:, None]
    x = center_of_gravity.remove_mean(graph.nodes[features.POSITIONS], graph)
    c = (2 * graph.nodes[features.CHARGES][:, None] - 1) / b.bins - 1
    return x / b.position_scale, c * mask

  # --- The flow and the network's output distribution.

  def flow_inputs(self, graph, x, c, t, noise) -> dict[str, jax.Array]:
    """The network's inputs at t [n_graph] (unclamped) for data (x, c) and noise."""
    b = self.config.bfn
    t_node = masking.per_node(t, graph)
    live = t_node > b.t_min
    t_node = jnp.maximum(t_node, b.t_min)
    mu_c, gamma_c = flow.bayesian_flow(c, t_node, b.sigma1_charges, noise[:, 3:4])
    mu_x, gamma_x = flow.bayesian_flow(x, t_node, b.sigma1_coord, noise[:, :3])
    mu_c = jnp.where(live, jnp.clip(mu_c, -MEAN_CLAMP, MEAN_CLAMP), 0.0)
    mu_x = jnp.where(live, jnp.clip(mu_x, -MEAN_CLAMP, MEAN_CLAMP), 0.0)
    mu_x = center_of_gravity.remove_mean(mu_x, graph)
    return {'t': jnp.maximum(t, b.t_min), 't_node': t_node, 'mu_x': mu_x,
            'mu_charge': mu_c, 'gamma_x': gamma_x, 'gamma_charge': gamma_c}

  def predict(self, params, graph, mu_x, mu_charge, t, gamma_x, gamma_charge
              ) -> dict[str, jax.Array]:
    """GeoBFN's `interdependency_modeling`: the data predictions at t.

    Args:
      mu_x, mu_charge: the flow's means [n_node, 3] and [n_node, 1].
      t: [n_graph] (clamped) times.
      gamma_x, gamma_charge: gamma(t) per node [n_node, 1] (or scalars).

    Returns:
      The network's outputs, `x_pred` [n_node, 3], the charge's Gaussian
      `mu_charge_x`, `sigma_charge_x` [n_node, 1] (clamped), its bin
      probabilities `p` [n_node, K] and their mean `k_hat` [n_node, 1].
    """
    b = self.config.bfn
    out = self.network(params, graph, mu_x, mu_charge, t)
    x_pred = flow.data_prediction(mu_x, gamma_x, out['eps_x'])
    mu_cx = flow.data_prediction(mu_charge, gamma_charge, out['mu_eps'])
    sigma_cx = jnp.sqrt((1 - gamma_charge) / gamma_charge) * jnp.exp(out['ln_sigma_eps'])
    mu_cx = jnp.clip(mu_cx, -CHARGE_MU_CLAMP, CHARGE_MU_CLAMP)
    sigma_cx = jnp.clip(sigma_cx, *CHARGE_SIGMA_CLAMP)
    p = flow.bin_probabilities(mu_cx, sigma_cx, b.bins)
    centres, _, _ = flow.bin_centres(b.bins)
    return dict(out, x_pred=x_pred, mu_charge_x=mu_cx, sigma_charge_x=sigma_cx, p=p,
                k_hat=jnp.sum(p * centres, -1, keepdims=True))

  # --- The objectives.

  def _terms(self, params, graph, t, noise) -> dict[str, jax.Array]:
    b = self.config.bfn
    mask = masking.node_mask(graph)
    x, c = self.data(graph)
    inputs = self.flow_inputs(graph, x, c, t, noise)
    pred = self.predict(params, graph, inputs['mu_x'], inputs['mu_charge'], inputs['t'],
                        inputs['gamma_x'], inputs['gamma_charge'])
    pos_loss = flow.continuous_time_loss(inputs['t_node'], b.sigma1_coord,
                                         pred['x_pred'], x) * mask
    charge_loss = flow.continuous_time_loss(inputs['t_node'], b.sigma1_charges,
                                            pred['k_hat'], c) * mask
    per_molecule = masking.segment_sum(pos_loss + charge_loss, graph)
    return dict(inputs, **pred, x=x, charge=c, pos_loss=pos_loss,
                charge_loss=charge_loss, loss_per_molecule=per_molecule,
                nll_per_molecule=per_molecule)

  def train_terms(self, params, graph, t, eps, padded_n=None) -> dict[str, jax.Array]:
    """Per-atom losses and their per-molecule sums at t [n_graph] in [0, 1] for
    the flow's noise eps [n_node, 4] (`padded_n` is EDM's and unused)."""
    del padded_n
    return self._terms(params, graph, t, eps)

  @staticmethod
  def loss_units(graphs: jraph.GraphsTuple) -> jax.Array:
    """What the training loss averages over: GeoBFN's mean is over atoms."""
    return masking.node_mask(graphs)

  def eval_terms(self, params, graph, t, eps, eps0=None) -> dict[str, jax.Array]:
    """The evaluation figure per molecule at t [n_graph] ~ U(0, 1): the sum over
    its atoms of L^inf_x + L^inf_c (`nll_per_molecule`; see `objective_label`).

    An unbiased one-sample estimate of the continuous-time loss L^inf of the
    molecule: the n -> infinity limit of the KL part of the BFN bound on
    -log p(x, c | N) in the scaled coordinates. It leaves out the bound's
    reconstruction term, log p(N) and the Jacobian of the position scaling, so it
    is not a likelihood bound and not comparable to EDM's NLL.
    """
    del eps0
    return self._terms(params, graph, t, eps)

  def train_loss(self, params, graph, t, eps) -> jax.Array:
    """GeoBFN's batch loss: the mean over real atoms."""
    terms = self._terms(params, graph, t, eps)
    mask = masking.node_mask(graph)
    return (jnp.sum((terms['pos_loss'] + terms['charge_loss']) * mask)
            / jnp.maximum(jnp.sum(mask), 1.0))

