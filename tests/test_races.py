"""Races between the cleanup and the backend (or a second entry point), each forced at the exact moment.

The backend's writes come from another connection with the simulator's SQL (the backend's own statements);
the moment is forced by wrapping one step of services, so each race happens on every run, not by luck.
"""

import json
import threading
import time
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from generation import pages, services
from generation.models import CleanupRun, GenerationLock, GenerationStatus, RepairRecord
from generation.rules import Counters

from .factories import OUTSIDE, counters_of, job, make_batch, make_lock
from .helpers import Thread
from .simulator import SQL, backend_connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PARAMS = {"stuck_after": timedelta(hours=3), "lock_ttl": timedelta(hours=3), "batch_size": 100,
          "lock_timeout": timedelta(seconds=5), "statement_timeout": timedelta(seconds=30)}


def before_page(monkeypatch, model, backend_step):
    """Run backend_step() once, after the cleanup selected a page of `model` rows and before it locks them."""
    real = services.keyset_pages
    ran = []

    def pages(queryset, batch_size):
        for ids in real(queryset, batch_size):
            if queryset.model is model and not ran:
                backend_step()
                ran.append(ids)
            yield ids

    monkeypatch.setattr(services, "keyset_pages", pages)
    return ran


def test_a_batch_the_backend_finishes_between_selection_and_locking_is_not_touched(monkeypatch):
    # one task left in processing: with a fail-stalled window the cleanup would fail it (F := 1, partial)
    racing = make_batch((10, 0, 1, 9, 0), lock_held_for=timedelta(minutes=10))
    control = make_batch((4, 0, 0, 0, 0), lock_held_for=timedelta(minutes=10))  # same page, repaired

    def backend_completes_and_finishes():
        with backend_connection(connection) as backend:
            total, completed, failed, status, lock_id = backend.execute(SQL["complete"], [racing.pk]).fetchone()
            assert completed + failed == total
            with backend.transaction():
                backend.execute(SQL["finish"], [racing.pk])
                assert backend.execute(SQL["release"], [lock_id]).rowcount == 1

    ran = before_page(monkeypatch, GenerationStatus, backend_completes_and_finishes)
    report = services.cleanup(job=job(**{**PARAMS, "fail_stalled_after": timedelta(hours=3)}))

    assert ran == [[racing.pk, control.pk]]
    assert (report.statuses.moved_on, report.statuses.repaired, report.statuses.locks_released) == (1, 1, 1)
    row = GenerationStatus.objects.get(pk=racing.pk)
    assert (Counters.of(row), row.status) == (Counters(10, 0, 0, 10, 0), "completed")  # as the backend left it
    with backend_connection(connection) as backend:
        backend_time = backend.execute("SELECT updated_at, completed_at FROM account_generation_status "
                                       "WHERE id = %s", [racing.pk]).fetchone()
    assert (row.updated_at, row.completed_at) == backend_time
    assert not RepairRecord.objects.filter(target_id=racing.pk, kind="status").exists()
    assert not RepairRecord.objects.filter(kind="lock", before__lock_id=racing.lock_id).exists()
    assert counters_of(control) == Counters(4, 0, 0, 0, 4)
    assert RepairRecord.objects.filter(kind="lock", before__lock_id=control.lock_id).count() == 1


def _retake_in_place(lock, new_lock_id):
    return ("UPDATE account_generation_locks SET lock_id = %s, locked_at = now(), created_at = now() "
            "WHERE id = %s", [new_lock_id, lock.pk])


@pytest.mark.parametrize("how", ["expired lock re-taken in place", "expired lock released and re-taken as a new row",
                                 "batch's lock released and re-taken by a new batch"])
def test_a_lock_released_and_retaken_between_selection_and_deletion_survives(monkeypatch, how):
    account, new_lock_id = 77, str(uuid.uuid4())
    if how == "batch's lock released and re-taken by a new batch":
        batch = make_batch((4, 0, 0, 0, 0), account_id=account, lock_held_for=timedelta(minutes=10))
        old = GenerationLock.objects.get(lock_id=batch.lock_id)
        model = GenerationStatus  # the lock is released with the batch the status pass finishes
    else:
        batch = None
        old = make_lock(account_id=account, held_for=OUTSIDE)
        model = GenerationLock
    stale = make_lock(account_id=account + 1, held_for=OUTSIDE)  # a neighbour that really expired

    def backend_retakes():
        with backend_connection(connection) as backend, backend.transaction():
            if how == "expired lock re-taken in place":
                backend.execute(*_retake_in_place(old, new_lock_id))
            else:
                backend.execute(SQL["release"], [old.lock_id])
                backend.execute(SQL["create_lock"], [account, old.content_type, new_lock_id])

    ran = before_page(monkeypatch, model, backend_retakes)
    report = services.cleanup(job=job(**PARAMS))

    assert ran, "the backend step never ran"
    survivor = GenerationLock.objects.get(account_id=account, content_type=old.content_type)
    assert survivor.lock_id == new_lock_id and survivor.locked_at > old.locked_at
    assert (survivor.pk == old.pk) is (how == "expired lock re-taken in place")
    assert not RepairRecord.objects.filter(kind="lock", before__lock_id=new_lock_id).exists()
    assert not RepairRecord.objects.filter(kind="lock", before__lock_id=old.lock_id).exists()  # the backend's delete
    assert not GenerationLock.objects.filter(pk=stale.pk).exists()
    assert RepairRecord.objects.filter(kind="lock", target_id=stale.pk, rule="expired_lock").count() == 1
    if batch is not None:
        assert counters_of(batch) == Counters(4, 0, 0, 0, 4)  # the batch is repaired; only its lock is not ours
        assert report.statuses.locks_released == 0
    assert report.locks.removed == 1


