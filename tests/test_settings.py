"""Settings as a real process sees them: environment, .env file, errors at start-up."""

import subprocess

import pytest

from .helpers import checkout_copy, manage, user_environment

PRINT_JOB = "from generation.conf import job_settings; j = job_settings(); print(j.stuck_after, j.lock_ttl, j.batch_size)"


def test_env_file_with_inline_comments(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "GENERATION_STUCK_AFTER=90m  # inline comment\n"
        "GENERATION_LOCK_TTL=1h30m # another\n"
        "CLEANUP_BATCH_SIZE=250\n"
    )
    result = manage("shell", "-c", PRINT_JOB, env={"ENV_FILE": str(env_file)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1:30:00 1:30:00 250"


def test_environment_wins_over_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("GENERATION_STUCK_AFTER=90m\n")
    result = manage("shell", "-c", PRINT_JOB, env={"ENV_FILE": str(env_file), "GENERATION_STUCK_AFTER": "2h"})
    assert result.stdout.strip().splitlines()[-1].startswith("2:00:00 ")


@pytest.mark.parametrize("value", ["soon", "0", "-5m"])
def test_bad_duration_fails_check_with_one_clear_line(value):
    result = manage("check", env={"GENERATION_STUCK_AFTER": value})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "GENERATION_STUCK_AFTER" in line]
    assert len(lines) == 1
    assert lines[0].startswith(f"?: (generation.E002) GENERATION_STUCK_AFTER={value!r} ")


def test_missing_secret_key_without_debug_is_one_line():
    result = manage("check", env={"SECRET_KEY": "", "DEBUG": "false"})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Configuration error: SECRET_KEY is not set: set it in the environment or .env (required when DEBUG is false)"
    )


def test_relative_sqlite_url_is_anchored_to_the_project_root(tmp_path):
    result = manage(
        "shell", "-c", "from django.conf import settings; print(settings.DATABASES['default']['NAME'])",
        env={"DATABASE_URL": "sqlite:///relative.sqlite3"}, cwd=tmp_path,
    )
    from .helpers import ROOT
    assert result.stdout.strip().splitlines()[-1] == str(ROOT / "relative.sqlite3")


def test_env_example_as_shipped_passes_the_checks(tmp_path):
    """.env.example says "copy to .env": as it stands (quotes, inline comments), it must work."""
    from .helpers import ROOT

    result = manage("check", env={"ENV_FILE": str(ROOT / ".env.example")})
    assert result.returncode == 0, result.stderr
    shown = manage(
        "shell", "-c",
        "from django.conf import settings as s; print(repr(s.CLEANUP_SCHEDULE), repr(s.LOG_FORMAT), s.LOG_LEVEL)",
        env={"ENV_FILE": str(ROOT / ".env.example")},
    )
    assert shown.stdout.strip().splitlines()[-1] == "'*/30 * * * *' 'text' INFO"


def test_quoted_values_and_blanks_before_comments_are_tidied(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text('CLEANUP_SCHEDULE="*/15 * * * *"   # every quarter\nLOG_FORMAT=json    # machines\n')
    result = manage(
        "shell", "-c", "from django.conf import settings as s; print(repr(s.CLEANUP_SCHEDULE), repr(s.LOG_FORMAT))",
        env={"ENV_FILE": str(env_file)},
    )
    assert result.stdout.strip().splitlines()[-1] == "'*/15 * * * *' 'json'"


# --- The test suite's own settings (tests/environment.py) ------------------------------------------

# What a checkout may hold: the settings of a real deployment, which the tests must not read or use.
PRODUCTION_DOTENV = "DEBUG=false\nDATABASE_URL=postgres://butter:pw@127.0.0.1:1/butter\nALLOWED_HOSTS=admin.example.com\n"


@pytest.fixture(scope="module")
def production_checkout(tmp_path_factory):
    project = checkout_copy(tmp_path_factory.mktemp("production") / "checkout")
    (project / ".env").write_text(PRODUCTION_DOTENV)
    return project


@pytest.mark.timeout(300)  # make demo / pytest in a process of their own: tens of seconds on a loaded machine
def test_a_bare_pytest_gets_its_settings_by_itself_and_reads_no_env_file(production_checkout):
    """No SECRET_KEY in the environment, and a .env with DEBUG off and none either: settings.py would stop."""
    result = subprocess.run([".venv/bin/pytest", "-q", "-p", "no:cacheprovider", "tests/test_rules.py"],
                            cwd=production_checkout, env=user_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed in " in result.stdout.splitlines()[-1]


def test_production_without_a_secret_key_still_refuses_to_start(production_checkout):
    """The tests' SECRET_KEY is the suite's alone: a real process without one stops with one line."""
    result = subprocess.run([".venv/bin/python", "manage.py", "check"], cwd=production_checkout,
                            env=user_environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Configuration error: SECRET_KEY is not set: set it in the environment or .env (required when DEBUG is false)"
    )
