from datasets.qm9.edm_qm9 import EdmQm9
