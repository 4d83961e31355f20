"""EDM's property classifiers (`qm9/property_prediction`) on padded jraph batches.

`egnn`: an embedding of the one-hot atom types, `n_layers` invariant graph
convolutions on fully connected molecules (edge input: squared distance; EDM's
`E_GCL_mask`, which never moves the coordinates), a node decoder, a sum over
each molecule's atoms and a graph decoder. `numnodes`: the '#Atoms' baseline,
an MLP on the number of atoms / 29. Both predict the normalised property.
"""

from __future__ import annotations

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from edm_zoo import masking
from edm_zoo.config import ClassifierConfig, ModelConfig
from edm_zoo.data import features
from edm_zoo.models import egnn
from edm_zoo.models import layers

# EDM scales the '#Atoms' input by QM9's largest molecule.
_MAX_ATOMS = 29.0


class EGNNRegressor(hk.Module):
  """Invariant EGNN regressor: one scalar per molecule."""

  def __init__(self, *, config: ClassifierConfig, name: str | None = 'egnn'):
    """Args: config: the classifier configuration; name: the Haiku module name."""
    super().__init__(name=name)
    self._config = config
    # EDM's classifier convolution is the dynamics' GCL with sum aggregation.
    self._gcl_config = ModelConfig(nf=config.nf, attention=config.attention,
                                   normalization_factor=1.0)

  def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
    c = self._config
    node_mask, edge_mask = masking.node_mask(graph), masking.edge_mask(graph)
    x = graph.nodes[features.POSITIONS]
    radial = jnp.sum((x[graph.receivers] - x[graph.senders])**2, -1, keepdims=True)
    h = layers.TorchLinear(c.nf, name='embedding')(graph.nodes[features.ONE_HOT])
    for l in range(c.n_layers):
      h = egnn.GCL(config=self._gcl_config, name=f'gcl_{l}')(
          h, graph=graph, edge_attr=radial, node_mask=node_mask, edge_mask=edge_mask)
    h = layers.silu(layers.TorchLinear(c.nf, name='node_dec_0')(h))
    h = layers.TorchLinear(c.nf, name='node_dec_2')(h) * node_mask[:, None]
    h = masking.segment_sum(h, graph)
    h = layers.silu(layers.TorchLinear(c.nf, name='graph_dec_0')(h))
    return layers.TorchLinear(1, name='graph_dec_2')(h)[:, 0]


class NumNodes(hk.Module):
  """EDM's '#Atoms' baseline: the prediction depends on the molecule size only."""

  def __init__(self, *, config: ClassifierConfig, name: str | None = 'numnodes'):
    super().__init__(name=name)
    self._config = config

  def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
    n = masking.segment_sum(masking.node_mask(graph), graph)[:, None] / _MAX_ATOMS
    h = layers.silu(layers.TorchLinear(self._config.nf, name='linear1')(n))
    return layers.TorchLinear(1, name='linear2')(h)[:, 0]


_MODELS = {'egnn': EGNNRegressor, 'numnodes': NumNodes}


def net_fn(graph: jraph.GraphsTuple, *, config: ClassifierConfig) -> jax.Array:
  """[n_graph] normalised property predictions (padding graphs: ignore)."""
  return _MODELS[config.model](config=config)(graph)


def transform(config: ClassifierConfig) -> hk.Transformed:
  return hk.without_apply_rng(hk.transform(functools.partial(net_fn, config=config)))
