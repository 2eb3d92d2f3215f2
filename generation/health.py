"""The health page: what the job has been doing and what is wrong now, in a handful of queries whatever
the size of the tables. The read side: counts come from expressions.py's forms of the rules.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from cronsim import CronSim, CronSimError
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from . import expressions as ex
from . import rules
from .chart import Chart, RunColumn, build_chart, build_run_chart
from .conf import JobSettings
from .db import database_now
from .models import CleanupRun, GenerationLock, GenerationStatus, Outcome, RecordRule, RepairRecord, RunKind, Trigger
from .report import format_duration, format_windows
from .selectors import stuck_groups

# Runs that stand for the scheduled job being alive: an admin action repairs hand-picked rows only.
JOB_TRIGGERS = (Trigger.CRON, Trigger.COMMAND)
# The chart's series. released_with_batch is left out: it is the consequence of a status repair
# already counted under that repair's rule.
CHART_RULES = (
    RecordRule.ALL_ACCOUNTED, RecordRule.NO_ACTIVE_TASKS, RecordRule.COUNTER_OVERFLOW,
    RecordRule.STALLED_FAILED, RecordRule.EXPIRED_LOCK, RecordRule.RELEASED_BY_HAND,
)
CHART_DAYS = 30
# Okabe-Ito: tells the series apart for colour-blind readers too.
CHART_COLOURS = {
    RecordRule.ALL_ACCOUNTED: "#0072B2", RecordRule.NO_ACTIVE_TASKS: "#E69F00", RecordRule.COUNTER_OVERFLOW: "#CC79A7",
    RecordRule.STALLED_FAILED: "#D55E00", RecordRule.EXPIRED_LOCK: "#009E73", RecordRule.RELEASED_BY_HAND: "#56B4E9",
}


# The backlog chart: what each of the job's last runs found stuck, and what became of it.
BACKLOG_RUNS = 60  # 30 hours of the default schedule
BACKLOG_SERIES = ("repaired", "stalled", "corrupt", "busy or moved on")
BACKLOG_COLOURS = {"repaired": "#0072B2", "stalled": "#E69F00", "corrupt": "#D55E00", "busy or moved on": "#999999"}


def job_runs(runs=None):
    """The runs of the scheduled job itself (cron, command): not undo runs, not dry runs, not the admin's
    repairs of selected rows."""
    runs = CleanupRun.objects.all() if runs is None else runs
    return runs.filter(kind=RunKind.CLEANUP, trigger__in=JOB_TRIGGERS, dry_run=False)


def stuck_by_rule(*, now: datetime, job: JobSettings) -> dict:
    """Stuck batches now, by the rule that applies (rules.STUCK_RULES order), as the admin's list judges them."""
    counts = Counter()
    for (_content_type, verdict), (n, _oldest) in stuck_groups(now=now, stuck_after=job.stuck_after).items():
        counts[verdict] += n
    return {rule: counts[rule.value] for rule in rules.STUCK_RULES}


def expired_locks(*, now: datetime, job: JobSettings):
    """Locks held longer than their content type's TTL, and those of them whose batch is still moving (in
    progress and updated within its type's stuck window: generations that take longer than the TTL), as
    querysets: the health page counts them, the metrics count them by content type."""
    expired = GenerationLock.objects.filter(ex.expired(job.lock_ttl.cutoffs(now)))
    moving = GenerationStatus.objects.filter(ex.moving(job.stuck_after.cutoffs(now)))
    return expired, expired.filter(lock_id__in=moving.values("lock_id"))


def schedule_interval(schedule: str, *, start: datetime, horizon: timedelta = timedelta(days=8),
                      max_fires: int = 2_000) -> timedelta:
    """The longest gap between two consecutive times of a cron schedule, looked at over a bit more than a
    week from `start` (so weekday-only schedules show their weekend gap). Raises ValueError if cron
    cannot parse it."""
    try:
        fires = CronSim(schedule, timezone.localtime(start))
        previous = next(fires)
        longest = timedelta(0)
        for count, fire in enumerate(fires, start=1):
            longest = max(longest, fire - previous)
            previous = fire
            # at least two gaps: a monthly schedule has one fire a week
            if count >= max_fires or (count >= 2 and fire - start > horizon):
                break
    except (CronSimError, StopIteration) as exc:
        raise ValueError(f"CLEANUP_SCHEDULE={schedule!r} is not a cron schedule cron can run ({exc})") from None
    return longest


def repairs_per_day(*, today: date, days: int = CHART_DAYS) -> tuple[list[date], dict]:
    """The last `days` days (today included, in the site's time zone) and the repairs on each, by rule."""
    first = today - timedelta(days=days - 1)
    since = timezone.make_aware(datetime.combine(first, datetime.min.time()))
    rows = (RepairRecord.objects.filter(created_at__gte=since, rule__in=CHART_RULES)
            .annotate(day=TruncDate("created_at")).values("day", "rule").annotate(n=Count("id")).order_by())
    counts = {(row["day"], RecordRule(row["rule"])): row["n"] for row in rows}
    return [first + timedelta(days=i) for i in range(days)], counts


