# The two commands of the README: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WS := workspace
MMFUSE := $(BIN)/mmfuse

.PHONY: demo test test-fast install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A stamp per install flavour, redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(MMFUSE) prepare-data shapes -w $(WS)
	$(MMFUSE) train --data shapes --fusion concat --run demo --overwrite -w $(WS)
	$(MMFUSE) evaluate --run demo --show 5 -w $(WS)
	@echo "--- mmfuse caption on five test images (path<TAB>caption<TAB>score on stdout):"
	@ls $(WS)/datasets/shapes/images/test/*.png | head -5 | $(MMFUSE) caption - --run demo --beam-size 3 -w $(WS)

test: install-dev
	$(BIN)/python -m pytest -q

# While working: everything but the tests marked slow (about a minute on 2 cores).
test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(WS) .pytest_cache
