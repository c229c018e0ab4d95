# wirespeed: the two set-up commands a fresh Linux machine needs are `make test` and `make bench`.
# Every target installs what it needs first, so each works on its own from a clean clone.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# System tools the tests and the lab drive for real. Installed with apt-get when missing and root.
TEST_TOOLS  := curl strace ffmpeg wrk cc
BENCH_TOOLS := wrk nginx go node cc

.PHONY: install sys-test sys-bench test lint typecheck pytest bench bench-quick serve clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "wirespeed needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

sys-test:
	@sh scripts/ensure-tools.sh $(TEST_TOOLS)

sys-bench:
	@sh scripts/ensure-tools.sh $(BENCH_TOOLS)

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

typecheck: install
	$(VENV)/bin/mypy

pytest: install sys-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

bench: install sys-bench
	$(PY) -m wirespeed bench $(BENCH_ARGS)

bench-quick: install sys-bench
	$(PY) -m wirespeed bench --quick $(BENCH_ARGS)

serve: install
	$(PY) -m wirespeed.demo demo
	$(PY) -m wirespeed serve demo --port 8080

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bench-out demo
