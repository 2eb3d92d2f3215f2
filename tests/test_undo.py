"""Undo: a repair comes off only if the row still holds what the repair left; locks come back only to a free place."""

import json
import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections

from generation import services, undo
from generation.db import database_now
from generation.models import CleanupRun, GenerationLock, GenerationStatus, RepairRecord
from generation.report import format_undo_summary
from generation.rules import Counters

from .factories import OUTSIDE, counters_of, job, make_batch, make_lock, snapshot_of
from .helpers import manage

PARAMS = {"stuck_after": timedelta(hours=3), "lock_ttl": timedelta(hours=3), "batch_size": 100,
          "lock_timeout": timedelta(seconds=5), "statement_timeout": timedelta(seconds=30)}

pytestmark = pytest.mark.django_db(transaction=True)


def repair(**overrides):
    report = services.cleanup(job=job(**{**PARAMS, **overrides}))
    assert report.outcome == "ok", report.errors
    return report


def status_record(batch):
    return RepairRecord.objects.get(kind="status", target_id=batch.pk, undo_of=None)


def lock_record(lock_id):
    return RepairRecord.objects.get(kind="lock", before__lock_id=lock_id, undo_of=None)


def snapshot(batch):
    batch.refresh_from_db()
    return Counters.of(batch), batch.status, batch.completed_at


def run_undo(*args):
    out = StringIO()
    try:
        call_command("undo_repair", *args, stdout=out)
        code, error = 0, ""
    except CommandError as exc:
        code, error = exc.returncode, str(exc)
    return code, out.getvalue(), error


@pytest.mark.parametrize(("counters", "rule", "fail_stalled"), [
    ((10, 0, 2, 7, 3), "all_accounted", False),
    ((10, 0, 0, 6, 1), "no_active_tasks", False),
    ((10, 2, 5, 6, 0), "counter_overflow", False),
    ((10, 1, 1, 3, 2), "stalled_failed", True),
])
def test_undo_puts_back_the_values_before_and_records_itself(counters, rule, fail_stalled):
    batch = make_batch(counters, lock_held_for=timedelta(minutes=10))
    original, make_batch_updated_at = snapshot(batch), batch.updated_at
    lock = GenerationLock.objects.get(lock_id=batch.lock_id)
    repair(fail_stalled_after=timedelta(hours=3) if fail_stalled else None)
    record = status_record(batch)
    assert record.rule == rule
    repaired_at = GenerationStatus.objects.get(pk=batch.pk).updated_at
    finishes = rule != "counter_overflow"
    assert GenerationLock.objects.filter(pk=lock.pk).exists() is not finishes

    report = undo.undo_records(job=job(), ids=[record.pk])

    assert snapshot(batch) == original
    # exactly as it was: idle since before the repair, so stuck again (the next run repairs it again)
    assert batch.updated_at == make_batch_updated_at < repaired_at
    undone = [o for o in report.outcomes if o.undone]
    assert len(undone) == (2 if finishes else 1) and not report.refused
    undo_record = RepairRecord.objects.get(undo_of=record)
    assert (undo_record.rule, undo_record.kind, undo_record.target_id) == ("undo", "status", batch.pk)
    assert undo_record.before == record.after  # what the row held: exactly what the repair left
    assert undo_record.after == snapshot_of(batch)
    run = CleanupRun.objects.get(pk=report.run_id)
    assert (run.trigger, run.outcome, undo_record.run_id) == ("command", "ok", run.pk)
    if finishes:  # the lock released with the batch is taken back in the same undo
        back = GenerationLock.objects.get(pk=lock.pk)
        assert (back.lock_id, back.account_id, back.content_type, back.locked_at, back.created_at) == (
            lock.lock_id, lock.account_id, lock.content_type, lock.locked_at, lock.created_at)
        lock_undo = RepairRecord.objects.get(undo_of=lock_record(lock.lock_id))
        assert (lock_undo.kind, lock_undo.before, lock_undo.after["lock_id"]) == ("lock", {}, lock.lock_id)


