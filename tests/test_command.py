"""The command as users and cron run it: output, verbosity, JSON and exit codes."""

import fcntl
import json
import os
import pty
import re
import select
import shutil
import sqlite3
import struct
import subprocess
import sys
import termios
from contextlib import closing
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, OutputWrapper

from generation.management.base import write_json
from generation.models import CleanupRun, RepairRecord

from .factories import make_batch, make_lock
from .helpers import ROOT, manage


def run(*args):
    out, err = StringIO(), StringIO()
    try:
        call_command("cleanup_stuck_generation", *args, stdout=out, stderr=err)
        code = 0
    except CommandError as exc:
        code = exc.returncode
        err.write(str(exc))
    return out.getvalue(), err.getvalue(), code


def test_help_text():
    result = manage("help", "cleanup_stuck_generation")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Meant to run from cron every 30 minutes" in text
    for option in ("--stuck-after", "--lock-ttl", "--fail-stalled-after", "--batch-size", "--dry-run", "--account",
                   "--content-type", "--only", "--json"):
        assert option in text
    assert ("-v 0: the totals line only; 1 (default): also a line per batch and lock; 2: also a line per page; "
            "3: also the event log on stderr at a terminal.") in text


@pytest.mark.django_db
def test_human_output_at_each_verbosity():
    batch = make_batch((10, 0, 0, 6, 1), lock_held_for=timedelta(hours=4))  # its lock goes with it
    stalled = make_batch((10, 1, 1, 3, 2), idle=timedelta(minutes=20), lock_held_for=timedelta(hours=4))
    make_lock(account_id=900, held_for=timedelta(hours=5))
    out, _, code = run("--dry-run", "-v", "1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("Cleanup (DRY RUN: nothing will be written): stuck after 3h; lock TTL 3h; "
                        "fail stalled never; batch size 1500")
    assert (f"  would repair #{batch.pk} account {batch.account_id} video processing T/Q/P/C/F 10/0/0/6/1 "
            "idle 3h1m: no_active_tasks -> partial 10/0/0/6/4") in lines
    assert any(line.startswith("  would remove lock #") and "no batch refers to it" in line for line in lines)
    assert any(f"batch #{stalled.pk} processing, last moved 20m ago" in line for line in lines)
    # its lock goes with it (listed once, as released with its batch, never also as an expired lock removed)
    [released] = [line for line in lines if f"batch #{batch.pk} " in line and "lock #" in line]
    assert released.startswith("  would release lock #") and released.endswith(
        f"; batch #{batch.pk} would be repaired by this run (no_active_tasks)")
    assert lines[-1].startswith("DRY RUN: 1 stuck batches examined, would repair 1 (all_accounted 0, "
                                "no_active_tasks 1, counter_overflow 0, stalled_failed 0)")

    quiet, _, _ = run("--dry-run", "-v", "0")
    assert len(quiet.splitlines()) == 1 and quiet.startswith("DRY RUN: 1 stuck batches examined")

    chatty, _, _ = run("--dry-run", "-v", "2")
    assert "[statuses page 1: 1 rows]" in chatty and "[locks page 1: 2 rows]" in chatty


@pytest.mark.django_db
def test_lock_lines_name_the_batches_this_run_repaired():
    finished = make_batch((10, 0, 0, 6, 1), lock_held_for=timedelta(minutes=30))  # its lock goes with it
    overflowing = make_batch((10, 2, 5, 6, 0), lock_held_for=timedelta(hours=4))  # stays processing; lock expired
    moving = make_batch((10, 1, 1, 3, 2), idle=timedelta(minutes=20), lock_held_for=timedelta(hours=4))
    out, _, code = run()
    assert code == 0
    [released] = [line for line in out.splitlines() if line.startswith("  released lock #")]
    lock_pk = RepairRecord.objects.get(kind="lock", rule="released_with_batch").target_id
    assert released == (f"  released lock #{lock_pk} {finished.lock_id} account {finished.account_id} video, held 30m; "
                        f"batch #{finished.pk} repaired by this run (no_active_tasks)")
    removed = [line for line in out.splitlines() if line.startswith("  removed lock #")]
    # the repair moved it a moment ago: "processing, last moved 0s ago" would hide why
    assert [line.split("; ", 1)[1] for line in removed] == [
        f"batch #{overflowing.pk} repaired by this run (counter_overflow)",
        f"batch #{moving.pk} processing, last moved 20m ago"]
    assert "released 1 locks of finished batches" in out.splitlines()[-1]


