# elastic-lab: `make demo` (the app on the shipped checkpoint) and `make test` (the whole suite).
# Both create .venv when it is missing and install the project into it.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/synth

.PHONY: demo test install predict-demo readme-figure bench bench-speed gpu-wheels lab notebook-times checkpoints train-20min data lint clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (or run: make PY=python3 ...)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch/torchvision first, pinned to the pair that is on these machines' disk (docs: README)
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install -q "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"
	$(BIN)/pip install -q -e ".[dev,compare]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python app.py --host 127.0.0.1 --port 7860

predict-demo: $(STAMP)
	$(BIN)/elastic-lab predict --checkpoint checkpoints/elastic_synth.pt examples/*.png

# the README picture: the shipped elastic checkpoint on the bundled examples
readme-figure: $(STAMP)
	$(BIN)/elastic-lab overview --checkpoint checkpoints/elastic_synth.pt --device cpu \
	  examples/tiny.png examples/mixed.png examples/large.png --out docs/overview.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

data: $(STAMP)
	$(BIN)/elastic-lab synth --out $(DATA) --train 2000 --val 300 --test 300 --seed 0

# the shipped checkpoints from the recipe (elastic_lab/recipes.py); AMP=--amp DEVICE=cuda on a GPU
checkpoints: $(STAMP)
	bash scripts/make_checkpoints.sh

train-20min: $(STAMP)
	bash scripts/train_20min.sh

# the research benchmark (issue 16): trains only the missing cells, resumes a stopped one, then
# rebuilds benchmarks/results.md from the committed cell files; BENCH_ARGS="--max-cells 1",
# "--cells elastic_s0,latency", "--report-only", "--device cuda --amp"
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/elastic-lab bench --data $(DATA) --out benchmarks $(BENCH_ARGS)

# the packages a lent GPU machine lacks (scripts/gpu_cells.sh), as wheels for its Python 3.12
gpu-wheels: $(STAMP)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl pycocotools plotly

bench-speed: $(STAMP)
	$(BIN)/python scripts/benchmark_speed.py --freeze-stem
	$(BIN)/python scripts/benchmark_speed.py --freeze-stem --amp

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# each tutorial notebook at its CPU defaults, timed into notebooks/timings.json (the times that
# notebooks/README.md quotes); NB_ARGS="--only 06 07 --threads 1 --note 'what else ran'"
NB_ARGS ?=
notebook-times: $(STAMP)
	$(BIN)/python scripts/time_notebooks.py $(NB_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check elastic_lab tests app.py scripts

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info
