"""An original EDM, GeoLDM, GeoBFN or SemlaFlow model as an edm_zoo checkpoint."""

from __future__ import annotations

import re

from edm_zoo import conditioning
from edm_zoo import config as config_lib
from edm_zoo import methods
from edm_zoo.compat import edm_args, geobfn, geoldm, semlaflow, state_dict as state_dict_lib
from edm_zoo.data import registry
from edm_zoo.methods.bfn.objective import BayesianFlow
from edm_zoo.methods.diffusion.objective import Diffusion
from edm_zoo.training import checkpoint, optimizer, state as train_state


def import_checkpoint(state_dict_path: str, args_path: str, out: str,
                      data_dir: str | None = None) -> str:
  """Converts an original EDM (or GeoLDM: its args have `latent_nf`) model into an
  edm_zoo checkpoint folder.

  The imported weights become both params and EMA params of a fresh train state
  (step 0); `launch/eval.py --ckpt=OUT` and `edm_zoo.training.checkpoint.
  load_for_inference` read it like one of ours.

  Returns:
    The checkpoint folder.
  """
  args = edm_args.read_args(args_path)
  if geoldm.is_geoldm(args):
    config, _, params = geoldm.read_model(state_dict_path, args_path, data_dir)
    config = config_lib.validate(config)
    stats = registry.statistics(config.dataset, data_dir)
  else:
    state_dict = state_dict_lib.read_state_dict(state_dict_path)
    config = config_lib.validate(edm_args.config_from_args(args))
    stats = registry.statistics(config.dataset, data_dir)
    model = Diffusion(config, stats.n_nodes_histogram)
    params = state_dict_lib.params_from_state_dict(state_dict)
    model.check_params(params)
  tx = optimizer.torch_adamw_amsgrad(float(args.get('lr', 1e-4)))
  return _save(out, config, params, tx, stats, [state_dict_path, args_path], data_dir)


def import_geobfn(path: str, out: str, data_dir: str | None = None,
                  dataset: str = 'qm9') -> str:
  """Converts a GeoBFN model (its Lightning `.ckpt`, EMA weights when present, or
  an `.npz` state dict) into an edm_zoo `--model=geobfn` checkpoint folder.

  The width and depth are read from the weights; the rest is GeoBFN's QM9
  configuration (configs/bfn4molgen.yaml), which is the one GeoBFN's code trains.
  """
  state, _ = geobfn.read_checkpoint(path)
  state = {k.removeprefix('dynamics.'): v for k, v in state.items()}
  if 'egnn.embedding.weight' not in state:
    raise ValueError(f'{path} holds no GeoBFN network (no egnn.embedding.weight).')
  blocks = {int(m.group(1)) for k in state if (m := re.match(r'egnn\.e_block_(\d+)\.', k))}
  config = config_lib.build('published', model='geobfn', dataset=dataset,
                            nf=int(state['egnn.embedding.weight'].shape[0]),
                            n_layers=len(blocks))
  config = registry.configure(config, data_dir)
  stats = registry.statistics(config.dataset, data_dir)
  model = BayesianFlow(config, stats.n_nodes_histogram)
  params = geobfn.params_from_state_dict(state)
  try:
    model.check_params(params)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None
  tx = optimizer.guarded(optimizer.torch_adamw_amsgrad(config.train.lr,
                                                       weight_decay=config.train.weight_decay))
  return _save(out, config, params, tx, stats, [path], data_dir,
               optimizer.init_clip_queue((config.train.clip_queue_start,),
                                         config.train.clip_queue_len))


def import_semlaflow(path: str, out: str, data_dir: str | None = None,
                     dataset: str = 'qm9') -> str:
  """Converts a SemlaFlow model (its Lightning `.ckpt`, EMA weights when present,
  or an `.npz` of its generator's state dict) into an edm_zoo `--model=semlaflow`
  checkpoint folder.

  Widths and depth come from the weights, loss weights from its hyper-parameters,
  sizes from `dataset`'s training histogram. Its atom types are SemlaFlow's
  18-token vocabulary (`semlaflow.SEMLA_TOKENS`), whose <PAD> and <MASK> are no
  elements: the zoo's samplers and metrics refuse it in one line, and
  `edm_zoo.compat.semlaflow` replays its network and sampler.
  """
  state, hparams = semlaflow.read_checkpoint(path)
  try:
    config = config_lib.validate(semlaflow.config_from_weights(state, hparams, dataset))
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None
  stats = registry.statistics(dataset, data_dir)
  if config.num_atom_types != len(semlaflow.SEMLA_VOCAB):
    raise ValueError(f'{path}: a vocabulary of {config.num_atom_types} tokens; SemlaFlow\'s '
                     f'has {len(semlaflow.SEMLA_VOCAB)} (scriptutil.build_vocab).')
  model = methods.make(config, stats.n_nodes_histogram)
  params = semlaflow.params_from_state_dict(state)
  try:
    model.check_params(params)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None
  t = config.train
  tx = optimizer.torch_adamw_amsgrad(t.lr, weight_decay=t.weight_decay,
                                     warmup_steps=t.warmup_steps,
                                     warmup_start_factor=t.warmup_start_factor)
  return _save(out, config, params, tx, stats, [path], data_dir,
               atom_types=semlaflow.SEMLA_TOKENS)


def _save(out, config, params, tx, stats, sources, data_dir, clip_queue=None,
          atom_types=None) -> str:
  state = train_state.new_state(params, tx, clip_queue)
  meta = {'config': config_lib.to_dict(config), 'epoch': 0, 'position': 0,
          'statistics': {'atom_types': list(atom_types or stats.atom_types),
                         'n_nodes_histogram': {str(k): v for k, v in
                                               stats.n_nodes_histogram.items()}},
          'best_val_nll': None, 'imported_from': sources}
  if config.conditioning:
    meta['property_norms'] = conditioning.fit_normalizer(config, data_dir).to_dict()
  ckpt = checkpoint.Checkpointer(out, keep_last=1)
  ckpt.save(0, state, meta)
  ckpt.close()
  return out
