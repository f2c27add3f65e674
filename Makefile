# `make demo`: the whole pipeline on the built-in synthetic benchmark (set-up included).
# `make test`: the test suite (set-up included). Both create .venv from nothing when it is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CTXSSL := $(VENV)/bin/ctxssl
STAMP  := $(VENV)/.installed

.PHONY: setup test test-wheel test-slow demo demo-2d clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# the fast suite, then the wheel check: build the wheel, install it into a throw-away venv, run the product there
test: $(STAMP)
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-wheel

test-wheel: $(STAMP)
	$(PY) tests/wheel_smoke.py

# the long end-to-end checks (marked slow; left out of `make test`)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# pretrain renders the synthetic benchmark on first use; evaluate takes the latest run
demo: $(STAMP)
	$(CTXSSL) pretrain --preset demo
	$(CTXSSL) evaluate

# the 2D environments (crop / blur) on the built-in benchmark's objects as plain images (rendered on first use)
demo-2d: $(STAMP)
	$(CTXSSL) pretrain --preset demo-2d
	$(CTXSSL) evaluate

clean-venv:
	rm -rf $(VENV)
