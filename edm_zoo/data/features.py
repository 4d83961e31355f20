"""Feature keys of the padded `jraph.GraphsTuple` batches: the one home of their names.

A batch of molecules is one GraphsTuple (built by `edm_zoo.data.batching`):

  nodes    POSITIONS [n_node, 3] float32 (Angstrom), ONE_HOT [n_node, K] float32
           (the dataset's atom types in order), CHARGES [n_node] float32 (Z), MASK.
  edges    MASK (every directed pair of atoms of a molecule, no self loops).
  globals  MASK, GDB_INDEX [n_graph] int32 and, for a conditional batch, CONTEXT
           [n_graph, C] float32 (normalised properties, `edm_zoo.conditioning`).

With bonds (`batching.build_graph(..., with_bonds=True)`, for methods that model
them) the same GraphsTuple also carries

  nodes    FORMAL_CHARGES [n_node] int32.
  edges    BOND_ORDERS [n_edge] int32: the class of each directed pair
           (`edm_zoo.data.bonds.BOND_CLASSES`; 0 = no bond, and on padding).

MASK is 1 for real elements and 0 for padding (`edm_zoo.masking` reads it).
Molecule dicts (the items of a source, `edm_zoo.data.sources`) use POSITIONS,
CHARGES, GDB_INDEX and CONTEXT under the same names, and a dataset with bonds stores
BONDS [m, 2], BOND_ORDERS [m] and FORMAL_CHARGES [n] (`edm_zoo.data.bonds`).
"""

MASK = 'mask'
CONTEXT = 'context'
POSITIONS = 'positions'
ONE_HOT = 'one_hot'
CHARGES = 'charges'
GDB_INDEX = 'gdb_index'  # QM9's molecule id.
INDEX = 'index'  # Other datasets: the molecule's place in the inputs.
BONDS = 'bonds'  # [m, 2] atom pairs i < j.
BOND_ORDERS = 'bond_orders'
FORMAL_CHARGES = 'formal_charges'
