"""E(3) equivariance, permutation and padding invariance on molecules of 100+ atoms
(GEOM-Drugs' 16 atom types, no charge feature): the sizes GEOM-Drugs batches hold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from conftest import NETWORKS, padded_graph
from datasets.geom_drugs import edm_geom_drugs
from edm_zoo import masking, models
from edm_zoo.config import Config, DiffusionConfig, ModelConfig
from edm_zoo.methods.diffusion import Diffusion

Z = edm_geom_drugs.ATOMIC_NUMBERS_WITH_H
# A C34 alkane (104 atoms with H) and a chlorophenyl amide-ether chain ending in a
# thioether bromide (124 atoms): real RDKit conformers of drug-like elements.
SMILES = ('C' * 34, 'c1ccc(Cl)cc1' + 'CCOCCNC(=O)' * 6 + 'CSCCBr')


@pytest.fixture(scope='module')
def molecules():
  out = []
  for i, smiles in enumerate(SMILES):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = 8
    assert AllChem.EmbedMolecule(mol, params) == 0
    out.append({'positions': mol.GetConformer().GetPositions().astype(np.float32),
                'charges': np.array([a.GetAtomicNum() for a in mol.GetAtoms()]),
                'index': i})
  assert min(len(m['charges']) for m in out) >= 100
  return out


def _setup(name, molecules):
  config = Config(model=ModelConfig(name=name, nf=16, n_layers=2),
                  diffusion=DiffusionConfig(include_charges=False),
                  dataset='geom_drugs', num_atom_types=len(Z))
  model = Diffusion(config, {len(m['charges']): 1 for m in molecules})
  graph = padded_graph(molecules, atomic_numbers=Z)
  params = model.init(jax.random.PRNGKey(0), graph)
  xh, _ = model.normalize(graph)
  eps = model.sample_noise(jax.random.PRNGKey(1), graph)
  return model, params, graph, 0.8 * xh + 0.6 * eps, eps


@pytest.mark.parametrize('name', [n for n in NETWORKS if models.get(n).equivariant])
def test_e3_equivariance_on_100_plus_atoms(name, molecules):
  model, params, graph, z_t, eps = _setup(name, molecules)
  q, _ = np.linalg.qr(np.random.RandomState(0).normal(size=(3, 3)))
  q[:, 0] *= -1 if np.linalg.det(q) > 0 else 1  # A reflection too.
  rot = jnp.asarray(q, jnp.float32)
  mask = masking.node_mask(graph)[:, None]
  moved = z_t.at[:, :3].set((z_t[:, :3] @ rot + jnp.array([2., -1., 3.])) * mask)
  t = jnp.full(graph.n_node.shape, 0.5)
  out, out_moved = model.eps(params, graph, z_t, t), model.eps(params, graph, moved, t)
  assert out.shape[1] == 3 + len(Z)
  scale = float(jnp.abs(out).max())
  np.testing.assert_allclose(out_moved[:, :3], out[:, :3] @ rot, atol=1e-5 * max(scale, 1))
  np.testing.assert_allclose(out_moved[:, 3:], out[:, 3:], atol=1e-5 * max(scale, 1))


@pytest.mark.parametrize('name', NETWORKS)
def test_padding_and_permutation_on_100_plus_atoms(name, molecules):
  model, params, graph, z_t, eps = _setup(name, molecules)
  n = int(graph.n_node[:-1].sum())
  big = padded_graph(molecules, extra_nodes=181, extra_graphs=3, extra_edges=4_000,
                     atomic_numbers=Z)
  pad = lambda a: jnp.concatenate([a[:n], jnp.zeros((181,) + a.shape[1:])])
  t = jnp.array([0.3, 0.7])
  t_small, t_big = jnp.concatenate([t, jnp.zeros(1)]), jnp.concatenate([t, jnp.zeros(3)])
  out = model.eps(params, graph, z_t, t_small)[:n]
  np.testing.assert_allclose(model.eps(params, big, pad(z_t), t_big)[:n], out, atol=1e-5)
  t_int = jnp.array([300, 700, 0])
  np.testing.assert_allclose(
      model.train_loss(params, big, jnp.array([300, 700, 0, 0, 0]), pad(eps)),
      model.train_loss(params, graph, t_int, eps), rtol=1e-5)
  # Renumbering the atoms of each molecule renumbers the output.
  perms = [np.random.RandomState(i).permutation(len(m['charges']))
           for i, m in enumerate(molecules)]
  graph_p = padded_graph([{**m, 'positions': m['positions'][p], 'charges': m['charges'][p]}
                          for m, p in zip(molecules, perms)], atomic_numbers=Z)
  offsets = np.concatenate([[0], np.cumsum([len(p) for p in perms])])
  index = np.concatenate([p + o for p, o in zip(perms, offsets)])
  out_p = model.eps(params, graph_p, z_t.at[:n].set(z_t[index]), t_small)[:n]
  np.testing.assert_allclose(out_p, out[index], atol=1e-5 * max(float(jnp.abs(out).max()), 1))
