"""The engine through the ORM, on whichever database the suite runs on (SQLite or PostgreSQL)."""

import json
from contextlib import contextmanager
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from generation import results, services
from generation.conf import parse_windows
from generation.demo import seed_demo_data
from generation.models import CleanupRun, GenerationLock, GenerationStatus, RepairRecord
from generation.rules import COUNTER_FIELDS, REPAIRS, Counters

from .factories import INSIDE, OUTSIDE, WINDOW, counters_of, job, make_batch, make_lock, snapshot_of

pytestmark = pytest.mark.django_db

# The spec's worked examples: before, rule, after, status after.
WORKED_EXAMPLES = [
    ((10, 0, 0, 10, 0), "all_accounted", (10, 0, 0, 10, 0), "completed"),
    ((10, 0, 2, 7, 3), "all_accounted", (10, 0, 0, 7, 3), "partial"),
    ((5, 0, 0, 0, 5), "all_accounted", (5, 0, 0, 0, 5), "failed"),
    ((10, 1, 0, 9, 3), "all_accounted", (10, 0, 0, 9, 3), "partial"),
    ((10, 0, 0, 6, 1), "no_active_tasks", (10, 0, 0, 6, 4), "partial"),
    ((4, 0, 0, 0, 0), "no_active_tasks", (4, 0, 0, 0, 4), "failed"),
    ((10, 2, 5, 6, 0), "counter_overflow", (10, 2, 2, 6, 0), "processing"),
    ((10, 4, 1, 6, 1), "counter_overflow", (10, 3, 0, 6, 1), "processing"),
    ((10, 3, 0, 7, 2), "counter_overflow", (10, 1, 0, 7, 2), "processing"),
    ((10, 1, 1, 3, 2), "stalled", (10, 1, 1, 3, 2), "processing"),
]


def run_command(*args):
    """call_command with --json; returns (parsed report, exit code)."""
    out = StringIO()
    try:
        call_command("cleanup_stuck_generation", "--json", *args, stdout=out, stderr=StringIO())
        code = 0
    except CommandError as exc:
        code = exc.returncode
    return json.loads(out.getvalue()), code


@pytest.mark.parametrize(("before", "rule", "after", "status"), WORKED_EXAMPLES,
                         ids=[f"{rule}-{'-'.join(map(str, b))}" for b, rule, _, _ in WORKED_EXAMPLES])
def test_worked_example_through_the_command(before, rule, after, status):
    batch = make_batch(before, lock_held_for=timedelta(minutes=10))
    report, code = run_command()
    assert code == 0
    assert counters_of(batch) == Counters(*after)
    assert batch.status == status
    [detail] = report["statuses"]["details"]
    assert detail["rule"] == rule
    finishes = rule in ("all_accounted", "no_active_tasks")
    assert (batch.completed_at is not None) == finishes
    assert GenerationLock.objects.filter(lock_id=batch.lock_id).exists() == (not finishes)


def test_worked_example_stalled_failed_with_window_set_and_passed():
    batch = make_batch((10, 1, 1, 3, 2), idle=timedelta(hours=7))
    report, code = run_command("--fail-stalled-after", "6h")
    assert code == 0
    assert (counters_of(batch), batch.status) == (Counters(10, 0, 0, 3, 7), "partial")
    assert report["statuses"]["by_rule"]["stalled_failed"] == 1


def test_stalled_inside_the_fail_window_is_only_reported():
    batch = make_batch((10, 1, 1, 3, 2), idle=timedelta(hours=5))
    report, _ = run_command("--fail-stalled-after", "6h")
    assert counters_of(batch) == Counters(10, 1, 1, 3, 2)
    assert report["statuses"]["stalled"] == 1


def test_worked_example_corrupt_is_an_error_and_unchanged():
    batch = make_batch((3, 0, -1, 2, 0))
    healthy_stuck = make_batch((10, 0, 0, 10, 0))
    report, code = run_command()
    assert code == 1
    assert counters_of(batch) == Counters(3, 0, -1, 2, 0)
    assert batch.status == "processing"
    assert report["outcome"] == "errors"
    assert report["statuses"]["corrupt"] == 1
    assert any(f"batch #{batch.id}" in error for error in report["errors"])
    assert counters_of(healthy_stuck) == Counters(10, 0, 0, 10, 0)
    assert healthy_stuck.status == "completed"  # the rest of the run is unaffected


