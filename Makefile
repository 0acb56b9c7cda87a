# The README's two commands: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip -q --disable-pip-version-check

.PHONY: demo test lint typecheck unit install install-dev bench clean browser-deps e2e-labelstudio screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev,embeddings]'
	touch $@ $(VENV)/.core

install: $(VENV)/.core
install-dev: $(VENV)/.dev

demo: $(VENV)/.core
	$(BIN)/labelloop demo

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# The browser tests drive Debian's Chromium (never a downloaded browser); install it when missing.
CHROMIUM := /usr/bin/chromium
browser-deps:
	@test -x $(CHROMIUM) || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# Label Studio is opt-in: it lives in its own venv and only `make e2e-labelstudio` uses it.
unit: $(VENV)/.dev browser-deps
	$(BIN)/pytest -m "not labelstudio"

# The README's images: the browser tests' screenshots, shrunk into docs/img.
screenshots: $(VENV)/.dev browser-deps
	$(BIN)/pytest -m browser -k sqlite tests/web
	$(BIN)/python -m tests.web.shrink

LS_VENV := .venv-ls
$(LS_VENV)/bin/label-studio:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip -q --disable-pip-version-check install label-studio

e2e-labelstudio: $(VENV)/.dev $(LS_VENV)/bin/label-studio
	LABELSTUDIO_BIN=$(CURDIR)/$(LS_VENV)/bin/label-studio $(BIN)/pytest -s -m labelstudio tests/labelstudio/test_e2e.py

test: lint typecheck unit

bench: $(VENV)/.dev
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) labelloop-data test-artifacts .pytest_cache .mypy_cache .ruff_cache
