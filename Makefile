# Developer entry points. Everything runs from .venv, installed from the hashed
# lock files in requirements/ (made from pyproject.toml by `make lock`):
#   make run     the whole system (broker, bridge, API) in one command; installs
#                only what running needs (requirements/run.txt)
#   make test    the test suite (installs the mosquitto binary if it can)
#                (PYTEST_ARGS='-m "not slow"' to pass pytest options; PYTEST_WORKERS=0
#                runs it in one process: the default 3 workers mostly wait on processes;
#                worksteal: a worker that runs out takes tests queued on a busy one, so a
#                few long tests at the end do not leave the others idle)
#   make test-fast  the developers' quick loop: the suite without the slow and
#                fault-injection tests (`make test`, which CI runs, stays the whole proof).
#                Target <= 90 s here: 4 workers (PYTEST_FAST_WORKERS), since its tests mostly
#                wait on processes (1:48 of CPU in 1:27 of wall at load 4; 3 workers: 1:38).
#                What stays in it (new tests follow this): the
#                in-process tests, plus one real-process path per component (MQTT ->
#                bridge -> store -> sidecar on SQLite and on PostgreSQL, the CLI, `logagg
#                up`, the dashboard and its search opened once each), property tests at a
#                fifth of their examples (LOGAGG_TEST_EXAMPLES=fast: tests.helpers.examples
#                and a Hypothesis profile), every module still covered, a test under ~3 s
#                here, start-up included. Mark it `slow` (with a comment saying why) when it
#                must let real time pass (a liveness window, an expiry, a back-off, a lock
#                timeout through a process, an autosave), stores tens of thousands of
#                events, kills or restarts processes, drives a browser through one more
#                detail, or repeats through processes what a cheaper fast test already
#                shows (a second store, another query, another signal); then keep a quick
#                test of the same logic in the fast set (a small run of the same check, or
#                its unit). To keep tests quick: start a process only where
#                the process is the point (CLI in process with tests.helpers.logagg_cli, the
#                sidecar on a thread with `serving`, stores opened directly); share what
#                tests cannot disturb (module-scoped stores to read, Chromium per module);
#                poll every 0.05-0.1 s with a deadline, never sleep a fixed time for a
#                state you can observe; keep a Hypothesis example cheap (compare with an
#                answer computed once per example, not once per step).
#   Without mosquitto, the tests that need a broker are skipped, saying why.
#   make check   linters, type checks, Dockerfile and compose validation
#   make lock    re-resolve requirements/*.txt after editing pyproject.toml's
#                dependencies, or to upgrade them (UPGRADE=1 takes the newest allowed)

PYTHON ?= python3
PYTEST_WORKERS ?= 3
PYTEST_FAST_WORKERS ?= 4
xdist = -n $(1) $(if $(filter 0,$(1)),,--dist worksteal)
BIN := .venv/bin
# Touched after a successful install, so the venv is synced again only when a
# lock file changes. The dev stamp implies the run one (dev.txt includes run's).
RUN_STAMP := .venv/.installed-run
DEV_STAMP := .venv/.installed-dev
# uv resolves the locks; pinned so that `make lock` is itself reproducible.
UV_VERSION := 0.13.9

.PHONY: venv dev-venv run test test-fast check lock ensure-mosquitto ensure-chromium ensure-faketime

# Sets $$sudo to how apt-get can run here: "" as root, "sudo" with passwordless sudo,
# "none" when it cannot (no root, or no apt-get).
APT_AS := if [ "$$(id -u)" = 0 ]; then sudo=; \
	  elif sudo -n true 2>/dev/null; then sudo=sudo; \
	  else sudo=none; fi; \
	  command -v apt-get >/dev/null || sudo=none

venv: $(RUN_STAMP)
dev-venv: $(DEV_STAMP)

# Creates .venv with Python 3.11+ (once); $(1) is the lock file to install.
define install
	@py=$(BIN)/python; [ -x $$py ] || py=$(PYTHON); \
	$$py -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "logagg needs Python 3.11+: run make PYTHON=python3.11 (rm -rf .venv if it is older)"; \
	  exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv .venv
	$(BIN)/pip install --require-hashes --no-deps -r $(1)
	$(BIN)/pip install --no-deps -e .
endef

$(RUN_STAMP): requirements/run.txt pyproject.toml
	$(call install,requirements/run.txt)
	touch $@

$(DEV_STAMP): requirements/dev.txt pyproject.toml
	$(call install,requirements/dev.txt)
	touch $@ $(RUN_STAMP)

lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q uv==$(UV_VERSION)
	for lock in run dev; do \
	  .venv-lock/bin/uv pip compile pyproject.toml $$([ $$lock = dev ] && echo --extra dev) \
	    --python-version 3.11 --universal --generate-hashes --quiet \
	    $(if $(UPGRADE),--upgrade) -o requirements/$$lock.txt || exit 1; done
	rm -rf .venv-lock

run: venv
	$(BIN)/logagg up

test: dev-venv ensure-mosquitto ensure-chromium ensure-faketime
	$(BIN)/pytest $(call xdist,$(PYTEST_WORKERS)) $(PYTEST_ARGS)

test-fast: dev-venv ensure-mosquitto ensure-chromium ensure-faketime
	LOGAGG_TEST_EXAMPLES=fast $(BIN)/pytest $(call xdist,$(PYTEST_FAST_WORKERS)) -m "not slow and not faults" $(PYTEST_ARGS)

# `docker compose config` is Compose's own parser; it needs the CLI plugin but
# no engine, so it runs wherever the plugin is installed.
check: dev-venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml compose.scale.yaml
	@if docker compose version >/dev/null 2>&1; then \
	  for f in compose.yaml compose.scale.yaml; do \
	    echo "docker compose -f $$f config --quiet"; docker compose -f $$f config --quiet || exit 1; done; fi

# The tests start Mosquitto processes of their own on free ports: they need the
# binary, not a running broker. Debian installs it in /usr/sbin, which a
# non-root PATH may lack. Without it the tests marked `broker` are skipped, saying why.
ensure-mosquitto:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { \
	  $(APT_AS); \
	  if [ "$$sudo" = none ]; then \
	    echo "mosquitto is not installed: the broker tests will be skipped (Debian: apt-get install mosquitto mosquitto-clients)"; \
	  else $$sudo apt-get update && $$sudo apt-get install -y mosquitto mosquitto-clients; fi; }
	@command -v mosquitto_sub >/dev/null || { \
	  $(APT_AS); \
	  if [ "$$sudo" = none ]; then \
	    echo "mosquitto_sub is not installed: bench --limit cannot run (Debian: apt-get install mosquitto-clients)"; \
	  else $$sudo apt-get update && $$sudo apt-get install -y mosquitto-clients; fi; }

# The dashboard test (tests/test_dashboard.py) drives Debian's Chromium through Playwright,
# never a browser Playwright downloads; without it those tests are skipped, saying why.
ensure-chromium:
	@[ -x /usr/bin/chromium ] || { \
	  $(APT_AS); \
	  if [ "$$sudo" = none ]; then \
	    echo "chromium is not installed: the browser tests will be skipped (Debian: apt-get install chromium)"; \
	  else $$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends chromium; fi; }

# The clock tests (tests/test_liveness.py) run bridges under libfaketime (Debian package
# faketime) to put their clocks an hour off; without it those tests are skipped, saying why.
ensure-faketime:
	@ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || { \
	  $(APT_AS); \
	  if [ "$$sudo" = none ]; then \
	    echo "faketime is not installed: the clock tests will be skipped (Debian: apt-get install faketime)"; \
	  else $$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends faketime; fi; }
