"""Bounded cost: the scans use migration 0003's indexes, a page costs the same queries whatever it holds,
the rules' SQL writes agree with rules.py, and no lock wait or long transaction outlives one page.

The benchmark (benchmarks/, `make bench`) measures the whole command against the limit; these tests pin
the properties it depends on, fast enough for every CI run.
"""

import logging
import re
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation import expressions as ex
from generation import rules, services
from generation.conf import Windows, parse_windows
from generation.db import database_now, keyset_pages
from generation.models import CleanupRun, GenerationLock, GenerationStatus, RepairRecord
from generation.results import CleanupReport
from generation.rules import Counters, Rule

from .factories import OUTSIDE, job, make_batch, make_lock
from .simulator import backend_connection

PARAMS = {"stuck_after": timedelta(hours=3), "lock_ttl": timedelta(hours=3), "batch_size": 500,
          "lock_timeout": timedelta(seconds=5), "statement_timeout": timedelta(seconds=30)}

# --- The scans use the indexes (PostgreSQL's planner, on a table big enough to matter) -----------

TABLE_ROWS = 200_000

# One row in `every` stuck (idle 4 h and more), the last 1,000 ids healthy in flight, the rest finished
# days ago: a table that keeps every batch ever made. Built in one statement (about 2 s).
FILL_STATUS_SQL = """
INSERT INTO account_generation_status (created_at, updated_at, account_id, content_type, total_requested,
    total_queued, total_processing, total_completed, total_failed, status, completed_at, lock_id)
SELECT now() - interval '30 days', updated_at, i %% 5000, (ARRAY['video', 'story', 'slideshow'])[i %% 3 + 1], 10,
       q, p, c, 10 - c - q - p, status,
       CASE WHEN status IN ('queuing', 'processing') THEN NULL ELSE updated_at END, 'lock-' || i
FROM (SELECT i,
             CASE WHEN %(every)s > 0 AND i %% %(every)s = 0 THEN now() - interval '4 hours' - i * interval '1 second'
                  WHEN i > %(rows)s - 1000 THEN now() - interval '10 minutes'
                  ELSE now() - interval '29 days' + i * interval '1 second' END AS updated_at,
             CASE WHEN (%(every)s > 0 AND i %% %(every)s = 0) OR i > %(rows)s - 1000 THEN 1 ELSE 0 END AS q,
             CASE WHEN (%(every)s > 0 AND i %% %(every)s = 0) OR i > %(rows)s - 1000 THEN 1 ELSE 0 END AS p,
             CASE WHEN (%(every)s > 0 AND i %% %(every)s = 0) OR i > %(rows)s - 1000 THEN 5 ELSE 9 END AS c,
             CASE WHEN (%(every)s > 0 AND i %% %(every)s = 0) OR i > %(rows)s - 1000 THEN 'processing'
                  ELSE 'partial' END AS status
      FROM generate_series(1, %(rows)s) AS i) AS s
"""

FILL_LOCKS_SQL = """
INSERT INTO account_generation_locks (created_at, account_id, content_type, locked_at, lock_id)
SELECT now() - interval '1 hour', k, (ARRAY['video', 'story', 'slideshow'])[k %% 3 + 1],
       CASE WHEN k %% 100 = 0 THEN now() - interval '5 hours' ELSE now() - interval '20 minutes' END, 'lock-' || k
FROM generate_series(1, %(rows)s) AS k
"""


def fill(*, stuck_every, locks=0):
    with connection.cursor() as cursor:
        cursor.execute(FILL_STATUS_SQL, {"rows": TABLE_ROWS, "every": stuck_every})
        if locks:
            cursor.execute(FILL_LOCKS_SQL, {"rows": locks})
        # what autovacuum keeps current on a long-lived table; the planner's choice depends on it
        cursor.execute("ANALYZE account_generation_status")
        cursor.execute("ANALYZE account_generation_locks")


def page_queries(candidates, pages):
    """The SQL of the first `pages` keyset pages, exactly as db.keyset_pages sends it."""
    with CaptureQueriesContext(connection) as captured:
        iterator = keyset_pages(candidates, PARAMS["batch_size"])
        for _ in range(pages):
            next(iterator, None)
    return [query["sql"] for query in captured.captured_queries]


