"""The schedule end to end: the real crontab binary, and the installed line run exactly as cron runs it.

cron gives the job PATH=/usr/bin:/bin, the working directory $HOME and nothing else. These tests
install the schedule with `make cron-install` (django-crontab's `crontab add` underneath), read the
line back with `crontab -l`, and run its command under `env -i` from `/`. Each test tags its lines
with its own CRONTAB_COMMENT and removes only those: other lines of the crontab are never touched.
"""

import fcntl
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core import checks
from django.db import connection
from django_crontab.app_settings import Settings as CrontabSettings

from generation import cron, services
from generation.checks import Messages, check_log_file
from generation.models import CleanupRun

from .conftest import IN_CI
from .factories import INSIDE, make_batch, make_lock
from .helpers import ROOT, manage, postgres_url

CRON_PATH = "/usr/bin:/bin"
HOME = pwd.getpwuid(os.getuid()).pw_dir
# django-crontab's own pattern for the lines it writes: schedule, command, comment
LINE = CrontabSettings(settings).CRONTAB_LINE_REGEXP


@pytest.fixture
def crontab_binary():
    found = shutil.which("crontab")
    if found is None:
        reason = "needs the crontab command (Debian: apt-get install cron)"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true this is a failure, not a skip")
        pytest.skip(reason)
    return found


def crontab_lines():
    result = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else []


def write_crontab(lines):
    subprocess.run(["crontab", "-"], input="".join(f"{line}\n" for line in lines), text=True, check=True)


class Schedule:
    """One test's schedule: its env file (what .env is in production), its comment, its log file."""

    def __init__(self, folder: Path, database_url: str, *, comment: str, **extra):
        self.comment = comment
        self.log_file = folder / "logs" / "cleanup.log"  # the folder does not exist yet: the line creates it
        self.env_file = folder / "cron.env"
        self.hashes = set()  # of every line this schedule installed: the runner leaves a lock file per hash
        self.values = {
            "SECRET_KEY": "tests-only-not-a-secret",
            "DATABASE_URL": database_url,
            "CRONTAB_COMMENT": self.comment,
            "CLEANUP_LOG_FILE": str(self.log_file),
            **extra,
        }
        self.save()

    def save(self):
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in self.values.items()))

    def make(self, *targets, **variables):
        """`make TARGET` as an operator runs it: from the project root, with the shell's environment
        (whose DATABASE_URL is not the test database: only the env file may count)."""
        args = ["make", "--no-print-directory", *targets, *(f"{k}={v}" for k, v in variables.items())]
        env = {**os.environ, "ENV_FILE": str(self.env_file)}
        return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    def installed(self):
        return [line for line in crontab_lines() if line.endswith(f"# {self.comment}")]

    def command(self):
        """The command part of the one installed line, as cron will hand it to sh."""
        [line] = self.installed()
        match = LINE.match(line)
        assert match, line
        self.hashes.add(re.search(r"crontab run (\w+)", line).group(1))
        return match.group(1).strip(), match.group(3).strip()

    def run_as_cron(self):
        """Run the installed command exactly as cron would: empty environment, from /."""
        _, command = self.command()
        return subprocess.run(
            ["env", "-i", f"PATH={CRON_PATH}", f"HOME={HOME}", "sh", "-c", command],
            cwd="/", capture_output=True, text=True, timeout=120,
        )

    def job_hash(self):
        _, command = self.command()
        return re.search(r"crontab run (\w+)", command).group(1)

    def log(self):
        return self.log_file.read_text() if self.log_file.exists() else ""


class Schedules:
    """Makes this test's schedules; every line it adds carries its token, so only those are removed."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.token = uuid.uuid4().hex[:12]
        self.made = []

    def __call__(self, database_url, **extra):
        folder = self.folder / f"schedule{len(self.made)}"
        folder.mkdir()
        self.made.append(Schedule(folder, database_url, comment=f"butter_admin test {self.token}-{len(self.made)}",
                                  **extra))
        return self.made[-1]

    def neighbour(self):
        """Another project's line in the same crontab."""
        line = f"0 3 * * * true # another project, test {self.token}"
        write_crontab([*crontab_lines(), line])
        return line

    def clean_up(self):
        write_crontab([line for line in crontab_lines() if self.token not in line])
        for schedule in self.made:
            for job_hash in schedule.hashes:
                (Path(tempfile.gettempdir()) / f"django_crontab_{job_hash}.lock").unlink(missing_ok=True)