@pytest.mark.django_db
def test_errors_are_listed_before_the_totals_line_which_comes_last():
    corrupt = [make_batch((3, 0, -1, 2, 0)), make_batch((3, None, 0, 2, 0))]
    make_batch((4, 0, 0, 0, 0))
    out, err, code = run()
    lines = out.splitlines()
    assert code == 1
    assert [line.split(" has ")[0] for line in lines[-3:-1]] == [f"ERROR: batch #{b.pk}" for b in corrupt]
    assert lines[-1].startswith("3 stuck batches examined, repaired 1 ") and lines[-1].endswith(
        f"outcome errors, run #{CleanupRun.objects.get().pk}")
    # not at a terminal (call_command, cron, Kubernetes) the error names the first one
    assert err == f"cleanup completed with errors: {lines[-3].removeprefix('ERROR: ')} (and 1 more)"
    quiet, _, code = run("-v", "0")
    assert code == 1 and len(quiet.splitlines()) == 1 and "outcome errors" in quiet


@pytest.mark.django_db
def test_real_run_says_repaired_and_names_the_run():
    make_batch((4, 0, 0, 0, 0))
    out, _, code = run()
    assert code == 0
    assert "  repaired #" in out
    last = out.splitlines()[-1]
    assert "repaired 1 (all_accounted 0, no_active_tasks 1" in last and "outcome ok, run #" in last


@pytest.mark.django_db
def test_json_mode_prints_exactly_one_object_with_the_documented_keys():
    make_batch((10, 2, 5, 6, 0))
    out, _, code = run("--json")
    report = json.loads(out)  # exactly one object: json.loads fails on anything else
    assert code == 0
    assert set(report) >= {"run_id", "dry_run", "outcome", "cutoff", "stuck_after_s", "lock_ttl_s", "statuses",
                           "locks", "duration_s"}
    assert set(report["statuses"]) >= {"examined", "repaired", "by_rule", "stalled", "corrupt", "skipped_busy",
                                       "details"}
    assert set(report["statuses"]["by_rule"]) == {"all_accounted", "no_active_tasks", "counter_overflow",
                                                  "stalled_failed"}
    assert set(report["locks"]) >= {"expired", "removed", "details"}
    [detail] = report["statuses"]["details"]
    assert set(detail) >= {"id", "account_id", "content_type", "rule", "before", "after"}
    assert detail["before"]["total_processing"] == 5 and detail["after"]["total_processing"] == 2


# --- Exit codes --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_exit_0_when_it_repaired_things():
    make_batch((4, 0, 0, 0, 0))
    assert run()[2] == 0


@pytest.mark.django_db
def test_exit_1_when_corrupt_rows_are_found():
    batch = make_batch((3, 0, -1, 2, 0))
    _, err, code = run()
    assert code == 1
    assert f"cleanup completed with errors: batch #{batch.pk} has corrupt counters" in err