def test_a_row_the_backend_wrote_since_the_repair_is_refused_and_nothing_changes():
    batch = make_batch((10, 0, 0, 6, 1), lock_held_for=timedelta(minutes=10))
    repair()
    record = status_record(batch)
    # a late worker completes a task: C+1 and updated_at, as the backend saves it
    GenerationStatus.objects.filter(pk=batch.pk).update(total_completed=7, updated_at=database_now())
    before_undo = snapshot(batch), batch.updated_at

    report = undo.undo_records(job=job(), ids=[record.pk])

    [refused, lock_refused] = report.outcomes
    assert refused.reason.startswith("the row changed since the repair: updated_at is ")
    assert lock_refused.reason.startswith(f"undone only together with its batch's repair (record #{record.pk})")
    assert (snapshot(batch), batch.updated_at) == before_undo
    assert not GenerationLock.objects.filter(lock_id=batch.lock_id).exists()
    assert not RepairRecord.objects.filter(rule="undo").exists()
    assert CleanupRun.objects.get(pk=report.run_id).outcome == "errors"


def test_a_changed_column_is_named_in_the_refusal():
    batch = make_batch((10, 2, 5, 6, 0))
    repair()
    record = status_record(batch)
    GenerationStatus.objects.filter(pk=batch.pk).update(total_processing=3)  # updated_at untouched
    [refused] = undo.undo_records(job=job(), ids=[record.pk]).outcomes
    assert refused.reason == "the row changed since the repair: total_processing is 3, the repair left 2"
    assert counters_of(batch) == Counters(10, 2, 3, 6, 0)


def test_refusals_already_undone_undo_of_an_undo_unknown_and_deleted():
    done, gone = make_batch((10, 0, 0, 6, 1)), make_batch((4, 0, 0, 0, 0))
    repair()
    done_record, gone_record = status_record(done), status_record(gone)
    first = undo.undo_records(job=job(), ids=[done_record.pk])
    undo_record = RepairRecord.objects.get(undo_of=done_record)
    GenerationStatus.objects.filter(pk=gone.pk).delete()

    report = undo.undo_records(job=job(), ids=[done_record.pk, undo_record.pk, gone_record.pk, 987654])

    reasons = {o.record_id: o.reason for o in report.outcomes}
    assert reasons == {
        987654: "no such repair record",
        undo_record.pk: "is itself an undo; to change the row again, repair it",
        gone_record.pk: f"batch #{gone.pk} no longer exists",
        done_record.pk: f"already undone by record #{undo_record.pk}",
    }
    assert [o.record_id for o in report.outcomes] == sorted(reasons, reverse=True)  # newest first
    assert RepairRecord.objects.filter(rule="undo").count() == 1 and len(first.undone) == 1


def test_an_expired_lock_comes_back_only_to_a_free_place():
    free = make_lock(account_id=1, held_for=OUTSIDE)
    taken = make_lock(account_id=2, held_for=OUTSIDE)
    repair()
    assert not GenerationLock.objects.exists()
    newcomer = make_lock(account_id=2, held_for=timedelta(minutes=1))  # the backend took account 2 again

    report = undo.undo_records(job=job(), ids=[lock_record(free.lock_id).pk, lock_record(taken.lock_id).pk])

    outcomes = {o.target_id: o for o in report.outcomes}
    assert outcomes[free.pk].undone
    back = GenerationLock.objects.get(pk=free.pk)
    assert (back.lock_id, back.locked_at, back.account_id, back.content_type) == (
        free.lock_id, free.locked_at, free.account_id, free.content_type)
    assert outcomes[taken.pk].reason == f"account 2 video holds another lock now ({newcomer.lock_id})"
    assert set(GenerationLock.objects.values_list("pk", flat=True)) == {free.pk, newcomer.pk}

    again = undo.undo_records(job=job(), ids=[lock_record(free.lock_id).pk])
    assert again.outcomes[0].reason.startswith("already undone by record #")


