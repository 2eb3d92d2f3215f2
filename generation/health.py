"""Read-only queries behind the admin: the change lists' filters and columns, the health page.

Nothing here writes: repairs go through services.py. The rules live in rules.py;
`rule_case()` restates their order in SQL only so that the change list can filter
by rule and the health page can count by rule without loading every stuck row
into Python. tests/test_health.py checks that the SQL and rules.decide() agree.
"""

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from cronsim import CronSim, CronSimError
from django.db.models import (
    BooleanField,
    Case,
    CharField,
    Count,
    DecimalField,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Cast, TruncDate
from django.db.models.lookups import Exact, GreaterThan, GreaterThanOrEqual
from django.utils import timezone

from . import rules
from .conf import JobSettings, job_settings
from .models import CleanupRun, GenerationLock, GenerationStatus, Outcome, RecordRule, RepairRecord, Trigger
from .report import format_duration
from .rules import Rule
from .services import COUNTER_FIELDS, database_now

# What a stuck batch is diagnosed as, in rules.decide()'s order (first match wins).
STUCK_RULES = (Rule.CORRUPT, Rule.ALL_ACCOUNTED, Rule.NO_ACTIVE_TASKS, Rule.COUNTER_OVERFLOW, Rule.STALLED)
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


# --- Generation statuses -----------------------------------------------------------------------


def stuck_q(cutoff: datetime) -> Q:
    """The job's stuck predicate (services._stuck_candidates): in progress and idle since before the cutoff."""
    return Q(status__in=rules.IN_PROGRESS, updated_at__lt=cutoff)


def rule_case() -> Case:
    """rules.decide() for an in-progress row without fail_stalled, as SQL; NULL for finished rows."""
    # As numeric, like Python's unbounded ints: bigint sums near 2^63 would overflow (and fail the query).
    t, q, p, c, f = (Cast(F(name), DecimalField(max_digits=30, decimal_places=0)) for name in COUNTER_FIELDS)
    corrupt = Q()
    for name in COUNTER_FIELDS:
        corrupt |= Q(**{f"{name}__isnull": True}) | Q(**{f"{name}__lt": 0})
    in_progress = Q(status__in=rules.IN_PROGRESS)
    return Case(
        When(in_progress & corrupt, then=Value(Rule.CORRUPT.value)),
        When(in_progress & Q(GreaterThanOrEqual(c + f, t)), then=Value(Rule.ALL_ACCOUNTED.value)),
        When(in_progress & Q(Exact(q + p, 0)), then=Value(Rule.NO_ACTIVE_TASKS.value)),
        When(in_progress & Q(GreaterThan(q + p + c + f, t)), then=Value(Rule.COUNTER_OVERFLOW.value)),
        When(in_progress, then=Value(Rule.STALLED.value)),
        default=None,
        output_field=CharField(),
    )


def statuses_for_list(queryset, *, now: datetime, stuck_after: timedelta):
    """The change list's rows with `is_stuck` (the job's predicate, in SQL) and `checked_at` (the database
    clock the page was computed with), so each row's diagnosis and age need no query of their own."""
    return queryset.annotate(
        is_stuck=ExpressionWrapper(stuck_q(now - stuck_after), output_field=BooleanField()),
        checked_at=Value(now),
    )


def filter_stuck(queryset, *, cutoff: datetime, rule: str | None = None):
    """Stuck rows, optionally only those a given rule (STUCK_RULES) would apply to."""
    queryset = queryset.filter(stuck_q(cutoff))
    if rule is not None:
        queryset = queryset.alias(stuck_rule=rule_case()).filter(stuck_rule=rule)
    return queryset


def filter_not_stuck(queryset, *, cutoff: datetime):
    return queryset.exclude(stuck_q(cutoff))


BIGINT_MAX = 2**63 - 1


def as_id(term: str) -> int | None:
    """A search term as a bigint id, or None (not a number, or past bigint: the query would fail)."""
    term = term.strip()
    return int(term) if term.isascii() and term.isdigit() and int(term) <= BIGINT_MAX else None


def search_statuses(queryset, term: str):
    """An account id or an exact lock id: both are indexed, where a substring search would scan the table."""
    term = term.strip()
    if (account_id := as_id(term)) is not None:
        return queryset.filter(Q(account_id=account_id) | Q(lock_id=term))
    return queryset.filter(lock_id=term)


# --- Generation locks --------------------------------------------------------------------------


def _referring_batch():
    """The newest batch that names the lock (as services._referring_batches picks it)."""
    return (GenerationStatus.objects.filter(lock_id=OuterRef("lock_id"))
            .order_by(F("updated_at").desc(nulls_last=True), "-id"))


def locks_for_list(queryset, *, now: datetime):
    """Locks with the batch that refers to them, in the page's one query (correlated subqueries on the
    indexed lock_id), and the database clock the page was computed with."""
    batch = _referring_batch()
    return queryset.annotate(
        batch_id=Subquery(batch.values("id")[:1]),
        batch_status=Subquery(batch.values("status")[:1]),
        batch_updated_at=Subquery(batch.values("updated_at")[:1]),
        checked_at=Value(now),
    )


def filter_expired(queryset, *, cutoff: datetime, expired: bool):
    return queryset.filter(locked_at__lt=cutoff) if expired else queryset.exclude(locked_at__lt=cutoff)


def search_locks(queryset, term: str):
    term = term.strip()
    if (account_id := as_id(term)) is not None:
        return queryset.filter(Q(account_id=account_id) | Q(lock_id=term))
    return queryset.filter(lock_id=term)


# --- History -----------------------------------------------------------------------------------


def run_records(run_id: int, *, limit: int):
    """A run's first `limit` records in the order they were written, and how many there are in all."""
    records = RepairRecord.objects.filter(run_id=run_id).select_related("actor").order_by("id")
    return list(records[:limit]), records.count()


def iter_run_records(run_id: int, *, chunk_size: int = 2_000):
    """Every record of a run, streamed: a run over a large selection must not be loaded at once."""
    return RepairRecord.objects.filter(run_id=run_id).order_by("id").iterator(chunk_size=chunk_size)


# --- The schedule ------------------------------------------------------------------------------


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


# --- The chart ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True)
class Tick:
    value: int
    y: float


@dataclass(frozen=True)
class DayLabel:
    x: float
    text: str


@dataclass(frozen=True)
class LegendItem:
    colour: str
    label: str
    total: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_left: int
    plot_top: int
    plot_right: int
    plot_bottom: int
    bars: list
    ticks: list
    labels: list
    legend: list
    total: int
    days: int
    summary: str  # for screen readers: what the picture shows

    @property
    def centre_x(self) -> float:
        return (self.plot_left + self.plot_right) / 2


def _nice_step(peak: int, max_ticks: int = 5) -> int:
    """1, 2, 5, 10, 20, 50...: the smallest such step that draws at most `max_ticks` gridlines above zero."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if peak <= step * factor * max_ticks:
                return step * factor
        step *= 10


def build_chart(days: list[date], counts: dict, *, series=CHART_RULES, colours=CHART_COLOURS,
                width: int = 960, height: int = 280) -> Chart:
    """Stacked bars, one per day, one colour per rule. `counts` maps (day, rule) to a number of repairs."""
    left, top, right, bottom = 44, 12, width - 10, height - 26
    per_day = [sum(counts.get((day, rule), 0) for rule in series) for day in days]
    peak = max(per_day, default=0)
    step = _nice_step(max(peak, 1))
    ceiling = step * -(-max(peak, 1) // step)
    scale = (bottom - top) / ceiling
    slot = (right - left) / max(len(days), 1)
    bar_width = round(slot * 0.72, 2)

    bars = []
    for index, day in enumerate(days):
        x = round(left + index * slot + (slot - bar_width) / 2, 2)
        base = bottom
        for rule in series:
            n = counts.get((day, rule), 0)
            if not n:
                continue
            h = n * scale
            base -= h
            bars.append(Bar(x, round(base, 2), bar_width, round(h, 2), colours[rule], f"{day.isoformat()}: {n} {rule}"))
    ticks = [Tick(value, round(bottom - value * scale, 2)) for value in range(0, ceiling + 1, step)]
    labels = [
        DayLabel(round(left + index * slot + slot / 2, 2), f"{day:%b} {day.day}")
        for index, day in enumerate(days) if index % 5 == 0 or index == len(days) - 1
    ]
    totals = {rule: sum(counts.get((day, rule), 0) for day in days) for rule in series}
    legend = [LegendItem(colours[rule], str(rule), totals[rule]) for rule in series]
    total = sum(totals.values())
    if days:
        summary = (f"Repairs per day by rule from {days[0].isoformat()} to {days[-1].isoformat()}: {total} in all"
                   + "".join(f", {item.label} {item.total}" for item in legend))
    else:
        summary = "No days to show"
    return Chart(width, height, left, top, right, bottom, bars, ticks, labels, legend, total, len(days), summary)


def repairs_per_day(*, today: date, days: int = CHART_DAYS) -> tuple[list[date], dict]:
    """The last `days` days (today included, in the site's time zone) and the repairs on each, by rule."""
    first = today - timedelta(days=days - 1)
    since = timezone.make_aware(datetime.combine(first, datetime.min.time()))
    rows = (RepairRecord.objects.filter(created_at__gte=since, rule__in=CHART_RULES)
            .annotate(day=TruncDate("created_at")).values("day", "rule").annotate(n=Count("id")).order_by())
    counts = {(row["day"], RecordRule(row["rule"])): row["n"] for row in rows}
    return [first + timedelta(days=i) for i in range(days)], counts


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

    @property
    def stuck(self) -> int:
        return sum(self.stuck_by_rule.values())

    @property
    def repairable(self) -> int:
        return sum(n for rule, n in self.stuck_by_rule.items() if rule in rules.REPAIRS)

    # durations as the settings are written (3h, 30m), not as Python prints a timedelta (3:00:00)
    @property
    def stuck_after_label(self) -> str:
        return format_duration(self.job.stuck_after)

    @property
    def lock_ttl_label(self) -> str:
        return format_duration(self.job.lock_ttl)

    @property
    def fail_stalled_label(self) -> str:
        return format_duration(self.job.fail_stalled_after) if self.job.fail_stalled_after else ""

    @property
    def interval_label(self) -> str:
        return format_duration(self.interval) if self.interval else ""

    @property
    def overdue_label(self) -> str:
        return format_duration(2 * self.interval) if self.interval else ""


def expired_locks(*, now: datetime, job: JobSettings):
    """Locks held longer than the TTL, and those of them whose batch is still moving (in progress and
    updated within the stuck window: generations that take longer than the TTL). The health page counts
    them; the metrics count them by content type."""
    expired = GenerationLock.objects.filter(locked_at__lt=now - job.lock_ttl)
    moving = GenerationStatus.objects.filter(status__in=rules.IN_PROGRESS, updated_at__gte=now - job.stuck_after)
    return expired, expired.filter(lock_id__in=moving.values("lock_id"))


def job_runs(runs=None):
    """The scheduled job's own runs (cron, command): not admin actions, not dry runs, and not undo_repair,
    which also runs with trigger "command" (told apart by its filters, here only)."""
    runs = CleanupRun.objects.all() if runs is None else runs
    return runs.filter(trigger__in=JOB_TRIGGERS, dry_run=False).exclude(filters__has_key="undo")


def _ago(now, then) -> str:
    return format_duration(max(now - then, timedelta(0)))


def overview(*, job: JobSettings | None = None) -> Health:
    """What the health page shows; a handful of queries whatever the size of the tables."""
    job = job or job_settings()
    now = database_now()
    report = Health(now=now, job=job)

    by_rule = dict(
        filter_stuck(GenerationStatus.objects.all(), cutoff=now - job.stuck_after)
        .annotate(stuck_rule=rule_case()).values_list("stuck_rule").annotate(n=Count("id")).order_by()
    )
    report.stuck_by_rule = {rule: by_rule.get(rule.value, 0) for rule in STUCK_RULES}

    expired, of_moving_batches = expired_locks(now=now, job=job)
    report.expired_locks = expired.count()
    report.expired_locks_of_active_batches = of_moving_batches.count()

    runs = CleanupRun.objects.select_related("actor")
    report.last_run = runs.order_by("-started_at", "-id").first()
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
        report.warnings.append(f"The last completed job run (#{completed.pk}) found errors: {first}"
                               + (" (and more on its page)" if "\n" in completed.error else ""))
    last = report.last_run
    if last is not None and not last.outcome and last.started_at < now - timedelta(hours=1):
        report.warnings.append(f"Run #{last.pk} started {_ago(now, last.started_at)} ago and never finished "
                               "(the process died, or is still running).")

    today = timezone.localdate(now)
    days, counts = repairs_per_day(today=today)
    report.chart = build_chart(days, counts)
    return report
