# Set-up and checks. `make test` works on a fresh machine: it creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install system-tools test test-fast lint serve docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,export,serve,train,bench,docs,predict]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# Prometheus + promtool for the deployment tests, chromium for the page's browser tests
# (tests/service/http/test_page.py; Debian packages; kubectl is on the machine image).
system-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; }
	@command -v chromium >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: install system-tools
	$(BIN)/python -m pytest -q --durations=20

test-fast: install system-tools
	$(BIN)/python -m pytest -q -m "not slow"

serve: install
	$(BIN)/yolor serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The manual (docs/, mkdocs.yml) as a site in site/; --strict fails on a broken link or anchor.
docs: install
	$(BIN)/mkdocs build --strict --site-dir site
