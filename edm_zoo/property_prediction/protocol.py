"""EDM's MAE protocol for conditional generation (Table 3 of the paper).

A classifier trained on the first half of the train split predicts the property
of molecules generated for requested values; the MAE between request and
prediction is the model's score. Reference rows put it in context, all on the
second half (which the classifier never saw): the classifier on the real
molecules (lower bound), on the same molecules with shuffled properties (Naive,
upper bound), and a predictor that only knows the number of atoms (#Atoms).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edm_zoo import conditioning
from edm_zoo.property_prediction import training

# The paper's figures (table units: energies in meV).
PUBLISHED = {
    'EDM': {'alpha': 2.76, 'gap': 655, 'homo': 356, 'lumo': 584, 'mu': 1.111, 'Cv': 1.101},
    'QM9 (lower bound)': {'alpha': 0.10, 'gap': 64, 'homo': 39, 'lumo': 36, 'mu': 0.043,
                          'Cv': 0.040},
    'Naive (upper bound)': {'alpha': 9.01, 'gap': 1470, 'homo': 645, 'lumo': 1457,
                            'mu': 1.616, 'Cv': 6.857},
}
ROWS = ('Naive (upper bound)', '#Atoms', 'EDM', 'QM9 (lower bound)')


def mae(prediction: Sequence[float], target: Sequence[float]) -> float:
  """Mean absolute error; both arrays must have the same length."""
  prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
  if prediction.shape != target.shape or prediction.size == 0:
    raise ValueError(f'MAE needs two equally long non-empty arrays, got '
                     f'{prediction.shape} and {target.shape}.')
  return float(np.mean(np.abs(prediction - target)))


def size_median_predictor(sizes: np.ndarray, values: np.ndarray):
  """The best L1 predictor that knows only the number of atoms: the median of
  `values` per size (the overall median for sizes never seen)."""
  medians = {int(n): float(np.median(values[sizes == n])) for n in np.unique(sizes)}
  fallback = float(np.median(values))
  return lambda query: np.array([medians.get(int(n), fallback) for n in query])


def check_classifiers(conditioned_on: Sequence[str], classifier: training.Classifier,
                      atoms_classifier: training.Classifier | None = None) -> None:
  """Raises a one-line ValueError unless the classifiers fit the generator: the
  classifier's property is one it is conditioned on, the '#Atoms' one predicts
  the same property."""
  prop = classifier.config.property
  if prop not in conditioned_on:
    raise ValueError(f'--classifier predicts {prop}; the model is conditioned on '
                     f'{list(conditioned_on)}.')
  if atoms_classifier is not None and atoms_classifier.config.property != prop:
    raise ValueError(f'--atoms_classifier predicts {atoms_classifier.config.property}, '
                     f'--classifier {prop}.')


def evaluate(classifier: training.Classifier, generated: Sequence[dict],
             conditioned_on: Sequence[str], *, second_half, first_half=None, atoms_classifier: training.Classifier | None = None,
             seed: int = 0, batch_size: int = 96, progress: bool = True) -> dict[str, Any]:
  """The MAE rows for one property.

  Args:
    classifier: the property classifier (trained on the first half).
    generated: molecules with `positions`, `types` and the requested `properties`
      [P].
    conditioned_on: the P property names (the generator's conditioning); the
      classifier's property must be one of them.
    second_half: the real molecules of the reference rows.
    first_half: where the '#Atoms' per-size medians come from when no
      `atoms_classifier` (a 'numnodes' classifier) is given.
    atoms_classifier: the reference's '#Atoms' network.
    seed: the shuffle of the Naive row.
    batch_size, progress: of the classifier passes.

  Returns:
    {'property', 'unit', 'mae' (dataset units), 'table' (table units), 'published',
     'molecules' per row}.
  """
  prop = classifier.config.property
  unit, scale = conditioning.MAE_UNITS[prop]
  check_classifiers(conditioned_on, classifier, atoms_classifier)
  requested = np.array([m['properties'] for m in generated], np.float64)
  column = list(conditioned_on).index(prop)
  generated_pred = training.predictions_for_molecules(
      classifier, generated, batch_size=batch_size, progress=progress)
  labels, sizes = conditioning.property_table(second_half, [prop])
  labels = labels[:, 0]
  real_pred = classifier.predict(second_half, batch_size=batch_size, progress=progress,
                                 desc='classifier on QM9')
  shuffled = labels[np.random.default_rng(seed).permutation(len(labels))]
  if atoms_classifier is not None:
    atoms_pred = atoms_classifier.predict(second_half, batch_size=batch_size)
    atoms_how = f'{atoms_classifier.config.model} classifier'
  else:
    first_values, first_sizes = conditioning.property_table(first_half, [prop])
    atoms_pred = size_median_predictor(first_sizes, first_values[:, 0])(sizes)
    atoms_how = 'per-size median of the first half'
  values = {'EDM': mae(generated_pred, requested[:, column]),
            'QM9 (lower bound)': mae(real_pred, labels),
            'Naive (upper bound)': mae(real_pred, shuffled),
            '#Atoms': mae(atoms_pred, labels)}
  return {'property': prop, 'unit': unit, 'mae': values,
          'table': {k: v * scale for k, v in values.items()},
          'published': {k: v[prop] for k, v in PUBLISHED.items()},
          'atoms_baseline': atoms_how,
          'molecules': {'EDM': len(generated), 'QM9 (lower bound)': len(labels),
                        'Naive (upper bound)': len(labels), '#Atoms': len(labels)}}


def format_table(result: dict[str, Any]) -> str:
  """A Markdown table of one property's rows beside the published figures."""
  prop, unit = result['property'], result['unit']
  lines = [f'| {prop} MAE ({unit}) | ours | published | molecules |', '|---|---|---|---|']
  for row in ROWS:
    published = result['published'].get(row)
    lines.append(f"| {row} | {result['table'][row]:.4g} | "
                 f"{'' if published is None else published} | {result['molecules'][row]} |")
  return '\n'.join(lines)
