"""generation.metrics and /metrics: the same stuck classification as the health page, the run history of
the job alone, the audit counters equal to the records, who may read it, one line when the database is
down, and a scrape that costs what is stuck, not the size of the table (EXPLAIN on 200,000 rows)."""

import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.dataset import RUN_HISTORY_SQL, YEAR_OF_RUNS
from generation import health, metrics, rules, services, undo
from generation.db import database_name, database_now
from generation.models import CleanupRun, Outcome, RecordRule, RepairRecord, RunKind, Trigger

from .factories import INSIDE, OUTSIDE, job, make_batch, make_lock
from .simulator import backend_connection
from .test_performance import TABLE_ROWS, fill, plan_of

TOKEN = "a-metrics-token-for-tests-only"


@pytest.fixture(autouse=True)
def metrics_settings(settings):
    settings.SECURE_SSL_REDIRECT = False
    settings.METRICS_TOKEN = TOKEN
    settings.GENERATION_STUCK_AFTER = "3h"
    settings.GENERATION_LOCK_TTL = "3h"
    settings.GENERATION_FAIL_STALLED_AFTER = ""
    settings.CLEANUP_SCHEDULE = "*/30 * * * *"


def samples(body: bytes | str):
    """{(name, frozenset(labels)): value} of an exposition."""
    text = body.decode() if isinstance(body, bytes) else body
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found, name, **labels):
    return found[(name, frozenset(labels.items()))]


def scrape(client, **headers):
    return client.get("/metrics", headers=headers)


def with_token(client):
    return scrape(client, Authorization=f"Bearer {TOKEN}")


def seed_every_rule():
    """Stuck batches of every rule across two content types, fresh ones on both sides of the window, an
    unknown status, a batch never updated, expired locks (one of a batch still moving)."""
    make_batch((10, 0, 2, 7, 3))  # all_accounted
    make_batch((10, 0, 2, 7, 3), content_type="story", idle=timedelta(hours=30))
    make_batch((10, 0, 2, 7, 3), idle=INSIDE)  # not stuck yet
    make_batch((10, 0, 0, 6, 1), content_type="story")  # no_active_tasks
    make_batch((10, 2, 5, 6, 0))  # counter_overflow
    make_batch((10, 1, 1, 3, 2), content_type="story", idle=timedelta(hours=5))  # stalled
    make_batch((3, 0, -1, 2, 0))  # corrupt
    make_batch((3, 0, 0, 3, 0), status="completed")  # finished
    make_batch((3, 0, 0, 1, 0), status="paused")  # unknown status
    never = make_batch((5, 1, 1, 1, 0))
    type(never).objects.filter(pk=never.pk).update(updated_at=None)
    make_batch((10, 3, 2, 1, 0), idle=timedelta(minutes=5), lock_held_for=timedelta(hours=4))  # moving, lock expired
    make_lock(account_id=9_001, content_type="story", held_for=OUTSIDE)
    make_lock(account_id=9_002, content_type="story", held_for=INSIDE)


# --- The same classification as the admin ---------------------------------------------------------


@pytest.mark.django_db
def test_the_stuck_counts_by_rule_equal_the_health_page_and_split_by_content_type():
    seed_every_rule()
    state = metrics.read_state()
    overview = health.overview(job=job())
    by_rule = Counter()
    for (rule, _content_type), n in state.stuck.items():
        by_rule[rule] += n
    assert {rule: by_rule[rule.value] for rule in rules.STUCK_RULES} == overview.stuck_by_rule
    assert state.stuck == {("all_accounted", "video"): 1, ("all_accounted", "story"): 1,
                           ("no_active_tasks", "story"): 1, ("counter_overflow", "video"): 1,
                           ("stalled", "story"): 1, ("corrupt", "video"): 1}
    assert state.unjudgeable == {"unknown_status": 1, "never_updated": 1}
    assert sum(state.expired_locks.values()) == overview.expired_locks == 2
    assert sum(state.expired_locks_of_moving_batches.values()) == overview.expired_locks_of_active_batches == 1
    assert state.expired_locks == {"video": 1, "story": 1}
    assert state.expired_locks_of_moving_batches == {"video": 1}


