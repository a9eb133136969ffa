# The two commands a user needs: `make demo` and `make test`. Each installs what it needs first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

# pip, not uv: pip takes torch from this machine's local wheels (the range in pyproject admits them)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/harness sweep sweeps/quickstart.yaml --overwrite
	$(VENV)/bin/harness report --experiment quickstart

# The tests start dozens of Python processes (trials, workers, commands), each importing the harness:
# its bytecode is written once here, also where PYTHONDONTWRITEBYTECODE is set (then each process
# would compile every module again)
BYTECODE := $(PY) -m compileall -q harness noise reports

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(BYTECODE)
	$(VENV)/bin/pytest -q -ra -n 2 --dist worksteal

test-fast: install
	$(BYTECODE)
	$(VENV)/bin/pytest -q -m "not slow" -n 2 --dist worksteal

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf .cache ray_results runs reports-out mlflow.db mlartifacts
