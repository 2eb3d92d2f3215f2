"""What Prometheus reads: the metric names, the state they come from, and the families built from it.

Two sources share one set of names (README, "Monitoring"):

- `/metrics` (views.metrics) reads the database at every scrape: `read_state()` runs a handful of
  index-driven queries in one transaction under METRICS_STATEMENT_TIMEOUT, and
  `exposition()` renders them. Nothing is kept in the web process between scrapes.
- each job run reports its own figures to a node exporter textfile and/or a Pushgateway
  (monitoring.py), through `export.run_families()`.

The stuck batches are classified by `stuck_batches()` alone, with health's stuck predicate and
rule_case(): the expressions the admin's filters and health page use, never a form of the rules of
its own.
"""

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

from django.db import transaction
from django.db.models import Count, Sum
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from . import expressions as ex
from . import health, rules, selectors
from .conf import JobSettings, job_settings, monitoring_settings
from .db import bound_waits, database_now
from .models import FAILED, UNFINISHED, CleanupRun, ContentType, GenerationStatus, Outcome, RecordRule, Trigger

PREFIX = "butter"
# A run's outcome as the metrics spell it: the CleanupRun outcomes, and the two of models.py for a run
# without one.
OUTCOMES = (Outcome.OK.value, Outcome.ERRORS.value, Outcome.SKIPPED.value, UNFINISHED, FAILED)
# The audit table's rules, from the per-rule counts each CleanupRun keeps (services writes them with its
# records): summing one row per run, never the records themselves, keeps a scrape cheap on a large history.
REPAIR_COUNTS = {
    RecordRule.ALL_ACCOUNTED: "repaired_all_accounted",
    RecordRule.NO_ACTIVE_TASKS: "repaired_no_active_tasks",
    RecordRule.COUNTER_OVERFLOW: "repaired_counter_overflow",
    RecordRule.STALLED_FAILED: "repaired_stalled_failed",
}
LOCK_REMOVAL_RULES = (RecordRule.EXPIRED_LOCK, RecordRule.RELEASED_WITH_BATCH, RecordRule.RELEASED_BY_HAND)
UNJUDGEABLE = ("unknown_status", "never_updated")


@dataclass(frozen=True)
class RunTimes:
    started_at: datetime
    finished_at: datetime | None
    outcome: str


@dataclass
class State:
    """What one scrape read, all at the database's clock `now`."""

    now: datetime
    job: JobSettings
    stuck: dict = field(default_factory=dict)  # (rule, content type) -> batches
    oldest_stuck: dict = field(default_factory=dict)  # (rule, content type) -> updated_at of the oldest
    unjudgeable: dict = field(default_factory=dict)  # unknown_status / never_updated -> batches
    expired_locks: dict = field(default_factory=dict)  # content type -> locks
    expired_locks_of_moving_batches: dict = field(default_factory=dict)  # content type -> locks
    last_run: RunTimes | None = None
    last_completed: RunTimes | None = None  # ran to the end (ok or errors), as the health page counts it
    last_success: RunTimes | None = None  # ended ok
    schedule_interval: timedelta | None = None
    repairs: dict = field(default_factory=dict)  # (rule, trigger) -> repairs recorded
    lock_removals: dict = field(default_factory=dict)  # (rule, trigger) -> lock removals recorded
    read_seconds: float = 0.0

    def content_types(self):
        """Every content type the contract names, and any other the data holds or a window names: a zero is a
        series too."""
        seen = {content_type for _, content_type in self.stuck} | set(self.expired_locks)
        seen |= {*self.job.stuck_after.types, *self.job.lock_ttl.types}
        return [*ContentType.values, *sorted(seen - set(ContentType.values))]


# --- Reading the database (one place per question) -----------------------------------------------


def stuck_batches(*, now: datetime, job: JobSettings):
    """Stuck batches now by (rule, content type), and the oldest one's updated_at for each: the admin's
    classification (selectors.stuck_groups, the same as the health page's)."""
    counts, oldest = {}, {}
    for (content_type, rule), (n, updated_at) in selectors.stuck_groups(now=now, stuck_after=job.stuck_after).items():
        counts[(rule, content_type)] = n
        oldest[(rule, content_type)] = updated_at
    return counts, oldest


def unjudgeable_batches():
    """Batches no rule can judge, as the job reports them (a status the contract does not name, through the
    partial index that is empty while the data is sane; in progress but never updated, through the in-progress
    index)."""
    return {
        "unknown_status": GenerationStatus.objects.filter(ex.unknown_status()).count(),
        "never_updated": GenerationStatus.objects.filter(ex.never_updated()).count(),
    }


def expired_locks_by_content_type(*, now: datetime, job: JobSettings):
    expired, of_moving = health.expired_locks(now=now, job=job)

    def grouped(queryset):
        return dict(queryset.values_list("content_type").annotate(n=Count("id")).order_by())

    by_content_type = grouped(expired)
    # none expired, none of moving batches: the usual case costs one probe of the locked_at index
    return by_content_type, grouped(of_moving) if by_content_type else {}