@pytest.mark.django_db
def test_the_exposition_names_every_rule_and_content_type_with_zeros_and_the_oldest_idle_time():
    seed_every_rule()
    found = samples(metrics.exposition()[0])
    stuck = "butter_generation_stuck_batches"
    assert value(found, stuck, rule="all_accounted", content_type="story") == 1
    assert value(found, stuck, rule="counter_overflow", content_type="slideshow") == 0  # a zero is a series
    oldest = value(found, "butter_generation_stuck_oldest_idle_seconds", rule="all_accounted", content_type="story")
    assert 30 * 3600 - 60 < oldest < 30 * 3600 + 60
    assert value(found, "butter_generation_stuck_oldest_idle_seconds", rule="stalled", content_type="video") == 0
    assert value(found, "butter_generation_stuck_after_seconds", content_type="video") == 3 * 3600
    assert value(found, "butter_generation_lock_ttl_seconds", content_type="story") == 3 * 3600
    assert value(found, "butter_generation_unjudgeable_batches", reason="unknown_status") == 1
    assert value(found, "butter_generation_expired_locks_of_moving_batches", content_type="video") == 1
    assert value(found, "butter_cleanup_job_schedule_interval_seconds") == 1800
    # no run yet: no timestamps at all (an alert treats "never" apart from "long ago")
    assert not any(name.startswith("butter_cleanup_job_last_") for name, _ in found)


@pytest.mark.django_db
def test_an_unknown_content_type_in_the_data_gets_its_own_series():
    make_batch((10, 0, 0, 6, 1), content_type="podcast")
    found = samples(metrics.exposition()[0])
    assert value(found, "butter_generation_stuck_batches", rule="no_active_tasks", content_type="podcast") == 1
    assert value(found, "butter_generation_stuck_batches", rule="no_active_tasks", content_type="video") == 0


# --- The job's run history, and the audit counters -------------------------------------------------


def finished_run(trigger, outcome, *, started_ago, took=timedelta(seconds=2), **fields):
    now = database_now()
    run = CleanupRun.objects.create(trigger=trigger, outcome=outcome, **fields)
    CleanupRun.objects.filter(pk=run.pk).update(
        started_at=now - started_ago, finished_at=(now - started_ago + took) if outcome else None)
    return CleanupRun.objects.get(pk=run.pk)


@pytest.mark.django_db
def test_the_run_history_is_the_jobs_alone_and_tells_completed_from_successful():
    ok = finished_run(Trigger.CRON, Outcome.OK, started_ago=timedelta(hours=2))
    errors = finished_run(Trigger.COMMAND, Outcome.ERRORS, started_ago=timedelta(hours=1), took=timedelta(seconds=7))
    skipped = finished_run(Trigger.CRON, Outcome.SKIPPED, started_ago=timedelta(minutes=50))
    # newer, but not the job: an admin action, an undo (trigger command too), a dry run
    finished_run(Trigger.ADMIN, Outcome.OK, started_ago=timedelta(minutes=5))
    finished_run(Trigger.COMMAND, Outcome.OK, started_ago=timedelta(minutes=4), kind=RunKind.UNDO)
    finished_run(Trigger.CRON, Outcome.OK, started_ago=timedelta(minutes=3), dry_run=True)
    state = metrics.read_state()
    assert state.last_run == metrics.RunTimes(skipped.started_at, skipped.finished_at, "skipped")
    assert state.last_completed.finished_at == errors.finished_at == health.overview(job=job()).last_completed.finished_at
    assert state.last_success.finished_at == ok.finished_at
    found = samples(metrics.exposition()[0])
    assert value(found, "butter_cleanup_job_last_run_outcome", outcome="skipped") == 1
    assert value(found, "butter_cleanup_job_last_run_outcome", outcome="errors") == 0
    assert value(found, "butter_cleanup_job_last_completed_timestamp_seconds") == errors.finished_at.timestamp()
    assert value(found, "butter_cleanup_job_last_success_timestamp_seconds") == ok.finished_at.timestamp()

    running = finished_run(Trigger.COMMAND, "", started_ago=timedelta(seconds=10))
    found = samples(metrics.exposition()[0])
    assert value(found, "butter_cleanup_job_last_run_outcome", outcome="unfinished") == 1
    assert value(found, "butter_cleanup_job_last_run_start_timestamp_seconds") == running.started_at.timestamp()
    assert ("butter_cleanup_job_last_run_end_timestamp_seconds", frozenset()) not in found