def plan_of(query):
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}")
        return "\n".join(line for (line,) in cursor.fetchall())


# One window for every content type, and a window per type (GENERATION_STUCK_AFTER=3h,video=8h,story=45m):
# the per-type predicate must not cost the scans their indexes.
WINDOWS = {"one-window": Windows(timedelta(hours=3)), "per-type": parse_windows("3h,video=8h,story=45m")}
IN_FLIGHT = 1_000  # the rows FILL_STATUS_SQL leaves in progress besides the stuck ones


def rows_read(plan, index):
    """How many rows the plan's scan of `index` read: the rows it returned and those its filter dropped."""
    [scan] = [line for line in plan.split("->") if index in line]
    returned = int(re.search(r"actual time=\S+ rows=(\d+)", scan).group(1))
    removed = re.search(r"Rows Removed by Filter: (\d+)", scan)
    return returned + (int(removed.group(1)) if removed else 0)


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("windows", list(WINDOWS.values()), ids=list(WINDOWS))
@pytest.mark.parametrize("stuck_every", [10, 250, 0], ids=["backlog-20000", "backlog-800", "quiet"])
def test_candidate_pages_scan_the_partial_index_not_the_table(stuck_every, windows):
    fill(stuck_every=stuck_every)
    cutoffs = windows.cutoffs(database_now())
    queries = page_queries(services.stuck_candidates(cutoffs=cutoffs), pages=3)
    first, later = queries[0], queries[-1]
    if stuck_every:
        assert len(queries) == 3 and '"id" > 0' not in later, "the third query is a later keyset page"
    for query in (first, later):
        plan = plan_of(query)
        assert "agstatus_in_progress_idx" in plan, plan
        assert "Seq Scan on account_generation_status" not in plan, plan
    if not stuck_every:
        # a quiet run reads the rows in flight and nothing else, whatever the windows
        assert rows_read(plan_of(first), "agstatus_in_progress_idx") == IN_FLIGHT


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("windows", list(WINDOWS.values()), ids=list(WINDOWS))
def test_expired_lock_pages_scan_the_locked_at_index(windows):
    fill(stuck_every=0, locks=TABLE_ROWS)
    cutoffs = windows.cutoffs(database_now())
    first, *_, later = page_queries(services.expired_lock_candidates(cutoffs=cutoffs), pages=3)
    for query in (first, later):
        plan = plan_of(query)
        assert "aglocks_locked_at_idx" in plan, plan
        assert "Seq Scan" not in plan, plan
    # one lock in 100 is 5 h old, the rest 20 min: only those (fewer per-type, video's 8 h spares its own)
    # are read, through the index's range up to the shortest window's cutoff
    expired = GenerationLock.objects.filter(ex.expired(cutoffs)).count()
    assert expired == (TABLE_ROWS // 100 if windows.default and not windows.by_type else
                       sum(1 for k in range(100, TABLE_ROWS + 1, 100) if k % 3 + 1 != 1))
    assert rows_read(plan_of(first), "aglocks_locked_at_idx") <= TABLE_ROWS // 100 + 1


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_check_for_unjudgeable_batches_scans_indexes_not_the_table():
    fill(stuck_every=0)
    report = CleanupReport(trigger="command", dry_run=True, now=database_now())
    with CaptureQueriesContext(connection) as captured:
        services._report_anomalies(report)
    unknown, never = [query["sql"] for query in captured.captured_queries]
    assert "agstatus_unknown_status_idx" in plan_of(unknown)
    assert "agstatus_in_progress_idx" in plan_of(never)
    for query in (unknown, never):
        assert "Seq Scan on account_generation_status" not in plan_of(query)


# --- A page costs the same queries whatever it holds ---------------------------------------------

# all_accounted, no_active_tasks, counter_overflow, stalled (failed: past the fail-stalled window), then
# the same rules again with other columns to change: every rule is in a page of five
SHAPES = [(10, 0, 2, 7, 3), (4, 0, 0, 0, 0), (10, 2, 5, 6, 0), (10, 1, 1, 3, 2), (10, 1, 0, 9, 3),
          (10, 0, 0, 6, 1), (10, 3, 0, 7, 2)]
