# Set-up and checks. `make install` then `make test` is all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch; installed first so nothing pulls a CUDA build.
TORCH  := torch==2.13.0

.PHONY: install test test-fast lint format parity golden export-demo clean

install: $(BIN)/retinaface-export

$(BIN)/retinaface-export: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

test: install lint
	$(BIN)/python -m pytest
	$(MAKE) parity

# Both backbones at every standard size, every format/precision/input, retinaface-parity over the lot.
parity: install
	$(BIN)/python scripts/parity_matrix.py --out build/parity --golden golden

# Regenerate the committed golden sets (after a deliberate numerics change only).
golden: install
	rm -rf golden/mobilenet0.25_Final golden/resnet50_synthetic
	$(BIN)/retinaface-golden record --weights ../shared/weights/mobilenet0.25_Final.pth \
		--image ../shared/images/crowd_selfie.jpg --seed 0 --output golden/mobilenet0.25_Final
	$(BIN)/retinaface-golden record --backbone resnet50 \
		--image ../shared/images/crowd_selfie.jpg --seed 0 --output golden/resnet50_synthetic

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

export-demo: install
	$(BIN)/retinaface-export --weights ../shared/weights/mobilenet0.25_Final.pth --size 640 512 320 --output-dir out

clean:
	rm -rf $(VENV) out export build *.egg-info .pytest_cache .ruff_cache
