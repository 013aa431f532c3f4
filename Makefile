# make setup | train | test | study | bench | tensorboard | lint | clean
# `make train` and `make test` set everything up first when needed (venv, package, data).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: setup data train test study bench tensorboard lint clean

setup: $(STAMP) data

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,optuna]'
	touch $(STAMP)

# Fashion-MNIST: already found (data.root / $$FMNIST_DATA / Debian's package / data/)?
# Else Debian's dataset-fashion-mnist where apt works, else torchvision's download.
data: $(STAMP)
	@$(PY) -m fmnist_lab.data 2>/dev/null || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  fi; \
	  $(PY) -m fmnist_lab.data; }

train: setup
	$(PY) -m fmnist_lab.train $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir outputs

lint: $(STAMP)
	$(VENV)/bin/ruff check fmnist_lab tests

clean:
	rm -rf outputs lightning_logs .pytest_cache
