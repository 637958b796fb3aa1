# folk_ros: the two commands a new user runs are `make demo` and `make test`.
# Both run the idempotent set-up first (venv with pinned versions + messages).
VENV   ?= $(CURDIR)/.venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo bench clean

setup:
	VENV=$(VENV) scripts/setup.sh

test: setup
	$(PY) -m pytest -q test

demo: setup
	$(PY) -m demo

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf build log out .pytest_cache
