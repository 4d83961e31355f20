"""The one place that patches jax for jraph 0.0.6.dev0.

jraph's last release calls `jax.tree_map` / `jax.tree_leaves` (removed in jax 0.6)
from `jraph.pad_with_graphs`, `jraph.zero_out_padding` and friends. We restore the
two aliases, pointing at their `jax.tree` successors, before jraph is imported.
`jax.lib.xla_bridge` is only imported by jraph's own test files, which we never
import, so it needs no shim. Importing `edm_zoo` applies this once.
"""

import jax

if not hasattr(jax, 'tree_map'):
  jax.tree_map = jax.tree.map
if not hasattr(jax, 'tree_leaves'):
  jax.tree_leaves = jax.tree.leaves
