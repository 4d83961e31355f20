"""Conditioning on properties: the halves, the context, the conditional models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (ATOMIC_NUMBERS, NETWORKS, REFERENCE_HISTOGRAM, REFERENCE_TYPE_COUNTS,
                      padded_graph)
from datasets.qm9 import edm_qm9
from edm_zoo import conditioning, config as config_lib, generate, masking, models
from edm_zoo.compat import edm_args
from edm_zoo.config import Config, DiffusionConfig, ModelConfig
from edm_zoo.data import batching, features, registry
from edm_zoo.models import conventions
from edm_zoo.methods.diffusion import Diffusion

# The reference's hard-coded statistics of its `qm9_second_half` dataset
# (configs/datasets_config.py of the original EDM).
SECOND_HALF_TYPE_COUNTS = (461_622, 317_604, 50_852, 70_033, 1_164)
SECOND_HALF_HISTOGRAM = {
    3: 1, 4: 3, 5: 3, 6: 5, 7: 7, 8: 25, 9: 62, 10: 178, 11: 412, 12: 845, 13: 1541,
    14: 2587, 15: 3865, 16: 5344, 17: 6461, 18: 6695, 19: 6944, 20: 4794, 21: 4962,
    22: 1701, 23: 2380, 24: 267, 25: 754, 26: 17, 27: 132, 29: 15}


def test_halves_are_the_references(qm9_sources):
  first, second = (edm_qm9.half_positions(h) for h in ('first', 'second'))
  assert len(first) == len(second) == 50_000
  assert sorted(np.concatenate([first, second]).tolist()) == list(range(100_000))
  stats = {h: registry.statistics(f'qm9_{h}_half') for h in ('first', 'second')}
  assert stats['second'].type_counts == SECOND_HALF_TYPE_COUNTS
  assert stats['second'].n_nodes_histogram == SECOND_HALF_HISTOGRAM
  # Together the halves are the train split the reference publishes.
  assert tuple(a + b for a, b in zip(stats['first'].type_counts,
                                     stats['second'].type_counts)) == REFERENCE_TYPE_COUNTS
  both = {n: stats['first'].n_nodes_histogram.get(n, 0) +
          stats['second'].n_nodes_histogram.get(n, 0) for n in REFERENCE_HISTOGRAM}
  assert both == REFERENCE_HISTOGRAM
  # Item k of a half is train molecule half_positions[k]; valid and test are whole.
  half = registry.load('qm9_second_half', 'train')
  assert half[3]['gdb_index'] == qm9_sources['train'][int(second[3])]['gdb_index']
  assert len(registry.load('qm9_second_half', 'valid')) == len(qm9_sources['valid'])


def test_context_is_the_normalised_property(qm9_sources):
  values, sizes = conditioning.property_table(qm9_sources['valid'], ['alpha', 'gap'])
  assert values.shape == (17_748, 2) and sizes.min() >= 3
  norm = conditioning.Normalizer.fit(values, ['alpha', 'gap'])
  context = norm.normalize(values)
  np.testing.assert_allclose(context.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(np.abs(context).mean(0), 1, atol=1e-5)
  np.testing.assert_allclose(norm.denormalize(context), values, rtol=1e-6)
  source = conditioning.conditioned(qm9_sources['valid'], norm)
  graph = batching.build_graph(source.__getitems__([5, 9]), ATOMIC_NUMBERS,
                               batching.PaddingBudget(64, 1024, 4))
  np.testing.assert_allclose(graph.globals[features.CONTEXT][:2], context[[5, 9]])
  np.testing.assert_array_equal(graph.globals[features.CONTEXT][2:], 0)
  per_node = conventions.node_context(graph)
  real = np.asarray(masking.node_mask(graph)) > 0
  assert np.all(np.asarray(per_node)[~real] == 0)
  np.testing.assert_allclose(per_node[0], context[5])
  with pytest.raises(ValueError, match='some molecules of the batch carry'):
    batching.build_graph([source[0], qm9_sources['valid'][1]], ATOMIC_NUMBERS)


@pytest.mark.parametrize('spec,message', [
    ('alpha,foo', "unknown property 'foo'"),
    ('alpha,alpha', 'lists a property twice'),
])
def test_bad_conditioning_is_one_line(spec, message):
  with pytest.raises(ValueError, match=message):
    conditioning.parse_properties(spec)


@pytest.mark.parametrize('spec,message', [
    ('alpha', 'expected name=value'),
    ('alpha=big', "'big' is not a number"),
    ('gap=6.8', 'give a value for each'),
    ('alpha=nan', 'must be finite'),
])
def test_bad_condition_is_one_line(spec, message):
  with pytest.raises(ValueError, match=message):
    conditioning.parse_condition(spec, ('alpha',))
  assert conditioning.parse_condition('gap=6.8, alpha=75.3', ('alpha', 'gap')) == {
      'alpha': 75.3, 'gap': 6.8}


@pytest.fixture(scope='module')
def molecules(qm9_sources):
  norm = conditioning.Normalizer((('alpha', 'mu')), (75.0, 2.7), (6.0, 1.2))
  return conditioning.conditioned(qm9_sources['valid'], norm).__getitems__(
      range(200, 205))


def _graph(molecules, context_nf=2, extra_nodes=1, extra_graphs=1, extra_edges=0):
  return padded_graph([{**m, features.CONTEXT: m[features.CONTEXT][:context_nf]}
                       for m in molecules], extra_nodes, extra_graphs, extra_edges)


def _without_context(graph):
  return graph._replace(globals={k: v for k, v in graph.globals.items()
                                 if k != features.CONTEXT})


def _model(name, conditioning_=()):
  config = Config(model=ModelConfig(name=name, nf=16, n_layers=2),
                  diffusion=DiffusionConfig(), conditioning=conditioning_)
  return Diffusion(config, registry.statistics('qm9').n_nodes_histogram)


@pytest.mark.parametrize('name', NETWORKS)
def test_conditioning_widens_the_input_and_nothing_else(name, molecules):
  plain = _model(name)
  cond = _model(name, ('alpha', 'mu'))
  p_plain = plain.init(jax.random.PRNGKey(0), _without_context(_graph(molecules)))
  p_cond = cond.init(jax.random.PRNGKey(0), _graph(molecules))
  flat_plain = dict(jax.tree_util.tree_leaves_with_path(p_plain))
  flat_cond = dict(jax.tree_util.tree_leaves_with_path(p_cond))
  assert flat_plain.keys() == flat_cond.keys()
  changed = {(k[0].key.split('/')[-1], k[1].key): (flat_plain[k].shape, flat_cond[k].shape)
             for k in flat_plain if flat_plain[k].shape != flat_cond[k].shape}
  # embedding: 2 more input rows; embedding_out: 2 more outputs (dropped again).
  assert set(changed) == {('embedding', 'w'), ('embedding_out', 'w'), ('embedding_out', 'b')}
  for (a, b) in changed.values():
    assert sum(y - x for x, y in zip(a, b)) == 2 and len(a) == len(b)
  graph = _graph(molecules)
  z = cond.sample_noise(jax.random.PRNGKey(1), graph)
  assert cond.eps(p_cond, graph, z, jnp.full(graph.n_node.shape, 0.4)).shape == z.shape


@pytest.mark.parametrize('name', NETWORKS)
def test_zero_width_context_is_the_unconditional_path(name, molecules):
  model = _model(name)
  with_empty = _graph(molecules, context_nf=0)
  assert with_empty.globals[features.CONTEXT].shape == (6, 0)
  plain = _without_context(with_empty)
  params = model.init(jax.random.PRNGKey(0), plain)
  eps = model.sample_noise(jax.random.PRNGKey(1), plain)
  eps0 = model.sample_noise(jax.random.PRNGKey(2), plain)
  t_int = jnp.array([1, 100, 400, 700, 1000, 0])
  np.testing.assert_array_equal(model.train_loss(params, with_empty, t_int, eps),
                                model.train_loss(params, plain, t_int, eps))
  np.testing.assert_array_equal(model.nll(params, with_empty, t_int + 1, eps, eps0),
                                model.nll(params, plain, t_int + 1, eps, eps0))


@pytest.mark.parametrize('name', NETWORKS)
def test_context_matters_and_keeps_the_symmetries(name, molecules):
  model = _model(name, ('alpha', 'mu'))
  graph = _graph(molecules)
  params = model.init(jax.random.PRNGKey(0), graph)
  xh, _ = model.normalize(graph)
  z_t = 0.8 * xh + 0.6 * model.sample_noise(jax.random.PRNGKey(3), graph)
  t = jnp.full(graph.n_node.shape, 0.5)
  out = model.eps(params, graph, z_t, t)
  other = graph._replace(globals={**graph.globals, features.CONTEXT:
                                  graph.globals[features.CONTEXT] + 1.0})
  assert float(jnp.abs(model.eps(params, other, z_t, t) - out).max()) > 1e-4
  # Padding invariance: more padding nodes, edges and graphs change nothing.
  big = _graph(molecules, extra_nodes=30, extra_graphs=4, extra_edges=200)
  n = int(graph.n_node[:-1].sum())
  z_big = jnp.concatenate([z_t[:n], jnp.zeros((30, z_t.shape[1]))])
  t_big = jnp.full(big.n_node.shape, 0.5)
  np.testing.assert_allclose(model.eps(params, big, z_big, t_big)[:n], out[:n], atol=1e-6)
  if models.get(name).equivariant:
    q, _ = np.linalg.qr(np.random.RandomState(4).normal(size=(3, 3)))
    rot = jnp.asarray(q, jnp.float32)
    mask = masking.node_mask(graph)[:, None]
    moved = z_t.at[:, :3].set((z_t[:, :3] @ rot + 2.0) * mask)
    moved_out = model.eps(params, graph, moved, t)
    np.testing.assert_allclose(moved_out[:, :3], out[:, :3] @ rot, atol=2e-5)
    np.testing.assert_allclose(moved_out[:, 3:], out[:, 3:], atol=2e-5)


def test_property_distribution_hand_made():
  values = np.array([[0.0], [1.0], [2.0], [3.0], [3.0]])
  sizes = np.array([3, 3, 4, 4, 4])
  dist = conditioning.PropertyDistribution(values, sizes, ['alpha'], num_bins=2)
  assert dist.sizes == (3, 4)
  draws = dist.sample([3] * 4000 + [4] * 4000, np.random.default_rng(0))[:, 0]
  small, large = draws[:4000], draws[4000:]
  assert small.min() >= 0 and small.max() <= 1 and large.min() >= 2 and large.max() <= 3
  # Size 3: one value per bin, so half the draws in [0, 0.5).
  assert abs(np.mean(small < 0.5) - 0.5) < 0.03
  # Size 4: bins [2, 2.5) with 1 molecule, [2.5, 3] with 2.
  assert abs(np.mean(large < 2.5) - 1 / 3) < 0.03
  np.testing.assert_array_equal(
      dist.sample([4, 3], np.random.default_rng(1)),
      dist.sample([4, 3], np.random.default_rng(1)))
  assert dist.size_probs_given(np.array([0.25])) == {3: 1.0}
  probs = dist.size_probs_given(np.array([2.9]))
  assert probs.keys() == {4}
  assert dist.size_probs_given(np.array([7.0])) == {}
  with pytest.raises(ValueError, match='no molecule of 9 atoms'):
    dist.sample([9], np.random.default_rng(0))


def test_property_distribution_of_the_second_half():
  config = config_lib.build('tiny', dataset='qm9_second_half', conditioning=('alpha',))
  dist = conditioning.property_distribution(config)
  values, sizes = conditioning.property_table(
      registry.load('qm9_second_half', 'train'), ['alpha'])
  # The half's molecules are the ones its recorded statistics describe.
  assert dict(zip(*np.unique(sizes, return_counts=True))) == SECOND_HALF_HISTOGRAM
  assert set(dist.sizes) == set(SECOND_HALF_HISTOGRAM)
  draws = dist.sample(sizes[:3000], np.random.default_rng(0))[:, 0]
  # Drawing given the real sizes reproduces the property's distribution.
  assert abs(draws.mean() - values[:3000, 0].mean()) < 0.5
  for n in (9, 19):
    lo, hi = dist.range(n)
    assert lo[0] == values[sizes == n, 0].min() and hi[0] == values[sizes == n, 0].max()


def test_sampling_with_a_target_and_resuming_refuses_another(tmp_path, molecules):
  config = config_lib.build('tiny', dataset='qm9_second_half', conditioning=('alpha',),
                            T=10)
  hist = registry.statistics('qm9_second_half').n_nodes_histogram
  model = Diffusion(config, hist)
  params = model.init(jax.random.PRNGKey(0), batching.probe_graph(5, 1))
  norm = conditioning.Normalizer(('alpha',), (75.0,), (6.0,))
  dist = conditioning.property_distribution(config)
  target = generate.Condition(norm, dist, np.array([40.0]))
  out = generate.generate(model, params, config_lib.SamplingConfig(n_samples=6, batch_size=3),
                          histogram=hist, atomic_numbers=ATOMIC_NUMBERS, partial_dir=str(tmp_path / 'p'), progress=False,
                          condition=target)
  assert [float(m['properties'][0]) for m in out] == [40.0] * 6
  allowed = dist.size_probs_given(np.array([40.0]))
  assert all(len(m['types']) in allowed for m in out)
  assert max(allowed) < 19  # alpha = 40 Bohr^3 is a small molecule.
  joint = generate.Condition(norm, dist)
  with pytest.raises(ValueError, match='holds batches sampled for'):
    generate.generate(model, params, config_lib.SamplingConfig(n_samples=6, batch_size=3),
                      histogram=hist, atomic_numbers=ATOMIC_NUMBERS, partial_dir=str(tmp_path / 'p'), progress=False,
                      condition=joint)
  drawn = generate.generate(model, params, config_lib.SamplingConfig(n_samples=4, batch_size=4),
                            histogram=hist, atomic_numbers=ATOMIC_NUMBERS, progress=False, condition=joint)
  values = [float(m['properties'][0]) for m in drawn]
  assert len(set(values)) == 4
  for m, v in zip(drawn, values):
    lo, hi = dist.range(len(m['types']))
    assert lo[0] <= v <= hi[0]
  with pytest.raises(ValueError, match='no molecule of the conditional split has properties near'):
    generate.Condition(norm, dist, np.array([1000.0])).size_histogram(hist)


def test_reference_args_of_a_conditional_model():
  config = edm_args.config_from_args({
      'nf': 192, 'n_layers': 9, 'conditioning': ['alpha'], 'dataset': 'qm9_second_half',
      'normalize_factors': [1, 4, 10]})
  assert config.conditioning == ('alpha',) and config.dataset == 'qm9_second_half'
  assert config_lib.validate(config).context_nf == 1
  geom = edm_args.config_from_args({'nf': 8, 'n_layers': 1, 'dataset': 'geom',
                                     'include_charges': False})
  assert (geom.dataset, geom.num_atom_types, geom.diffusion.include_charges) == (
      'geom_drugs', 16, False)
  with pytest.raises(ValueError, match='not supported'):
    edm_args.config_from_args({'nf': 8, 'n_layers': 1, 'dataset': 'zinc'})


def test_a_batch_without_the_models_properties_is_refused(molecules):
  model = _model('egnn', ('alpha',))
  with pytest.raises(ValueError, match=r"conditioned on \['alpha'\], the batch carries 0"):
    model.init(jax.random.PRNGKey(0), _without_context(_graph(molecules)))
