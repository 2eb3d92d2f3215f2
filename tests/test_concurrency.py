"""Concurrency claims, proven with real concurrent PostgreSQL connections (one per thread)."""

import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.db import connection

from generation import pages, services
from generation.models import CleanupRun, GenerationStatus, RepairRecord

from .factories import counters_of, job, make_batch
from .helpers import Thread, postgres_url

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PARAMS = {"stuck_after": timedelta(hours=3), "lock_ttl": timedelta(hours=3), "batch_size": 100,
          "lock_timeout": timedelta(seconds=5), "statement_timeout": timedelta(seconds=30)}


def other_connection():
    """A second, independent connection to the test database (as a worker of the backend would have)."""
    url = postgres_url(connection.settings_dict["NAME"]).replace("postgres://", "postgresql://")
    return psycopg.connect(url, autocommit=True)


def test_a_row_held_by_another_transaction_is_skipped_not_waited_on():
    held = make_batch((4, 0, 0, 0, 0))
    free = make_batch((4, 0, 0, 0, 0))
    with other_connection() as worker:
        with worker.transaction():
            worker.execute("SELECT id FROM account_generation_status WHERE id = %s FOR UPDATE", [held.pk])
            started = time.monotonic()
            report = services.cleanup(job=job(**PARAMS))
            elapsed = time.monotonic() - started
    assert elapsed < 3, f"the run waited {elapsed:.1f}s on a held row"
    assert report.statuses.skipped_busy == 1
    assert report.statuses.repaired == 1
    assert counters_of(held).total_failed == 0  # left for the next run
    assert counters_of(free).total_failed == 4
    retry = services.cleanup(job=job(**PARAMS))
    assert (retry.statuses.repaired, counters_of(held).total_failed) == (1, 4)


def test_a_concurrent_worker_increment_is_not_lost(monkeypatch):
    """A worker's increment of a column the repair itself writes (F, for no_active_tasks) arrives while
    the repair holds the row: it must wait for the repair's commit, then land on top of it."""
    batch = make_batch((10, 0, 0, 6, 1))  # no_active_tasks: F := T - C = 4
    worker_pid = []
    waited_on_lock = []
    real_write = pages._write

    def increment():
        with other_connection() as worker:
            worker_pid.append(worker.info.backend_pid)
            worker.execute("UPDATE account_generation_status SET total_failed = total_failed + 1 WHERE id = %s",
                           [batch.pk])

    worker = Thread(increment)

    def write_while_a_worker_increments(to_write, status_pass):
        worker.start()
        with other_connection() as observer:
            for _ in range(100):  # until the worker's UPDATE is seen blocked on our row lock
                time.sleep(0.02)
                if worker_pid:
                    state = observer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                             worker_pid).fetchone()
                    if state and state[0] == "Lock":
                        waited_on_lock.append(True)
                        break
        return real_write(to_write, status_pass)

    monkeypatch.setattr(pages, "_write", write_while_a_worker_increments)
    report = services.cleanup(job=job(**PARAMS))
    worker.join_result()
    assert waited_on_lock, "the worker's UPDATE never waited on the repair's row lock"
    assert report.statuses.by_rule["no_active_tasks"] == 1
    after = counters_of(batch)
    assert after.total_failed == 5, "the worker's increment was lost"  # the repair's 4, then the worker's +1
    assert after.total_completed == 6
    record = RepairRecord.objects.get(kind="status", target_id=batch.pk)
    assert record.before["total_failed"] == 1 and record.after["total_failed"] == 4


def test_an_increment_committed_before_the_lock_is_seen_by_the_recheck(monkeypatch):
    """A worker finishes the batch between candidate selection and locking: the repair leaves it alone."""
    batch = make_batch((10, 0, 0, 9, 0))
    real_pages = services.keyset_pages

    def pages_then_worker_moves(queryset, batch_size):
        for ids in real_pages(queryset, batch_size):
            with other_connection() as worker:
                worker.execute(
                    "UPDATE account_generation_status SET total_completed = 10, status = 'completed', "
                    "completed_at = now(), updated_at = now() WHERE id = %s", [batch.pk])
            yield ids

    monkeypatch.setattr(services, "keyset_pages", pages_then_worker_moves)
    report = services.cleanup(job=job(**PARAMS))
    assert report.statuses.repaired == 0 and report.statuses.moved_on == 1
    assert counters_of(batch).total_completed == 10 and batch.status == "completed"
    assert not RepairRecord.objects.exists()


def test_two_runs_at_the_same_moment_one_works_the_other_is_skipped():
    """Two runs start together. Made to overlap whatever the scheduling: a run that has done a page waits
    (on_page) until the other run has either returned or done a page of its own. With the single-run lock
    the second returns skipped while the first waits; without it both would work at the same time."""
    batches = [make_batch((4, 0, 0, 0, 0)) for _ in range(30)]
    barrier = threading.Barrier(2)
    inside_a_page = [threading.Event(), threading.Event()]
    returned = [threading.Event(), threading.Event()]

    def run(me):
        other = 1 - me

        def overlap_with_the_other_run(kind, details):
            inside_a_page[me].set()
            deadline = time.monotonic() + 20
            while not (returned[other].is_set() or inside_a_page[other].is_set()):
                assert time.monotonic() < deadline, "the other run neither returned nor did a page"
                time.sleep(0.01)

        barrier.wait(5)
        try:
            return services.cleanup(job=job(**{**PARAMS, "batch_size": 5}), on_page=overlap_with_the_other_run)
        finally:
            returned[me].set()

    threads = [Thread(lambda: run(0)), Thread(lambda: run(1))]
    for t in threads:
        t.start()
    reports = [t.join_result() for t in threads]
    assert sorted(r.outcome for r in reports) == ["ok", "skipped"]
    [worked] = [r for r in reports if r.outcome == "ok"]
    [skipped] = [r for r in reports if r.outcome == "skipped"]
    assert worked.statuses.repaired == 30
    assert (skipped.skipped_reason, skipped.statuses.examined, skipped.statuses.repaired) == (
        "another run holds the lock", 0, 0)
    for batch in batches:
        assert RepairRecord.objects.filter(kind="status", target_id=batch.pk).count() == 1
    assert not RepairRecord.objects.filter(run_id=skipped.run_id).exists()
    runs = CleanupRun.objects.order_by("pk")
    assert sorted(run.outcome for run in runs) == ["ok", "skipped"]


def test_a_run_holding_the_lock_makes_the_next_one_skip(monkeypatch):
    make_batch((4, 0, 0, 0, 0))
    inside, release = threading.Event(), threading.Event()

    def slow_page(kind, details):
        inside.set()
        release.wait(10)

    first = Thread(lambda: services.cleanup(job=job(**PARAMS), on_page=slow_page))
    first.start()
    assert inside.wait(10)
    second = services.cleanup(job=job(**PARAMS))
    release.set()
    first_report = first.join_result()
    assert (second.outcome, second.skipped_reason) == ("skipped", "another run holds the lock")
    assert first_report.outcome == "ok" and first_report.statuses.repaired == 1
    assert GenerationStatus.objects.get().total_failed == 4