@pytest.mark.django_db
def test_the_repair_and_lock_counters_equal_the_audit_records_by_rule():
    """The counters sum the per-run counts; the audit table, counted record by record, says the same, for
    the job, the admin's repairs and lock releases, and an undo (which adds no repair)."""
    for _ in range(3):
        make_batch((10, 0, 2, 7, 3), lock_held_for=timedelta(minutes=10))  # all_accounted, lock released
    make_batch((10, 0, 0, 6, 1))
    make_batch((10, 2, 5, 6, 0))
    make_lock(account_id=9_001, content_type="story", held_for=OUTSIDE)
    cron_run = services.cleanup(job=job(), trigger=Trigger.CRON)
    picked = make_batch((10, 1, 1, 3, 2))
    services.repair_selected(job=job(), ids=[picked.pk], mode=services.Mode.FAIL_STALLED)
    forced = make_batch((4, 0, 0, 0, 0), idle=INSIDE, lock_held_for=timedelta(minutes=1))
    services.repair_selected(job=job(), ids=[forced.pk], mode=services.Mode.FORCE)
    released = make_lock(account_id=9_002, held_for=timedelta(minutes=1))
    services.release_locks(job=job(), ids=[released.pk])
    undo.undo_records(job=job(), ids=list(RepairRecord.objects.filter(run_id=cron_run.run_id, rule="no_active_tasks")
                                          .values_list("pk", flat=True)))

    state = metrics.read_state()
    records = Counter()
    for rule, trigger in RepairRecord.objects.exclude(rule=RecordRule.UNDO).values_list("rule", "run__trigger"):
        records[(rule, trigger)] += 1
    counted = Counter({key: n for key, n in {**state.repairs, **state.lock_removals}.items() if n})
    assert counted == records
    assert records[("stalled_failed", "admin")] == 1 and records[("released_by_hand", "admin")] == 1
    assert records[("expired_lock", "cron")] == 1 and records[("released_with_batch", "cron")] == 3
    found = samples(metrics.exposition()[0])
    assert value(found, "butter_cleanup_repairs_total", rule="all_accounted", trigger="cron") == 3
    assert value(found, "butter_cleanup_lock_removals_total", rule="released_by_hand", trigger="admin") == 1
    assert value(found, "butter_cleanup_repairs_total", rule="all_accounted", trigger="command") == 0


# --- Who may read it, and what a broken database looks like ----------------------------------------