def test_undoing_repairs_of_one_row_goes_newest_first():
    batch = make_batch((10, 2, 5, 6, 0))
    original = snapshot(batch)
    repair()  # counter_overflow: 10/2/2/6/0
    time.sleep(0.05)  # idle again, with nobody writing the row in between: windows of 10 ms
    repair(stuck_after=timedelta(milliseconds=10), fail_stalled_after=timedelta(milliseconds=10))  # 10/0/0/6/4
    older, newer = RepairRecord.objects.filter(target_id=batch.pk, kind="status").order_by("id")
    assert (older.rule, newer.rule) == ("counter_overflow", "stalled_failed")

    [out_of_order] = undo.undo_records(job=job(), ids=[older.pk]).outcomes
    assert out_of_order.reason == f"a later repair of this batch (record #{newer.pk}) stands: undo that one first"

    preview = undo.undo_records(job=job(), ids=[older.pk, newer.pk], dry_run=True)
    assert [(o.record_id, o.refused) for o in preview.outcomes] == [(newer.pk, False), (older.pk, False)], preview
    report = undo.undo_records(job=job(), ids=[older.pk, newer.pk])
    assert [o.record_id for o in report.outcomes] == [newer.pk, older.pk] and not report.refused
    assert snapshot(batch)[:2] == original[:2]


def test_dry_run_says_what_would_happen_and_writes_nothing():
    batch = make_batch((10, 0, 0, 6, 1), lock_held_for=timedelta(minutes=10))
    repair()
    record = status_record(batch)
    runs, records, after_repair = CleanupRun.objects.count(), RepairRecord.objects.count(), snapshot(batch)

    report = undo.undo_records(job=job(), ids=[record.pk], dry_run=True)

    assert [(o.undone, o.refused) for o in report.outcomes] == [(False, False), (False, False)]
    assert report.outcomes[0].restored["total_failed"] == 1
    assert (CleanupRun.objects.count(), RepairRecord.objects.count(), snapshot(batch)) == (runs, records, after_repair)
    assert not GenerationLock.objects.exists()
    assert format_undo_summary(report) == "DRY RUN: would undo 2, would refuse 0 of 2 records"


def test_admin_trigger_and_actor_are_recorded():
    user = get_user_model().objects.create_user("operator")
    batch = make_batch((4, 0, 0, 0, 0))
    repair()
    report = undo.undo_records(job=job(), ids=[status_record(batch).pk], actor=user, trigger="admin")
    run = CleanupRun.objects.get(pk=report.run_id)
    assert (run.trigger, run.actor, RepairRecord.objects.get(rule="undo").actor) == ("admin", user, user)


def test_command_undoes_a_run_and_refuses_a_second_time():
    batches = [make_batch((4, 0, 0, 0, 0), lock_held_for=timedelta(minutes=10)) for _ in range(3)]
    orphan = make_lock(account_id=99, held_for=OUTSIDE)
    run_id = repair().run_id

    code, out, error = run_undo("--run", str(run_id))
    assert (code, error) == (0, "")
    lines = out.splitlines()
    assert lines[-1].startswith("Undo: 7 undone, 0 refused of 7 records, run #")
    assert sum(line.startswith("  undone record #") for line in lines) == 7, out
    assert all(counters_of(b) == Counters(4, 0, 0, 0, 0) for b in batches)
    assert GenerationLock.objects.count() == 4 and GenerationLock.objects.filter(pk=orphan.pk).exists()

    code, out, error = run_undo("--run", str(run_id), "-v", "0")  # the totals line only, like the cleanup's
    assert (code, out.splitlines(), error) == (1, ["Undo: 0 undone, 7 refused of 7 records, run #" + str(
        CleanupRun.objects.latest("id").pk)], "7 of 7 records refused")

    code, out, error = run_undo("--run", str(run_id), "--json")
    assert (code, error) == (1, "7 of 7 records refused")
    result = json.loads(out)
    assert (result["undone"], result["refused"]) == (0, 7)
    assert all(o["reason"].startswith("already undone by record #") for o in result["outcomes"])

    code, _, error = run_undo("--run", "424242")
    assert (code, error) == (1, "--run 424242: no such cleanup run")