OVERFLOWING = {(10, 2, 5, 6, 0), (10, 3, 0, 7, 2)}  # the only rule that releases no lock


def make_page(size):
    """`size` stuck batches cycling through every rule (stalled ones past the fail-stalled window), each
    holding a lock, and as many expired locks of no batch."""
    now = database_now()
    GenerationStatus.objects.bulk_create(
        GenerationStatus(account_id=n, content_type="video", status="processing", updated_at=now - timedelta(hours=5),
                         lock_id=f"batch-{n}", **Counters(*SHAPES[n % len(SHAPES)]).as_dict())
        for n in range(size))
    GenerationLock.objects.bulk_create(
        [GenerationLock(account_id=n, content_type="video", locked_at=now - timedelta(minutes=10), lock_id=f"batch-{n}")
         for n in range(size)]
        + [GenerationLock(account_id=n, content_type="story", locked_at=now - OUTSIDE, lock_id=f"other-{n}")
           for n in range(size)])


@pytest.mark.django_db
# The real run on PostgreSQL, where production runs (and where the page's statements are the ones measured).
@pytest.mark.parametrize("dry_run", [pytest.param(False, marks=pytest.mark.postgres), True], ids=["run", "dry-run"])
def test_a_page_of_200_costs_the_queries_of_a_page_of_5(dry_run):
    params = {**PARAMS, "fail_stalled_after": timedelta(hours=4)}
    counts = {}
    for size in (5, 200):
        GenerationStatus.objects.all().delete()
        GenerationLock.objects.all().delete()
        make_page(size)
        with CaptureQueriesContext(connection) as captured:
            report = services.cleanup(job=job(**params), dry_run=dry_run)
        assert report.statuses.examined == size and report.locks.expired == size
        assert report.statuses.repaired == size
        counts[size] = [query["sql"].split(None, 1)[0] for query in captured.captured_queries]
    assert counts[5] == counts[200], "the number or kind of queries depends on the page's size"
    writes = [verb for verb in counts[200] if verb in ("UPDATE", "DELETE", "INSERT", "COPY")]
    if not dry_run:
        # one UPDATE per rule (4) + the run row's; the released and the expired locks; the records of the
        # repaired batches, of the locks released with them and of the expired locks, + the run row's INSERT
        assert writes.count("UPDATE") == len(rules.REPAIRS) + 1
        assert writes.count("DELETE") == 2
        assert writes.count("INSERT") == 3 + 1 and "COPY" not in writes
        records = RepairRecord.objects.filter(run_id=report.run_id)
        assert records.filter(kind="status").count() == 200
        released = sum(1 for n in range(200) if SHAPES[n % len(SHAPES)] not in OVERFLOWING)
        assert records.filter(kind="lock").count() == released + 200
    else:
        assert writes == []


# --- The rules' SQL writes say what rules.py says --------------------------------------------------

BIGINT_MAX = 2**63 - 1
counter = st.one_of(st.integers(0, 12), st.integers(0, 2**40), st.integers(BIGINT_MAX - 20, BIGINT_MAX))
counters = st.one_of(
    st.builds(Counters, counter, counter, counter, counter, counter),
    # close to the boundaries between the rules: small totals, sums near T
    st.builds(Counters, st.integers(0, 6), st.integers(0, 4), st.integers(0, 4), st.integers(0, 6),
              st.integers(0, 6)),
    st.builds(Counters, st.integers(-1, 3) | st.none(), st.integers(-1, 3) | st.none(), st.integers(-1, 3),
              st.integers(-1, 3), st.integers(-1, 3) | st.none()).filter(lambda c: c.total_requested is not None),
)


def expected_after(before, status, fail):
    """The two admin passes the test runs, through rules.py: FORCE (every rule but stalled_failed), then
    FAIL_STALLED on the rows flagged `fail`. Returns the final counters and status, and the rules applied."""
    applied = []
    decision = rules.decide(before, status)
    if decision.repairs:
        applied.append(decision.rule)
        before, status = decision.after, decision.status
    if fail:
        decision = rules.decide(before, status, fail_stalled=True)
        if decision.rule == Rule.STALLED_FAILED:
            applied.append(decision.rule)
            before, status = decision.after, decision.status
    return before, status, applied


