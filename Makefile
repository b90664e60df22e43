# Development tasks. Needs only python3 (3.10+), pip and make.
#
#   make venv       create $(VENV) with the package (editable) and the test tools
#   make test       run the whole test suite (SDCPC_SLOW_TESTS=1 adds the minutes-long inductor compile)
#   make test-fast  the suite without the tests marked slow (a few minutes less)
#   make lint       ruff check and mypy, with the settings in pyproject.toml
#   make demo       the end-to-end ROS 2 demo: a synthetic drive played into the real
#                   segment node, its masks recorded and scored (out/demo/)
#   make clean      remove build outputs and caches (distclean: also $(VENV))
#
# VENV=path puts the virtual environment elsewhere; EXTRAS=test skips the ROS 2
# wheels (the "ros" extra, Linux x86_64 only, installs nothing elsewhere).

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= test,ros

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: venv demo test test-fast lint ruff mypy clean distclean

venv: $(STAMP)

# PyTorch is installed first, at the version pinned in constraints.txt, and
# every later install is constrained to it, so nothing swaps the build.
$(STAMP): setup.py setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install -c constraints.txt torch
	$(PIP) install -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

demo: venv
	$(PY) -m sdcpc_ros.demo --out out/demo

test: venv
	$(PY) -m pytest -q test

test-fast: venv
	$(PY) -m pytest -q -m "not slow" test

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

# Single checks without the venv prerequisite (the pre-commit hook calls "make mypy").
ruff:
	$(PY) -m ruff check .

mypy:
	$(PY) -m mypy

clean:
	rm -rf build install log out .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./.git -prune -o -path './$(VENV)' -prune -o \
		-name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