@pytest.mark.parametrize(("args", "message"), [
    ([], "give RECORD_ID ... or --run RUN_ID (one of them, not both)"),
    (["5", "--run", "3"], "give RECORD_ID ... or --run RUN_ID (one of them, not both)"),
    (["abc"], "argument RECORD_ID: 'abc' is not a record id"),
    (["0"], "argument RECORD_ID: '0' is not a record id"),
    (["--run", "-1"], "argument --run: '-1' is not a run id"),
    (["--run"], "argument --run: expected one argument"),
])
def test_command_bad_usage_exits_2_with_one_line(args, message, tmp_path):
    result = manage("undo_repair", *args, env={"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # argparse's errors end its usage text; the command's own is its one line (no "CommandError:")
    assert message in result.stderr.strip().splitlines()[-1]
    assert "CommandError" not in result.stderr


@pytest.mark.postgres
def test_a_lock_taken_by_the_backend_during_the_undo_refuses_it_cleanly(monkeypatch):
    """Between the check and the INSERT the backend takes the place: the unique constraint refuses the INSERT
    inside a savepoint, the record is refused with the reason, and the rest of the undo goes on."""
    racing = make_lock(account_id=1, held_for=OUTSIDE)
    calm = make_lock(account_id=2, held_for=OUTSIDE)
    repair()
    real_check = undo._lock_refusal
    state = {"raced": False}

    def check_then_backend_takes_the_place(snapshot):
        refusal = real_check(snapshot)
        if snapshot["lock_id"] == racing.lock_id and not state["raced"]:
            state["raced"] = True
            from .simulator import SQL, backend_connection
            with backend_connection(connection) as backend:
                backend.execute(SQL["create_lock"], [1, "video", "the-backend-was-faster"])
        return refusal

    monkeypatch.setattr(undo, "_lock_refusal", check_then_backend_takes_the_place)
    report = undo.undo_records(job=job(), ids=[lock_record(racing.lock_id).pk, lock_record(calm.lock_id).pk])

    outcomes = {o.target_id: o for o in report.outcomes}
    assert outcomes[racing.pk].reason == "account 1 video holds another lock now (the-backend-was-faster)"
    assert outcomes[calm.pk].undone
    assert set(GenerationLock.objects.values_list("lock_id", flat=True)) == {"the-backend-was-faster", calm.lock_id}
    assert RepairRecord.objects.filter(rule="undo").count() == 1


@pytest.mark.postgres
def test_a_row_held_by_the_backend_is_refused_after_the_lock_timeout(settings):
    settings.CLEANUP_LOCK_TIMEOUT = "300ms"
    batch = make_batch((10, 2, 5, 6, 0))
    repair()
    from .simulator import backend_connection
    with backend_connection(connection) as backend, backend.transaction():
        backend.execute("SELECT id FROM account_generation_status WHERE id = %s FOR UPDATE", [batch.pk])
        started = time.monotonic()
        [busy] = undo.undo_records(job=job(), ids=[status_record(batch).pk]).outcomes
        elapsed = time.monotonic() - started
    assert elapsed < 3
    assert busy.reason.startswith("the row is locked by another transaction (gave up after the lock timeout): ")
    assert counters_of(batch) == Counters(10, 2, 2, 6, 0)
    assert not RepairRecord.objects.filter(rule="undo").exists()


@pytest.mark.postgres
def test_a_worker_increment_during_the_undo_waits_and_is_not_lost(monkeypatch):
    batch = make_batch((10, 2, 5, 6, 0))
    repair()  # 10/2/2/6/0
    from .simulator import SQL, backend_connection
    real_undo_status = undo._undo_status
    finished = threading.Event()

    def undo_while_a_worker_completes(*args, **kwargs):
        result = real_undo_status(*args, **kwargs)  # the row is locked and written, not committed

        def complete():
            with backend_connection(connection) as backend:
                backend.execute(SQL["complete"], [batch.pk])
            finished.set()

        threading.Thread(target=complete, daemon=True).start()
        time.sleep(0.3)
        assert not finished.is_set(), "the worker's UPDATE did not wait for the undo's row lock"
        return result

    monkeypatch.setattr(undo, "_undo_status", undo_while_a_worker_completes)
    report = undo.undo_records(job=job(), ids=[status_record(batch).pk])
    assert finished.wait(5)
    assert report.outcomes[0].undone
    assert counters_of(batch) == Counters(10, 2, 4, 7, 0)  # the undo's 5 in processing, then the worker's C+1, P-1


@pytest.mark.postgres
def test_two_undos_of_one_record_at_once_undo_it_once(monkeypatch):
    batch = make_batch((10, 2, 5, 6, 0))
    repair()
    record = status_record(batch)
    real_undo_status = undo._undo_status
    first_inside = threading.Event()

    def slow_first(*args, **kwargs):
        result = real_undo_status(*args, **kwargs)
        if not first_inside.is_set():
            first_inside.set()
            time.sleep(0.5)  # the other undo arrives now and must wait on the record's lock
        return result

    monkeypatch.setattr(undo, "_undo_status", slow_first)
    results = []

    def one_undo():
        try:
            results.append(undo.undo_records(job=job(), ids=[record.pk]))
        finally:
            connections.close_all()

    first = threading.Thread(target=one_undo)
    first.start()
    assert first_inside.wait(5)
    second = threading.Thread(target=one_undo)
    second.start()
    first.join(10)
    second.join(10)
    outcomes = sorted((r.outcomes[0] for r in results), key=lambda o: o.undone)
    assert [o.undone for o in outcomes] == [False, True]
    assert outcomes[0].reason.startswith("already undone by record #")
    assert RepairRecord.objects.filter(undo_of=record).count() == 1
    assert counters_of(batch) == Counters(10, 2, 5, 6, 0)


def test_an_undone_batch_is_stuck_again_and_the_next_run_repairs_it_again():
    batch = make_batch((10, 0, 0, 6, 1))
    before = (snapshot(batch), batch.updated_at)
    repair()
    report = undo.undo_records(job=job(), ids=[status_record(batch).pk])
    assert not report.refused
    assert (snapshot(batch), batch.updated_at) == before  # updated_at and completed_at as before the repair
    again = repair()
    assert again.statuses.by_rule["no_active_tasks"] == 1
    assert counters_of(batch) == Counters(10, 0, 0, 6, 4)


# --- A queryset of records, a page at a time (the admin's "all N matching", undo_run) --------------


def test_undo_of_a_queryset_goes_newest_first_a_page_at_a_time_and_keeps_a_batch_with_its_lock():
    first = make_batch((10, 0, 2, 7, 3), lock_held_for=timedelta(minutes=10))
    second = make_batch((10, 2, 5, 6, 0))
    repair()
    released = lock_record(first.lock_id)
    # pages of one record, newest first: the released lock's record comes a page before its batch's
    report = undo.undo_records(job=job(**{**PARAMS, "batch_size": 1}), matching=RepairRecord.objects.all(), keep=2)
    assert report.undone_total == 3 and report.refused_total == 0 and report.with_batch_total == 1
    assert len(report.outcomes) == 2 and report.truncated
    assert counters_of(first) == Counters(10, 0, 2, 7, 3) and counters_of(second) == Counters(10, 2, 5, 6, 0)
    assert GenerationLock.objects.filter(lock_id=first.lock_id).exists()
    lock_undo = RepairRecord.objects.get(undo_of=released)
    batch_undo = RepairRecord.objects.get(undo_of=status_record(first))
    assert lock_undo.run_id == batch_undo.run_id == report.run_id  # one unit, not the lock alone first
    assert lock_undo.pk > batch_undo.pk
    run = CleanupRun.objects.get(pk=report.run_id)
    assert (run.kind, run.examined, run.outcome) == ("undo", 3, "ok")


def test_undo_run_reads_the_runs_records_as_a_queryset():
    batch = make_batch((10, 2, 5, 6, 0))
    run_id = repair().run_id
    report = undo.undo_run(job=job(**PARAMS), run_id=run_id)
    assert [o.target_id for o in report.undone] == [batch.pk]
    assert CleanupRun.objects.get(pk=report.run_id).filters == {"select_across": {"run": run_id}}
