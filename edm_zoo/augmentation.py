"""EDM's data augmentation (`--data_augmentation`): a random rotation of every
training molecule.

The rotation is the original's: three angles drawn uniformly from [-pi, pi),
one per coordinate axis, composed as R = Rz Ry Rx (EDM's `utils.random_rotation`).
That is not the uniform (Haar) distribution on SO(3), and it is kept so because
it is what the paper's GDM-aug and EDM runs trained with. An E(3)-equivariant
network gains nothing from it in exact arithmetic; it is here to reproduce the
paper's table and for networks that are not equivariant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

from edm_zoo import masking
from edm_zoo.data import features


def _axis_rotation(theta: jax.Array, axis: int) -> jax.Array:
  """[3, 3] rotation by `theta` about coordinate `axis`, in EDM's sign convention."""
  i, j = [a for a in range(3) if a != axis]
  c, s = jnp.cos(theta), jnp.sin(theta)
  sign = -1.0 if axis == 1 else 1.0  # EDM's Ry has the opposite orientation.
  r = jnp.eye(3)
  return r.at[i, i].set(c).at[i, j].set(sign * s).at[j, i].set(-sign * s).at[j, j].set(c)


def random_rotation(key: jax.Array) -> jax.Array:
  """[3, 3] rotation: three uniform angles in [-pi, pi), R = Rz Ry Rx."""
  theta = jax.random.uniform(key, (3,), minval=-jnp.pi, maxval=jnp.pi)
  rx, ry, rz = (_axis_rotation(theta[a], a) for a in range(3))
  return rz @ ry @ rx


def rotate(graph: jraph.GraphsTuple, rotations: jax.Array) -> jraph.GraphsTuple:
  """The batch with molecule g's positions rotated by `rotations[g]` [n_graph, 3, 3]
  about the origin (the objective removes the centre of gravity, which commutes
  with a rotation)."""
  x = graph.nodes[features.POSITIONS]
  r = rotations[masking.node_graph_index(graph)]
  rotated = jnp.einsum('nij,nj->ni', r, x)
  return graph._replace(nodes={**graph.nodes, features.POSITIONS: rotated})
