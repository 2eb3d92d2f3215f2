# Quickstart: `make demo` (a seeded SQLite database of its own, cleaned by the job) and `make test`.
# Only Python 3.11 and make are needed; everything else goes into .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MANAGE := $(BIN)/python manage.py
# The demo's own database. `make demo` and `make serve` use this file whatever DATABASE_URL or .env say
# (they read no .env: ENV_FILE=/dev/null), so they never touch a database they did not make; DEBUG on
# (never in production); the event log quiet (the report says it all).
DEMO_DATABASE := $(CURDIR)/demo.sqlite3
DEMO_ENV := ENV_FILE=/dev/null DATABASE_URL=sqlite:///$(DEMO_DATABASE) DEBUG=true LOG_LEVEL=$${LOG_LEVEL:-WARNING}
# `make check` needs a SECRET_KEY; this one is for checks only. (pytest sets its own: tests/environment.py.)
TEST_ENV := SECRET_KEY=$${SECRET_KEY:-tests-only-not-a-secret}
DEMO_COUNT ?= 200
DEMO_PORT ?= 8000
PYTEST_ARGS ?=
# The demo's superuser: these defaults are for a local demo only, never for a reachable server.
DEMO_ADMIN_USERNAME ?= admin
DEMO_ADMIN_PASSWORD ?= admin
export DEMO_ADMIN_USERNAME DEMO_ADMIN_PASSWORD

# Creates the demo superuser once; a second `make demo` leaves it (and a changed password) alone.
define DEMO_SUPERUSER_PY
import os
from django.contrib.auth import get_user_model
User = get_user_model()
name = os.environ["DEMO_ADMIN_USERNAME"]
if User.objects.filter(username=name).exists():
    print(f"Demo superuser {name!r} already exists; left as it is.")
else:
    User.objects.create_superuser(name, "", os.environ["DEMO_ADMIN_PASSWORD"])
    print(f"Demo superuser {name!r} created (password from DEMO_ADMIN_PASSWORD).")
endef
export DEMO_SUPERUSER_PY

# Written by `make demo` when there is no .env (an existing one is never overwritten), so that bare
# `manage.py` commands use the demo database too: a SECRET_KEY made for this checkout, DEBUG left off.
DEMO_DOTENV_MARK := \# Written by make demo: bare manage.py commands use the demo database.
DEMO_DOTENV_URL := DATABASE_URL=sqlite:///$(DEMO_DATABASE)
define DEMO_DOTENV_SH
if [ -e .env ] && grep -qxF '$(DEMO_DOTENV_URL)' .env; then
    echo ".env (from an earlier make demo) points bare manage.py commands at the demo database."
elif [ -e .env ]; then
    echo "Left your .env as it is: bare manage.py commands use what it says, not the demo database."
else
    key=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))') || exit 1
    printf '%s\n' '$(DEMO_DOTENV_MARK) Local use only:' \
        '# replace this file with your own settings (see .env.example) before using a real database.' \
        '$(DEMO_DOTENV_URL)' "SECRET_KEY=$$key" > .env
    echo "Wrote .env: bare manage.py commands now use the demo database."
fi
[ -z "$${DATABASE_URL:-}" ] || echo "Note: DATABASE_URL is set in your environment; it wins over .env, so bare manage.py commands use it, not the demo database."
[ -z "$${ENV_FILE:-}" ] || echo "Note: ENV_FILE is set in your environment; bare manage.py commands read that file instead of .env."
endef
export DEMO_DOTENV_SH

.PHONY: demo test lint check serve screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	@echo "The demo database: $(DEMO_DATABASE) (make demo and make serve use no other, whatever DATABASE_URL or .env say)"
	$(DEMO_ENV) $(MANAGE) migrate --verbosity 0
	$(DEMO_ENV) $(MANAGE) seed_demo_generation --clear --seed 42 --count $(DEMO_COUNT)
	@$(DEMO_ENV) $(MANAGE) shell --no-imports --command "$$DEMO_SUPERUSER_PY"
	@sh -c "$$DEMO_DOTENV_SH"
	@echo "--- dry run: what the cleanup would do ---"
	$(DEMO_ENV) $(MANAGE) cleanup_stuck_generation --dry-run || [ $$? -eq 1 ]
	@echo "--- the real run (exit 1 is expected: the demo data has corrupt batches) ---"
	$(DEMO_ENV) $(MANAGE) cleanup_stuck_generation || [ $$? -eq 1 ]
	@echo "--- the admin: make serve, then open http://127.0.0.1:$(DEMO_PORT)/admin/ as $(DEMO_ADMIN_USERNAME) ---"

# pytest finds its settings by itself (tests/environment.py): a bare .venv/bin/pytest works as well.
test: $(VENV)/.installed-dev
	$(BIN)/pytest $(PYTEST_ARGS)

# The README's pictures: the browser test, saving into docs/screenshots/ (under `make test` it saves
# them into artifacts/screenshots/, which git ignores, so a test run leaves the checkout clean).
screenshots: $(VENV)/.installed-dev
	SCREENSHOT_DIR=docs/screenshots $(BIN)/pytest -m browser tests/test_browser.py $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

