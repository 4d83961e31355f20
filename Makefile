# Two commands for a new user: `make train` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRAIN_FLAGS ?=
JS_3DMOL_VERSION := 2.5.5
# glibc malloc on transparent huge pages: ~25% faster XLA:CPU steps (launch/runtime.py).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: venv data train test test-fast bench clean-data

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# MOSES SMILES for --dataset=moses3d: the wheel's data only (its own deps pull torch).
	$(PY) -m pip install -q --no-deps molsets==0.3.1
	$(PY) -m pip install -q --no-deps -e .
	# 3Dmol.js (npm package 3dmol, BSD-3-Clause) for samples.html, which inlines it
	# so that the page opens offline: the bundled script only, no node_modules.
	rm -rf $(VENV)/share/edm_zoo/pack && mkdir -p $(VENV)/share/edm_zoo/pack
	cd $(VENV)/share/edm_zoo/pack && npm pack -q --silent 3dmol@$(JS_3DMOL_VERSION) >/dev/null \
	  && tar xzf 3dmol-$(JS_3DMOL_VERSION).tgz package/build/3Dmol-min.js
	mv $(VENV)/share/edm_zoo/pack/package/build/3Dmol-min.js $(VENV)/share/edm_zoo/
	rm -rf $(VENV)/share/edm_zoo/pack
	@touch $(STAMP)

# Built once, offline, from the qm9pack files (~30 s); EDM_ZOO_DATA_DIR overrides.
data: $(STAMP)
	$(PY) launch/prepare_data.py --dataset=qm9

train: data
	$(PY) launch/train.py --model=egnn --dataset=qm9 $(TRAIN_FLAGS)

# Two workers by default (CI's two cores); TEST_WORKERS=N for another count.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope
test: data
	$(PYTEST) --durations=10 tests

# The suite without the end-to-end runs marked `slow` (launchers, training runs).
test-fast: data
	$(PYTEST) -m 'not slow' tests

bench: data
	$(PY) launch/bench.py --what=all

clean-data:
	rm -rf data/tfds
