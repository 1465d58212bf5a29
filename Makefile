# One-command set-up and runs. Override PYTHON, VENV or TORCH_SPEC on the command line,
# e.g. `make demo TORCH_SPEC="torch torchvision"` on a machine with another PyTorch build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
DEMO_OUT ?= demo-run

.PHONY: demo test install clean

demo: $(VENV)/.installed
	$(BIN)/vqgpt demo --out $(DEMO_OUT) --overwrite

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps taming-transformers==0.0.1  # test reference: its pins are from 2021
	touch $@

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info
