"""generation.selectors: the admin's list, filter and search queries."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generation import selectors, services, undo
from generation.conf import Windows
from generation.db import database_now
from generation.models import CleanupRun, GenerationLock, GenerationStatus, RepairRecord
from generation.rules import STUCK_RULES, Rule

from .factories import job, make_batch

pytestmark = pytest.mark.django_db

STUCK = timedelta(hours=3, minutes=1)
FRESH = timedelta(hours=2, minutes=59)
WINDOW = timedelta(hours=3)


def make(t, q, p, c, f, *, status="processing", idle=STUCK, account=1, lock_id=None):
    return GenerationStatus(
        account_id=account, content_type="video", status=status, total_requested=t, total_queued=q,
        total_processing=p, total_completed=c, total_failed=f,
        updated_at=None if idle is None else timezone.now() - idle, lock_id=lock_id)


def test_filter_stuck_by_rule_at_the_window_edge():
    GenerationStatus.objects.bulk_create([
        make(10, 0, 2, 7, 3), make(10, 0, 2, 7, 3, idle=FRESH), make(10, 0, 0, 6, 1), make(10, 2, 5, 6, 0),
        make(10, 1, 1, 3, 2), make(3, 0, -1, 2, 0), make(3, 0, 0, 3, 0, status="completed"),
    ])
    qs, window = GenerationStatus.objects.all(), {"now": timezone.now(), "stuck_after": Windows(WINDOW)}
    assert selectors.filter_stuck(qs, **window).count() == 5
    assert {rule: selectors.filter_stuck(qs, **window, rule=rule).count() for rule in STUCK_RULES} == {
        Rule.CORRUPT: 1, Rule.ALL_ACCOUNTED: 1, Rule.NO_ACTIVE_TASKS: 1, Rule.COUNTER_OVERFLOW: 1, Rule.STALLED: 1}
    assert selectors.filter_not_stuck(qs, **window).count() == 2


def test_the_list_verdict_is_the_diagnosis_of_each_row():
    GenerationStatus.objects.bulk_create([
        make(10, 0, 2, 7, 3, account=1), make(10, 0, 2, 7, 3, idle=FRESH, account=2), make(3, 0, -1, 2, 0, account=3),
        make(3, 0, 0, 3, 0, status="completed", account=4), make(3, 1, 0, 0, 0, idle=None, account=5),
        make(3, 1, 0, 0, 0, status="paused", account=6)])
    rows = selectors.statuses_for_list(GenerationStatus.objects.order_by("account_id"), now=timezone.now(),
                                       stuck_after=Windows(WINDOW))
    assert [row.verdict for row in rows] == ["all_accounted", "healthy", "corrupt", "finished", "never_updated",
                                             "unknown_status"]


@pytest.mark.parametrize("term", ["{id}", "#{id}", " #{id} "])
def test_a_batch_is_found_by_its_id_as_the_messages_write_it(term):
    GenerationStatus.objects.bulk_create([make(4, 0, 0, 0, 0, account=7000 + n) for n in range(3)])
    wanted = GenerationStatus.objects.order_by("id")[1]
    found = selectors.search_statuses(GenerationStatus.objects.all(), term.format(id=wanted.pk))
    assert list(found) == [wanted]


def test_a_batch_is_found_by_account_and_by_lock_id_and_odd_terms_find_nothing():
    GenerationStatus.objects.bulk_create([make(4, 0, 0, 0, 0, account=4242, lock_id="L-1"),
                                          make(4, 0, 0, 0, 0, account=1, lock_id="L-2")])
    qs = GenerationStatus.objects.all()
    assert [b.account_id for b in selectors.search_statuses(qs, "4242")] == [4242]
    assert [b.lock_id for b in selectors.search_statuses(qs, "L-2")] == ["L-2"]
    for odd in ("²", "#", "-1", str(2**63), "4242x"):
        assert not selectors.search_statuses(qs, odd).exists(), odd


def test_a_lock_is_found_by_its_id_account_or_lock_id():
    now = timezone.now()
    first = GenerationLock.objects.create(account_id=31, content_type="video", lock_id="AAA", locked_at=now)
    GenerationLock.objects.create(account_id=32, content_type="video", lock_id="BBB", locked_at=now)
    qs = GenerationLock.objects.all()
    assert list(selectors.search_locks(qs, f"#{first.pk}")) == [first]
    assert [lock.lock_id for lock in selectors.search_locks(qs, "32")] == ["BBB"]
    assert [lock.lock_id for lock in selectors.search_locks(qs, "AAA")] == ["AAA"]


@pytest.mark.postgres
def test_the_locks_list_the_release_preview_and_the_cleanup_report_name_the_same_batch():
    """A lock named by two batches, one never updated (NULL updated_at, which PostgreSQL sorts last ascending
    and first descending): every place names the batch that moved last."""
    now = database_now()
    common = {"account_id": 5, "content_type": "video", "total_requested": 4, "total_queued": 1}
    moved = GenerationStatus.objects.create(status="processing", updated_at=now - timedelta(hours=4), lock_id="L",
                                            **common)
    GenerationStatus.objects.create(status="processing", updated_at=None, lock_id="L", **common)
    lock = GenerationLock.objects.create(account_id=5, content_type="video", lock_id="L",
                                         locked_at=now - timedelta(hours=5))
    listed = selectors.locks_for_list(GenerationLock.objects.filter(pk=lock.pk), now=now, lock_ttl=job().lock_ttl).get()
    preview = services.release_locks(job=job(), ids=[lock.pk], dry_run=True).locks.details[0]
    report = services.cleanup(job=job(), dry_run=True, only="locks").locks.details[0]
    assert listed.batch_id == preview.batch_id == report.batch_id == moved.pk


# --- Select-across totals and the history's searches -----------------------------------------------


def test_verdict_totals_count_the_selection_by_the_actions_verdict_and_the_lists():
    GenerationStatus.objects.bulk_create([
        make(10, 0, 2, 7, 3), make(10, 0, 2, 7, 3), make(10, 0, 2, 7, 3, idle=FRESH), make(10, 1, 1, 3, 2),
        make(10, 1, 1, 3, 2, idle=FRESH), make(3, 0, 0, 3, 0, status="completed")])
    now = timezone.now()
    forced, _applies = services.judgement_for(services.Mode.FORCE, job=job(), now=now)
    totals = selectors.verdict_totals(GenerationStatus.objects.all(), forced, now=now, stuck_after=Windows(WINDOW))
    assert totals == {("all_accounted", "all_accounted"): 2, ("all_accounted", "healthy"): 1,
                      ("stalled", "stalled"): 1, ("stalled", "healthy"): 1, ("finished", "finished"): 1}


def test_lock_totals_count_expired_locks_and_those_of_batches_still_moving():
    now = timezone.now()
    GenerationStatus.objects.bulk_create([make(10, 1, 1, 3, 2, idle=timedelta(minutes=5), lock_id="moving"),
                                          make(10, 1, 1, 3, 2, idle=STUCK, lock_id="stuck")])
    for n, (lock_id, held) in enumerate((("moving", 4), ("stuck", 5), ("young", 1), ("orphan", 6))):
        GenerationLock.objects.create(account_id=n, content_type="video", lock_id=lock_id,
                                      locked_at=now - timedelta(hours=held))
    totals = selectors.lock_totals(GenerationLock.objects.all(), now=now, lock_ttl=Windows(WINDOW),
                                   stuck_after=Windows(WINDOW))
    assert totals == {"count": 4, "expired": 3, "of_moving_batches": 1}


def test_record_totals_count_by_rule_and_what_an_undo_must_refuse(admin_user):
    batches = [make_batch((10, 2, 5, 6, 0)) for _ in range(3)]
    services.repair_selected(job=job(), ids=[b.pk for b in batches], actor=admin_user)
    first = RepairRecord.objects.order_by("id").first()
    undo.undo_records(job=job(), ids=[first.pk])
    totals = selectors.record_totals(RepairRecord.objects.all())
    assert totals == {"by_rule": {"counter_overflow": 3, "undo": 1}, "undos": 1, "undone_already": 1, "count": 4}


def test_runs_are_found_by_id_and_records_by_batch_or_account(admin_user):
    batches = [make_batch((10, 2, 5, 6, 0), account_id=900 + n) for n in range(2)]
    run = services.repair_selected(job=job(), ids=[b.pk for b in batches], actor=admin_user).run_id
    assert list(selectors.search_runs(CleanupRun.objects.all(), f"#{run}").values_list("pk", flat=True)) == [run]
    assert not selectors.search_runs(CleanupRun.objects.all(), "admin").exists()
    records = RepairRecord.objects.all()
    assert [r.target_id for r in selectors.search_records(records, f"#{batches[0].pk}")] == [batches[0].pk]
    assert [r.account_id for r in selectors.search_records(records, "901")] == [901]
    assert not selectors.search_records(records, "x").exists()


def test_first_ids_and_count_rows_read_a_selection_without_loading_it():
    GenerationStatus.objects.bulk_create([make(4, 0, 0, 0, 0, account=n) for n in range(5)])
    ids = sorted(GenerationStatus.objects.values_list("pk", flat=True))
    qs = GenerationStatus.objects.order_by("-account_id")
    assert selectors.first_ids(qs, 2) == ids[:2]
    assert selectors.first_ids(qs, 2, newest_first=True) == ids[:-3:-1]
    assert selectors.count_rows(qs) == 5
