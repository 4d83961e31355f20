"""Training, checkpoints and predictions of property classifiers.

As the reference's `main_qm9_prop.py`: L1 loss on the property normalised by the
validation split's mean and MAD, Adam (lr 1e-3, L2 weight decay 1e-16) with a
cosine-annealed learning rate stepped once per epoch, validation and test MAE
(in the property's units) every epoch, the best-validation model kept. The test
set is the second half of the train split (EDM's generators train there).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from edm_zoo import conditioning
from edm_zoo import config as config_lib
from edm_zoo import masking
from edm_zoo.data import batching, elements, features, registry, sources
from edm_zoo.property_prediction import models
from edm_zoo.training import checkpoint, distributed, skeleton
from edm_zoo.training import state as train_state

KIND = 'classifier'

# Classifiers see QM9 with hydrogens (EDM's property protocol): its types, in order.
QM9_ATOMIC_NUMBERS = elements.atomic_numbers(registry.get('qm9').atom_types)


class ClassifierState(NamedTuple):
  step: jax.Array
  params: Any
  opt_state: Any


def epoch_cosine(lr: float, epochs: int, steps_per_epoch: int) -> optax.Schedule:
  """torch's CosineAnnealingLR(T_max=epochs) stepped at the start of every epoch,
  as the reference does: epoch e (from 0) trains at lr (1 + cos(pi (e+1) / E)) / 2."""
  def schedule(step):
    epoch = step // steps_per_epoch
    return 0.5 * lr * (1.0 + jnp.cos(jnp.pi * (epoch + 1) / epochs))
  return schedule


def optimizer(config: config_lib.ClassifierConfig,
              steps_per_epoch: int) -> optax.GradientTransformation:
  """torch.optim.Adam with (coupled) weight decay and the epoch-wise cosine."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
      optax.scale_by_learning_rate(
          epoch_cosine(config.lr, config.epochs, steps_per_epoch)))


def check(config: config_lib.ClassifierConfig) -> config_lib.ClassifierConfig:
  """The names a ClassifierConfig cannot check itself: its property and dataset
  (one-line ValueErrors)."""
  conditioning.parse_properties([config.property])
  entry = registry.get(config.dataset)
  if config.property not in entry.properties:
    raise ValueError(f'--dataset={config.dataset} has no property {config.property!r}.')
  if 'H' not in entry.atom_types:
    raise ValueError('property classifiers use molecules with hydrogens; '
                     f'--dataset={config.dataset} has none.')
  return config


def _abs_errors(prediction: jax.Array, graph) -> jax.Array:
  """[n_graph] |prediction - normalised target| of each molecule."""
  return jnp.abs(prediction - graph.globals[features.CONTEXT][:, 0])


def l1_sums(prediction: jax.Array, graph) -> tuple[jax.Array, jax.Array]:
  """(sum of the absolute errors over the batch's real molecules, their number):
  what the data-parallel step adds up over shards."""
  return masking.graph_sum(_abs_errors(prediction, graph), graph)


