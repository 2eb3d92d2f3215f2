"""The command as users and cron run it: output, verbosity, JSON and exit codes."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from .factories import make_batch, make_lock
from .helpers import manage


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


@pytest.mark.django_db
def test_human_output_at_each_verbosity():
    batch = make_batch((10, 0, 0, 6, 1), lock_held_for=timedelta(hours=4))  # its lock goes with it
    stalled = make_batch((10, 1, 1, 3, 2), idle=timedelta(minutes=20), lock_held_for=timedelta(hours=4))
    make_lock(account_id=900, held_for=timedelta(hours=5))
    out, _, code = run("--dry-run", "-v", "1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("Cleanup (DRY RUN: nothing will be written): stuck after 3h; lock TTL 3h; "
                        "fail stalled never; batch size 500")
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
    assert lines[0].startswith("CommandError: cannot reach the database butter on 127.0.0.1:1:")
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


def test_unreachable_database_at_a_terminal_is_still_one_line():
    """At a terminal the progress bar counts the backlog first: that query must fail just as cleanly."""
    import os
    import pty
    import subprocess
    import sys

    from .helpers import ROOT

    env = {**os.environ, "SECRET_KEY": "x", "DATABASE_URL": "postgres://butter:pw-never-shown@127.0.0.1:1/butter"}
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "cleanup_stuck_generation"],
                               stdin=follower, stdout=follower, stderr=follower, env=env, cwd=ROOT)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the follower side closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=60) == 1
    text = output.decode()
    assert "Traceback" not in text
    assert "CommandError: cannot reach the database butter on 127.0.0.1:1:" in text
    assert "pw-never-shown" not in text