@pytest.mark.parametrize("before", [b for b, rule, _, _ in WORKED_EXAMPLES if rule != "stalled"])
def test_one_minute_inside_the_window_is_untouched(before):
    batch = make_batch(before, idle=INSIDE)
    snapshot = GenerationStatus.objects.values().get(pk=batch.pk)
    report, _ = run_command()
    assert GenerationStatus.objects.values().get(pk=batch.pk) == snapshot
    assert report["statuses"]["examined"] == 0


@pytest.mark.parametrize("status", ["completed", "partial", "failed"])
def test_finished_batches_of_any_age_are_untouched(status):
    batch = make_batch((10, 0, 5, 3, 0), idle=timedelta(days=30), status=status)
    snapshot = GenerationStatus.objects.values().get(pk=batch.pk)
    run_command()
    assert GenerationStatus.objects.values().get(pk=batch.pk) == snapshot


def test_locks_on_both_sides_of_the_ttl():
    fresh = make_lock(account_id=1, held_for=INSIDE)
    expired = make_lock(account_id=2, held_for=OUTSIDE)
    report, _ = run_command()
    assert GenerationLock.objects.filter(pk=fresh.pk).exists()
    assert not GenerationLock.objects.filter(pk=expired.pk).exists()
    assert report["locks"]["expired"] == report["locks"]["removed"] == 1
    [record] = RepairRecord.objects.filter(kind="lock")
    assert (record.rule, record.target_id, record.before["lock_id"]) == ("expired_lock", expired.pk, expired.lock_id)


def test_expired_lock_report_names_the_batch_that_refers_to_it():
    batch = make_batch((10, 1, 1, 3, 2), idle=timedelta(minutes=20), lock_held_for=timedelta(hours=5))
    report, _ = run_command()
    [detail] = report["locks"]["details"]
    assert detail["batch_id"] == batch.pk
    assert detail["batch_status"] == "processing"
    assert 19 * 60 < detail["batch_idle_s"] < 21 * 60
    assert 5 * 3600 - 60 < detail["age_s"] < 5 * 3600 + 60


def test_a_second_run_repairs_and_removes_nothing():
    for before, *_ in WORKED_EXAMPLES:
        make_batch(before, lock_held_for=OUTSIDE)
    make_lock(account_id=999, held_for=timedelta(hours=10))
    first, _ = run_command()
    assert first["statuses"]["repaired"] == 9
    second, _ = run_command()
    assert second["statuses"]["repaired"] == 0
    assert second["locks"]["removed"] == 0
    assert second["statuses"]["stalled"] == 1


def test_dry_run_writes_nothing_at_all():
    for before, *_ in WORKED_EXAMPLES:
        make_batch(before, lock_held_for=OUTSIDE)
    make_lock(account_id=999, held_for=timedelta(hours=10))
    dump_before = StringIO()
    call_command("dumpdata", "generation", stdout=dump_before)
    out = StringIO()
    call_command("cleanup_stuck_generation", "--dry-run", stdout=out, stderr=StringIO())
    dump_after = StringIO()
    call_command("dumpdata", "generation", stdout=dump_after)
    assert dump_after.getvalue() == dump_before.getvalue()
    assert CleanupRun.objects.count() == RepairRecord.objects.count() == 0
    text = out.getvalue()
    assert "would repair" in text and "repaired #" not in text
    assert "DRY RUN: 10 stuck batches examined, would repair 9" in text


def test_json_counts_equal_the_repair_records_of_the_run():
    for before, *_ in WORKED_EXAMPLES:
        make_batch(before, lock_held_for=OUTSIDE)
    make_lock(account_id=999, held_for=timedelta(hours=10))
    report, _ = run_command()
    records = RepairRecord.objects.filter(run_id=report["run_id"])
    s = report["statuses"]
    assert records.filter(kind="status").count() == s["repaired"] == sum(s["by_rule"].values())
    assert records.filter(rule="released_with_batch").count() == s["locks_released"] == 6
    assert records.filter(rule="expired_lock").count() == report["locks"]["removed"]
    run = CleanupRun.objects.get(pk=report["run_id"])
    assert (run.trigger, run.outcome, run.repaired, run.locks_released) == ("command", "ok", 9, 6)
    assert run.finished_at is not None


