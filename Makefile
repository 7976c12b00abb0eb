# One command each: `make serve` reads the book, `make test` checks it.
# Every target creates (or reuses) .venv and installs what it needs, pinned by
# constraints.txt, so nothing depends on what happens to be installed already.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras installed into the venv. CI adds `ref` (PyTorch, transformers,
# tiktoken, safetensors): `make test EXTRAS=docs,test,bench,site,serve,ref`; see .ci/run.
# `site` is Playwright's Python package only: it drives the system's chromium.
EXTRAS ?= docs,test,bench,site,serve
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
ASSETS := docs/assets/vendor/.fetched
export NO_MKDOCS_2_WARNING := 1
export MPLBACKEND := Agg

.PHONY: install serve build test test-site bench lint clean

install: $(STAMP) $(ASSETS)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

# KaTeX and Mermaid come from the npm registry, pinned and hash-checked, and are
# served from the site itself: the book loads nothing from another host.
$(ASSETS): tools/fetch_assets.py $(STAMP)
	$(BIN)/python tools/fetch_assets.py docs/assets/vendor

serve: install
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

build: install
	$(BIN)/mkdocs build --strict --site-dir site

# Unit tests, every code block of every page, the guards, then the real build.
test: install
	$(BIN)/ruff check minigpt tests tests_site tools benchmarks
	$(BIN)/python -m pytest -q tests docs
	$(BIN)/mkdocs build --strict --site-dir site

# The browser's view of the built site; needs Debian's chromium (see .ci/run).
test-site: build
	$(BIN)/python -m pytest -q tests_site

# Writes benchmarks/results/*.json and the charts; the next `make build` renders
# every bound figure of the prose from them. `make bench BENCH="matmul layout"`.
BENCH ?=
bench: install
	$(BIN)/python -m benchmarks $(BENCH)

lint: install
	$(BIN)/ruff check minigpt tests tools benchmarks

clean:
	rm -rf site .cache docs/assets/vendor
