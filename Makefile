# qhil: two commands on a fresh machine —  make demo  (main job)  and  make test  (test suite).
# Each creates .venv, installs the pinned set (constraints.txt) and the package itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
SOURCES := $(shell find drivers envs agents experiments lab -name '*.py') pyproject.toml

.PHONY: demo test test-all bench install dev wheel clean

$(DEPS): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and exactly: the CPU build 2.13.0 (a looser request pulls GBs of CUDA wheels)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt '.[test,cluster]'
	touch $@

# numba's on-disk cache files are not pip's, so an uninstall leaves site-packages/qhil/
# behind; that empty shell would shadow the other install mode. Remove it first.
STALE = rm -rf $(VENV)/lib/python*/site-packages/qhil

# Install the package as a built wheel (not editable), so tests import what users get.
$(VENV)/.pkg-installed: $(DEPS) $(SOURCES)
	$(STALE)
	rm -rf build    # setuptools builds from build/lib and never deletes what the source dropped
	$(BIN)/pip install -q --no-deps --force-reinstall .
	touch $@

install: $(VENV)/.pkg-installed

# The main job on the default embedded (exact statevector) backend: one protocol, then
# about a minute of SAC charging the Env1 battery from second-order observables.
demo: install
	$(BIN)/qhil simulate --model dicke --omegas 0.8745,1.4507,1.2320,1.0987 --dt 0.2 \
		--controls '0.3*28' --backend statevector --regime second_order --every 4
	$(BIN)/qhil train --env env1 --regime second_order --backend statevector \
		--total-steps 3000 --learning-starts 1000 --run-dir runs/demo

test: install
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m ""

bench: install
	$(BIN)/pip install -q -c constraints.txt '.[bench]'
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Editable install for development (pip install -e . with the layer folders mapped to qhil.*).
dev: $(DEPS)
	$(BIN)/pip uninstall -q -y qhil
	$(STALE)
	$(BIN)/pip install -q --no-deps -e .
	rm -f $(VENV)/.pkg-installed

wheel: $(DEPS)
	rm -rf build
	$(BIN)/pip wheel -q --no-deps -w dist .

clean:
	rm -rf $(VENV) dist build *.egg-info