def test_every_record_holds_the_values_before_and_after():
    batch = make_batch((10, 0, 2, 7, 3), lock_held_for=timedelta(minutes=5))
    run_command()
    record = RepairRecord.objects.get(kind="status", target_id=batch.pk)
    batch.refresh_from_db()
    assert record.before["total_processing"] == 2 and record.before["status"] == "processing"
    assert record.before["completed_at"] is None
    assert record.after == snapshot_of(batch)
    lock_record = RepairRecord.objects.get(kind="lock")
    assert (lock_record.rule, lock_record.before["lock_id"], lock_record.after) == (
        "released_with_batch", batch.lock_id, None)


def test_only_the_changed_columns_and_updated_at_are_written():
    batch = make_batch((10, 2, 5, 6, 0))
    before = GenerationStatus.objects.values().get(pk=batch.pk)
    run_command()
    after = GenerationStatus.objects.values().get(pk=batch.pk)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"total_processing", "updated_at"}


# What each rule may write (the contract's columns for it); every other column of the row is the backend's.
RULE_COLUMNS = {
    "all_accounted": {"total_queued", "total_processing", "status", "updated_at", "completed_at"},
    "no_active_tasks": {"total_queued", "total_processing", "total_failed", "status", "updated_at", "completed_at"},
    "stalled_failed": {"total_queued", "total_processing", "total_failed", "status", "updated_at", "completed_at"},
    "counter_overflow": {"total_queued", "total_processing", "status", "updated_at"},
}


@contextmanager
def updates_of_columns_fail(columns):
    """From here on, an UPDATE of account_generation_status that names any of `columns` as a target fails,
    whatever value it writes (triggers `BEFORE UPDATE OF column`, which PostgreSQL and SQLite fire on the
    columns an UPDATE sets, not on the values that change). Writing a column "unchanged" from values read
    earlier would overwrite a worker's change made in between, so it must not be written at all."""
    table = GenerationStatus._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("CREATE FUNCTION test_column_written() RETURNS trigger LANGUAGE plpgsql AS $$ "
                           "BEGIN RAISE EXCEPTION 'the update wrote column %', TG_ARGV[0]; END $$")
        for column in columns:
            if connection.vendor == "postgresql":
                body = f"FOR EACH ROW EXECUTE FUNCTION test_column_written('{column}')"
            else:
                body = f"BEGIN SELECT RAISE(ABORT, 'the update wrote column {column}'); END"
            cursor.execute(f'CREATE TRIGGER "test_written_{column}" BEFORE UPDATE OF "{column}" ON "{table}" {body}')
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for column in columns:
                suffix = f' ON "{table}"' if connection.vendor == "postgresql" else ""
                cursor.execute(f'DROP TRIGGER IF EXISTS "test_written_{column}"{suffix}')
            if connection.vendor == "postgresql":
                cursor.execute("DROP FUNCTION IF EXISTS test_column_written()")


def test_the_trigger_catches_a_column_written_with_its_own_value():
    batch = make_batch((4, 0, 0, 0, 0))
    with updates_of_columns_fail(["error_message"]), pytest.raises(DatabaseError, match="wrote column error_message"):
        with transaction.atomic():
            GenerationStatus.objects.filter(pk=batch.pk).update(error_message=F("error_message"))
    GenerationStatus.objects.filter(pk=batch.pk).update(error_code="x")  # the triggers are gone


REPAIRING_EXAMPLES = [(before, rule, after, False) for before, rule, after, _ in WORKED_EXAMPLES if rule != "stalled"] + [
    ((10, 1, 1, 3, 2), "stalled_failed", (10, 0, 0, 3, 7), True)]


