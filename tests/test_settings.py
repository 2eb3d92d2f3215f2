"""Settings as a real process sees them: environment, .env file, errors at start-up."""

import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT, checkout_copy, manage, readme_production_env, user_environment

PRINT_JOB = ("from generation.conf import job_settings; j = job_settings(); "
             "print(j.stuck_after.default, j.lock_ttl.default, j.batch_size)")


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


def test_windows_per_content_type_survive_an_env_file_with_an_inline_comment(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("GENERATION_STUCK_AFTER=3h,video=8h,story=45m   # per content type\n"
                        "GENERATION_FAIL_STALLED_AFTER=video=2d # the others: never\n")
    result = manage("shell", "-c", "from generation.conf import job_settings; from generation.report import "
                    "format_windows as f; j = job_settings(); print(f(j.stuck_after), '|', f(j.fail_stalled_after))",
                    env={"ENV_FILE": str(env_file)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "3h, story 45m, video 8h | video 2d, other types never"


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


# --- The admin in production -----------------------------------------------------------------------------


def check_deploy(env, tmp_path):
    """`manage.py check --deploy` with exactly `env` (and PATH); ENV_FILE names a file that does not exist
    so that a developer's own .env cannot add anything."""
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "ENV_FILE": str(tmp_path / "none.env")},
    )


def test_the_readmes_production_environment_passes_check_deploy(tmp_path):
    env = readme_production_env()
    assert env["DEBUG"] == "false" and env["SECURE_HSTS_INCLUDE_SUBDOMAINS"] == "true"
    result = check_deploy(env, tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "System check identified no issues (0 silenced).\n"


def test_without_the_hsts_extras_check_deploy_warns_and_silencing_them_is_explicit(tmp_path):
    env = {**readme_production_env(), "SECURE_HSTS_INCLUDE_SUBDOMAINS": "false", "SECURE_HSTS_PRELOAD": "false"}
    warned = check_deploy(env, tmp_path)
    assert "(security.W005)" in warned.stderr and "(security.W021)" in warned.stderr
    silenced = check_deploy({**env, "SILENCED_SYSTEM_CHECKS": "security.W005,security.W021"}, tmp_path)
    assert (silenced.returncode, silenced.stderr) == (0, "")
    assert silenced.stdout == "System check identified no issues (2 silenced).\n"


def test_the_admin_settings_defaults(tmp_path):
    printed = manage("shell", "-c", "from django.conf import settings as s; print(s.SESSION_COOKIE_AGE, "
                     "s.SESSION_SAVE_EVERY_REQUEST, s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME, s.CLIENT_IP_HEADER or '-', "
                     "s.CLIENT_IP_PROXY_COUNT, s.SECURE_HSTS_INCLUDE_SUBDOMAINS)",
                     env={"ENV_FILE": str(tmp_path / "none.env")})
    assert printed.stdout.strip().splitlines()[-1] == "28800 True 5 0:15:00 - 1 False"
    changed = manage("shell", "-c", "from django.conf import settings as s; print(s.SESSION_COOKIE_AGE, "
                     "s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME)",
                     env={"ENV_FILE": str(tmp_path / "none.env"), "SESSION_IDLE_TIMEOUT": "30m",
                          "LOGIN_FAILURE_LIMIT": "3", "LOGIN_COOLOFF": "1h"})
    assert changed.stdout.strip().splitlines()[-1] == "1800 3 1:00:00"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("LOGIN_FAILURE_LIMIT", "0", "must be a positive whole number"),
    ("LOGIN_FAILURE_LIMIT", "five", "is not a whole number"),
    ("LOGIN_COOLOFF", "soon", "is not a duration (use e.g. 90m, 3h, 1h30m, 45s or plain seconds)"),
    ("SESSION_IDLE_TIMEOUT", "-5m", "must be a positive duration"),
    ("CLIENT_IP_PROXY_COUNT", "", "is not a whole number"),
])
def test_a_bad_admin_setting_is_one_line(name, value, message):
    result = manage("check", env={name: value})
    assert result.returncode == 1
    assert result.stderr == f"Configuration error: {name}={value!r} {message}\n"


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
