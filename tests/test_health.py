"""generation.health: the SQL mirror of the rules, the schedule interval, the health overview, the chart."""

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from generation import health, rules, services
from generation.models import (
    CleanupRun,
    GenerationLock,
    GenerationStatus,
    Outcome,
    RecordKind,
    RecordRule,
    RepairRecord,
)
from generation.rules import Counters, Rule

STUCK = timedelta(hours=3, minutes=1)
FRESH = timedelta(hours=2, minutes=59)


@pytest.fixture(autouse=True)
def job_settings(settings):
    settings.GENERATION_STUCK_AFTER = "3h"
    settings.GENERATION_LOCK_TTL = "3h"
    settings.GENERATION_FAIL_STALLED_AFTER = ""
    settings.CLEANUP_SCHEDULE = "*/30 * * * *"


def make(t, q, p, c, f, *, status="processing", idle=STUCK, account=1, lock_id=None):
    return GenerationStatus(
        account_id=account, content_type="video", status=status, total_requested=t, total_queued=q,
        total_processing=p, total_completed=c, total_failed=f, updated_at=timezone.now() - idle, lock_id=lock_id)


# --- rule_case() is rules.decide() in SQL ---------------------------------------------------------

VALUES = (None, -1, 0, 1, 2, 4)


@pytest.mark.django_db
def test_the_sql_classification_agrees_with_rules_for_every_small_combination():
    combos = [
        (t, q, p, c, f, status)
        for t in (None, -1, 0, 1, 3, 5) if t is not None  # total_requested is NOT NULL
        for q, p, c, f in itertools.product(VALUES, repeat=4)
        for status in ("queuing", "processing", "completed")
    ]
    GenerationStatus.objects.bulk_create(
        [make(t, q, p, c, f, status=status, account=i) for i, (t, q, p, c, f, status) in enumerate(combos)],
        batch_size=2000)
    rows = GenerationStatus.objects.annotate(sql_rule=health.rule_case()).values_list(
        "total_requested", "total_queued", "total_processing", "total_completed", "total_failed", "status", "sql_rule")
    checked = 0
    for *counters, status, sql_rule in rows:
        expected = rules.decide(Counters(*counters), status).rule
        assert sql_rule == (expected.value if expected else None), (counters, status)
        checked += 1
    assert checked == len(combos) > 10_000


@pytest.mark.django_db
def test_filter_stuck_by_rule_at_the_window_edge():
    now = timezone.now()
    GenerationStatus.objects.bulk_create([
        make(10, 0, 2, 7, 3), make(10, 0, 2, 7, 3, idle=FRESH), make(10, 0, 0, 6, 1), make(10, 2, 5, 6, 0),
        make(10, 1, 1, 3, 2), make(3, 0, -1, 2, 0), make(3, 0, 0, 3, 0, status="completed"),
    ])
    qs = GenerationStatus.objects.all()
    cutoff = now - timedelta(hours=3)
    assert health.filter_stuck(qs, cutoff=cutoff).count() == 5
    assert {rule: health.filter_stuck(qs, cutoff=cutoff, rule=rule).count() for rule in health.STUCK_RULES} == {
        Rule.CORRUPT: 1, Rule.ALL_ACCOUNTED: 1, Rule.NO_ACTIVE_TASKS: 1, Rule.COUNTER_OVERFLOW: 1, Rule.STALLED: 1}
    assert health.filter_not_stuck(qs, cutoff=cutoff).count() == 2


# --- The schedule's interval ----------------------------------------------------------------------

MONDAY = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("schedule", "interval"), [
    ("*/30 * * * *", timedelta(minutes=30)),
    ("* * * * *", timedelta(minutes=1)),
    ("0 3 * * *", timedelta(days=1)),
    ("0,10 * * * *", timedelta(minutes=50)),  # uneven: the longest gap counts
    ("*/30 9-17 * * 1-5", timedelta(days=2, hours=15, minutes=30)),  # Friday 17:30 to Monday 09:00
    ("0 0 1 * *", timedelta(days=31)),  # Dec 1 to Jan 1
])
def test_schedule_interval_is_the_longest_gap(schedule, interval):
    assert health.schedule_interval(schedule, start=MONDAY) == interval


@pytest.mark.parametrize("schedule", ["61 * * * *", "0 0 30 2 *", "* * *"])
def test_a_schedule_cron_cannot_run_is_a_value_error(schedule):
    with pytest.raises(ValueError, match="CLEANUP_SCHEDULE"):
        health.schedule_interval(schedule, start=MONDAY)


# --- The overview ---------------------------------------------------------------------------------


