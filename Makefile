# The two set-up commands: `make dev` and `make test`. Everything else is a helper.
# The newest Python 3.11+ on PATH (probe quietly: pyenv shims exist for versions not selected).
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: dev test lint fmt install audit drills bench clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# checkov pins old boto3/packaging: it gets a venv of its own so ours stays current.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed-stamp
$(TOOLS_STAMP):
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet 'checkov>=3.3,<4'
	@touch $(TOOLS_STAMP)

install: $(STAMP) $(TOOLS_STAMP)

dev: install
	$(BIN)/jobq dev

# Lint and types first (seconds), then the suite.
# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: install
	$(BIN)/ruff check app worker tests migrations
	$(BIN)/mypy app worker
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected - failing"; fi; exit $$rc

# Benchmarks (not part of make test): fauxqs from npm (Node 22 from the `node` package).
bench: install
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	npm install --prefix bench --no-audit --no-fund --silent
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Fault drills at full size (make test runs them small); appends to bench/results/drills.jsonl.
drills: install
	@mkdir -p bench/results
	JOBQ_DRILL_JOBS=$${JOBQ_DRILL_JOBS:-2000} JOBQ_DRILL_OUTAGE_SECONDS=$${JOBQ_DRILL_OUTAGE_SECONDS:-10} \
	JOBQ_DRILL_REPORT=bench/results/drills.jsonl \
	$(BIN)/python -m pytest tests/test_drills.py -m drill -q -s -p no:cacheprovider

lint: install
	$(BIN)/ruff check app worker tests migrations
	$(BIN)/ruff format --check app worker tests migrations
	$(BIN)/mypy app worker

# Known-vulnerability check of the installed dependency set (needs PyPI's JSON API).
audit: install
	$(TOOLS)/bin/python -m pip install --quiet pip-audit
	$(BIN)/python -m pip freeze --exclude-editable > $(VENV)/requirements.lock
	$(TOOLS)/bin/pip-audit --strict --disable-pip --no-deps -r $(VENV)/requirements.lock

fmt: install
	$(BIN)/ruff format app worker tests migrations
	$(BIN)/ruff check --fix app worker tests migrations

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache *.egg-info
