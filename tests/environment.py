"""The test suite's environment, set before Django's settings load, so that a bare `pytest` works.

pyproject.toml loads this module first (`-p tests.environment`): pytest imports it while reading its
options, before pytest-django (a plugin loaded later) imports the settings. A plugin's hook would
race pytest-django's for the first turn; an import cannot.

- SECRET_KEY: settings.py refuses to start without one when DEBUG is off, as production must.
- ENV_FILE: the suite reads no .env. The checkout's .env is the demo's (written by `make demo`) or
  someone's real settings; either would change what the tests see, and the processes they start.
  The database is DATABASE_URL in the environment, or the default SQLite file.
Both only when unset: an explicit value wins.
"""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret")
os.environ.setdefault("ENV_FILE", os.devnull)
