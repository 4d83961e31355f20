"""The original EDM's state dicts <-> our Haiku parameters.

`dynamics.egnn.e_block_0.gcl_0.edge_mlp.0.weight` is module
`egnn/e_block_0/gcl_0/edge_mlp_0`, param `w` = weight.T; `gamma.gamma_0` of a
learned schedule is module `gamma`, param `gamma_0`.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

# A dummy buffer; the predefined gamma table is rebuilt from the config.
SKIP = {'buffer', 'gamma.gamma'}


def haiku_name(torch_name: str) -> tuple[str, str, bool]:
  """(module path, param name, transpose?) of one EDM state-dict entry."""
  parts = torch_name.split('.')
  if parts[0] == 'dynamics':
    parts = parts[1:]
  *path, leaf = parts
  merged: list[str] = []
  for p in path:
    if re.fullmatch(r'\d+', p) and merged:
      merged[-1] += f'_{p}'
    else:
      merged.append(p)
  if leaf == 'weight':
    return '/'.join(merged), 'w', True
  if leaf == 'bias':
    return '/'.join(merged), 'b', False
  return '/'.join(merged), leaf, False  # e.g. gamma.gamma_0


def params_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Haiku params from an EDM state dict (arrays keyed by PyTorch names)."""
  params: dict[str, dict[str, jax.Array]] = {}
  for name, value in state_dict.items():
    if name in SKIP:
      continue
    module, leaf, transpose = haiku_name(name)
    value = np.asarray(value, np.float32)
    params.setdefault(module, {})[leaf] = jnp.asarray(value.T if transpose else value)
  return params


def torch_view(tree: dict, name: str) -> np.ndarray:
  """Our parameter `tree`'s array for the state-dict entry `name`, in torch layout."""
  module, leaf, transpose = haiku_name(name)
  value = np.asarray(tree[module][leaf])
  return value.T if transpose else value


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """An EDM state dict from `.npz` (no torch needed) or a torch file (`.npy`/`.pt`)."""
  if not os.path.isfile(path):
    raise ValueError(f'--state_dict {path}: no such file.')
  if path.endswith('.npz'):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
      raise ValueError(f'cannot read {path}: {e}') from e
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(
        f'{path} is a PyTorch file (EDM saves generative_model_ema.npy with '
        'torch.save); reading it needs torch (`pip install torch==2.13.0`), or '
        'save its state dict as .npz.') from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for a bad file.
    raise ValueError(f'{path} is not a readable PyTorch state dict ({e}).') from e
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def read_lightning_checkpoint(path: str) -> dict:
  """A PyTorch Lightning checkpoint as a dict (`state_dict` of numpy arrays,
  `hyper_parameters`, ...); one-line ValueErrors otherwise (reading needs torch)."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file.')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f'{path} is a PyTorch Lightning checkpoint; reading it needs torch '
                     '(`pip install torch==2.13.0`), or save its state dict as .npz.') from None
  try:
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
  except Exception as e:  # torch raises many types for a bad file.
    raise ValueError(f'{path} is not a readable checkpoint ({type(e).__name__}).') from None
  if not isinstance(ckpt, dict) or 'state_dict' not in ckpt:
    raise ValueError(f'{path} holds no Lightning state_dict.')
  as_numpy = lambda d: {k: v.detach().cpu().numpy() for k, v in d.items()
                        if hasattr(v, 'detach')}
  return dict(ckpt, state_dict=as_numpy(ckpt['state_dict']),
              **({'ema_state_dict': as_numpy(ckpt['ema_state_dict'])}
                 if ckpt.get('ema_state_dict') else {}))