@pytest.mark.parametrize(("before", "rule", "after", "fail_stalled"), REPAIRING_EXAMPLES,
                         ids=[f"{rule}-{'-'.join(map(str, b))}" for b, rule, _, _ in REPAIRING_EXAMPLES])
def test_a_repair_writes_only_the_columns_of_its_rule(before, rule, after, fail_stalled):
    batch = make_batch(before, idle=timedelta(hours=7), lock_held_for=timedelta(minutes=10))
    columns = {f.column for f in GenerationStatus._meta.concrete_fields}
    assert RULE_COLUMNS[rule] < columns
    with updates_of_columns_fail(sorted(columns - RULE_COLUMNS[rule])):
        report, code = run_command(*(["--fail-stalled-after", "6h"] if fail_stalled else []))
    assert (code, report["errors"]) == (0, [])
    assert report["statuses"]["by_rule"][rule] == 1
    assert counters_of(batch) == Counters(*after)


def test_filters_by_account_and_content_type():
    a = make_batch((4, 0, 0, 0, 0), account_id=1, content_type="video")
    b = make_batch((4, 0, 0, 0, 0), account_id=2, content_type="story")
    c = make_batch((4, 0, 0, 0, 0), account_id=2, content_type="video")
    report, _ = run_command("--account", "2", "--content-type", "video")
    assert [d["id"] for d in report["statuses"]["details"]] == [c.pk]
    assert counters_of(a).total_failed == 0 and counters_of(b).total_failed == 0
    nothing, code = run_command("--account", "123456789")
    assert (nothing["statuses"]["examined"], code) == (0, 0)


def test_only_locks_and_only_statuses():
    batch = make_batch((4, 0, 0, 0, 0))
    lock = make_lock(account_id=500)
    report, _ = run_command("--only", "locks")
    assert counters_of(batch).total_failed == 0 and report["locks"]["removed"] == 1
    make_lock(account_id=501)
    report, _ = run_command("--only", "statuses")
    assert counters_of(batch).total_failed == 4 and report["locks"]["expired"] == 0
    assert not GenerationLock.objects.filter(pk=lock.pk).exists()


def test_small_batches_page_through_everything():
    batches = [make_batch((4, 0, 0, 0, 0)) for _ in range(7)]
    report, _ = run_command("--batch-size", "2")
    assert report["statuses"]["repaired"] == 7
    assert all(counters_of(b).total_failed == 4 for b in batches)


def test_details_are_capped(monkeypatch):
    monkeypatch.setattr(results, "DETAILS_CAP", 3)
    for _ in range(5):
        make_batch((4, 0, 0, 0, 0))
    report, _ = run_command()
    assert report["statuses"]["repaired"] == 5
    assert len(report["statuses"]["details"]) == 3
    assert report["statuses"]["details_truncated"] is True


def test_pages_past_the_kept_details_select_no_timestamps_and_their_lines_show_none(monkeypatch):
    """Only a report's details show a batch's timestamps: once they are full, a page's select leaves the times
    out, and the details it hands the command's lines carry the counters and status only."""
    monkeypatch.setattr(results, "DETAILS_CAP", 3)
    for _ in range(7):
        make_batch((4, 0, 0, 0, 0))
    pages = []
    with CaptureQueriesContext(connection) as queries:
        report = services.cleanup(job=job(batch_size=2), on_page=lambda kind, details: pages.append(
            (kind, [(d.id, d.before, d.after) for d in details])))
    kept = report.statuses.details
    assert len(kept) == 3 and report.statuses.by_rule["no_active_tasks"] == 7
    assert all(set(d.before) == set(d.after) == set(results.SNAPSHOT_FIELDS) for d in kept)
    assert all(d.after["updated_at"] is not None for d in kept)
    lines = [detail for kind, details in pages if kind == "statuses" for detail in details]
    assert [pk for pk, *_ in lines] == sorted(pk for pk, *_ in lines) and len(lines) == 7
    # pages of 2: the second was selected while the report had room for one more detail, the last two were not
    full, short = set(results.SNAPSHOT_FIELDS), set(results.SNAPSHOT_FIELDS) - set(results.SNAPSHOT_TIMES)
    assert [(set(before), set(after)) for _, before, after in lines] == [(full, full)] * 4 + [(short, short)] * 3
    assert all(after["total_failed"] == 4 and after["status"] == "failed" for *_, after in lines)
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT") and 'AS "verdict"' in q["sql"]]
    assert [('AS "updated_iso"' in sql) for sql in selects] == [True, True, False, False]