def _run(*, trigger="cron", outcome=Outcome.OK, finished_ago=timedelta(minutes=10), error=""):
    now = timezone.now()
    run = CleanupRun.objects.create(trigger=trigger, outcome=outcome, error=error,
                                    finished_at=None if finished_ago is None else now - finished_ago)
    CleanupRun.objects.filter(pk=run.pk).update(started_at=now - (finished_ago or timedelta(0)) - timedelta(seconds=5))
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_overview_counts_stuck_batches_by_rule_and_expired_locks():
    GenerationStatus.objects.bulk_create([
        make(10, 0, 2, 7, 3), make(10, 0, 2, 7, 3, idle=FRESH), make(10, 0, 0, 6, 1), make(10, 1, 1, 3, 2),
        make(10, 1, 1, 3, 2), make(3, 0, -1, 2, 0), make(3, 0, 0, 3, 0, status="completed"),
        make(10, 5, 0, 0, 0, idle=timedelta(minutes=5), lock_id="busy"),
    ])
    now = timezone.now()
    GenerationLock.objects.bulk_create([
        GenerationLock(account_id=1, content_type="video", lock_id="busy", locked_at=now - timedelta(hours=3, minutes=1)),
        GenerationLock(account_id=2, content_type="video", lock_id="orphan", locked_at=now - timedelta(hours=9)),
        GenerationLock(account_id=3, content_type="video", lock_id="fresh", locked_at=now - timedelta(hours=2, minutes=59)),
    ])
    report = health.overview()
    assert report.stuck_by_rule == {Rule.CORRUPT: 1, Rule.ALL_ACCOUNTED: 1, Rule.NO_ACTIVE_TASKS: 1,
                                    Rule.COUNTER_OVERFLOW: 0, Rule.STALLED: 2}
    assert (report.stuck, report.repairable) == (5, 2)
    assert (report.expired_locks, report.expired_locks_of_active_batches) == (2, 1)
    assert (report.stuck_after_label, report.lock_ttl_label, report.interval_label, report.overdue_label) == (
        "3h", "3h", "30m", "1h")


@pytest.mark.django_db
def test_overview_takes_a_handful_of_queries_whatever_the_data():
    GenerationStatus.objects.bulk_create([make(10, 0, 2, 7, 3, account=i) for i in range(300)])
    with CaptureQueriesContext(connection) as queries:
        health.overview()
    assert len(queries) <= 8


@pytest.mark.django_db
def test_no_completed_run_is_a_warning():
    _run(trigger="admin")  # an admin action repairs hand-picked rows: it says nothing about the schedule
    _run(trigger="cron", outcome="", finished_ago=None)  # died
    _run(trigger="cron", outcome=Outcome.SKIPPED)
    report = health.overview()
    assert "The cleanup job has never completed a run (from cron or the command)." in report.warnings
    assert report.last_completed is None


@pytest.mark.django_db
def test_a_recent_completed_run_raises_no_warning():
    run = _run(finished_ago=timedelta(minutes=59))
    report = health.overview()
    assert report.last_completed == run and report.last_run == run
    assert report.warnings == []


@pytest.mark.django_db
def test_a_completed_run_older_than_twice_the_interval_is_a_warning(settings):
    _run(finished_ago=timedelta(hours=1, minutes=1, seconds=30))
    [warning] = health.overview().warnings
    assert warning == ('The last completed run of the cleanup job finished 1h1m ago, more than twice the schedule\'s '
                       'interval (30m, from CLEANUP_SCHEDULE "*/30 * * * *"): is cron still running it?')
    settings.CLEANUP_SCHEDULE = "0 * * * *"  # hourly: 1h01m is within twice that
    assert health.overview().warnings == []


@pytest.mark.django_db
def test_a_run_with_errors_counts_as_completed_but_is_shown():
    run = _run(outcome=Outcome.ERRORS, error="batch #7 has corrupt counters\nbatch #9 has corrupt counters")
    report = health.overview()
    assert report.last_completed == run
    assert report.warnings == [f"The last completed job run (#{run.pk}) found errors: batch #7 has corrupt counters "
                               "(and more on its page)"]
    _run(trigger="admin", outcome=Outcome.ERRORS, error="batch #8 has corrupt counters")
    assert health.overview().warnings == report.warnings  # an admin action's findings are not the job's


@pytest.mark.django_db
def test_a_run_that_never_finished_is_a_warning(settings):
    settings.CLEANUP_SCHEDULE = "0 3 * * *"
    _run(finished_ago=timedelta(hours=3))
    dead = _run(outcome="", finished_ago=None)
    # 30 s spare: on PostgreSQL the database clock is the test transaction's start, a little earlier
    CleanupRun.objects.filter(pk=dead.pk).update(started_at=timezone.now() - timedelta(hours=2, seconds=30))
    assert health.overview().warnings == [
        f"Run #{dead.pk} started 2h ago and never finished (the process died, or is still running)."]


# --- Repairs per day and the chart ---------------------------------------------------------------


def _record(run, rule, when, kind=RecordKind.STATUS):
    record = RepairRecord.objects.create(run=run, kind=kind, target_id=1, account_id=1, content_type="video",
                                         rule=rule, before={}, after={})
    RepairRecord.objects.filter(pk=record.pk).update(created_at=when)


