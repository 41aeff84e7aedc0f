# One-command setup, tests, demo and benchmarks. Everything runs inside .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test demo demo-2d bench notebooks notebooks-refresh lab clean

# Idempotent: re-installs only when pyproject.toml or constraints.txt changed.
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) -m toyworld.demo --out outputs/demo_toy.png

demo-2d: setup
	$(PY) -m toyworld.demo_2d --out outputs/demo_2d.png

bench: setup
	$(PY) benchmarks/run_all.py $(ARGS)

# Executed copies of the notebooks, with their figures, in $(OUT) (the committed notebooks are not touched).
OUT ?= outputs/notebooks
notebooks: setup
	$(PY) notebooks/execute.py --out $(OUT) notebooks/*.ipynb

# Re-run the committed notebooks in place, so the repository carries fresh outputs.
notebooks-refresh: setup
	$(PY) notebooks/execute.py --write notebooks/*.ipynb

# JupyterLab (the optional extra "lab") on the notebooks, on this machine only.
LAB_STAMP := $(VENV)/.lab-installed
$(LAB_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,lab]'
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --notebook-dir notebooks

clean:
	rm -rf $(VENV) build outputs .pytest_cache
