# Two commands on a fresh machine:
#   make demo   installs everything and runs the main job on the embedded sample
#   make test   runs the test suite (installs first if needed)
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-ls
BIN := $(VENV)/bin

.PHONY: install install-ls demo test clean

$(BIN)/cardamage: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/cardamage

$(LS_VENV)/bin/label-studio:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --upgrade pip
	$(LS_VENV)/bin/pip install -q "label-studio==1.23.*"

install-ls: $(LS_VENV)/bin/label-studio

demo: install
	$(BIN)/cardamage stats
	$(BIN)/cardamage train
	$(BIN)/cardamage evaluate
	$(BIN)/cardamage select --budget 5

test: install install-ls
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(LS_VENV) reports/*.json reports/*.png models
