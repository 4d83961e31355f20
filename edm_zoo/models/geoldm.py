"""GeoLDM's autoencoder (Xu et al., ICML 2023): EGNN encoder and decoder around a
latent space [x, z_h] in which EDM's diffusion runs.

Module and parameter names mirror GeoLDM's state dict: `vae.encoder.egnn.*`,
`vae.encoder.final_mlp.{0,2}`, `vae.decoder.egnn.*` become `vae/encoder/egnn/...`,
`vae/encoder/final_mlp_0`, ...; the dynamics is the zoo's `egnn` (module `egnn`).
Both EGNNs are the zoo's EDM EGNN: GeoLDM uses the same core (one invariant
sub-layer per block, [radial, radial_0] edge features, tanh-bounded updates with
range 15 in every block). The encoder has one block, the decoder `n_layers`.
"""

from __future__ import annotations

import dataclasses

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity, masking
from edm_zoo.config import ModelConfig
from edm_zoo.models import egnn, layers


class Encoder(hk.Module):
  """q(z | x, h): EGNN (1 block) on [one-hot, charge], then a 2-layer MLP.

  Args:
    config: the network configuration (its width, attention, ...).
    latent_nf: L, the latent feature width.
    name: the Haiku module name.
  """

  def __init__(self, *, config: ModelConfig, latent_nf: int, name: str = 'encoder'):
    super().__init__(name=name)
    self._config = dataclasses.replace(config, n_layers=1)
    self._latent_nf = latent_nf

  def __call__(self, x: jax.Array, h: jax.Array, graph: jraph.GraphsTuple
               ) -> dict[str, jax.Array]:
    """The posterior's parameters.

    Args:
      x: [n_node, 3] positions.
      h: [n_node, F] one-hot types and charges.
      graph: the padded batch.

    Returns:
      `x_mean` [n_node, 3] (zero CoG), `h_mean` [n_node, L], `x_std` [n_graph]
      and `h_std` [n_node, L] (GeoLDM computes the stds and never uses them), and
      the raw EGNN outputs `egnn_h`, `egnn_x` and `final_mlp`.
    """
    mask = masking.node_mask(graph)[:, None]
    h_e, x_e = egnn.EGNN(config=self._config, out_node_nf=self._config.nf)(h, x, graph)
    x_mean = center_of_gravity.remove_mean(x_e * mask, graph)
    o = layers.silu(layers.TorchLinear(self._config.nf, name='final_mlp_0')(h_e))
    o = layers.TorchLinear(2 * self._latent_nf + 1, name='final_mlp_2')(o)
    L = self._latent_nf
    return {'x_mean': x_mean, 'h_mean': o[:, 1:1 + L] * mask,
            'x_std': jnp.exp(0.5 * masking.segment_sum(o[:, 0] * mask[:, 0], graph)),
            'h_std': jnp.exp(0.5 * o[:, 1 + L:] * mask), 'egnn_h': h_e, 'egnn_x': x_e,
            'final_mlp': o}


class Decoder(hk.Module):
  """p(x, h | z): EGNN (n_layers blocks) from the latent to [x, logits, charge].

  Args:
    config: the network configuration.
    out_nf: F, the width of one-hot types plus the charge column.
    name: the Haiku module name.
  """

  def __init__(self, *, config: ModelConfig, out_nf: int, name: str = 'decoder'):
    super().__init__(name=name)
    self._config = config
    self._out_nf = out_nf

  def __call__(self, z: jax.Array, graph: jraph.GraphsTuple) -> dict[str, jax.Array]:
    """`x` [n_node, 3] (zero CoG) and `h` [n_node, F] (logits, then the charge)."""
    mask = masking.node_mask(graph)[:, None]
    h_d, x_d = egnn.EGNN(config=self._config, out_node_nf=self._out_nf)(
        z[:, 3:], z[:, :3], graph)
    return {'x': center_of_gravity.remove_mean(x_d * mask, graph), 'h': h_d * mask,
            'egnn_h': h_d, 'egnn_x': x_d}