@pytest.fixture
def schedule_for(tmp_path, crontab_binary):
    """Schedule(...) factory; afterwards its lines are gone and every other line is as it was."""
    # `crontab add` reads, edits and writes the whole crontab: two test runs on one host at once
    # (CI and a developer) would drop each other's lines, so they take turns
    with (Path(tempfile.gettempdir()) / "butter_admin_crontab_tests.lock").open("w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        before = crontab_lines()
        schedules = Schedules(tmp_path)
        yield schedules
        schedules.clean_up()
        assert crontab_lines() == before, "the crontab's other lines must be left exactly as they were"


def seed_one_of_each():
    """One stuck batch per repair rule, a stalled one, a fresh one, and an expired lock of no batch."""
    minutes = timedelta(minutes=10)
    make_batch((10, 0, 2, 7, 3), lock_held_for=minutes)  # all_accounted: its lock is released
    make_batch((10, 0, 0, 6, 1))  # no_active_tasks
    make_batch((10, 2, 5, 6, 0))  # counter_overflow
    make_batch((10, 1, 1, 3, 2))  # stalled: reported, unchanged
    make_batch((10, 0, 0, 10, 0), idle=INSIDE)  # not stuck yet
    make_lock(account_id=900)  # expired, no batch refers to it


# --- End to end: install, run as cron, remove --------------------------------------------------


@pytest.mark.slow  # about ten processes: make, crontab, the job twice
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_installed_line_runs_under_cron_environment_and_records_a_cron_run(schedule_for):
    seed_one_of_each()
    schedule = schedule_for(postgres_url(connection.settings_dict["NAME"]))
    neighbour = schedule_for.neighbour()

    installed = schedule.make("cron-install")
    assert installed.returncode == 0, installed.stderr
    [line] = schedule.installed()
    assert installed.stdout.splitlines()[-1] == line  # make cron-install prints what crontab -l holds

    when, command = schedule.command()
    assert when == "*/30 * * * *"
    assert command == (
        f"mkdir -p {schedule.log_file.parent} && ENV_FILE={schedule.env_file} {ROOT}/.venv/bin/python {ROOT}/manage.py "
        f"crontab run {schedule.job_hash()} --settings=butter_admin.settings >> {schedule.log_file} 2>&1"
    )

    result = schedule.run_as_cron()
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")  # everything went to the log

    run = CleanupRun.objects.get()
    assert (run.trigger, run.outcome, run.error) == ("cron", "ok", "")
    assert (run.examined, run.repaired_all_accounted, run.repaired_no_active_tasks, run.repaired_counter_overflow,
            run.repaired_stalled_failed, run.stalled, run.corrupt) == (4, 1, 1, 1, 0, 1, 0)
    assert (run.locks_expired, run.locks_removed, run.locks_released) == (1, 1, 1)
    log = schedule.log()
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ cron 4 stuck batches examined, repaired 3 \(all_accounted 1, "
        r"no_active_tasks 1, counter_overflow 1, stalled_failed 0\), stalled 1, corrupt 0, skipped busy 0; "
        r"1 expired locks, removed 1; released 1 locks of finished batches; \d+\.\d\ds, "
        rf"outcome ok, run #{run.pk}$", log, re.MULTILINE), log
    assert f"event=run_finished run_id={run.pk} " in log  # the event log reached the file through the redirect
    assert "Traceback" not in log

    shown = schedule.make("cron-show")
    assert (shown.returncode, shown.stdout.splitlines()) == (0, [line])

    # make cron-run runs the same line the same way, and shows what this run appended to the log
    again = schedule.make("cron-run")
    assert again.returncode == 0, again.stderr
    second = CleanupRun.objects.exclude(pk=run.pk).get()
    out = again.stdout.splitlines()
    assert out[1] == command
    assert out[2] == f"--- appended to {schedule.log_file}:"
    assert f"event=run_finished run_id={second.pk} dry_run=false outcome=ok examined=1 repaired=0 " in again.stdout
    assert re.fullmatch(r"\S+ cron 1 stuck batches examined, repaired 0 \(.*\), stalled 1, .*"
                        rf"outcome ok, run #{second.pk}", out[-2]), out
    assert out[-1].startswith("--- exit status 0 ")
    assert f"run #{run.pk}" not in again.stdout  # only this run's lines

    removed = schedule.make("cron-remove")
    assert removed.returncode == 0, removed.stderr
    assert schedule.installed() == []
    assert neighbour in crontab_lines()  # another project's line survives install and remove
    shown = schedule.make("cron-show")
    assert shown.returncode != 0 and "no line tagged" in shown.stderr


def test_unreachable_database_is_in_the_log_although_the_runner_exits_0(schedule_for):
    schedule = schedule_for("postgres://postgres@127.0.0.1:1/butter_nowhere")
    assert schedule.make("cron-install").returncode == 0

    result = schedule.run_as_cron()
    assert result.returncode == 0  # django-crontab swallows the failure: cron sees success

    [error] = [line for line in schedule.log().splitlines() if " cron ERROR: " in line]
    assert error.split(" ", 1)[1].startswith(
        "cron ERROR: cleanup failed on database butter_nowhere on 127.0.0.1:1: OperationalError: "
        "connection failed: connection to server at \"127.0.0.1\", port 1 failed: Connection refused")
    assert "event=cron_failed" in schedule.log()
    assert "Traceback" not in schedule.log()  # an outage is one line per run, not a wall of tracebacks
    assert schedule.make("cron-remove").returncode == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_second_run_while_the_first_holds_the_flock_does_nothing_and_says_so(schedule_for):
    make_batch((10, 0, 0, 10, 0))
    schedule = schedule_for(postgres_url(connection.settings_dict["NAME"]))
    assert schedule.make("cron-install").returncode == 0
    lock_path = Path(tempfile.gettempdir()) / f"django_crontab_{schedule.job_hash()}.lock"
    with lock_path.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as an overrunning run would hold it
        result = schedule.run_as_cron()
    assert result.returncode == 0
    assert "Tried to start cron job" in schedule.log() and "that is already running" in schedule.log()
    assert not CleanupRun.objects.exists()

    schedule.run_as_cron()  # the lock is free again
    assert CleanupRun.objects.get().trigger == "cron"


def test_changing_the_schedule_needs_a_reinstall_which_replaces_the_line(schedule_for):
    schedule = schedule_for("postgres://postgres@127.0.0.1:1/butter_nowhere")
    assert schedule.make("cron-install").returncode == 0
    schedule.values["CLEANUP_SCHEDULE"] = '"*/15 * * * *"'
    schedule.save()

    # The installed line names the old job: its runner cannot find it and says so in the log.
    assert schedule.run_as_cron().returncode != 0
    assert "No job with hash" in schedule.log()

    # `crontab add` at its default verbosity would crash on that stale line; make cron-install does not.
    reinstalled = schedule.make("cron-install")
    assert reinstalled.returncode == 0, reinstalled.stderr
    [line] = schedule.installed()
    assert line.startswith("*/15 * * * * ")
    assert schedule.make("cron-remove").returncode == 0


def test_cron_install_fails_loudly_without_crontab_although_crontab_add_does_not(schedule_for):
    schedule = schedule_for("postgres://postgres@127.0.0.1:1/butter_nowhere")
    before = crontab_lines()

    silent = manage("crontab", "add", env={"ENV_FILE": str(schedule.env_file),
                                           "CRONTAB_EXECUTABLE": "/nonexistent/crontab"})
    assert silent.returncode == 0  # django-crontab's own exit status hides the failure

    loud = schedule.make("cron-install", CRONTAB="no-such-crontab")
    assert loud.returncode != 0
    assert "cron-install: no 'no-such-crontab' command: install cron first (Debian: apt-get install cron)" in loud.stderr
    assert crontab_lines() == before


def test_cron_install_refuses_a_configuration_cron_could_not_start_with(schedule_for):
    schedule = schedule_for("postgres://postgres@127.0.0.1:1/butter_nowhere")
    del schedule.values["SECRET_KEY"]  # set in the operator's shell only: cron would not see it
    schedule.save()
    result = schedule.make("cron-install")
    assert result.returncode != 0
    assert "Configuration error: SECRET_KEY is not set" in result.stderr
    assert schedule.installed() == []


# --- The job function in-process ---------------------------------------------------------------


@pytest.mark.django_db
def test_run_cleanup_records_a_cron_run_and_appends_the_summary(settings, tmp_path):
    settings.CLEANUP_LOG_FILE = str(tmp_path / "new" / "folder" / "cleanup.log")
    make_batch((10, 0, 0, 6, 1))
    report = cron.run_cleanup()
    run = CleanupRun.objects.get()
    assert (run.pk, run.trigger, run.outcome, run.repaired_no_active_tasks) == (report.run_id, "cron", "ok", 1)
    [line] = Path(settings.CLEANUP_LOG_FILE).read_text().splitlines()
    assert line.endswith(f"outcome ok, run #{run.pk}") and " cron 1 stuck batches examined, repaired 1 " in line


@pytest.mark.django_db
def test_corrupt_rows_make_the_logged_run_an_error_run(settings, tmp_path):
    settings.CLEANUP_LOG_FILE = str(tmp_path / "cleanup.log")
    batch = make_batch((3, 0, -1, 2, 0))
    cron.run_cleanup()
    assert CleanupRun.objects.get().outcome == "errors"
    lines = Path(settings.CLEANUP_LOG_FILE).read_text().splitlines()
    # the errors, then the totals line last: `tail -n 1` of the log is the last run's totals
    assert lines[0].endswith(f"cron ERROR: batch #{batch.pk} has corrupt counters (T/Q/P/C/F 3/0/-1/2/0); not changed")
    assert lines[1].endswith(f"outcome errors, run #{CleanupRun.objects.get().pk}")


@pytest.mark.django_db
def test_an_exception_escaping_the_service_is_recorded_on_the_run_and_in_the_log(settings, tmp_path, monkeypatch):
    settings.CLEANUP_LOG_FILE = str(tmp_path / "cleanup.log")
    make_batch((10, 0, 0, 10, 0))

    def broken_page(*args, **kwargs):
        raise RuntimeError("a bug in the page")

    monkeypatch.setattr(services, "status_page", broken_page)
    # re-raised, so django-crontab's runner prints the traceback into the log through the redirect
    with pytest.raises(RuntimeError):
        cron.run_cleanup()
    run = CleanupRun.objects.get()
    assert (run.trigger, run.outcome, run.error) == ("cron", "errors", "run aborted: RuntimeError: a bug in the page")
    [line] = Path(settings.CLEANUP_LOG_FILE).read_text().splitlines()
    assert line.endswith(": RuntimeError: a bug in the page") and " cron ERROR: cleanup failed on " in line


# --- Settings and the log folder check ------------------------------------------------------


def test_cron_settings_as_a_process_sees_them(tmp_path):
    env_file = tmp_path / "cron.env"
    env_file.write_text('CLEANUP_SCHEDULE="*/10  * * * *"\nCLEANUP_LOG_FILE=var/cleanup.log\n')
    script = ("from django.conf import settings as s; print(s.CLEANUP_LOG_FILE); print(s.CRONJOBS); "
              "print(s.CRONTAB_COMMAND_PREFIX); print(s.CRONTAB_COMMENT); print(s.CRONTAB_LOCK_JOBS)")
    result = manage("shell", "--no-imports", "-c", script, env={"ENV_FILE": str(env_file)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        str(ROOT / "var" / "cleanup.log"),  # relative: anchored to the project root, not the working directory
        f"[('*/10 * * * *', 'generation.cron.run_cleanup', '>> {ROOT}/var/cleanup.log 2>&1')]",
        f"mkdir -p {ROOT}/var && ENV_FILE={env_file}",
        f"butter_admin cleanup_stuck_generation {ROOT}",
        "True",
    ]


def test_log_folder_check_warns_when_the_folder_cannot_be_written(settings):
    settings.CLEANUP_LOG_FILE = "/proc/1/butter/cleanup.log"  # not writable, even for root
    assert check_log_file() == [checks.Warning(
        "CLEANUP_LOG_FILE='/proc/1/butter/cleanup.log': its folder is not writable, "
        "so the cron job's output would be lost.",
        hint=Messages.LOG_DIR_HINT, id="generation.W002",
    )]


def test_log_folder_check_accepts_a_folder_the_job_will_create(settings, tmp_path):
    settings.CLEANUP_LOG_FILE = str(tmp_path / "not" / "yet" / "cleanup.log")
    assert check_log_file() == []


def test_log_folder_warning_shows_in_manage_py_check():
    result = manage("check", env={"CLEANUP_LOG_FILE": "/proc/1/butter/cleanup.log"})
    assert result.returncode == 0  # a warning, not an error: the job itself still runs
    assert "?: (generation.W002) CLEANUP_LOG_FILE='/proc/1/butter/cleanup.log': its folder is not writable" in (
        result.stderr)
