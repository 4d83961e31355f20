"""The zoo's shared input/output convention: what every denoising network sees
and returns, so that a new network plugs into the objective, the sampler and
conditioning unchanged.

Input: the noisy state z_t = [x (3), h (F)] of every node and t [n_graph] in
[0, 1]; `with_conditioning` widens h to [h, t, context] (EDM's
`EGNN_dynamics_QM9`). Output: eps_hat = [velocity projected to zero centre of
gravity, h_out without the appended columns] (`finalize_eps`).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity
from edm_zoo import masking
from edm_zoo.config import Config
from edm_zoo.data import features


def node_context(graph: jraph.GraphsTuple) -> jax.Array | None:
  """[n_node, C] context of each node's molecule (0 on padding), or None for an
  unconditional batch."""
  if not isinstance(graph.globals, Mapping) or features.CONTEXT not in graph.globals:
    return None
  return (masking.per_node_rows(graph.globals[features.CONTEXT], graph)
          * masking.node_mask(graph)[:, None])


def with_conditioning(h: jax.Array, t: jax.Array, graph: jraph.GraphsTuple,
                      config: Config) -> tuple[jax.Array, int]:
  """EDM's input convention: h -> [h, t, context].

  Args:
    h: [n_node, F] node features of z_t.
    t: [n_graph] diffusion times in [0, 1].
    graph: the padded batch (its globals may carry the context).
    config: the run configuration (`condition_time`, `conditioning`).

  Returns:
    The widened features and how many columns were appended (the network's
    output carries as many, which `finalize_eps` drops).

  Raises:
    ValueError: the batch's context does not have the config's width (a batch
      without the properties would silently run the model unconditioned).
  """
  extra = []
  if config.model.condition_time:
    extra.append(masking.per_node(t, graph))
  context = node_context(graph)
  width = 0 if context is None else context.shape[-1]
  if width != config.context_nf:
    raise ValueError(f'the model is conditioned on {list(config.conditioning)}, the '
                     f'batch carries {width} context columns.')
  if context is not None:
    extra.append(context)
  return jnp.concatenate([h, *extra], axis=-1), sum(e.shape[-1] for e in extra)


def finalize_eps(vel: jax.Array, h_out: jax.Array, graph: jraph.GraphsTuple,
                 n_extra: int) -> jax.Array:
  """EDM's output convention: [zero-CoG velocity, h_out without its last `n_extra`
  (time and context) columns].

  Args:
    vel: [n_node, 3] the network's position output (a velocity, not positions).
    h_out: [n_node, F + n_extra] its feature output.
    graph: the padded batch.
    n_extra: columns `with_conditioning` appended.
  """
  # EDM zeroes the whole velocity when any entry is NaN (and warns); keep that.
  vel = jnp.where(jnp.any(jnp.isnan(vel)), jnp.zeros_like(vel), vel)
  vel = center_of_gravity.remove_mean(vel, graph)
  return jnp.concatenate([vel, h_out[:, :h_out.shape[-1] - n_extra]], axis=-1)