def test_repair_selected_scheduled_leaves_fresh_rows_alone():
    stuck = make_batch((4, 0, 0, 0, 0))
    fresh = make_batch((4, 0, 0, 0, 0), idle=timedelta(minutes=5))
    done = make_batch((4, 0, 0, 4, 0), status="completed")
    report = services.repair_selected(job=job(), ids=[stuck.pk, fresh.pk, done.pk])
    assert report.statuses.by_rule["no_active_tasks"] == 1
    # a row left alone is called what the list's diagnosis calls it
    reasons = {d.id: (d.rule, d.left_alone) for d in report.statuses.details}
    assert reasons == {stuck.pk: ("no_active_tasks", False), fresh.pk: ("healthy", True), done.pk: ("finished", True)}
    assert counters_of(fresh).total_failed == 0
    assert CleanupRun.objects.get(pk=report.run_id).trigger == "admin"


def test_repair_selected_force_ignores_the_window_and_preview_writes_nothing():
    fresh = make_batch((4, 0, 0, 0, 0), idle=timedelta(minutes=5))
    preview = services.repair_selected(job=job(), ids=[fresh.pk], mode=services.Mode.FORCE, dry_run=True)
    assert preview.statuses.details[0].after["total_failed"] == 4
    assert counters_of(fresh).total_failed == 0 and CleanupRun.objects.count() == 0
    services.repair_selected(job=job(), ids=[fresh.pk], mode=services.Mode.FORCE)
    assert counters_of(fresh).total_failed == 4


def test_repair_selected_fail_stalled_only_touches_stalled_rows():
    stalled = make_batch((10, 1, 1, 3, 2), idle=timedelta(minutes=5))
    other = make_batch((4, 0, 0, 0, 0))
    report = services.repair_selected(job=job(), ids=[stalled.pk, other.pk], mode=services.Mode.FAIL_STALLED)
    assert counters_of(stalled) == Counters(10, 0, 0, 3, 7)
    assert counters_of(other).total_failed == 0
    details = {d.id: (d.rule, d.left_alone, d.applied) for d in report.statuses.details}
    assert details == {stalled.pk: ("stalled_failed", False, True), other.pk: ("no_active_tasks", True, False)}


def test_release_locks_by_hand_records_each():
    batch = make_batch((10, 1, 1, 3, 2), idle=timedelta(minutes=5), lock_held_for=timedelta(minutes=5))
    lock = GenerationLock.objects.get(lock_id=batch.lock_id)
    report = services.release_locks(job=job(), ids=[lock.pk, 987654])
    assert report.locks.removed == 1 and report.locks.skipped_busy == 1
    assert not GenerationLock.objects.filter(pk=lock.pk).exists()
    record = RepairRecord.objects.get(kind="lock")
    assert (record.rule, record.target_id) == ("released_by_hand", lock.pk)


def test_window_is_the_parameter_not_a_constant():
    batch = make_batch((4, 0, 0, 0, 0), idle=timedelta(minutes=40))
    run_command("--stuck-after", "1h")
    assert counters_of(batch).total_failed == 0
    run_command("--stuck-after", "30m")
    assert counters_of(batch).total_failed == 4


def test_cutoff_is_reported_from_the_database_clock():
    report, _ = run_command("--stuck-after", "90m")
    assert report["stuck_after_s"] == 5400 and report["lock_ttl_s"] == int(WINDOW.total_seconds())
    from datetime import datetime
    now, cutoff = datetime.fromisoformat(report["now"]), datetime.fromisoformat(report["cutoff"])
    assert now - cutoff == timedelta(minutes=90)