def job_run_history():
    """The job's last run, last completed run and last successful run. One probe of the run index
    (trigger, outcome, started_at) per trigger and outcome, each reading a row or two, instead of sorting
    the whole history."""
    found = []
    for trigger in health.JOB_TRIGGERS:
        for outcome in (*Outcome.values, ""):
            row = (health.job_runs().filter(trigger=trigger, outcome=outcome).order_by("-started_at")
                   .values_list("started_at", "finished_at", "outcome").first())
            if row:
                found.append(RunTimes(row[0], row[1], row[2] or UNFINISHED))
    completed = [run for run in found if run.outcome in (Outcome.OK, Outcome.ERRORS) and run.finished_at]
    return (
        max(found, key=lambda run: run.started_at, default=None),
        max(completed, key=lambda run: run.finished_at, default=None),
        max((run for run in completed if run.outcome == Outcome.OK), key=lambda run: run.finished_at, default=None),
    )


def recorded_changes():
    """Repairs and lock removals recorded, by rule and trigger, from the counts kept on each run: one row per
    run (17,520 a year at the default schedule), never one per record."""
    sums = {rule.value: Sum(column) for rule, column in REPAIR_COUNTS.items()}
    rows = (CleanupRun.objects.filter(dry_run=False).values("trigger")
            .annotate(**sums, removed=Sum("locks_removed"), released=Sum("locks_released")).order_by())
    repairs, removals = {}, {}
    for row in rows:
        trigger = row["trigger"]
        for rule in REPAIR_COUNTS:
            repairs[(rule.value, trigger)] = row[rule.value] or 0
        # the job deletes expired locks; an admin run deletes the locks an operator picked
        removed_rule = RecordRule.RELEASED_BY_HAND if trigger == Trigger.ADMIN else RecordRule.EXPIRED_LOCK
        removals[(removed_rule.value, trigger)] = row["removed"] or 0
        removals[(RecordRule.RELEASED_WITH_BATCH.value, trigger)] = row["released"] or 0
    return repairs, removals


@lru_cache(maxsize=8)
def schedule_interval(schedule: str, *, hour: datetime) -> timedelta | None:
    """health.schedule_interval, worked out once an hour: walking a week of a cron schedule costs tens of
    milliseconds of CPU, more than the whole scrape's queries. None for a schedule cron cannot run (the
    system check reports it)."""
    try:
        return health.schedule_interval(schedule, start=hour)
    except ValueError:
        return None


def read_state(*, job: JobSettings | None = None, timeout: timedelta | None = None) -> State:
    """Everything /metrics shows, read in one transaction under `timeout`. Raises DatabaseError
    when the database cannot be reached or a query times out."""
    job = job or job_settings()
    timeout = timeout or monitoring_settings().metrics_statement_timeout
    started = time.monotonic()
    with transaction.atomic():
        bound_waits(timeout, timeout)  # neither a slow query nor a table lock holds the scrape longer
        now = database_now()
        state = State(now=now, job=job)
        state.stuck, state.oldest_stuck = stuck_batches(now=now, job=job)
        state.unjudgeable = unjudgeable_batches()
        state.expired_locks, state.expired_locks_of_moving_batches = expired_locks_by_content_type(now=now, job=job)
        state.last_run, state.last_completed, state.last_success = job_run_history()
        state.repairs, state.lock_removals = recorded_changes()
    state.schedule_interval = schedule_interval(job.schedule, hour=now.replace(minute=0, second=0, microsecond=0))
    state.read_seconds = time.monotonic() - started
    return state


# --- The families ----------------------------------------------------------------------------------


def gauge(name, documentation, labels=(), unit=""):
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=list(labels), unit=unit)


def run_history_families(*, last_run: RunTimes | None, last_completed_at: datetime | None,
                         last_success_at: datetime | None, schedule_interval: timedelta | None):
    """The job's run history, with the same names whether /metrics read it from the run table or the job
    reported its own run. A timestamp that does not exist yet (no run ever completed) is left out."""
    families = []
    if schedule_interval is not None:
        interval = gauge("cleanup_job_schedule_interval_seconds",
                          "Longest gap between two runs of CLEANUP_SCHEDULE; the job is late after twice this.")
        interval.add_metric([], schedule_interval.total_seconds())
        families.append(interval)
    if last_run is not None:
        start = gauge("cleanup_job_last_run_start_timestamp_seconds", "When the job's last run started.")
        start.add_metric([], last_run.started_at.timestamp())
        families.append(start)
        outcome = gauge("cleanup_job_last_run_outcome", "Outcome of the job's last run: 1 for the outcome it had.",
                         ["outcome"])
        for value in OUTCOMES:
            outcome.add_metric([value], 1.0 if last_run.outcome == value else 0.0)
        families.append(outcome)
        if last_run.finished_at is not None:
            end = gauge("cleanup_job_last_run_end_timestamp_seconds", "When the job's last run ended.")
            end.add_metric([], last_run.finished_at.timestamp())
            duration = gauge("cleanup_job_last_run_duration_seconds", "How long the job's last run took.")
            duration.add_metric([], max((last_run.finished_at - last_run.started_at).total_seconds(), 0.0))
            families += [end, duration]
    for name, value, documentation in (
        ("cleanup_job_last_completed_timestamp_seconds", last_completed_at,
         "When the job last ran to the end (outcome ok or errors): its age says whether the schedule runs."),
        ("cleanup_job_last_success_timestamp_seconds", last_success_at,
         "When the job last ran to the end without errors."),
    ):
        if value is not None:
            family = gauge(name, documentation)
            family.add_metric([], value.timestamp())
            families.append(family)
    return families


