"""The original EDM's first GEOM-Drugs training steps, with every draw recorded.

Runs the original's own `train_test.train_epoch` (its AdamW, gradient clipping with
the queue [3000], EMA) for --steps iterations of the published GEOM-Drugs
configuration on random batches of a GEOM-format file, with t and the noise of
each step drawn by the original's functions after `torch.manual_seed(3000 + seed
+ k)` and injected as `generate.py` does. Writes one .npz: the initial state dict
(`param/*`), each step's dense batch, t and noise (`step{k}/...`), and per step
the original's loss, gradient norm, clipping threshold and whether it clipped.
`first_steps_ours.py` replays the same steps with edm_zoo from the same weights
and prints both columns:

  EDM_REPO=$HOME/edm_reference $HOME/edm_venv/bin/python \\
      instruments/edm_parity/first_steps.py --geom=DIR --steps=50 --batch_size=64 \\
      --seed=0 --out=/tmp/first_steps.npz
  python instruments/edm_parity/first_steps_ours.py --steps_file=/tmp/first_steps.npz

DIR: a GEOM-format folder (`instruments/original_size_split.py --dataset=moses3d`
or `instruments/geom_full_size.py`); --max_atoms keeps molecules up to that size.
"""

import argparse
import contextlib
import copy
import json
import os
import sys
import time

import numpy as np