@pytest.mark.django_db
def test_repairs_per_day_groups_the_last_30_days_by_rule():
    run = _run()
    today = timezone.localdate()
    noon = timezone.make_aware(datetime.combine(today, datetime.min.time())) + timedelta(hours=12)
    _record(run, RecordRule.ALL_ACCOUNTED, noon)
    _record(run, RecordRule.ALL_ACCOUNTED, noon)
    _record(run, RecordRule.EXPIRED_LOCK, noon - timedelta(days=3), kind=RecordKind.LOCK)
    _record(run, RecordRule.NO_ACTIVE_TASKS, noon - timedelta(days=29))
    _record(run, RecordRule.NO_ACTIVE_TASKS, noon - timedelta(days=30))  # too old
    _record(run, RecordRule.RELEASED_WITH_BATCH, noon, kind=RecordKind.LOCK)  # counted under its batch's rule
    days, counts = health.repairs_per_day(today=today)
    assert len(days) == 30 and days[-1] == today and days[0] == today - timedelta(days=29)
    assert counts == {
        (today, RecordRule.ALL_ACCOUNTED): 2,
        (today - timedelta(days=3), RecordRule.EXPIRED_LOCK): 1,
        (today - timedelta(days=29), RecordRule.NO_ACTIVE_TASKS): 1,
    }


def test_nice_steps():
    assert [health._nice_step(n) for n in (1, 5, 6, 10, 11, 24, 26, 99, 101, 240, 260)] == [
        1, 1, 2, 2, 5, 5, 10, 20, 50, 50, 100]


def test_chart_stacks_bars_per_day_in_proportion():
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]
    counts = {(days[0], RecordRule.ALL_ACCOUNTED): 6, (days[0], RecordRule.EXPIRED_LOCK): 2,
              (days[29], RecordRule.NO_ACTIVE_TASKS): 4}
    chart = health.build_chart(days, counts)
    assert chart.total == 12 and chart.days == 30
    assert [t.value for t in chart.ticks] == [0, 2, 4, 6, 8]
    plot_height = chart.plot_bottom - chart.plot_top
    first, second, last = chart.bars
    assert (first.title, second.title, last.title) == (
        "2026-11-01: 6 all_accounted", "2026-11-01: 2 expired_lock", "2026-11-30: 4 no_active_tasks")
    assert first.height == pytest.approx(plot_height * 6 / 8) and second.height == pytest.approx(plot_height * 2 / 8)
    assert first.y + first.height == pytest.approx(chart.plot_bottom)  # the first series sits on the axis
    assert second.y + second.height == pytest.approx(first.y)  # the next one on top of it
    assert first.x == second.x < last.x <= chart.plot_right - last.width
    assert first.colour == health.CHART_COLOURS[RecordRule.ALL_ACCOUNTED]
    assert [label.text for label in chart.labels] == ["Nov 1", "Nov 6", "Nov 11", "Nov 16", "Nov 21", "Nov 26",
                                                      "Nov 30"]
    assert {item.label: item.total for item in chart.legend}["all_accounted"] == 6
    assert chart.summary.startswith("Repairs per day by rule from 2026-11-01 to 2026-11-30: 12 in all")


def test_an_empty_chart_still_has_axes():
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]
    chart = health.build_chart(days, {})
    assert chart.bars == [] and chart.total == 0
    assert [t.value for t in chart.ticks] == [0, 1]


@pytest.mark.django_db
def test_overview_chart_counts_todays_repairs(admin_user):
    GenerationStatus.objects.bulk_create([make(10, 0, 2, 7, 3), make(10, 0, 0, 6, 1)])
    services.cleanup_from_settings(trigger="cron")
    chart = health.overview().chart
    assert {item.label: item.total for item in chart.legend} == {
        "all_accounted": 1, "no_active_tasks": 1, "counter_overflow": 0, "stalled_failed": 0, "expired_lock": 0,
        "released_by_hand": 0}
    assert health.overview().warnings == []


@pytest.mark.django_db
def test_an_undo_command_run_is_not_the_cleanup_job_running():
    job = _run(trigger="command", finished_ago=timedelta(hours=5))
    undo_run = _run(trigger="command", finished_ago=timedelta(minutes=1))
    CleanupRun.objects.filter(pk=undo_run.pk).update(filters={"undo": [1, 2]})
    assert health.overview().last_completed == job


@pytest.mark.django_db
def test_the_sql_classification_survives_counters_at_the_bigint_limit():
    big = 2**63 - 1
    combos = [(5, big, big, 0, 0), (big, 0, 0, big, big), (big, 1, 0, big - 2, 0), (3, 0, big, 0, 0), (big, big, 0, 0, 0)]
    GenerationStatus.objects.bulk_create([make(*c, status="processing", account=i) for i, c in enumerate(combos)])
    rows = GenerationStatus.objects.annotate(sql_rule=health.rule_case()).order_by("account_id").values_list(
        "total_requested", "total_queued", "total_processing", "total_completed", "total_failed", "sql_rule")
    checked = 0
    for *counters, sql_rule in rows:
        assert sql_rule == rules.decide(Counters(*counters), "processing").rule.value, counters
        checked += 1
    assert checked == len(combos)
