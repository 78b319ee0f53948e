# lamflow: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LS_VENV := .venv-labelstudio
LABEL_STUDIO_PORT ?= 8080
CAMVID ?= $(or $(LAMFLOW_CAMVID),../shared/data/camvid)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv labelstudio-venv demo data test lint typecheck unit bench bench-pipeline repro nightly \
	s3-up s3-down labelstudio-up labelstudio-down ui clean

# The stamp is rebuilt whenever the pinned requirements or the package metadata change.
$(BIN)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -e .
	@touch $@

venv: $(BIN)/.installed

# Label Studio (review loop) gets its own venv: its pins clash with ours; we talk to it over HTTP.
$(LS_VENV)/.installed: requirements-labelstudio.txt
	@test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet -r requirements-labelstudio.txt
	@touch $@

labelstudio-venv: $(LS_VENV)/.installed

demo: venv
	$(BIN)/lamflow demo --camvid $(CAMVID) --out outputs/demo

# lint-imports: the layering contract of pyproject.toml (cli > flows > tasks > lamflow > lam).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -m "not slow and not integration" -q

# The Label Studio venv is needed by the review tests (tests/review), which fail without it in CI.
# A run that collects no test is a failure (pytest's exit code 5), like any other non-zero exit.
test: lint typecheck labelstudio-venv
	$(BIN)/pytest -q --durations=15 -p no:cacheprovider

bench: venv
	$(BIN)/python bench/quality.py --camvid $(CAMVID)
	$(BIN)/python bench/throughput.py --camvid $(CAMVID)

bench-pipeline: venv
	$(BIN)/python bench/pipeline.py --camvid $(CAMVID) --frames 1000 --workers 2

# data/seeds, the DVC pipeline's seed set (versioned by data/seeds.dvc, ignored by git): from the
# DVC cache or remote when they hold it, else imported again from CamVid (params train.seeds),
# then checked against the md5 data/seeds.dvc records and committed into the DVC cache
# (`lamflow stage restore_seeds`, also dvc.yaml's first stage); `dvc status` then says whether
# they match (a seed edited by hand and not yet recorded fails here).
data: venv
	$(BIN)/lamflow stage restore_seeds --dvc-file data/seeds.dvc \
		--images $(CAMVID)/train/images --labels $(CAMVID)/train/labels \
		--classes $(CAMVID)/classes.json
	@$(BIN)/dvc status --quiet data/seeds.dvc || { $(BIN)/dvc status data/seeds.dvc; \
		echo 'make data: data/seeds differs from data/seeds.dvc' >&2; exit 1; }

# `dvc repro` runs `lamflow stage ...` commands: the venv's bin must be on PATH.
repro: venv data
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

nightly: venv
	$(BIN)/lamflow nightly

s3-up: venv
	$(BIN)/python -m lamflow.s3server up

s3-down: venv
	$(BIN)/python -m lamflow.s3server down

labelstudio-up: venv labelstudio-venv
	$(BIN)/python -m lamflow.labelstudio up --port $(LABEL_STUDIO_PORT)

labelstudio-down: venv
	$(BIN)/python -m lamflow.labelstudio down

ui: venv
	$(BIN)/prefect config set PREFECT_SERVER_ANALYTICS_ENABLED=false >/dev/null
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache
