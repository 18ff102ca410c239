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
# (tests/service/http/test_page.py), GStreamer's RTSP server for the stream tests (tests/support/rtsp.py;
# Debian packages; kubectl is on the machine image).
system-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; }
	@command -v chromium >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	@/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null && \
		gst-inspect-1.0 x264enc >/dev/null 2>&1 || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base \
			gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly; }

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
