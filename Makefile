# Two commands on a fresh machine:  `make app`  and  `make test`  (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST_DIR ?= $(or $(DACD_FASHION_MNIST_DIR),/usr/share/datasets/fashion-mnist)
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: app test test-fast setup setup-test dataset browser scores checkpoints downstream clean-venv

app: setup dataset
	$(PY) app.py

test: setup-test dataset browser
	$(PY) -m pytest

test-fast: setup-test dataset
	$(PY) -m pytest -m "not slow and not browser"

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

# Debian ships Fashion-MNIST; install it when its files are missing (as root), else say how.
dataset:
	@if [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ] || [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte" ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing from $(FMNIST_DIR). Install it with:"; \
		echo "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"; \
		exit 1; \
	fi

# Headless Chromium + ChromeDriver from Debian for the browser test (nothing downloads a browser).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "The browser test needs Debian's chromium and chromium-driver:"; \
		echo "    sudo apt-get install -y chromium chromium-driver"; \
		exit 1; \
	fi

# Out-of-fold difficulty scores of Fashion-MNIST (~30 min on 2 cores; resumable).
scores: setup dataset
	$(PY) train/score_difficulty.py

clean-venv:
	rm -rf $(VENV)

# Rebuild base SD, evaluator, dacd, baseline and calibration (stage by stage, resumable).
checkpoints: setup dataset
	$(PY) train/make_checkpoints.py

# The paper's downstream experiment on Fashion-MNIST (generated sets + cells cached in runs/downstream).
downstream: setup dataset
	$(PY) train/downstream.py
