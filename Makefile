# Two commands on a fresh machine:
#   make demo   installs everything and runs the main job (the DVC pipeline) on the embedded sample,
#               then says which page to open
#   make test   lints (ruff) and runs the test suite (installs first if needed)
# EXTRAS: `import` brings PyTorch 2.13.0 (CPU) for the offline ImageNet backbone import,
# `ray` the distributed scoring engine; drop them (make EXTRAS=dev ...) for a lean install.
PYTHON ?= python3
EXTRAS ?= dev,import,ray
VENV := .venv
LS_VENV := .venv-ls
BIN := $(VENV)/bin
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install install-ls demo lint test clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

$(LS_VENV)/bin/label-studio:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --upgrade pip
	$(LS_VENV)/bin/pip install -q "label-studio>=1.23,<1.24" "sentry-sdk<3"  # = labelling/server.py's LABEL_STUDIO_SPEC + _PINS

install-ls: $(LS_VENV)/bin/label-studio

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	@echo
	@echo "Done. Open the report: file://$(CURDIR)/reports/index.html"
	@echo "  first the verdict (was the new model promoted to models/production.keras, and why), then"
	@echo "  candidate vs production, the next photos to label (reports/selection.csv), history and drift."
	@echo "  The claim service serves the production model: $(BIN)/cardamage serve"

lint: install
	$(BIN)/ruff check .

test: lint install-ls
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(LS_VENV) reports/*.json reports/*.jsonl reports/*.png reports/*.csv reports/report_assets \
		models data/prepared
