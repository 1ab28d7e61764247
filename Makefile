# One-command setup: `make test` and `make demo` create .venv if missing, install, and run.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test demo install clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[test,convert,tpu]"
	$(BIN)/pip install -q --no-deps depth-anything-3==0.1.1 torchvision==0.28.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20 tests

demo: $(STAMP)
	$(BIN)/python -m postcam_jax.demo --workdir demo_out

clean:
	rm -rf $(VENV) demo_out
