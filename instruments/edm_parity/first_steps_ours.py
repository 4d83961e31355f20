"""edm_zoo's first GEOM-Drugs training steps beside the original's, on the same batches.

Replays a `first_steps.py` file: the same initial weights (the original's state
dict, imported), the same dense batches, the same t and noise per step, EDM's
clipping queue [3000], through edm_zoo's jitted training step. Prints one
Markdown table with both columns per step (loss, gradient norm, clipping
threshold, clipped) and writes them as JSON:

  python instruments/edm_parity/first_steps_ours.py --steps_file=/tmp/first_steps.npz \\
      --json=/tmp/first_steps_ours.json [--warmup_steps=N]

`--warmup_steps` replays edm_zoo with its learning-rate warm-up (the original has
none), to show what the opt-in changes on the same batches.
"""

import json
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from edm_zoo.compat import edm_args, parity, state_dict as state_dict_lib  # noqa: E402
from edm_zoo.data import batching, elements, registry  # noqa: E402
from edm_zoo.methods.diffusion.objective import Diffusion  # noqa: E402
from edm_zoo.training import optimizer, state as train_state  # noqa: E402

_FILE = flags.DEFINE_string('steps_file', None, 'the .npz of first_steps.py')
_JSON = flags.DEFINE_string('json', None, 'write both columns here')
_WARMUP = flags.DEFINE_integer('warmup_steps', 0, "edm_zoo's learning-rate warm-up (0: none)")


def main(argv):
  del argv
  v = parity.load_vectors(_FILE.value)
  args = json.loads(str(v['config_json']))
  config = edm_args.config_from_args(args)
  hist = {int(k): int(n) for k, n in args['n_nodes_histogram'].items()}
  model = Diffusion(config, hist)
  params = state_dict_lib.params_from_state_dict(
      {k[len('param/'):]: a for k, a in v.items() if k.startswith('param/')})
  model.check_params(params)
  atomic_numbers = elements.atomic_numbers(registry.atom_types(config.dataset))
  steps = int(args['steps'])
  masks = [v[f'step{k}/node_mask'] for k in range(steps)]
  sizes = [m[..., 0].sum(1).astype(int) for m in masks]
  # One padding budget for every step: one compiled step.
  budget = batching.PaddingBudget(max(int(s.sum()) for s in sizes) + 1,
                                  max(int((s * (s - 1)).sum()) for s in sizes),
                                  max(len(s) for s in sizes) + 1)
  tx = optimizer.torch_adamw_amsgrad(float(args['lr']), weight_decay=1e-12,
                                     warmup_steps=_WARMUP.value)
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  _, step_fn = train_state.make_step_fns(model, tx, ema_decay=float(args['ema_decay']), mesh=mesh)
  state = train_state.new_state(params, tx, optimizer.init_clip_queue((3000.0,), 50))
  rows = []
  for k in range(steps):
    mask = masks[k]
    # The original's train_epoch centres the positions (twice) before the model.
    x = v[f'step{k}/positions'] * mask
    for _ in range(2):
      x = x - (x.sum(1, keepdims=True) / mask.sum(1, keepdims=True)) * mask
    graph = parity.graph_from_dense(v[f'step{k}/one_hot'], v[f'step{k}/charges'],
                                    x.astype(np.float32), mask, atomic_numbers, budget=budget)
    n_total = graph.nodes['mask'].shape[0]
    n_graph = graph.n_node.shape[0]
    t = np.zeros(n_graph, np.int32)
    t[:len(sizes[k])] = v[f'step{k}/t_int']
    eps = parity.nodes_from_dense(v[f'step{k}/eps'], mask, n_total)
    state, info = step_fn(state, jax.tree.map(lambda a: jnp.asarray(a)[None], graph),
                          jnp.asarray(t)[None], eps[None])
    rows.append({'step': k, 'loss': float(info['loss']), 'grad_norm': float(info['grad_norm']),
                 'max_grad_norm': float(info['max_grad_norm']),
                 'clipped': bool(info['clipped'])})
  original = args['rows']
  print('| step | loss (original / edm_zoo) | gradient norm (original / edm_zoo) | '
        'clipping threshold (original / edm_zoo) | clipped |')
  print('|---|---|---|---|---|')
  for o, r in zip(original, rows):
    print(f"| {r['step']} | {o['loss']:.4g} / {r['loss']:.4g} | {o['grad_norm']:.4g} / "
          f"{r['grad_norm']:.4g} | {o['max_grad_norm']:.4g} / {r['max_grad_norm']:.4g} | "
          f"{'yes' if o['clipped'] else 'no'} / {'yes' if r['clipped'] else 'no'} |")
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump({'original': original, 'edm_zoo': rows, 'warmup_steps': _WARMUP.value,
                 'config': {k: args[k] for k in ('nf', 'n_layers', 'batch_size', 'seed')}}, f,
                indent=1)


if __name__ == '__main__':
  flags.mark_flag_as_required('steps_file')
  app.run(main)
