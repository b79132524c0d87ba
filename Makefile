# geoseg: set-up, demo, tests. `make demo` and `make test` work on a fresh clone: each
# creates the virtual environment first when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geoseg-installed
DEMO_OUT ?= demo-output

.PHONY: demo test test-slow lint bench bench-geoai train-defaults env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Runs `geoseg run` end to end on the real samples shipped in samples/: water on the
# Sentinel-2 crop, then roads and crop fields (one polygon per field) on the NAIP crop with
# the default roads and crops networks.
demo: $(STAMP)
	mkdir -p $(DEMO_OUT)
	$(BIN)/geoseg run samples/beaufort_s2.tif --classes water \
		-o $(DEMO_OUT)/beaufort_water.gpkg --overwrite
	$(BIN)/geoseg run samples/naip_rochester_mn.tif --classes roads,crops \
		-o $(DEMO_OUT)/naip_roads_crops.gpkg --overwrite
	$(BIN)/geoseg models list

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check geoseg tests $(wildcard benchmarks workflows)
	$(BIN)/ruff format --check geoseg tests $(wildcard benchmarks workflows)
	$(BIN)/mypy

# Reproduce the shipped default models with the training files in workflows/train/, from
# ../shared/data or $GEOSEG_SHARED_DATA (long: about five hours on 2 cores). geoseg train
# scores each model's held-out data through the geoseg run pipeline into its card, which
# records the command; `geoseg models show FILE` shows them. Checkpoints in .train-defaults/:
# a stopped run resumes. TRAIN_OUT=DIR writes the models elsewhere than over the shipped
# files; the second versions are fine-tuned from the first ones as the files name them
# (init_from), in geoseg/models/weights/.
TRAIN_OUT ?= geoseg/models/weights
train-defaults: $(STAMP)
	mkdir -p $(TRAIN_OUT)
	$(BIN)/geoseg train workflows/train/roads.yaml \
		-o $(TRAIN_OUT)/roads-unet-r18.safetensors --overwrite
	$(BIN)/geoseg train workflows/train/roads-v2.yaml \
		-o $(TRAIN_OUT)/roads-unet-r18-v2.safetensors --overwrite
	$(BIN)/geoseg train workflows/train/landsat.yaml \
		-o $(TRAIN_OUT)/landsat7-water-crops.safetensors --overwrite
	$(BIN)/geoseg train workflows/train/crops.yaml \
		-o $(TRAIN_OUT)/crops-fields-naip.safetensors --overwrite
	$(BIN)/geoseg train workflows/train/crops-v2.yaml \
		-o $(TRAIN_OUT)/crops-fields-naip-v2.safetensors --overwrite

# Speed and memory tables (README "Performance"); ../shared/data needed; about 50 minutes.
bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/smoothing.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/merge.py --size 32768

# geoseg against geoai-py, which lives in its own environment (never a geoseg dependency).
GEOAI_VENV ?= /tmp/geoai/venv
bench-geoai: $(STAMP)
	test -x $(GEOAI_VENV)/bin/python || { $(PYTHON) -m venv $(GEOAI_VENV) && \
	  $(GEOAI_VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 geoai-py; }
	$(BIN)/python benchmarks/vs_geoai.py --geoai-python $(GEOAI_VENV)/bin/python

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
