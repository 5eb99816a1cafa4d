# geomtraj: `make demo` and `make test` set everything up themselves from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.geomtraj-installed
OUT    := out
# worker processes of `make demo`'s analysis and of the studies (the reference machine has 2 cores)
JOBS   ?= 2

.PHONY: setup demo test lint bench clean fixtures-check update-expected chromium \
        study-netay study-betas study-twins study-divergence study-mechanism studies

# The test extra includes torch (geomtraj.store.record's tests). PyPI's default Linux torch wheel is the
# multi-GB CUDA build, so its CPU build goes in first and `.[test]` then finds torch installed: a
# local CPU wheel from pip's find-links when there is one (offline machines), else PyTorch's CPU
# index.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYTAG           = $(shell $(PYTHON) -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
FIND_LINKS      = $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
TORCH_CPU_WHEEL = $(lastword $(sort $(foreach d,$(FIND_LINKS),$(wildcard $(d)/torch-*+cpu-$(PYTAG)-*.whl))))
TORCH_CPU       = $(if $(TORCH_CPU_WHEEL),"$(TORCH_CPU_WHEEL)",--index-url $(TORCH_CPU_INDEX) "torch>=2.2")

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_CPU)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# Train the default small grid (configs/demo.toml) and analyse it (JOBS worker processes).
demo: setup
	rm -rf $(OUT)/demo.zarr $(OUT)/demo.zarr.resume.npz $(OUT)/demo-report
	mkdir -p $(OUT)
	$(BIN)/geomtraj train configs/demo.toml --out $(OUT)/demo.zarr
	$(BIN)/geomtraj info $(OUT)/demo.zarr
	$(BIN)/geomtraj analyze $(OUT)/demo.zarr --out $(OUT)/demo-report --jobs $(JOBS)

# The HTML rendering test (tests/test_html_render.py) needs headless Chromium: install the Debian
# package where this user may (root, or sudo without a password); otherwise the test is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); command -v apt-get >/dev/null 2>&1 && \
	  $$SUDO apt-get update -qq >/dev/null 2>&1 && \
	  $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	echo "note: Chromium not installed; the HTML rendering test will be skipped"

test: setup chromium
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Reproduction studies (studies/NAME/): train at the papers' scale, analyse, judge the claims and
# regenerate docs/RESULTS.md. A complete store is reused and an interrupted one resumed, so rerunning
# after an interruption loses nothing. SCALE=small runs the reduced grids (out/studies/small/).
SCALE ?= full
study-netay study-betas study-twins study-divergence study-mechanism: study-%: setup
	$(BIN)/geomtraj study $* --scale $(SCALE) --jobs $(JOBS)

studies: study-netay study-betas study-twins study-divergence study-mechanism

# Speed figures (network-steps/s); compares with the PyTorch peer when torch is installed.
bench: setup
	$(BIN)/python benchmarks/bench_train.py --repeats 3

# The fixture stores regenerate bit for bit (also a slow test).
fixtures-check: setup
	$(BIN)/python fixtures/make_fixtures.py --check

# Rewrite fixtures/expected/*.json after an intended change of an analysis's numbers; review the
# diff before committing. Never run automatically.
update-expected: setup
	$(BIN)/python fixtures/make_fixtures.py --update-expected

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