@pytest.mark.postgres
def test_the_cutoff_follows_the_database_clock_not_this_hosts(monkeypatch):
    """A host clock a day fast must neither make fresh batches look stuck nor move the cutoff."""
    from datetime import datetime

    from django.db import connection
    from django.utils import timezone

    batch = make_batch((4, 0, 0, 0, 0), idle=INSIDE)
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(days=1))
    report, _ = run_command()
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        db_now = cursor.fetchone()[0]
    assert abs(datetime.fromisoformat(report["now"]) - db_now) < timedelta(minutes=1)
    assert report["statuses"]["examined"] == 0
    assert counters_of(batch).total_failed == 0


def test_dry_run_reports_the_same_lock_counts_as_the_real_run():
    """A finished batch's lock that is also expired is released with the batch, not counted twice."""
    make_batch((4, 0, 0, 0, 0), lock_held_for=timedelta(hours=5))  # finishes: lock released with it
    make_batch((10, 1, 1, 3, 2), lock_held_for=timedelta(hours=5))  # stalled: its lock just expires
    make_lock(account_id=999, held_for=timedelta(hours=10))  # no batch
    dry, _ = run_command("--dry-run")
    real, _ = run_command()
    for report in (dry, real):
        assert (report["statuses"]["locks_released"], report["locks"]["expired"]) == (1, 2)
    assert real["locks"]["removed"] == 2


def test_batches_no_rule_can_judge_are_reported_as_errors_and_left_alone():
    paused = make_batch((4, 0, 0, 0, 0), status="paused")
    never = make_batch((4, 0, 0, 0, 0))
    GenerationStatus.objects.filter(pk=never.pk).update(updated_at=None)
    snapshot = {row["id"]: row for row in GenerationStatus.objects.values()}
    report, code = run_command()
    assert code == 1
    assert (report["statuses"]["unknown_status"], report["statuses"]["never_updated"]) == (1, 1)
    assert report["errors"] == [
        f"batch #{paused.pk} has status 'paused', which the rules do not know; not changed",
        f"batch #{never.pk} is queuing but was never updated (updated_at NULL); not changed",
    ]
    assert {row["id"]: row for row in GenerationStatus.objects.values()} == snapshot
    scoped, code = run_command("--account", "123456")
    assert (scoped["statuses"]["unknown_status"], code) == (0, 0)


def test_many_anomalies_are_counted_exactly_and_named_up_to_the_cap(monkeypatch):
    monkeypatch.setattr(services, "ANOMALIES_NAMED", 2)
    for _ in range(5):
        make_batch((4, 0, 0, 0, 0), status="paused")
    report, _ = run_command()
    assert report["statuses"]["unknown_status"] == 5
    assert len(report["errors"]) == 3 and report["errors"][-1] == "3 more batches like these (unknown_status); not changed"


def test_a_reports_details_are_its_audit_records_snapshots():
    """The details a report shows of each repaired batch (built from the page's plain values) are exactly the
    before and after its audit record holds (built by the database in the INSERT ... SELECT), timestamps too."""
    seed_demo_data(count=300, seed=11, lock_ttl=job().lock_ttl)
    report = services.cleanup(job=job(fail_stalled_after=parse_windows("30h")))
    records = {r.target_id: (r.before, r.after) for r in RepairRecord.objects.filter(run_id=report.run_id, kind="status")}
    shown = {d.id: (d.before, d.after) for d in report.statuses.details if d.rule in REPAIRS}
    assert shown and shown == records
    assert all(after["updated_at"] != before["updated_at"] for before, after in shown.values())
    unchanged = [d for d in report.statuses.details if d.rule not in REPAIRS]
    assert unchanged and all(d.before == d.after == snapshot_of(GenerationStatus.objects.get(pk=d.id))
                             for d in unchanged)