def backlog_per_run(*, runs: int = BACKLOG_RUNS) -> list[RunColumn]:
    """The job's last `runs` runs over the whole table (oldest first): how many batches each found stuck
    (CleanupRun.stuck_found), by what became of them; from the run rows alone, whatever the size of the
    statuses."""
    rows = (job_runs().filter(stuck_found__isnull=False).order_by("-started_at", "-id")
            .values_list("pk", "started_at", "stuck_found", "repaired_all_accounted", "repaired_no_active_tasks",
                         "repaired_counter_overflow", "repaired_stalled_failed", "stalled", "corrupt")[:runs])
    columns = []
    for pk, started_at, found, *repaired, stalled, corrupt in reversed(rows):
        values = {"repaired": sum(repaired), "stalled": stalled, "corrupt": corrupt}
        values["busy or moved on"] = max(found - sum(values.values()), 0)
        columns.append(RunColumn(pk, timezone.localtime(started_at), values))
    return columns


def problems(*, now: datetime, job: JobSettings) -> tuple[int, int]:
    """Stuck batches and expired locks now, for the admin index: two index scans."""
    stuck = sum(n for n, _oldest in stuck_groups(now=now, stuck_after=job.stuck_after).values())
    expired, _of_moving_batches = expired_locks(now=now, job=job)
    return stuck, expired.count()


# --- The health page ---------------------------------------------------------------------------


@dataclass
class Health:
    now: datetime
    job: JobSettings
    stuck_by_rule: dict = field(default_factory=dict)  # Rule -> count, in STUCK_RULES order
    expired_locks: int = 0
    expired_locks_of_active_batches: int = 0
    last_run: CleanupRun | None = None
    last_completed: CleanupRun | None = None
    interval: timedelta | None = None
    warnings: list = field(default_factory=list)
    chart: Chart | None = None
    backlog: Chart | None = None

    @property
    def stuck(self) -> int:
        return sum(self.stuck_by_rule.values())

    @property
    def repairable(self) -> int:
        return sum(n for rule, n in self.stuck_by_rule.items() if rule in rules.REPAIRS)

    # durations as the settings are written (3h, 30m), not as Python prints a timedelta (3:00:00); the
    # windows with each content type's own (3h, video 8h)
    @property
    def stuck_after_label(self) -> str:
        return format_windows(self.job.stuck_after)

    @property
    def lock_ttl_label(self) -> str:
        return format_windows(self.job.lock_ttl)

    @property
    def fail_stalled_label(self) -> str:
        return format_windows(self.job.fail_stalled_after) if self.job.fail_stalled_after else ""

    @property
    def interval_label(self) -> str:
        return format_duration(self.interval) if self.interval else ""

    @property
    def overdue_label(self) -> str:
        return format_duration(2 * self.interval) if self.interval else ""


def _ago(now, then) -> str:
    return format_duration(max(now - then, timedelta(0)))


def overview(*, job: JobSettings) -> Health:
    """What the health page shows; a handful of queries whatever the size of the tables."""
    now = database_now()
    report = Health(now=now, job=job)
    report.stuck_by_rule = stuck_by_rule(now=now, job=job)
    expired, of_moving_batches = expired_locks(now=now, job=job)
    report.expired_locks, report.expired_locks_of_active_batches = expired.count(), of_moving_batches.count()

    runs = CleanupRun.objects.select_related("actor")
    report.last_run = runs.filter(kind=RunKind.CLEANUP).order_by("-started_at", "-id").first()
    # "Successful" for the schedule's sake: the job ran to the end. A run that found corrupt batches ends with
    # outcome `errors` every time until someone fixes them by hand; that is a finding, not a dead schedule.
    report.last_completed = (job_runs(runs).filter(outcome__in=(Outcome.OK, Outcome.ERRORS), finished_at__isnull=False)
                             .order_by("-finished_at", "-id").first())

    try:
        report.interval = schedule_interval(job.schedule, start=now)
    except ValueError as exc:
        report.warnings.append(str(exc))
    if report.last_completed is None:
        report.warnings.append("The cleanup job has never completed a run (from cron or the command).")
    elif report.interval is not None:
        finished = report.last_completed.finished_at
        if now - finished > 2 * report.interval:
            report.warnings.append(
                f"The last completed run of the cleanup job finished {_ago(now, finished)} ago, more than twice "
                f"the schedule's interval ({format_duration(report.interval)}, from CLEANUP_SCHEDULE "
                f"\"{job.schedule}\"): is cron still running it?")
    completed = report.last_completed
    if completed is not None and completed.outcome == Outcome.ERRORS:
        first = completed.error.splitlines()[0] if completed.error else ""
        report.warnings.append(f"The last completed job run, run #{completed.pk}, found errors: {first}"
                               + (" (and more on its page)" if "\n" in completed.error else ""))
    last = report.last_run
    if last is not None and not last.outcome and last.started_at < now - timedelta(hours=1):
        report.warnings.append(f"Run #{last.pk} started {_ago(now, last.started_at)} ago and never finished "
                               "(the process died, or is still running).")

    today = timezone.localdate(now)
    days, counts = repairs_per_day(today=today)
    report.chart = build_chart(days, counts, series=CHART_RULES, colours=CHART_COLOURS, width=620)
    report.backlog = build_run_chart(backlog_per_run(), series=BACKLOG_SERIES, colours=BACKLOG_COLOURS, width=620)
    return report