@pytest.mark.django_db
def test_the_token_reads_the_metrics_in_text_or_openmetrics(client):
    make_batch((10, 0, 0, 6, 1))
    response = with_token(client)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "no-cache" in response["Cache-Control"]
    assert value(samples(response.content), "butter_generation_stuck_batches", rule="no_active_tasks",
                 content_type="video") == 1
    openmetrics = scrape(client, Authorization=f"Bearer {TOKEN}", Accept="application/openmetrics-text; version=1.0.0")
    assert openmetrics["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.content.endswith(b"# EOF\n")


@pytest.mark.django_db
@pytest.mark.parametrize(("headers", "status", "line"), [
    ({}, 401, "unauthorized: send Authorization: Bearer <METRICS_TOKEN>, or log in as staff\n"),
    ({"Authorization": "Bearer not-the-token"}, 403, "forbidden: wrong token\n"),
    ({"Authorization": f"Bearer {TOKEN}x"}, 403, "forbidden: wrong token\n"),
    ({"Authorization": f"Basic {TOKEN}"}, 401, "unauthorized: send Authorization: Bearer <METRICS_TOKEN>, or log in "
                                               "as staff\n"),
], ids=["none", "wrong", "longer", "not-bearer"])
def test_without_the_token_no_data(client, headers, status, line):
    make_batch((10, 0, 0, 6, 1))
    response = scrape(client, **headers)
    assert (response.status_code, response.content.decode()) == (status, line)
    if status == 401:
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'


@pytest.mark.django_db
def test_with_no_token_set_a_bearer_is_refused_and_only_staff_read(client, settings, django_user_model):
    settings.METRICS_TOKEN = ""
    response = scrape(client, Authorization="Bearer anything-at-all-here")
    assert (response.status_code, response.content) == (403, b"forbidden: METRICS_TOKEN is not set\n")
    client.force_login(django_user_model.objects.create_user("viewer", password="pw", is_staff=False))
    assert scrape(client).status_code == 403
    client.force_login(django_user_model.objects.create_user("staff", password="pw", is_staff=True))
    response = scrape(client)
    assert response.status_code == 200 and b"butter_generation_stuck_batches" in response.content


@pytest.mark.django_db
def test_only_get_and_head(client):
    assert client.post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405
    assert client.head("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.django_db
def test_a_database_error_is_503_and_one_line(client, monkeypatch):
    def unreachable(**kwargs):
        raise OperationalError('connection failed: connection to server at "127.0.0.1", port 1 failed:\n'
                               "Connection refused\n\tIs the server running?")

    monkeypatch.setattr(metrics, "read_state", unreachable)
    response = with_token(client)
    assert response.status_code == 503
    body = response.content.decode()
    assert body.count("\n") == 1 and "Traceback" not in body
    assert body.startswith(f"metrics unavailable: cannot read the {database_name()}: connection failed: ")
    assert body.endswith("Connection refused Is the server running?\n")


@pytest.mark.django_db
def test_a_bad_setting_is_503_and_one_line_never_a_traceback(client, settings):
    settings.GENERATION_STUCK_AFTER = "soon"
    response = with_token(client)
    assert (response.status_code, response.content.decode()) == (
        503, "metrics unavailable: GENERATION_STUCK_AFTER='soon' is not a duration (use e.g. 90m, 3h, 1h30m, 45s or "
             "plain seconds) nor durations by content type (e.g. 3h,video=8h,story=45m)\n")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_table_lock_on_the_backends_table_ends_the_scrape_after_the_timeout_with_503(client, settings):
    """An ALTER TABLE on account_generation_status (ACCESS EXCLUSIVE) blocks every read of it: the scrape
    gives up after METRICS_STATEMENT_TIMEOUT instead of piling up behind it."""
    settings.METRICS_STATEMENT_TIMEOUT = "0.5s"  # lock_timeout too: whichever fires first
    make_batch((10, 0, 0, 6, 1))
    with backend_connection(connection) as backend, backend.transaction():
        backend.execute("LOCK TABLE account_generation_status IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = with_token(client)
        elapsed = time.monotonic() - started
    assert response.status_code == 503 and "due to statement timeout" in response.content.decode()
    assert 0.4 < elapsed < 3
    assert with_token(client).status_code == 200  # the lock gone, the next scrape reads


# --- Cost: index-driven, no more rows than the quiet cleanup run ------------------------------------

BACKEND_TABLES = ("account_generation_status", "account_generation_locks")
INDEXES = {"agstatus_in_progress_idx", "agstatus_unknown_status_idx", "aglocks_locked_at_idx",
           "cleanup_run_outcome_idx"}


def scrape_queries():
    with CaptureQueriesContext(connection) as captured:
        metrics.read_state()
    return [q["sql"] for q in captured.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")
            and "FROM" in q["sql"].upper()]


def rows_read(table):
    """Rows this transaction has read from `table` so far (sequential and through indexes)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables "
                       "WHERE relname = %s", [table])
        return cursor.fetchone()[0]


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("windows", ["3h", "3h,video=8h,story=45m"], ids=["one-window", "per-type"])
@pytest.mark.parametrize("stuck_every", [10, 0], ids=["backlog-20000", "quiet"])
def test_every_scrape_query_is_index_driven_on_a_large_table(stuck_every, windows, settings):
    settings.GENERATION_STUCK_AFTER = settings.GENERATION_LOCK_TTL = windows
    fill(stuck_every=stuck_every, locks=TABLE_ROWS)
    with connection.cursor() as cursor:  # a year of the job's history, for the run queries
        cursor.execute(RUN_HISTORY_SQL, {"runs": YEAR_OF_RUNS})
        cursor.execute("ANALYZE generation_cleanuprun")
    queries = scrape_queries()
    assert len(queries) >= 10
    used = set()
    for query in queries:
        plan = plan_of(query)
        for table in BACKEND_TABLES:
            assert f"Seq Scan on {table}" not in plan, plan
        assert "generation_repairrecord" not in plan, "a scrape never counts the records one by one"
        used |= {index for index in INDEXES if index in plan}
        if '"generation_cleanuprun"."outcome" =' in query:
            assert "cleanup_run_outcome_idx" in plan, plan
    assert used == INDEXES


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_quiet_scrape_reads_no_more_backend_rows_than_the_quiet_cleanup_run():
    fill(stuck_every=0)
    with connection.cursor() as cursor:  # held, none expired
        cursor.execute("INSERT INTO account_generation_locks (created_at, account_id, content_type, locked_at, lock_id) "
                       "SELECT now(), k, 'story', now() - interval '20 minutes', 'lock-' || k "
                       "FROM generate_series(1, 20000) AS k")
        cursor.execute("ANALYZE account_generation_locks")
    before = {table: rows_read(table) for table in BACKEND_TABLES}
    metrics.read_state()
    scraped = {table: rows_read(table) - before[table] for table in BACKEND_TABLES}
    before = {table: rows_read(table) for table in BACKEND_TABLES}
    # a dry run reads what the real run reads on a quiet table (it writes nothing either way)
    report = services.cleanup(job=job(), trigger="command", dry_run=True)
    assert report.statuses.examined == 0 and report.locks.expired == 0
    cleaned = {table: rows_read(table) - before[table] for table in BACKEND_TABLES}
    for table in BACKEND_TABLES:
        assert scraped[table] <= cleaned[table], (scraped, cleaned)
    assert scraped["account_generation_status"] < 5_000  # the in-flight rows, not the 200,000