@pytest.mark.parametrize("windows", [
    {"fail_stalled_after": "30h"},
    {"stuck_after": "3h,video=8h,story=45m", "lock_ttl": "3h,video=50h", "fail_stalled_after": "30h,story=60h"},
], ids=["one-window", "per-type"])
def test_the_dry_run_predicts_exactly_what_the_real_run_then_does(windows):
    """Same batches, same rules, same values after (counters, status, whether it finishes), same locks, on the
    demo's mix of every rule and content type, with a fail-stalled window so that every repair rule occurs;
    with one window for every type, and with windows per type."""
    the_job = job(**{name: parse_windows(text) for name, text in windows.items()})
    seed_demo_data(count=300, seed=7, lock_ttl=the_job.lock_ttl)
    dry = services.cleanup(job=the_job, dry_run=True)
    assert not dry.statuses.details_truncated and CleanupRun.objects.count() == 0
    predicted = {d.id: (d.rule, {k: d.after[k] for k in (*COUNTER_FIELDS, "status")}, d.after["completed_at"] is None)
                 for d in dry.statuses.details if d.rule in REPAIRS}
    predicted_locks = sorted(d.id for d in dry.locks.details)

    real = services.cleanup(job=the_job)
    records = RepairRecord.objects.filter(run_id=real.run_id, kind="status")
    done = {r.target_id: (r.rule, {k: r.after[k] for k in (*COUNTER_FIELDS, "status")}, r.after["completed_at"] is None)
            for r in records}
    assert done == predicted and {rule for rule, *_ in done.values()} == set(REPAIRS)
    assert sorted(d.id for d in real.locks.details) == predicted_locks
    assert (real.statuses.by_rule, real.statuses.locks_released, real.statuses.stalled, real.statuses.corrupt) == (
        dry.statuses.by_rule, dry.statuses.locks_released, dry.statuses.stalled, dry.statuses.corrupt)


# --- Select-across: the matching queryset, a page at a time ----------------------------------------


def test_repair_selected_takes_a_matching_queryset_in_keyset_pages(monkeypatch):
    stuck = [make_batch((4, 0, 0, 0, 0)) for _ in range(5)]
    fresh = make_batch((4, 0, 0, 0, 0), idle=timedelta(minutes=5))
    selected = []
    real = services.status_page
    monkeypatch.setattr(services, "status_page", lambda ids, *a, **k: selected.append(list(ids)) or real(ids, *a, **k))
    report = services.repair_selected(job=job(batch_size=2), matching=GenerationStatus.objects.all(),
                                      selection={"list": "q=all", "count": 6})
    assert selected == [[stuck[0].pk, stuck[1].pk], [stuck[2].pk, stuck[3].pk], [stuck[4].pk, fresh.pk]]
    assert report.statuses.by_rule["no_active_tasks"] == 5 and report.statuses.left_alone == 1
    assert CleanupRun.objects.get(pk=report.run_id).filters == {
        "select_across": {"list": "q=all", "count": 6}, "mode": "scheduled"}
    assert counters_of(fresh).total_failed == 0


def test_release_locks_takes_a_matching_queryset():
    locks = [make_lock(account_id=i, held_for=timedelta(minutes=5)) for i in range(3)]
    report = services.release_locks(job=job(batch_size=2), matching=GenerationLock.objects.filter(account_id__lt=2))
    assert report.locks.removed == 2
    assert list(GenerationLock.objects.values_list("pk", flat=True)) == [locks[2].pk]


def test_judgement_for_each_mode_is_what_repair_selected_applies():
    now = services.database_now()
    settings_ = job()
    scheduled, applies = services.judgement_for(services.Mode.SCHEDULED, job=settings_, now=now)
    assert scheduled.cutoffs == settings_.stuck_after.cutoffs(now) and applies == REPAIRS
    forced, applies = services.judgement_for(services.Mode.FORCE, job=settings_, now=now)
    assert forced.cutoffs is None and forced.fail_stalled is None and applies == REPAIRS
    failing, applies = services.judgement_for(services.Mode.FAIL_STALLED, job=settings_, now=now)
    assert failing.cutoffs is None and failing.fail_stalled is True and applies == ("stalled_failed",)


def test_keyset_pages_go_newest_first_when_asked():
    from generation.db import keyset_pages

    ids = [make_batch((4, 0, 0, 0, 0)).pk for _ in range(5)]
    assert list(keyset_pages(GenerationStatus.objects.all(), 2)) == [ids[:2], ids[2:4], ids[4:]]
    assert list(keyset_pages(GenerationStatus.objects.all(), 2, descending=True)) == [
        ids[:2:-1], ids[2:0:-1], ids[:1]]