def l1_loss(prediction: jax.Array, graph) -> jax.Array:
  """Mean |prediction - normalised target| over the batch's real molecules."""
  return masking.graph_mean(_abs_errors(prediction, graph), graph)


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained classifier: config, parameters and its target normaliser."""
  config: config_lib.ClassifierConfig
  params: Any
  normalizer: conditioning.Normalizer

  @functools.cached_property
  def _apply(self):
    return jax.jit(models.transform(self.config).apply)

  def predict_graph(self, graph) -> np.ndarray:
    """Predictions (property units) for the real molecules of one padded batch."""
    n = int(np.sum(graph.globals[masking.MASK]))
    pred = np.asarray(self._apply(self.params, graph))[:n]
    return self.normalizer.denormalize(pred[:, None])[:, 0]

  def predict(self, source, *, batch_size: int = 96, histogram=None,
              progress: bool = False, desc: str = 'classifier') -> np.ndarray:
    """[len(source)] predictions for a source of molecule dicts, in order."""
    budgets = batching.default_budgets(batch_size, histogram or {29: 1})
    out = []
    it = batching.batches(source, batch_size, shuffle=False, budgets=budgets,
                          atomic_numbers=QM9_ATOMIC_NUMBERS)
    for graph in tqdm.tqdm(it, total=-(-len(source) // batch_size), leave=False,
                           disable=not progress, desc=desc):
      out.append(self.predict_graph(graph))
    return np.concatenate(out) if out else np.zeros(0)


def load(ckpt: str) -> Classifier:
  """The classifier of a `launch/train_classifier.py` folder (best checkpoint first)."""
  state, meta = checkpoint.load_state(ckpt, KIND)
  try:
    config = config_lib.ClassifierConfig(**meta['config'])
    normalizer = conditioning.Normalizer.from_dict(meta['property_norms'], [config.property])
  except (KeyError, TypeError) as e:
    raise ValueError(f'--classifier {ckpt}: unreadable classifier metadata ({e}).') from e
  return Classifier(config, state['params'], normalizer)


def classifier_splits(config: config_lib.ClassifierConfig, data_dir: str | None = None):
  """(normaliser, {train, valid, test} sources whose context is the target).

  The reference tests on the half its classifiers never see: with the default
  first half for training, the test set is the second half.
  """
  train = registry.load(config.dataset, 'train', data_dir)
  if config.train_molecules:
    train = sources.Subset(train, config.train_molecules)
  other = {'qm9_first_half': 'qm9_second_half',
           'qm9_second_half': 'qm9_first_half'}.get(config.dataset)
  test = (registry.load(other, 'train', data_dir) if other
          else registry.load(config.dataset, 'test', data_dir))
  values, _ = conditioning.property_table(
      registry.load(config.dataset, config.norm_split, data_dir), [config.property])
  normalizer = conditioning.Normalizer.fit(values, [config.property])
  split = {'train': train, 'valid': registry.load(config.dataset, 'valid', data_dir),
           'test': test}
  return normalizer, {k: conditioning.conditioned(v, normalizer)
                      for k, v in split.items()}


def source_mae(classifier: Classifier, source, limit: int = 0, **kwargs) -> float:
  """Mean |prediction - true property| over the molecules of `source` (`limit`
  evenly spread ones if > 0)."""
  source = sources.Subset(source, limit, spread=True)
  pred = classifier.predict(source, **kwargs)
  values, _ = conditioning.property_table(source, [classifier.config.property])
  return float(np.mean(np.abs(pred - values[:, 0])))


def train(config: config_lib.ClassifierConfig, workdir: str, *,
          data_dir: str | None = None, progress: bool = True) -> dict[str, float]:
  """Trains (or resumes) a classifier in `workdir` on the shared skeleton; returns
  the final figures."""
  check(config)
  normalizer, split = classifier_splits(config, data_dir)
  hist = registry.statistics(config.dataset, data_dir).n_nodes_histogram
  steps_per_epoch = math.ceil(len(split['train']) / config.batch_size)
  net = models.transform(config)
  tx = optimizer(config, steps_per_epoch)
  # Data parallel over every device of every process, as the generator's loop.
  mesh, local = distributed.data_mesh(config.batch_size)
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  batches = functools.partial(
      batching.sharded_batches, split['train'], config.batch_size, mesh.size,
      config.seed, budgets=batching.default_budgets(config.batch_size // mesh.size, hist),
      atomic_numbers=QM9_ATOMIC_NUMBERS, shards=local,
      agree=distributed.max_over_processes)
  first, _ = next(batches(epoch=0))
  params = net.init(jax.random.PRNGKey(config.seed), jax.tree.map(lambda a: a[0], first))
  state = jax.device_put(ClassifierState(jnp.zeros([], jnp.int32), params,
                                         tx.init(params)), replicated)

  def l1_sum(params, graph):
    return l1_sums(net.apply(params, graph), graph)

  @functools.partial(jax.jit, in_shardings=(replicated, data), out_shardings=replicated)
  def train_step(state, graphs):
    loss, grads = train_state.mean_loss_and_grads(l1_sum, state.params, graphs, mesh)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return ClassifierState(state.step + 1, optax.apply_updates(state.params, updates),
                           opt_state), loss

  def step(state, graphs):
    graphs = distributed.global_batch(graphs, mesh)
    state, loss = train_step(state, graphs)
    return state, {'l1': float(jax.device_get(loss))}

  evaluate = functools.partial(source_mae, limit=config.eval_molecules,
                               batch_size=config.batch_size, histogram=hist,
                               progress=progress and distributed.is_writer())

  def validate(state):
    # Every process evaluates the (small) splits whole, on its own device.
    current = Classifier(config, distributed.local_copy(state.params), normalizer)
    val = evaluate(current, split['valid'], desc='val MAE')
    test = evaluate(current, split['test'], desc='test MAE')
    return ({'val_mae': val, 'test_mae': test},
            f'{config.property} MAE valid {val:.4f}, test {test:.4f}')

  trainer = skeleton.Trainer(
      batches=lambda epoch, start: batches(epoch=epoch, start=start),
      step=step, evaluate=validate, best_metric='val_mae',
      meta={'kind': KIND, 'config': dataclasses.asdict(config),
            'property_norms': normalizer.to_dict()},
      desc=f'classifier {config.property}',
      schedule_fields=config_lib.CLASSIFIER_SCHEDULE_FIELDS)
  schedule = skeleton.Schedule(
      total_steps=config.total_steps or config.epochs * steps_per_epoch,
      epoch_size=len(split['train']),
      eval_every=config.eval_every_steps or config.eval_every_epochs * steps_per_epoch,
      checkpoint_every=config.checkpoint_every_steps, log_every=config.log_every_steps,
      keep_last=config.keep_last)
  _, result = skeleton.run(workdir, state, trainer, schedule, progress=progress)
  return result


def predictions_for_molecules(classifier: Classifier, molecules: Sequence[dict], *,
                              batch_size: int = 96, progress: bool = False) -> np.ndarray:
  """Predictions for generated molecules (their one-hot `types` decide the atoms)."""
  z = QM9_ATOMIC_NUMBERS
  source = [{'positions': m['positions'], 'charges': z[np.asarray(m['types'])],
             'gdb_index': -1} for m in molecules]
  return classifier.predict(source, batch_size=batch_size, progress=progress,
                            desc='classifier on samples')