def check_the_real_path_against_rules(batches):
    """Through the real path (lock, decide with rules.py, one UPDATE per rule computed in SQL, records): every
    row ends as rules.decide() says, and its records' `after` is what the row holds."""
    GenerationStatus.objects.all().delete()
    idle_since = database_now() - timedelta(hours=5)
    rows = GenerationStatus.objects.bulk_create([
        GenerationStatus(account_id=n, content_type="video", status=status, updated_at=idle_since, **c.as_dict())
        for n, (c, status, _) in enumerate(batches)])
    services.repair_selected(job=job(), ids=[row.pk for row in rows], mode=services.Mode.FORCE)
    services.repair_selected(job=job(), ids=[row.pk for row, (*_, fail) in zip(rows, batches, strict=True) if fail],
                             mode=services.Mode.FAIL_STALLED)
    stored = {row.pk: row for row in GenerationStatus.objects.filter(pk__in=[row.pk for row in rows])}
    records = {}
    for record in RepairRecord.objects.filter(kind="status").order_by("id"):
        records.setdefault(record.target_id, []).append(record)
    for row, (before, status, fail) in zip(rows, batches, strict=True):
        counters, final_status, applied = expected_after(before, status, fail)
        row = stored[row.pk]
        assert (Counters.of(row), row.status) == (counters, final_status), (before, status, fail, applied)
        assert (row.completed_at is not None) == (final_status not in rules.IN_PROGRESS)
        assert [record.rule for record in records.get(row.pk, [])] == applied
        if applied:
            after = records[row.pk][-1].after
            assert {name: after[name] for name in (*Counters.of(row).as_dict(), "status")} == {
                **Counters.of(row).as_dict(), "status": row.status}


@pytest.mark.django_db
def test_the_sql_writes_agree_with_rules_on_every_small_batch(monkeypatch):
    """Every combination of T in 0..4 and Q, P, C, F in 0..3, both statuses, failed when stalled or not:
    the boundaries between the rules are all in there."""
    monkeypatch.setattr(logging.getLogger("generation"), "level", logging.WARNING)  # 10,000 lines: just slow
    small = range(4)
    check_the_real_path_against_rules([
        (Counters(t, q, p, c, f), status, fail)
        for t in range(5) for q in small for p in small for c in small for f in small
        for status in rules.IN_PROGRESS for fail in (False, True)])


@pytest.mark.django_db
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(batches=st.lists(st.tuples(counters, st.sampled_from(rules.IN_PROGRESS), st.booleans()), min_size=1,
                        max_size=60))
def test_the_sql_writes_leave_exactly_what_rules_decide(batches):
    """Large counters up to the bigint limit (no sum may overflow in SQL), NULLs and negatives (corrupt:
    never written), in random mixes."""
    check_the_real_path_against_rules(batches)