def state_families(state: State):
    """Every family /metrics shows, from one State."""
    content_types = state.content_types()
    stuck = gauge("generation_stuck_batches",
                   "Batches stuck now (queuing/processing, idle longer than the stuck window), by the rule that "
                   "applies; corrupt and stalled ones are reported, not repaired.", ["rule", "content_type"])
    for rule in rules.STUCK_RULES:
        for content_type in content_types:
            stuck.add_metric([rule.value, content_type], state.stuck.get((rule.value, content_type), 0))
    oldest = gauge("generation_stuck_oldest_idle_seconds",
                   "How long the oldest stuck batch of each rule has been idle (0: none is stuck).",
                   ["rule", "content_type"])
    for rule in rules.STUCK_RULES:
        for content_type in content_types:
            updated_at = state.oldest_stuck.get((rule.value, content_type))
            oldest.add_metric([rule.value, content_type],
                              (state.now - updated_at).total_seconds() if updated_at else 0.0)
    # the windows the counts were taken with: each content type's own (GENERATION_STUCK_AFTER=3h,video=8h)
    windows = []
    for name, value, documentation in (
        ("generation_stuck_after_seconds", state.job.stuck_after,
         "A queuing/processing batch idle this long is stuck (GENERATION_STUCK_AFTER)."),
        ("generation_lock_ttl_seconds", state.job.lock_ttl, "A lock held this long is expired (GENERATION_LOCK_TTL)."),
    ):
        window = gauge(name, documentation, ["content_type"])
        for content_type in content_types:
            window.add_metric([content_type], value.for_type(content_type).total_seconds())
        windows.append(window)
    unjudgeable = gauge("generation_unjudgeable_batches",
                         "Batches no rule can judge, reported as errors by every run and never changed: a status "
                         "the contract does not name, or in progress but never updated.", ["reason"])
    for reason in UNJUDGEABLE:
        unjudgeable.add_metric([reason], state.unjudgeable.get(reason, 0))
    expired = gauge("generation_expired_locks", "Locks held longer than the lock TTL.", ["content_type"])
    moving = gauge("generation_expired_locks_of_moving_batches",
                    "Expired locks whose batch is still moving (updated within the stuck window): generations "
                    "that take longer than the lock TTL.", ["content_type"])
    for content_type in content_types:
        expired.add_metric([content_type], state.expired_locks.get(content_type, 0))
        moving.add_metric([content_type], state.expired_locks_of_moving_batches.get(content_type, 0))

    repairs = CounterMetricFamily(f"{PREFIX}_cleanup_repairs", "Batch repairs recorded, by rule and trigger.",
                                  labels=["rule", "trigger"])
    for rule in REPAIR_COUNTS:
        for trigger in Trigger.values:
            repairs.add_metric([rule.value, trigger], state.repairs.get((rule.value, trigger), 0))
    removals = CounterMetricFamily(f"{PREFIX}_cleanup_lock_removals",
                                   "Lock removals recorded, by rule (expired_lock, released_with_batch, "
                                   "released_by_hand) and trigger.", labels=["rule", "trigger"])
    for rule in LOCK_REMOVAL_RULES:
        for trigger in Trigger.values:
            removals.add_metric([rule.value, trigger], state.lock_removals.get((rule.value, trigger), 0))

    read = gauge("metrics_read_duration_seconds", "How long this scrape took to read the database.")
    read.add_metric([], state.read_seconds)
    history = run_history_families(
        last_run=state.last_run, schedule_interval=state.schedule_interval,
        last_completed_at=state.last_completed.finished_at if state.last_completed else None,
        last_success_at=state.last_success.finished_at if state.last_success else None)
    return [stuck, oldest, *windows, unjudgeable, expired, moving, *history, repairs, removals, read]


class Families:
    """A collector that yields families already built (prometheus_client's registries take collectors)."""

    def __init__(self, families):
        self.families = list(families)

    def collect(self):
        return iter(self.families)


def registry_of(families) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(families))
    return registry


def exposition(*, accept: str | None = None) -> tuple[bytes, str]:
    """The /metrics body and its content type (Prometheus text, or OpenMetrics if the scraper asks)."""
    state = read_state()
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry_of(state_families(state))), content_type
