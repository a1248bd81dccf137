# Set-up and checks. `make install` then `make test` is all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch; installed first so nothing pulls a CUDA build.
TORCH  := torch==2.13.0

.PHONY: install constraints test test-fast lint format parity golden bench export-demo clean

install: $(BIN)/retinaface-export

# Exactly the versions CI tested (constraints.txt); `make constraints` rewrites it from the venv after an upgrade.
$(BIN)/retinaface-export: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,plot,ncnn,mnn,litert,ray]"
	@touch $@

constraints: install
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.tmp
	mv constraints.tmp constraints.txt

test: install lint
	$(BIN)/python -m pytest
	$(MAKE) parity

# Both backbones at every standard size, every format/precision/input, retinaface-parity over the lot.
parity: install
	$(BIN)/python scripts/parity_matrix.py --out build/parity --golden golden

# Latency and throughput of every backend and precision at 320 and 640, both backbones (plot extra), the
# WIDER FACE evaluation timing, and the export + convert matrix
# timed against a straightforward script; writes the README's bench section.
BENCH := bench-out
bench: install
	rm -rf $(BENCH)
	$(BIN)/retinaface-export --weights ../shared/weights/mobilenet0.25_Final.pth --size 320 640 --output-dir $(BENCH)/mobilenet0.25 -q
	$(BIN)/retinaface-export --weights ../shared/weights/mobilenet0.25_Final.pth --size 640 --postprocess nms --output-dir $(BENCH)/mobilenet0.25 -q
	$(BIN)/retinaface-export --backbone resnet50 --size 320 640 --output-dir $(BENCH)/resnet50 -q
	for d in $(BENCH)/mobilenet0.25 $(BENCH)/resnet50; do \
		$(BIN)/retinaface-convert $$d --to onnxsim -q && \
		$(BIN)/retinaface-convert $$d --to openvino --precision fp32 fp16 bf16 int8 --calibration ../shared/images -q && \
		$(BIN)/retinaface-convert $$d --to openvino --embed-mean --input u8-nhwc -q || exit 1; \
	done
	# the edge targets (their extras), mobilenet0.25 FP32 and FP16 at 320 and 640, in a folder of their own
	$(BIN)/retinaface-export --weights ../shared/weights/mobilenet0.25_Final.pth --size 320 640 --output-dir $(BENCH)/edge -q
	for t in ncnn mnn litert; do $(BIN)/retinaface-convert $(BENCH)/edge --to $$t --precision fp32 fp16 -q || exit 1; done
	for v in mobilenet0.25 resnet50 edge; do \
		$(BIN)/retinaface-bench $(BENCH)/$$v --mode latency throughput --time 5 --image ../shared/images/crowd_selfie.jpg \
			--json $(BENCH)/$$v.json --markdown $(BENCH)/$$v.md --plot $(BENCH)/$$v.png || exit 1; \
	done
	$(BIN)/python scripts/bench_eval.py | tee $(BENCH)/eval.txt
	$(BIN)/python scripts/bench_toolchain.py --markdown $(BENCH)/toolchain.md
	$(BIN)/python scripts/bench_int8.py --bias-sizes --folds 3 --json $(BENCH)/int8.json --markdown $(BENCH)/int8.md
	$(BIN)/python scripts/bench_precision.py $(BENCH)/mobilenet0.25 $(BENCH)/resnet50 --markdown $(BENCH)/precision.md
	$(BIN)/python scripts/bench_detect.py --images 630 --markdown $(BENCH)/detect.md
	$(BIN)/python scripts/bench_int8_search.py $(BENCH)/mobilenet0.25 $(BENCH)/resnet50 --markdown $(BENCH)/int8-search.md
	$(BIN)/python scripts/readme_bench.py $(BENCH)/toolchain.md $(BENCH)/precision.md $(BENCH)/int8.md $(BENCH)/int8-search.md \
		$(BENCH)/detect.md $(BENCH)/mobilenet0.25.md $(BENCH)/resnet50.md $(BENCH)/edge.md

# Regenerate the committed golden sets (after a deliberate numerics change only).
golden: install
	rm -rf golden/mobilenet0.25_Final golden/resnet50_synthetic
	$(BIN)/retinaface-golden record --weights ../shared/weights/mobilenet0.25_Final.pth \
		--image ../shared/images/crowd_selfie.jpg --seed 0 --output-dir golden/mobilenet0.25_Final
	$(BIN)/retinaface-golden record --backbone resnet50 \
		--image ../shared/images/crowd_selfie.jpg --seed 0 --output-dir golden/resnet50_synthetic

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/lint_imports.py

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

export-demo: install
	$(BIN)/retinaface-export --weights ../shared/weights/mobilenet0.25_Final.pth --size 640 512 320 --output-dir out

clean:
	rm -rf $(VENV) out export build *.egg-info .pytest_cache .ruff_cache