def test_a_row_held_for_update_by_another_connection_is_skipped_not_waited_on():
    held_batch = make_batch((4, 0, 0, 0, 0))
    free_batch = make_batch((4, 0, 0, 0, 0))
    held_lock = make_lock(account_id=901, held_for=OUTSIDE)
    free_lock = make_lock(account_id=902, held_for=OUTSIDE)
    with backend_connection(connection) as backend, backend.transaction():
        backend.execute("SELECT id FROM account_generation_status WHERE id = %s FOR UPDATE", [held_batch.pk])
        backend.execute("SELECT id FROM account_generation_locks WHERE id = %s FOR UPDATE", [held_lock.pk])
        started = time.monotonic()
        report = services.cleanup(job=job(**PARAMS))  # lock_timeout 5 s: a wait would show
        admin = services.repair_selected(job=job(), ids=[held_batch.pk], mode=services.Mode.FORCE)
        by_hand = services.release_locks(job=job(), ids=[held_lock.pk])
        elapsed = time.monotonic() - started

    assert elapsed < 2, f"waited {elapsed:.1f}s on held rows"
    assert (report.statuses.skipped_busy, report.locks.skipped_busy) == (1, 1)
    assert (report.statuses.repaired, report.locks.removed, report.outcome) == (1, 1, "ok")
    assert (admin.statuses.skipped_busy, admin.statuses.repaired) == (1, 0)
    assert (by_hand.locks.skipped_busy, by_hand.locks.removed) == (1, 0)
    assert CleanupRun.objects.get(pk=report.run_id).skipped_busy == 2
    assert counters_of(held_batch) == Counters(4, 0, 0, 0, 0) and counters_of(free_batch) == Counters(4, 0, 0, 0, 4)
    assert GenerationLock.objects.filter(pk=held_lock.pk).exists()
    assert not GenerationLock.objects.filter(pk=free_lock.pk).exists()
    assert not RepairRecord.objects.filter(target_id__in=[held_batch.pk, held_lock.pk]).exists()

    retry = services.cleanup(job=job(**PARAMS))  # the backend let go: the next run takes them
    assert (retry.statuses.repaired, retry.locks.removed, retry.statuses.skipped_busy) == (1, 1, 0)


def test_admin_action_and_command_on_the_same_rows_at_once_repair_each_row_once(monkeypatch, settings):
    settings.CLEANUP_BATCH_SIZE = "20"
    shapes = [(4, 0, 0, 0, 0), (10, 0, 2, 7, 3), (10, 2, 5, 6, 0)] * 20
    batches = [make_batch(shape, lock_held_for=timedelta(minutes=10)) for shape in shapes]
    ids = [b.pk for b in batches]

    # Force the overlap: whoever writes first keeps its page's rows locked until the other has processed
    # a page of the same rows (and found them busy).
    holder, holder_lock = [], threading.Lock()
    other_paged = threading.Event()
    real_write, real_page = pages._write, services.status_page

    def write(*args, **kwargs):
        with holder_lock:
            first = not holder
            if first:
                holder.append(threading.get_ident())
        if first:
            assert other_paged.wait(10), "the other entry point never reached the locked rows"
        return real_write(*args, **kwargs)

    def page(*args, **kwargs):
        result = real_page(*args, **kwargs)
        if holder and holder[0] != threading.get_ident():
            other_paged.set()
        return result

    monkeypatch.setattr(pages, "_write", write)
    monkeypatch.setattr(services, "status_page", page)
    start = threading.Barrier(2)

    def command():
        start.wait(10)
        out = StringIO()
        call_command("cleanup_stuck_generation", "--json", "--batch-size", "20", "--only", "statuses", stdout=out)
        return json.loads(out.getvalue())

    def admin_action():
        start.wait(10)
        return services.repair_selected(job=job(), ids=ids, mode=services.Mode.SCHEDULED).as_dict()

    threads = [Thread(command), Thread(admin_action)]
    for thread in threads:
        thread.start()
    by_command, by_admin = (thread.join_result() for thread in threads)

    assert by_command["statuses"]["repaired"] + by_admin["statuses"]["repaired"] == 60
    assert by_command["statuses"]["skipped_busy"] + by_admin["statuses"]["skipped_busy"] > 0, "no overlap happened"
    for batch in batches:
        assert RepairRecord.objects.filter(kind="status", target_id=batch.pk).count() == 1, f"batch #{batch.pk}"
    expected_releases = sum(1 for shape in shapes if shape != (10, 2, 5, 6, 0))
    assert RepairRecord.objects.filter(kind="lock").count() == expected_releases
    assert not GenerationLock.objects.filter(lock_id__in=[b.lock_id for b in batches
                                                          if counters_of(b).total_queued == 0]).exists()
    assert {tuple(counters_of(b).as_dict().values()) for b in batches} == {
        (4, 0, 0, 0, 4), (10, 0, 0, 7, 3), (10, 2, 2, 6, 0)}
