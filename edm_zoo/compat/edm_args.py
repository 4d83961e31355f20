"""The original EDM's training arguments (args.pickle / PARITY.md's config_json)
as our Config."""

from __future__ import annotations

import json
import os
import pickle
from typing import Any, Mapping

from edm_zoo.config import Config, DiffusionConfig, ModelConfig

_MODEL_NAMES = {'egnn_dynamics': 'egnn', 'gnn_dynamics': 'gnn'}
# EDM's dataset names: (ours, atom types with hydrogens).
_DATASETS = {'qm9': ('qm9', 5), 'qm9_first_half': ('qm9_first_half', 5),
             'qm9_second_half': ('qm9_second_half', 5), 'geom': ('geom_drugs', 16)}


def config_from_args(args: Mapping[str, Any]) -> Config:
  """Our Config from EDM's training args (a dict)."""
  model = args.get('model', 'egnn_dynamics')
  if model not in _MODEL_NAMES:
    raise ValueError(f'EDM model {model!r} is not supported; allowed: '
                     f'{sorted(_MODEL_NAMES)}.')
  remove_h = bool(args.get('remove_h', False))
  dataset = args.get('dataset', 'qm9')
  if dataset not in _DATASETS:
    raise ValueError(f'EDM dataset {dataset!r} is not supported; allowed: '
                     f'{sorted(_DATASETS)}.')
  if remove_h and dataset != 'qm9':
    raise ValueError(f'EDM has no {dataset} without hydrogens.')
  default_classes = 4 if remove_h else _DATASETS[dataset][1]
  return Config(
      model=ModelConfig(
          name=_MODEL_NAMES[model], nf=int(args['nf']), n_layers=int(args['n_layers']),
          inv_sublayers=int(args.get('inv_sublayers', 1)),
          attention=bool(args.get('attention', True)),
          tanh=bool(args.get('tanh', True)),
          coords_range=float(args.get('coords_range', 15.0)),
          norm_constant=float(args.get('norm_constant', 1.0)),
          normalization_factor=float(args.get('normalization_factor', 1.0)),
          aggregation=args.get('aggregation_method', 'sum'),
          sin_embedding=bool(args.get('sin_embedding', False)),
          condition_time=bool(args.get('condition_time', True))),
      diffusion=DiffusionConfig(
          T=int(args.get('diffusion_steps', 1000)),
          noise_schedule=args.get('diffusion_noise_schedule', 'polynomial_2'),
          noise_precision=float(args.get('diffusion_noise_precision', 1e-5)),
          loss_type=args.get('diffusion_loss_type', 'l2'),
          norm_values=tuple(float(v) for v in args.get('normalize_factors', (1, 4, 1))),
          include_charges=bool(args.get('include_charges', True))),
      dataset='qm9_noh' if remove_h else _DATASETS[dataset][0],
      conditioning=tuple(args.get('conditioning') or ()),
      num_atom_types=int(args.get('num_classes', default_classes)))


def read_args(path: str) -> dict[str, Any]:
  """EDM's args from `args.pickle` (an argparse.Namespace) or a JSON file."""
  if not os.path.isfile(path):
    raise ValueError(f'--args {path}: no such file.')
  try:
    if path.endswith('.json'):
      with open(path) as f:
        return json.load(f)
    with open(path, 'rb') as f:
      args = pickle.load(f)  # The user's own EDM run folder.
  except Exception as e:
    raise ValueError(f'--args {path}: not an EDM args.pickle or JSON ({e}).') from e
  return dict(vars(args)) if not isinstance(args, dict) else args