import generate  # pylint: disable=g-import-not-at-top  # This folder's vector generator.


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--geom', required=True)
  ap.add_argument('--steps', type=int, default=50)
  ap.add_argument('--batch_size', type=int, default=64)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--nf', type=int, default=256)
  ap.add_argument('--n_layers', type=int, default=4)
  ap.add_argument('--max_atoms', type=int, default=181)
  ap.add_argument('--threads', type=int, default=2)
  ap.add_argument('--out', required=True)
  a = ap.parse_args()
  o = generate.original_modules()
  torch, build_geom_dataset, losses, models = o.torch, o.build_geom_dataset, o.losses, o.models
  train_test, edm_utils, diffusion_utils = o.train_test, o.edm_utils, o.diffusion_utils
  get_dataset_info = o.get_dataset_info
  torch.set_num_threads(a.threads)

  args = argparse.Namespace(**generate.GEOM_ARGS, nf=a.nf, n_layers=a.n_layers, seed=a.seed)
  dataset_info = get_dataset_info('geom', False)
  data = np.load(os.path.join(a.geom, 'geom_drugs_30.npy'))
  ids = data[:, 0].astype(np.int64)
  starts = np.concatenate([[0], np.nonzero(np.diff(ids))[0] + 1, [len(ids)]])
  sizes = np.diff(starts)
  pool = np.nonzero(sizes <= a.max_atoms)[0]
  rng = np.random.default_rng(a.seed)
  transform = build_geom_dataset.GeomDrugsTransform(dataset_info, False, torch.device('cpu'),
                                                    False)
  torch.manual_seed(a.seed)
  model, nodes_dist, _ = models.get_model(args, torch.device('cpu'), dataset_info, None)
  out = {f'param/{k}': v.clone() for k, v in model.state_dict().items()}
  batches, draws = [], []
  T = args.diffusion_steps
  for k in range(a.steps):
    chosen = rng.choice(pool, a.batch_size, replace=False)
    batch = build_geom_dataset.collate_fn(
        [transform(data[starts[i]:starts[i + 1], 1:]) for i in chosen])
    node_mask = batch['atom_mask'].float().unsqueeze(2)
    B, N = node_mask.shape[:2]
    torch.manual_seed(3000 + a.seed + k)
    draws.append({'t_int': torch.randint(0, T + 1, size=(B, 1)).numpy().reshape(-1),
                  'eps': model.sample_combined_position_feature_noise(B, N, node_mask)})
    batches.append(batch)
    z = np.array(dataset_info['atomic_nb'])[batch['one_hot'].float().argmax(-1).numpy()]
    out.update({f'step{k}/conformer_ids': chosen.astype(np.int64),
                f'step{k}/positions': batch['positions'].float(),
                f'step{k}/one_hot': batch['one_hot'].float(),
                f'step{k}/charges': torch.as_tensor(z[..., None] * node_mask.numpy(),
                                                    dtype=torch.float32),
                f'step{k}/node_mask': node_mask,
                f'step{k}/t_int': draws[-1]['t_int'],
                f'step{k}/eps': draws[-1]['eps']})

  step = {'k': 0}
  rows = []
  stack = contextlib.ExitStack()

  def randint(low, high, size, device=None, **kwargs):
    return torch.as_tensor(np.asarray(draws[step['k']]['t_int']).reshape(size),
                           dtype=torch.int64)

  def noise(n_samples, n_nodes, node_mask):
    return draws[step['k']]['eps'].to(node_mask.dtype)

  original_clip = edm_utils.gradient_clipping
  def gradient_clipping(flow, gradnorm_queue):
    seen = {}
    original_norm = torch.nn.utils.clip_grad_norm_
    def clip_grad_norm_(parameters, max_norm, norm_type=2.0, **kw):
      total = original_norm(parameters, max_norm=max_norm, norm_type=norm_type, **kw)
      seen.update(max_norm=float(max_norm), total=float(total))
      return total
    with generate.patched(torch.nn.utils, 'clip_grad_norm_', clip_grad_norm_):
      grad_norm = original_clip(flow, gradnorm_queue)
    rows.append({'step': step['k'], 'grad_norm': seen['total'],
                 'max_grad_norm': seen['max_norm'],
                 'clipped': seen['total'] > seen['max_norm']})
    return grad_norm

  original_loss = losses.compute_loss_and_nll
  def compute_loss_and_nll(*args_, **kw):
    nll, reg, mean_abs_z = original_loss(*args_, **kw)
    losses_seen.append(float(nll))
    return nll, reg, mean_abs_z
  losses_seen = []

  ema = diffusion_utils.EMA(args.ema_decay)
  original_update = ema.update_model_average
  def update_model_average(ma_model, current_model):
    original_update(ma_model, current_model)
    step['k'] += 1

  optim = torch.optim.AdamW(model.parameters(), lr=args.lr, amsgrad=True, weight_decay=1e-12)
  queue = edm_utils.Queue()
  queue.add(3000)
  stack.enter_context(generate.patched(torch, 'randint', randint))
  stack.enter_context(generate.patched(model, 'sample_combined_position_feature_noise', noise))
  stack.enter_context(generate.patched(edm_utils, 'gradient_clipping', gradient_clipping))
  stack.enter_context(generate.patched(losses, 'compute_loss_and_nll', compute_loss_and_nll))
  stack.enter_context(generate.patched(ema, 'update_model_average', update_model_average))
  start = time.perf_counter()
  with stack, contextlib.redirect_stdout(sys.stderr):
    train_test.train_epoch(args=args, loader=batches, epoch=0, model=model, model_dp=model,
                           model_ema=copy.deepcopy(model), ema=ema,
                           device=torch.device('cpu'), dtype=torch.float32, property_norms=None,
                           optim=optim, nodes_dist=nodes_dist, gradnorm_queue=queue,
                           dataset_info=None, prop_dist=None)
  seconds = time.perf_counter() - start
  for r, loss in zip(rows, losses_seen):
    r['loss'] = loss
  config = {**generate.GEOM_ARGS, 'nf': a.nf, 'n_layers': a.n_layers, 'seed': a.seed,
            'batch_size': a.batch_size, 'steps': a.steps,
            'num_classes': len(dataset_info['atom_decoder']),
            'n_nodes_histogram': {int(k): int(v) for k, v in dataset_info['n_nodes'].items()},
            'torch': torch.__version__, 'seconds': seconds, 'rows': rows}
  out['config_json'] = np.array(json.dumps(config))
  np.savez_compressed(a.out, **generate.to_numpy(out))
  print(json.dumps({'out': a.out, 'seconds': seconds,
                    'largest_loss': max(r['loss'] for r in rows),
                    'clipped': sum(r['clipped'] for r in rows)}))


if __name__ == '__main__':
  main()
