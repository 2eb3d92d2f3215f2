# Quickstart: `make demo` (a seeded SQLite database, cleaned by the job) and `make test`.
# Only Python 3.11 and make are needed; everything else goes into .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MANAGE := $(BIN)/python manage.py
# The demo is local development: DEBUG on (never in production); the event log quiet (the report says it all).
DEMO_ENV := DEBUG=true LOG_LEVEL=$${LOG_LEVEL:-WARNING}
# The tests need a SECRET_KEY; this one is for tests only.
TEST_ENV := SECRET_KEY=$${SECRET_KEY:-tests-only-not-a-secret}
DEMO_COUNT ?= 200
PYTEST_ARGS ?=

.PHONY: demo test lint check serve clean

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
	$(DEMO_ENV) $(MANAGE) migrate --verbosity 0
	$(DEMO_ENV) $(MANAGE) seed_demo_generation --clear --seed 42 --count $(DEMO_COUNT)
	@if $(DEMO_ENV) $(MANAGE) help cleanup_stuck_generation >/dev/null 2>&1; then \
		echo "--- dry run: what the cleanup would do ---"; \
		$(DEMO_ENV) $(MANAGE) cleanup_stuck_generation --dry-run; \
		echo "--- the real run ---"; \
		$(DEMO_ENV) $(MANAGE) cleanup_stuck_generation; status=$$?; \
		[ $$status -le 1 ] || exit $$status; \
	else echo "(cleanup_stuck_generation is not built yet)"; fi

test: $(VENV)/.installed-dev
	$(TEST_ENV) $(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

check: $(VENV)/.installed-dev
	$(TEST_ENV) $(MANAGE) check
	$(TEST_ENV) $(MANAGE) makemigrations --check --dry-run

serve: $(VENV)/.installed
	$(DEMO_ENV) $(MANAGE) runserver

clean:
	rm -rf $(VENV) db.sqlite3 logs .pytest_cache .ruff_cache .hypothesis