check: $(VENV)/.installed-dev
	$(TEST_ENV) $(MANAGE) check
	$(TEST_ENV) $(MANAGE) makemigrations --check --dry-run

serve: $(VENV)/.installed
	@[ -f $(DEMO_DATABASE) ] || { echo "$@: no demo database at $(DEMO_DATABASE): run make demo first" >&2; exit 1; }
	@echo "The demo database: $(DEMO_DATABASE) (make serve uses no other, whatever DATABASE_URL or .env say)"
	$(DEMO_ENV) $(MANAGE) runserver 127.0.0.1:$(DEMO_PORT)

clean:
	rm -rf $(VENV) db.sqlite3 $(DEMO_DATABASE) logs artifacts .pytest_cache .ruff_cache .hypothesis

# --- The schedule (docs/operations.md, "Via cron") ------------------------------
# django-crontab writes the crontab line; these targets add what it lacks: a loud failure when
# there is no crontab command (`crontab add` exits 0 then), installing from the environment cron
# will have (env -i: only .env, or the file ENV_FILE names, counts, as it will under cron), and a
# check of what actually landed in `crontab -l`. Only lines tagged with CRONTAB_COMMENT are touched.
CRONTAB ?= crontab
CRON_ENV = env -i PATH=/usr/bin:/bin HOME="$$HOME" $${ENV_FILE:+ENV_FILE="$$ENV_FILE"} CRONTAB_EXECUTABLE="$$crontab"
CRON_FIND = crontab=$$(command -v $(CRONTAB)) \
	|| { echo "$@: no '$(CRONTAB)' command: install cron first (Debian: apt-get install cron)" >&2; exit 1; }; \
	comment=$$($(CRON_ENV) $(MANAGE) shell --no-imports -c "from django.conf import settings; print(settings.CRONTAB_COMMENT)") \
	|| exit 1; \
	lines() { "$$crontab" -l 2>/dev/null \
		| awk -v tag="\# $$comment" 'length($$0) >= length(tag) && substr($$0, length($$0) - length(tag) + 1) == tag'; }

.PHONY: cron-install cron-show cron-run cron-remove

cron-install: $(VENV)/.installed
	@$(CRON_FIND); \
	$(CRON_ENV) $(MANAGE) crontab add --verbosity 0 || exit 1; \
	installed=$$(lines); \
	[ -n "$$installed" ] || { echo "$@: no line tagged '# $$comment' in the crontab after crontab add" >&2; exit 1; }; \
	echo "Installed in $$(id -un)'s crontab:"; echo "$$installed"

cron-show: $(VENV)/.installed
	@$(CRON_FIND); \
	installed=$$(lines); \
	[ -n "$$installed" ] || { echo "$@: no line tagged '# $$comment' in $$(id -un)'s crontab (make cron-install)" >&2; exit 1; }; \
	echo "$$installed"

# The installed line, run now exactly as cron will run it (empty environment, from /), then what it
# appended to the log: the check after cron-install, and the first step when the job seems not to run.
cron-run: $(VENV)/.installed
	@$(CRON_FIND); \
	installed=$$(lines); \
	[ "$$(echo "$$installed" | grep -c .)" -eq 1 ] \
	|| { echo "$@: expected one line tagged '# $$comment' in $$(id -un)'s crontab (make cron-install)" >&2; exit 1; }; \
	command=$$(echo "$${installed%" # $$comment"}" | sed -E 's/^([^ ]+ +){5}//'); \
	log=$$($(CRON_ENV) $(MANAGE) shell --no-imports -c "from django.conf import settings; print(settings.CLEANUP_LOG_FILE)"); \
	before=$$(if [ -f "$$log" ]; then wc -c < "$$log"; else echo 0; fi); \
	echo "Running as cron would (env -i PATH=/usr/bin:/bin HOME=$$HOME sh -c ..., from /):"; echo "$$command"; \
	(cd / && env -i PATH=/usr/bin:/bin HOME="$$HOME" sh -c "$$command"); status=$$?; \
	echo "--- appended to $$log:"; tail -c +$$((before + 1)) "$$log" 2>/dev/null; \
	echo "--- exit status $$status (django-crontab's runner exits 0 even when the job failed: read the lines above)"; \
	exit $$status

cron-remove: $(VENV)/.installed
	@$(CRON_FIND); \
	$(CRON_ENV) $(MANAGE) crontab remove --verbosity 0 || exit 1; \
	[ -z "$$(lines)" ] || { echo "$@: lines tagged '# $$comment' are still in the crontab" >&2; exit 1; }; \
	echo "Removed the lines tagged '# $$comment' from $$(id -un)'s crontab."

# --- Benchmark (benchmarks/cleanup_benchmark.py; not part of `make test`) --------------------
# Needs a PostgreSQL server where BENCH_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# may create and drop databases (all named bench_<pid>_...). About 15-30 minutes on 2 cores; BENCH_ARGS
# passes options, e.g. BENCH_ARGS="--rows 100000 --backlog 10000 --skip-per-row" for a quick look.
BENCH_ARGS ?=

.PHONY: bench bench-sweep

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/cleanup_benchmark.py run $(BENCH_ARGS)

bench-sweep: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/cleanup_benchmark.py sweep $(BENCH_ARGS)