@pytest.mark.parametrize(
    ("args", "option"),
    [(["--stuck-after", "soon"], "--stuck-after"), (["--lock-ttl", "0"], "--lock-ttl"),
     (["--fail-stalled-after", "-5m"], "--fail-stalled-after"), (["--batch-size", "0"], "--batch-size"),
     (["--batch-size", "many"], "--batch-size"), (["--content-type", "podcast"], "--content-type"),
     (["--account", "x"], "--account"), (["--only", "everything"], "--only")],
)
def test_exit_2_on_bad_usage_naming_the_option(args, option):
    result = manage("cleanup_stuck_generation", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"argument {option}" in error


def test_exit_1_with_one_line_when_the_database_is_unreachable():
    result = manage("cleanup_stuck_generation",
                    env={"DATABASE_URL": "postgres://butter:pw-never-shown@127.0.0.1:1/butter"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cannot reach the database butter on 127.0.0.1:1:")  # no "CommandError:"
    assert "pw-never-shown" not in result.stderr + result.stdout


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_exit_0_and_skipped_when_another_run_holds_the_lock():
    import psycopg
    from django.db import connection

    from generation.db import ADVISORY_LOCK_KEY

    from .helpers import postgres_url

    make_batch((4, 0, 0, 0, 0))
    with psycopg.connect(postgres_url(connection.settings_dict["NAME"]).replace("postgres://", "postgresql://"),
                         autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        out, _, code = run("--json")
    report = json.loads(out)
    assert code == 0
    assert (report["outcome"], report["skipped_reason"]) == ("skipped", "another run holds the lock")
    assert report["statuses"]["examined"] == 0


def test_unreachable_database_at_a_terminal_is_still_one_line(tmp_path):
    """At a terminal the progress bar counts the backlog first: that query must fail just as cleanly."""
    terminal = Terminal("cleanup_stuck_generation",
                        env={"DATABASE_URL": "postgres://butter:pw-never-shown@127.0.0.1:1/butter",
                             "CLEANUP_LOG_FILE": str(tmp_path / "cleanup.log")})
    assert terminal.returncode == 1
    text = "\n".join(terminal.rows())
    assert "Traceback" not in text and "CommandError" not in text
    assert terminal.last_line(re.compile(r"cannot reach the database butter on 127\.0\.0\.1:1: .*refused"))
    assert "pw-never-shown" not in text


# --- At a terminal: what a person sees ---------------------------------------------------------------
# The command runs on a pseudo-terminal and pyte, a terminal emulator, renders what it wrote: the screen
# as a person sees it, and every line that scrolled off it. A line written into the progress bar would
# leave the bar's text on a row of its own; an event line would be on the screen.

COLUMNS, ROWS = 120, 40
BACKLOG, PAGE = 400, 50  # 8 pages: the progress bar shows (more than 3 pages)
OVERFLOW_EVERY = 10  # these batches stay processing and keep their (expired) lock for the lock pass
BAR = re.compile(r"stuck batches: +\d+%\|[^|]*\| \d+/\d+ \[[^\]]*\]")
TOTALS = re.compile(r"\d+ stuck batches examined, repaired .*, outcome (ok|errors), run #\d+")


def sqlite_time(delta):
    return (datetime.now(UTC) - delta).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def backlog_template(tmp_path_factory):
    """A migrated SQLite database with BACKLOG stuck batches, each holding an expired lock: most finish
    (no_active_tasks, their lock released with them), every OVERFLOW_EVERY-th has its overflow dropped and
    stays processing (its lock expires in the lock pass); and two expired locks of no batch."""
    path = tmp_path_factory.mktemp("backlog") / "backlog.sqlite3"
    migrated = manage("migrate", env={"DATABASE_URL": f"sqlite:///{path}"})
    assert migrated.returncode == 0, migrated.stderr
    stuck, held = sqlite_time(timedelta(hours=5)), sqlite_time(timedelta(hours=6))
    with closing(sqlite3.connect(path)) as db, db:
        for n in range(1, BACKLOG + 1):
            counters = (10, 2, 5, 6, 0) if n % OVERFLOW_EVERY == 0 else (10, 0, 0, 6, 1)
            db.execute("INSERT INTO account_generation_status (account_id, content_type, total_requested, "
                       "total_queued, total_processing, total_completed, total_failed, status, lock_id, created_at, "
                       "updated_at) VALUES (?, 'video', ?, ?, ?, ?, ?, 'processing', ?, ?, ?)",
                       (n, *counters, f"lock-{n}", stuck, stuck))
            db.execute("INSERT INTO account_generation_locks (account_id, content_type, lock_id, locked_at, created_at) "
                       "VALUES (?, 'video', ?, ?, ?)", (n, f"lock-{n}", held, held))
        for n in (1, 2):
            db.execute("INSERT INTO account_generation_locks (account_id, content_type, lock_id, locked_at, created_at) "
                       "VALUES (?, 'story', ?, ?, ?)", (n, f"orphan-{n}", held, held))
    return path


@pytest.fixture
def backlog(backlog_template, tmp_path):
    return shutil.copy2(backlog_template, tmp_path / "backlog.sqlite3")


class Terminal:
    """manage.py run on a pseudo-terminal of COLUMNS x ROWS (stdin, stdout and stderr all on it); what it
    wrote is rendered by pyte, a terminal emulator, as a person would see it."""

    def __init__(self, *args, env):
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = {**os.environ, "SECRET_KEY": "tests-only-not-a-secret", "TERM": "xterm", "LC_ALL": "C.UTF-8", **env}
        process = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), *args],
                                   stdin=follower, stdout=follower, stderr=follower, env=env, cwd=ROOT)
        os.close(follower)
        chunks = []
        try:
            while select.select([leader], [], [], 60)[0]:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the process has closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            self.returncode = process.wait(timeout=60)
        finally:
            process.kill()
            os.close(leader)
        self.output = b"".join(chunks)
        self.screen, self.moments = self._render()

    def _render(self):
        """The final screen (with the rows scrolled off it), and the screen as it stood before each bare
        carriage return: the moments tqdm starts to redraw or clear the bar, when the last drawing of it is
        complete whatever the reads' sizes. Each moment: (the rows, the cursor's row)."""
        import pyte

        screen = pyte.HistoryScreen(COLUMNS, ROWS, history=100_000)
        stream = pyte.ByteStream(screen)
        moments, done = [], 0
        for match in re.finditer(rb"\r(?!\n)", self.output):
            stream.feed(self.output[done:match.start()])
            done = match.start()
            moments.append((list(screen.display), screen.cursor.y))
        stream.feed(self.output[done:])
        moments.append((list(screen.display), screen.cursor.y))
        return screen, moments

    def _all_rows(self):
        scrolled = ["".join(line[x].data for x in range(COLUMNS)) for line in self.screen.history.top]
        return scrolled + self.screen.display

    def rows(self):
        """Every row the run wrote, those scrolled off the top first, right-stripped, trailing blank ones dropped."""
        rows = [row.rstrip() for row in self._all_rows()]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def text(self):
        """The rows joined: a line wrapped onto several rows reads whole again."""
        return "".join(self._all_rows())

    def last_line(self, pattern):
        """The last line on the screen if it matches `pattern`, joined from the rows it wrapped onto; else None."""
        rows = self._all_rows()
        while rows and not rows[-1].strip():
            rows.pop()
        for count in range(1, min(len(rows), 6) + 1):
            line = "".join(rows[-count:]).rstrip()
            if pattern.fullmatch(line):
                return line
        return None


def assert_the_bar_was_intact(terminal):
    """Each time the bar was drawn it was whole, on the cursor's row, with nothing else on it; and it left no
    trace: no row of the finished screen or its scrollback holds any of its text."""
    whole = 0
    for display, cursor in terminal.moments:
        for y, row in enumerate(display):
            if "stuck batches:" in row:
                assert BAR.fullmatch(row.rstrip()), f"the progress bar is broken: {row.rstrip()!r}"
                assert y == cursor, "the progress bar is not where the cursor is"
                whole += 1
    assert whole >= 2, "the progress bar never showed"
    assert not [row for row in terminal.rows() if "stuck batches:" in row], "a broken bar's text was left behind"


def test_at_a_terminal_the_report_reads_alone_under_an_intact_progress_bar(backlog, tmp_path):
    log_file = tmp_path / "logs" / "cleanup.log"
    terminal = Terminal("cleanup_stuck_generation", "--batch-size", str(PAGE),
                        env={"DATABASE_URL": f"sqlite:///{backlog}", "CLEANUP_LOG_FILE": str(log_file),
                             "LOG_LEVEL": "INFO"})
    assert terminal.returncode == 0, "\n".join(terminal.rows())
    assert_the_bar_was_intact(terminal)
    rows = terminal.rows()
    assert rows[0].startswith("Cleanup: stuck after 3h;")
    assert rows[1].startswith("Event log: appended to ")  # the path may wrap onto the next row
    assert f"Event log: appended to {log_file} (-v 3 shows it here instead)" in terminal.text()
    assert "event=" not in terminal.text()
    # a line per batch, per lock released with its batch, per expired lock; the totals line last
    overflowing = BACKLOG // OVERFLOW_EVERY
    assert sum(row.startswith("  repaired #") for row in rows) == BACKLOG
    released = [row for row in rows if row.startswith("  released lock #")]
    assert len(released) == BACKLOG - overflowing
    assert released[0].endswith("; batch #1 repaired by this run (no_active_tasks)")
    expired = [row for row in rows if row.startswith("  removed lock #")]
    assert len(expired) == overflowing + 2
    assert f"; batch #{OVERFLOW_EVERY} repaired by this run (counter_overflow)" in expired[0]
    assert sum("no batch refers to it" in row for row in expired) == 2
    assert not [row for row in expired if "last moved 0s ago" in row]
    totals = terminal.last_line(TOTALS)
    assert totals, terminal.rows()[-4:]
    assert f"{BACKLOG} stuck batches examined, repaired {BACKLOG} " in totals
    # the events are in the log file, every one of them
    events = log_file.read_text()
    assert events.count(" event=repair ") == BACKLOG and events.count(" event=lock_released ") == BACKLOG - overflowing
    assert " event=run_started " in events and " event=run_finished " in events


def test_at_a_terminal_v3_shows_the_event_log_above_the_bar_and_writes_no_file(backlog, tmp_path):
    log_file = tmp_path / "logs" / "cleanup.log"
    terminal = Terminal("cleanup_stuck_generation", "--batch-size", str(PAGE), "-v", "3",
                        env={"DATABASE_URL": f"sqlite:///{backlog}", "CLEANUP_LOG_FILE": str(log_file),
                             "LOG_LEVEL": "INFO"})
    assert terminal.returncode == 0, "\n".join(terminal.rows())
    assert_the_bar_was_intact(terminal)
    text = terminal.text()
    assert text.count(" event=repair ") == BACKLOG and " event=run_finished " in text
    assert "  [statuses page 8: 50 rows]" in terminal.rows()
    assert terminal.last_line(TOTALS)
    assert not log_file.exists()


def test_at_a_terminal_errors_are_listed_then_the_totals_then_one_plain_line(backlog, tmp_path):
    with closing(sqlite3.connect(backlog)) as db, db:
        db.execute("UPDATE account_generation_status SET total_processing = -1 WHERE id IN (3, 7)")
    terminal = Terminal("cleanup_stuck_generation", "--batch-size", str(PAGE),
                        env={"DATABASE_URL": f"sqlite:///{backlog}", "CLEANUP_LOG_FILE": str(tmp_path / "c.log")})
    assert terminal.returncode == 1
    rows = terminal.rows()
    assert rows[-1] == "cleanup completed with errors (2 listed above)"
    errors = [n for n, row in enumerate(rows) if row.startswith("ERROR: ")]
    assert [rows[n][:30] for n in errors] == ["ERROR: batch #3 has corrupt co", "ERROR: batch #7 has corrupt co"]
    totals = "".join(rows[errors[-1] + 1:-1])
    assert TOTALS.fullmatch(totals) and "outcome errors" in totals
    assert "CommandError" not in terminal.text() and "Traceback" not in terminal.text()


def test_not_at_a_terminal_the_event_log_stays_on_stderr(backlog, tmp_path):
    """cron, Kubernetes, a pipe: stdout the report, stderr every event line, as log shippers read them."""
    log_file = tmp_path / "cleanup.log"
    result = manage("cleanup_stuck_generation", "--batch-size", str(PAGE),
                    env={"DATABASE_URL": f"sqlite:///{backlog}", "CLEANUP_LOG_FILE": str(log_file),
                         "LOG_LEVEL": "INFO"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(" event=repair ") == BACKLOG
    assert all(line.startswith("ts=") for line in result.stderr.splitlines())
    assert "event=" not in result.stdout and "Event log:" not in result.stdout
    assert TOTALS.fullmatch(result.stdout.splitlines()[-1])
    assert not log_file.exists()


def test_the_json_report_is_written_in_pieces_but_reads_as_one_line():
    # write_json streams the encoder's pieces; what comes out is json.dumps's line, whatever its size
    value = {"details": [{"id": n, "before": {"status": "processing"}, "at": timedelta(seconds=n)} for n in range(3000)],
             "errors": ["one", "two"]}
    out = StringIO()
    write_json(OutputWrapper(out), value)
    assert out.getvalue() == json.dumps(value, default=str) + "\n"
