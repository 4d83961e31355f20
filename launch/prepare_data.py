"""Builds a dataset once, offline (TFDS, array_record), with a progress bar.

  python launch/prepare_data.py --dataset=qm9             # QM9 with H, from qm9pack
  python launch/prepare_data.py --dataset=qm9_noh         # without H
  python launch/prepare_data.py --dataset=geom_drugs --from=DIR   # the original's files
  python launch/prepare_data.py --dataset=moses3d --molecules=50000   # RDKit conformers
  python launch/prepare_data.py --dataset=mine --from=molecules.sdf  # your own SDF/XYZ

A dataset already built from the same inputs and options is kept; other inputs
under the same name are refused unless --rebuild. --data_dir (or
$EDM_ZOO_DATA_DIR) says where datasets live, for every launcher.
"""

import time

from absl import app
from absl import flags

from edm_zoo.data import registry
from launch import flags_util
from launch import runtime

_DATASET = flags.DEFINE_string('dataset', 'qm9', f'one of {registry.names()}, or a new '
                               'name for your own molecules (with --from)')
_DATA_DIR = flags_util.define_data_dir_flag()
_FROM = flags.DEFINE_string('from', None, 'geom_drugs: the folder of the original\'s '
                            'files; your own dataset: an .sdf/.xyz file or a folder')
_REBUILD = flags.DEFINE_bool('rebuild', False, 'replace a dataset of that name built '
                             'from other inputs or options')
_SEED = flags.DEFINE_integer('seed', None, 'split seed (your own: default 0; geom_drugs: '
                             'only without geom_permutation.npy; moses3d: subset, '
                             'conformers and split, default 0)')
_VALID = flags.DEFINE_float('valid_fraction', None, 'your own: valid share (default 0.1)')
_TEST = flags.DEFINE_float('test_fraction', None, 'your own: test share (default 0.1)')
_MAX_ATOMS = flags.DEFINE_integer('max_atoms', None, 'your own: a larger molecule is a '
                                  'bad record')
_SKIP_BAD = flags.DEFINE_bool('skip_bad_records', None, 'your own: skip (and list) bad '
                              'records instead of stopping at the first')
_FILTER = flags.DEFINE_integer('filter_molecule_size', None, 'geom_drugs: keep conformers '
                               'of at most this many atoms (the original\'s flag)')
_PERCEIVE = flags.DEFINE_bool('perceive_bonds', None, 'geom_drugs: perceive each molecule\'s '
                              'bonds (default; hours at the real size: BUILD.md)')
_MOLECULES = flags.DEFINE_integer('molecules', None, 'moses3d: SMILES to embed (default '
                                  '50,000)')
_WORKERS = flags.DEFINE_integer('workers', None, 'moses3d: embedding processes '
                                '(default: every core)')

# Which build flags each kind of dataset takes (the others are refused).
_KIND_FLAGS = {
    'qm9': {},
    'geom': {'from': 'source', 'seed': 'seed', 'filter_molecule_size': 'filter_size',
             'perceive_bonds': 'perceive_bonds'},
    'moses3d': {'seed': 'seed', 'molecules': 'molecules', 'workers': 'workers'},
    'own': {'from': 'source', 'seed': 'seed', 'valid_fraction': 'valid_fraction',
            'test_fraction': 'test_fraction', 'max_atoms': 'max_atoms',
            'skip_bad_records': 'skip_bad'},
}


def _kind(entry: registry.Dataset) -> str:
  if entry.atom_types is None:
    return 'own'
  if entry.name.startswith('geom_drugs'):
    return 'geom'
  return 'moses3d' if entry.name == 'moses3d' else 'qm9'


def build_options(entry: registry.Dataset) -> dict:
  """The builder options the flags give; one-line ValueError for a flag this
  dataset does not take."""
  allowed = _KIND_FLAGS[_kind(entry)]
  options = {}
  for flag in sorted({f for kind in _KIND_FLAGS.values() for f in kind}):
    value = flags.FLAGS[flag].value
    if value is None:
      continue
    if flag not in allowed:
      raise ValueError(f'--{flag} does not apply to --dataset={entry.name} (it takes '
                       f'{["--" + f for f in allowed] or "no build flag"}).')
    options[allowed[flag]] = value
  return options


def main(argv):
  runtime.start_main(argv)
  name, data_dir = _DATASET.value, _DATA_DIR.value
  try:
    # A new name is a dataset of your own only with --from.
    entry = registry.get(name, data_dir, for_build=_FROM.value is not None)
    options = build_options(entry)
    was_prepared = registry.is_prepared(name, data_dir)
    start = time.time()
    path = registry.prepare(name, data_dir, options=options, rebuild=_REBUILD.value)
    seconds = time.time() - start
    sizes = {s: len(registry.load(name, s, data_dir)) for s in registry.SPLITS}
    stats = registry.statistics(name, data_dir)
    meta = registry.metadata(name, data_dir)
  except ValueError as e:
    runtime.fail(str(e))
  built = _REBUILD.value or not was_prepared  # Else prepare() kept it or refused.
  print(f'{name} {"prepared in %.1f s" % seconds if built else "already prepared"} '
        f'at {path}: {sizes}; types {list(stats.atom_types)}, up to '
        f'{max(stats.n_nodes_histogram)} atoms')
  for key in ('content_hash', 'split_recipe', 'embedded', 'failed'):
    if key in meta:
      print(f'  {key}: {meta[key]}')
  bad = meta.get('bad_records') or []
  if bad:
    print(f'  skipped {len(bad)} bad record(s):')
    for line in bad:
      print(f'    {line}')


if __name__ == '__main__':
  app.run(main)