# --- No lock wait and no transaction outlives one page ---------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_table_lock_on_the_locks_table_times_out_each_blocked_page_and_the_run_goes_on(settings):
    """The backend (a migration, a DBA) holds account_generation_locks in EXCLUSIVE mode: reads go on, row
    locks and writes wait. The page that must release locks waits lock_timeout, is rolled back whole and
    reported; the next page, which releases none, is repaired; the expired-lock page times out too; the
    run ends with errors instead of hanging, and the next run finishes the job."""
    releasing = [make_batch((4, 0, 0, 0, 0), lock_held_for=timedelta(minutes=10)) for _ in range(3)]
    overflowing = [make_batch((10, 2, 5, 6, 0)) for _ in range(3)]
    expired = make_lock(account_id=9_999, content_type="story", held_for=OUTSIDE)
    settings.CLEANUP_LOCK_TIMEOUT = "0.3s"
    with backend_connection(connection) as backend, backend.transaction():
        backend.execute("LOCK TABLE account_generation_locks IN EXCLUSIVE MODE")
        started = time.monotonic()
        report = services.cleanup(job=job(batch_size=3), trigger="command")
        elapsed = time.monotonic() - started

    assert 0.55 < elapsed < 3, f"two pages should each wait 0.3 s, the run took {elapsed:.1f}s"
    assert report.outcome == "errors"
    status_error, lock_error = report.errors
    assert status_error.startswith(f"status page #{releasing[0].pk}..#{releasing[-1].pk}: rolled back, left for "
                                   "the next run (canceling statement due to lock timeout")
    assert lock_error.startswith(f"lock page #{expired.pk}..#{expired.pk}: rolled back, left for the next run "
                                 "(canceling statement due to lock timeout")
    assert (report.statuses.failed_batches, report.locks.failed_batches) == (1, 1)
    assert report.statuses.by_rule == {Rule.COUNTER_OVERFLOW: 3}
    for batch in releasing:
        batch.refresh_from_db()
        assert (batch.status, batch.total_failed) == ("queuing", 0)
    assert GenerationLock.objects.count() == 4
    assert set(RepairRecord.objects.values_list("target_id", flat=True)) == {b.pk for b in overflowing}
    run = CleanupRun.objects.get(pk=report.run_id)
    assert (run.outcome, run.repaired_counter_overflow) == ("errors", 3) and "lock timeout" in run.error

    retry = services.cleanup(job=job(batch_size=3), trigger="command")
    assert (retry.outcome, retry.statuses.repaired, retry.statuses.locks_released, retry.locks.removed) == (
        "ok", 3, 3, 1)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_access_exclusive_lock_on_the_status_table_bounds_the_candidate_selection_too():
    """ACCESS EXCLUSIVE (an ALTER TABLE on the backend's table) blocks even the candidate selection, which
    runs between the pages' transactions: it times out after lock_timeout instead of waiting forever,
    the status pass is left for the next run, reported, and the run goes on to the locks."""
    batch = make_batch((4, 0, 0, 0, 0), lock_held_for=timedelta(minutes=10))
    make_lock(account_id=9_999, content_type="story", held_for=OUTSIDE)
    params = {**PARAMS, "lock_timeout": timedelta(milliseconds=300)}
    with backend_connection(connection) as backend, backend.transaction():
        backend.execute("LOCK TABLE account_generation_status IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        report = services.cleanup(job=job(**params))
        elapsed = time.monotonic() - started

    assert elapsed < 3, f"the run waited {elapsed:.1f}s"
    anomaly_error, status_error, lock_error = report.errors
    assert anomaly_error.startswith("the check for unjudgeable batches: failed, left for the next run (canceling "
                                    "statement due to lock timeout")
    assert status_error.startswith("status pages after #0: could not select the next page, left for the next run "
                                   "(canceling statement due to lock timeout")
    # the lock page names the batch that refers to each lock: it reads the status table, so it waits too
    assert lock_error.startswith("lock page #") and "lock timeout" in lock_error
    assert report.statuses.failed_batches == 2 and report.locks.failed_batches == 1
    assert GenerationLock.objects.count() == 2 and not RepairRecord.objects.exists()

    retry = services.cleanup(job=job(**params))
    assert (retry.outcome, retry.statuses.repaired, retry.locks.removed) == ("ok", 1, 1)
    batch.refresh_from_db()
    assert batch.status == "failed"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_each_page_commits_and_releases_its_row_locks_before_the_next_one_starts():
    batches = [make_batch((4, 0, 0, 0, 0)) for _ in range(6)]
    seen = []

    def after_page(kind, details):
        # between two pages, another session can take every row the last page locked, at once
        ids = [detail.id for detail in details]
        with backend_connection(connection) as other, other.transaction():
            locked = other.execute("SELECT id FROM account_generation_status WHERE id = ANY(%s) "
                                   "FOR UPDATE NOWAIT", [ids]).fetchall()
        seen.append((kind, len(ids), len(locked)))

    report = services.cleanup(job=job(**{**PARAMS, "batch_size": 2}), on_page=after_page)
    assert report.statuses.repaired == 6
    assert seen == [("statuses", 2, 2)] * 3
    assert {b.pk for b in batches} == set(RepairRecord.objects.values_list("target_id", flat=True))
