"""Feature keys of the padded `jraph.GraphsTuple` batches: the one home of their names.

A batch of molecules is one GraphsTuple (built by `edm_zoo.data.batching`):

  nodes    POSITIONS [n_node, 3] float32 (Angstrom), ONE_HOT [n_node, K] float32
           (the dataset's atom types in order), CHARGES [n_node] float32 (Z), MASK.
  edges    MASK (every directed pair of atoms of a molecule, no self loops).
  globals  MASK, GDB_INDEX [n_graph] int32 and, for a conditional batch, CONTEXT
           [n_graph, C] float32 (normalised properties, `edm_zoo.conditioning`).

MASK is 1 for real elements and 0 for padding (`edm_zoo.masking` reads it).
Molecule dicts (the items of a source, `edm_zoo.data.sources`) use POSITIONS,
CHARGES, GDB_INDEX and CONTEXT under the same names.
"""

MASK = 'mask'
CONTEXT = 'context'
POSITIONS = 'positions'
ONE_HOT = 'one_hot'
CHARGES = 'charges'
GDB_INDEX = 'gdb_index'  # QM9's molecule id.
INDEX = 'index'  # Other datasets: the molecule's place in the inputs.
