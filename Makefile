# The two set-up commands: `make dev` and `make test`. Everything else is a helper.
# The newest Python 3.11+ on PATH (probe quietly: pyenv shims exist for versions not selected).
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
endif
VENV := .venv
BIN := $(VENV)/bin
# Two stamps in one venv: `make dev` installs only what the dev server runs (local.lock), the
# other targets the whole dev set (dev.lock, a superset with the same pins).
LOCAL_STAMP := $(VENV)/.installed-local
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: dev dev-fauxqs test test-fast lint fmt install tools lock audit system-deps drills bench clean \
	pin-images

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml or the lock changes: exactly the locked, hash-checked set
# (made by `make lock`), then the project itself without resolving again.
# local.lock = the base dependencies and the `local` extra (embedded PostgreSQL, moto's server).
$(LOCAL_STAMP): pyproject.toml requirements/local.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes \
		-r requirements/local.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(LOCAL_STAMP)

# dev.lock = local.lock plus `otel` and the test and lint tool chain. It holds every local.lock
# pin at the same version (tests/test_lock.py checks), so it stands for the local stamp too.
$(DEV_STAMP): pyproject.toml requirements/dev.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes \
		-r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(DEV_STAMP) $(LOCAL_STAMP)

# checkov pins old boto3/packaging: it gets a venv of its own so ours stays current. pip-tools
# and pip-audit live there too, installed in one pip call with checkov so its pins hold.
# Only the targets that run them install it: test (checkov), lock, audit.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed-stamp
TOOLS_PKGS := 'checkov>=3.3,<4' 'pip-tools>=7.4,<8' 'pip-audit>=2.7,<3'
$(TOOLS_STAMP):
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet $(TOOLS_PKGS)
	@touch $(TOOLS_STAMP)

# Brings a tools venv made before pip-tools/pip-audit joined it up to date (a no-op otherwise).
tools: $(TOOLS_STAMP)
	@$(TOOLS)/bin/python -m pip install --quiet $(TOOLS_PKGS)

# Lock files with hashes from pyproject.toml (Python 3.11, like the images), resolved in order,
# each constrained by the one before so that a package has one version in all three:
# requirements/runtime.lock = [project].dependencies (what Dockerfile.api/.worker install),
# requirements/local.lock = + extra `local` (what make dev installs),
# requirements/dev.lock = + extra `dev` (with `local` and `otel`; what make test installs).
# Existing pins are kept; upgrade with `make lock LOCK_ARGS=--upgrade` (or --upgrade-package X).
# No index or find-links lines are written, so a machine's local mirrors never leak into them;
# jobq itself is listed as "unsafe" so dev's self-reference (jobq[local,otel]) is not pinned
# as a file:// URL (pip-compile then warns that jobq is unpinned: expected, pip never needs it).
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(TOOLS)/bin/pip-compile --quiet \
	--generate-hashes --strip-extras --no-emit-find-links --no-emit-index-url \
	--unsafe-package jobq --unsafe-package pip --unsafe-package setuptools \
	--unsafe-package distribute $(LOCK_ARGS)
lock: tools
	@$(TOOLS)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	echo "make lock resolves for $(TOOLS)'s Python, which must be 3.11 like the images:"; \
	echo "  rm -rf $(TOOLS) && make PYTHON=python3.11 tools"; exit 1; }
	$(PIP_COMPILE) -o requirements/runtime.lock pyproject.toml
	$(PIP_COMPILE) --extra local -c requirements/runtime.lock -o requirements/local.lock \
		pyproject.toml
	$(PIP_COMPILE) --extra dev -c requirements/local.lock -o requirements/dev.lock pyproject.toml

# Everything every target may need.
install: $(DEV_STAMP) $(TOOLS_STAMP)

# The dev server alone: no test tools, no tools venv.
dev: $(LOCAL_STAMP)
	$(BIN)/jobq dev

# The dev stack on fauxqs instead of moto (moto bounds `make dev` at ~20 jobs/s): for a load
# test. fauxqs and a Node 22 binary from npm into bench/node_modules, psutil for bench/stack.py.
dev-fauxqs: $(LOCAL_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'psutil>=5.9'
	npm install --prefix bench --no-audit --no-fund --silent
	$(BIN)/python bench/dev_fauxqs.py

# Browsers and promtool for the suite: installed when missing and possible (root + apt-get),
# otherwise one line saying what to install, before anything runs.
system-deps:
	@bash scripts/system-deps.sh

# Lint, import rules and types first (seconds), then the whole suite.
# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: system-deps $(DEV_STAMP) $(TOOLS_STAMP)
	$(BIN)/ruff check app worker jobq tests migrations
	$(BIN)/lint-imports
	$(BIN)/mypy app worker jobq
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected - failing"; fi; exit $$rc

# The unit lane: tests that need no PostgreSQL, SQS, browser or child process (tests/lanes.py
# marks them); no system packages needed.
test-fast: $(DEV_STAMP)
	@$(BIN)/python -m pytest -m unit -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: no tests were collected - failing"; fi; exit $$rc

# Benchmarks (not part of make test): fauxqs from npm (Node 22 from the `node` package).
bench: $(DEV_STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	npm install --prefix bench --no-audit --no-fund --silent
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Fault drills at full size (make test runs them small); appends to bench/results/drills.jsonl.
# Thousands of jobs need a faster SQS server than moto's: the shared endpoint is fauxqs (the
# outage drill still stops and restarts a moto server of its own).
drills: $(DEV_STAMP)
	@mkdir -p bench/results
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	npm install --prefix bench --no-audit --no-fund --silent
	JOBQ_DRILL_JOBS=$${JOBQ_DRILL_JOBS:-2000} JOBQ_DRILL_OUTAGE_SECONDS=$${JOBQ_DRILL_OUTAGE_SECONDS:-10} \
	JOBQ_DRILL_REPORT=bench/results/drills.jsonl \
	$(BIN)/python bench/with_fauxqs.py \
	$(BIN)/python -m pytest tests/test_drills.py tests/test_drills_faults.py tests/test_drills_jobs.py -m drill -q -s -p no:cacheprovider $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check app worker jobq tests migrations
	$(BIN)/ruff format --check app worker jobq tests migrations
	$(BIN)/lint-imports
	$(BIN)/mypy app worker jobq

# Known-vulnerability check of the locked set (dev.lock includes every runtime.lock pin).
# Needs the vulnerability service: JOBQ_AUDIT=auto (CI) reports "AUDIT NOT RUN" and passes when
# it cannot be reached; unset or JOBQ_AUDIT=required fails then. See scripts/audit.sh.
audit: tools
	JOBQ_TOOLS=$(TOOLS) bash scripts/audit.sh requirements/dev.lock

# Refresh the base images' digests (NAME:TAG@sha256:...) in the Dockerfiles, compose and
# infra/README.md; needs registry access and docker buildx, skopeo or crane. PIN_ARGS=--check
# only reports (exit 1 when a pin is out of date).
pin-images:
	bash scripts/pin-images.sh $(PIN_ARGS)

fmt: $(DEV_STAMP)
	$(BIN)/ruff format app worker tests migrations
	$(BIN)/ruff check --fix app worker tests migrations

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache *.egg-info
