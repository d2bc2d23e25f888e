# Two entry points (see README): `make demo` runs the main job, `make test` the tests.
# Both build .venv from nothing with only python3 on the machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: demo test lint format bench figures results notebooks clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m minircnn.data.toyvoc --tiny --out data/toyvoc --preview
	$(PY) -m minircnn.data.voc --check data/toyvoc
	$(PY) -m minircnn.proposals --root data/toyvoc --split test --recall
	$(PY) -m minircnn.train --tiny
	$(PY) -m minircnn.evaluate --checkpoint runs/tiny/checkpoint.npz --root data/toyvoc --split test

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest
	MINIRCNN_FAST=1 $(BIN)/pytest --nbmake notebooks

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The README's figures, from the model `make demo` trains (runs/tiny).
figures: $(VENV)/.installed
	$(PY) -m minircnn.evaluate --checkpoint runs/tiny/checkpoint.npz --split test --quiet
	cp runs/tiny/loss.png runs/tiny/eval_test/pr.png notebooks/figures/
	$(PY) -c "from PIL import Image; Image.open('runs/tiny/eval_test/detections.png').convert('RGB').save('notebooks/figures/detections.jpg', quality=85)"

# The README's results table: the defaults trained on trainval with 3 seeds, tested once.
results: $(VENV)/.installed
	$(PY) -m minircnn.report

# Execute the notebooks with full settings, writing the outputs that are committed.
notebooks: $(VENV)/.installed-dev
	$(PY) notebooks/execute.py

bench: $(VENV)/.installed
	$(PY) -m minircnn.bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
