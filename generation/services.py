"""Applies the repair rules through the ORM: select, lock, re-check, write, record.

Every entry point (the command, cron, the admin actions) comes through here:

- `cleanup()`: the scheduled job. Finds stuck batches and expired locks page by
  page (keyset pagination), one transaction per page.
- `repair_selected()`: the admin's per-row variant for hand-picked ids.
- `release_locks()`: the admin's "release selected locks".

Safety, per page of rows (PostgreSQL):
- rows are locked with SELECT ... FOR UPDATE SKIP LOCKED, so a row a worker is
  writing is skipped (counted as skipped_busy, retried next run), never waited on;
- the stuck predicate is re-checked on the locked rows: a worker may have moved
  or finished the batch since the page was selected;
- only the columns a rule changes are written, under the row lock, so a
  worker's increment waits for our commit and then applies on top of it;
- the row changes, the released locks and the audit records commit together or
  not at all; `lock_timeout`/`statement_timeout` bound every wait, and a page
  that times out is rolled back, reported, and left for the next run;
- one run at a time: a session-level advisory lock (pg_try_advisory_lock).

On SQLite, SELECT ... FOR UPDATE and advisory locks do not exist: the database
file is locked per write transaction instead, which serialises writers but does
not protect a read-then-write against a concurrent writer. SQLite is for local
use and demos; production runs on PostgreSQL.
"""

import json
import logging
import os
import socket
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from django.db import DatabaseError, connection, transaction
from django.db.models import BigIntegerField, Case, F, Q, Value, When
from django.db.models.functions import Least, Now
from django.db.models.lookups import Exact, GreaterThan, LessThan
from django.utils import timezone
from psycopg import sql

from . import rules
from .models import (
    KNOWN_STATUSES,
    CleanupRun,
    GenerationLock,
    GenerationStatus,
    Outcome,
    RecordKind,
    RecordRule,
    RepairRecord,
    Trigger,
)
from .rules import Counters, Rule

logger = logging.getLogger(__name__)

# pg_try_advisory_lock key for "a cleanup run is in progress" (b"butter_c" as an int64).
ADVISORY_LOCK_KEY = int.from_bytes(b"butter_c", "big")
DETAILS_CAP = 1_000  # per report: memory stays flat however large the backlog
ERRORS_CAP = 100
COUNTER_FIELDS = ("total_requested", "total_queued", "total_processing", "total_completed", "total_failed")
STATUS_FIELDS = ("id", "account_id", "content_type", "status", "updated_at", "completed_at", "lock_id", *COUNTER_FIELDS)


class CleanupAborted(Exception):
    """The run could not go on (the database connection was lost). The message is one line."""


class Mode(StrEnum):
    SCHEDULED = "scheduled"  # stuck window from the parameters; fail stalled only past its own window
    FORCE = "force"  # any queuing/processing row, whatever its age (admin, workers known dead)
    FAIL_STALLED = "fail_stalled"  # only the stalled_failed change, whatever the age (admin)


# --- The report ----------------------------------------------------------------------------


def _iso(value):
    return value.isoformat() if isinstance(value, datetime) else value


def _seconds(value: timedelta | None):
    return None if value is None else int(value.total_seconds())


@dataclass
class StatusDetail:
    id: int
    account_id: int
    content_type: str
    rule: str  # a Rule, or why the row was left alone (admin): not_stuck, not_stalled, busy, finished
    before: dict
    after: dict
    idle_s: float | None
    applied: bool

    def as_dict(self):
        return {
            "id": self.id, "account_id": self.account_id, "content_type": self.content_type, "rule": self.rule,
            "before": self.before, "after": self.after, "idle_s": self.idle_s, "applied": self.applied,
        }


@dataclass
class LockDetail:
    id: int
    lock_id: str
    account_id: int
    content_type: str
    locked_at: datetime
    age_s: float
    rule: str  # expired_lock, released_with_batch, released_by_hand
    batch_id: int | None = None
    batch_status: str | None = None
    batch_idle_s: float | None = None
    applied: bool = False

    def as_dict(self):
        return {**self.__dict__, "locked_at": _iso(self.locked_at)}


@dataclass
class StatusTotals:
    examined: int = 0
    by_rule: Counter = field(default_factory=Counter)
    stalled: int = 0
    corrupt: int = 0
    skipped_busy: int = 0
    moved_on: int = 0  # no longer stuck once locked: a worker got there first
    unknown_status: int = 0  # a status the contract does not name: never a candidate, reported
    never_updated: int = 0  # queuing/processing with updated_at NULL: its age is unknown, reported
    left_alone: int = 0  # admin: selected but not eligible (not stuck, not stalled, finished)
    locks_released: int = 0
    failed_batches: int = 0
    details: list = field(default_factory=list)
    details_truncated: bool = False

    @property
    def repaired(self):
        return sum(self.by_rule.values())


@dataclass
class LockTotals:
    expired: int = 0
    removed: int = 0
    skipped_busy: int = 0
    failed_batches: int = 0
    details: list = field(default_factory=list)
    details_truncated: bool = False


@dataclass
class CleanupReport:
    trigger: str
    dry_run: bool
    now: datetime
    stuck_after: timedelta | None = None
    lock_ttl: timedelta | None = None
    fail_stalled_after: timedelta | None = None
    batch_size: int | None = None
    run_id: int | None = None
    outcome: str = Outcome.OK
    skipped_reason: str = ""
    errors: list = field(default_factory=list)
    statuses: StatusTotals = field(default_factory=StatusTotals)
    locks: LockTotals = field(default_factory=LockTotals)
    duration_s: float = 0.0

    @property
    def cutoff(self):
        return self.now - self.stuck_after if self.stuck_after else None

    @property
    def lock_cutoff(self):
        return self.now - self.lock_ttl if self.lock_ttl else None

    @property
    def records_written(self):
        return 0 if self.dry_run else self.statuses.repaired + self.statuses.locks_released + self.locks.removed

    def error(self, message):
        if len(self.errors) < ERRORS_CAP:
            self.errors.append(message)
        self.outcome = Outcome.ERRORS

    def as_dict(self):
        s, locks = self.statuses, self.locks
        return {
            "run_id": self.run_id,
            "trigger": self.trigger,
            "dry_run": self.dry_run,
            "outcome": self.outcome,
            "skipped_reason": self.skipped_reason,
            "now": _iso(self.now),
            "cutoff": _iso(self.cutoff),
            "lock_cutoff": _iso(self.lock_cutoff),
            "stuck_after_s": _seconds(self.stuck_after),
            "lock_ttl_s": _seconds(self.lock_ttl),
            "fail_stalled_after_s": _seconds(self.fail_stalled_after),
            "batch_size": self.batch_size,
            "statuses": {
                "examined": s.examined,
                "repaired": s.repaired,
                "by_rule": {rule.value: s.by_rule[rule] for rule in rules.REPAIRS},
                "stalled": s.stalled,
                "corrupt": s.corrupt,
                "skipped_busy": s.skipped_busy,
                "moved_on": s.moved_on,
                "unknown_status": s.unknown_status,
                "never_updated": s.never_updated,
                "left_alone": s.left_alone,
                "locks_released": s.locks_released,
                "failed_batches": s.failed_batches,
                "details": [d.as_dict() for d in s.details],
                "details_truncated": s.details_truncated,
            },
            "locks": {
                "expired": locks.expired,
                "removed": locks.removed,
                "skipped_busy": locks.skipped_busy,
                "failed_batches": locks.failed_batches,
                "details": [d.as_dict() for d in locks.details],
                "details_truncated": locks.details_truncated,
            },
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
        }


def _keep(totals, detail):
    if len(totals.details) < DETAILS_CAP:
        totals.details.append(detail)
    else:
        totals.details_truncated = True


# --- Database helpers ----------------------------------------------------------------------


def database_now() -> datetime:
    """The database's clock: the cutoffs must not depend on the clock of the host running the job.
    (SQLite runs in this process, so its clock is this host's.)"""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            return cursor.fetchone()[0]
    return timezone.now()


@contextmanager
def _single_run(enabled: bool):
    """Yield whether this process may run: a session-level advisory lock on PostgreSQL."""
    if not enabled or connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])
            except DatabaseError:
                pass  # the connection is gone, and the session lock with it


def _bound_waits(lock_timeout: timedelta | None, statement_timeout: timedelta | None):
    """Transaction-local timeouts (PostgreSQL), so one page never hangs the run."""
    if connection.vendor != "postgresql" or not (lock_timeout or statement_timeout):
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
            [f"{int(lock_timeout.total_seconds() * 1000) if lock_timeout else 0}ms",
             f"{int(statement_timeout.total_seconds() * 1000) if statement_timeout else 0}ms"],
        )


@dataclass
class _PageResult:
    """What one page did; merged into the report only once its transaction committed."""

    statuses: StatusTotals = field(default_factory=StatusTotals)
    locks: LockTotals = field(default_factory=LockTotals)
    errors: list = field(default_factory=list)
    would_release: list = field(default_factory=list)  # dry run: lock ids released with their batches

    def merge_into(self, report):
        s, r = self.statuses, report.statuses
        for name in ("examined", "stalled", "corrupt", "skipped_busy", "moved_on", "left_alone", "locks_released"):
            setattr(r, name, getattr(r, name) + getattr(s, name))
        r.by_rule.update(s.by_rule)
        for name in ("expired", "removed", "skipped_busy"):
            setattr(report.locks, name, getattr(report.locks, name) + getattr(self.locks, name))
        for detail in s.details:
            _keep(r, detail)
        for detail in self.locks.details:
            _keep(report.locks, detail)
        for message in self.errors:
            report.error(message)


def _run_page(report, totals, what, work):
    """One page = one transaction. A page that fails is rolled back, reported and left for the next
    run; the run goes on, unless the connection itself is gone. Returns the page's result or None."""
    connection.ensure_connection()
    session = connection.connection
    try:
        with transaction.atomic():
            result = work()
    except DatabaseError as exc:
        # When the commit or rollback fails on a dead connection, atomic() closes it and Django silently
        # opens a new one: that session does not hold the run's advisory lock, so the run must stop.
        if connection.connection is not session or not connection.is_usable():
            raise CleanupAborted(f"lost the database connection during the run ({one_line(exc)})") from exc
        totals.failed_batches += 1
        report.error(f"{what}: rolled back, left for the next run ({one_line(exc)})")
        logger.warning("page_failed", extra={"fields": {"what": what, "error": one_line(exc)}})
        return None
    result.merge_into(report)
    return result


def one_line(exc) -> str:
    """An exception as one line (database errors span several), for reports, logs and messages."""
    return " ".join(str(exc).split()) or type(exc).__name__


def database_name() -> str:
    """Which database, for an operator's error line: never the URL (it carries the password)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite database {s['NAME']}"
    return f"database {s.get('NAME')} on {s.get('HOST') or 'localhost'}:{s.get('PORT') or 5432}"


def _bounded_pages(pages, report, totals, what, lock_timeout, statement_timeout):
    """The pages of one pass, each selected in a short transaction of its own under the run's lock and
    statement timeouts: the selection runs between the pages' transactions, and would otherwise wait
    without limit behind a table lock (an ALTER TABLE, a LOCK TABLE ... IN ACCESS EXCLUSIVE MODE).
    If selecting fails, the rest of the pass is left for the next run, reported; the run goes on."""
    last_id = 0
    while True:
        connection.ensure_connection()
        session = connection.connection
        try:
            with transaction.atomic():
                _bound_waits(lock_timeout, statement_timeout)
                ids = next(pages)
        except StopIteration:
            return
        except DatabaseError as exc:
            if connection.connection is not session or not connection.is_usable():
                raise CleanupAborted(f"lost the database connection during the run ({one_line(exc)})") from exc
            totals.failed_batches += 1
            report.error(f"{what} after #{last_id}: could not select the next page, left for the next run "
                         f"({one_line(exc)})")
            logger.warning("page_failed", extra={"fields": {"what": f"{what} after #{last_id}",
                                                            "error": one_line(exc)}})
            return
        last_id = ids[-1]
        yield ids


# --- Runs and records ----------------------------------------------------------------------


def _start_run(report: CleanupReport, *, filters: dict, actor) -> CleanupRun:
    return CleanupRun.objects.create(
        trigger=report.trigger, dry_run=report.dry_run, stuck_after=report.stuck_after, lock_ttl=report.lock_ttl,
        fail_stalled_after=report.fail_stalled_after, batch_size=report.batch_size, filters=filters,
        host=socket.gethostname()[:255], pid=os.getpid(), actor=actor,
    )


def _finish_run(run: CleanupRun, report: CleanupReport):
    s, locks = report.statuses, report.locks
    CleanupRun.objects.filter(pk=run.pk).update(
        finished_at=Now(), outcome=report.outcome, error="\n".join(report.errors), examined=s.examined,
        repaired_all_accounted=s.by_rule[Rule.ALL_ACCOUNTED], repaired_no_active_tasks=s.by_rule[Rule.NO_ACTIVE_TASKS],
        repaired_counter_overflow=s.by_rule[Rule.COUNTER_OVERFLOW],
        repaired_stalled_failed=s.by_rule[Rule.STALLED_FAILED], stalled=s.stalled, corrupt=s.corrupt,
        skipped_busy=s.skipped_busy + locks.skipped_busy, locks_expired=locks.expired, locks_removed=locks.removed,
        locks_released=s.locks_released,
    )


def status_snapshot(row) -> dict:
    """The values of a status row that a repair may change, for RepairRecord.before/after."""
    return {
        **{name: getattr(row, name) for name in COUNTER_FIELDS},
        "status": row.status,
        "completed_at": _iso(row.completed_at),
        "updated_at": _iso(row.updated_at),
    }


def lock_snapshot(lock) -> dict:
    return {
        "lock_id": lock.lock_id, "account_id": lock.account_id, "content_type": lock.content_type,
        "locked_at": _iso(lock.locked_at), "created_at": _iso(lock.created_at),
    }


class _Record(NamedTuple):
    """A RepairRecord's columns, saved with the rest of its page by _save_records. A tuple, not a model
    instance: building 160,000 RepairRecord instances cost 4 s of a 100,000 backlog's run."""

    run_id: int
    kind: str
    target_id: int
    account_id: int
    content_type: str
    rule: str
    before: dict
    after: dict | None
    actor_id: int | None


def _lock_record(run, lock, rule, actor):
    return _Record(run.pk, RecordKind.LOCK.value, lock.id, lock.account_id, lock.content_type, str(rule),
                   lock_snapshot(lock), None, actor.pk if actor else None)


# --- Stuck statuses ------------------------------------------------------------------------


@dataclass(frozen=True)
class _StatusPass:
    mode: Mode
    cutoff: datetime | None  # None: no age window (admin force / fail stalled)
    fail_cutoff: datetime | None  # idle since before this: stalled batches are failed
    lock_timeout: timedelta | None = None
    statement_timeout: timedelta | None = None

    def eligible(self, row) -> bool:
        if row.status not in rules.IN_PROGRESS:
            return False
        return self.cutoff is None or (row.updated_at is not None and row.updated_at < self.cutoff)

    def decide(self, row) -> rules.RepairDecision:
        fail = self.mode == Mode.FAIL_STALLED or (
            self.fail_cutoff is not None and row.updated_at is not None and row.updated_at < self.fail_cutoff
        )
        return rules.decide(Counters.of(row), row.status, fail_stalled=fail)


def _stuck_candidates(*, cutoff, accounts=None, content_types=None):
    qs = GenerationStatus.objects.filter(status__in=rules.IN_PROGRESS, updated_at__lt=cutoff)
    if accounts:
        qs = qs.filter(account_id__in=accounts)
    if content_types:
        qs = qs.filter(content_type__in=content_types)
    return qs


def _run_bounded(report, totals, what, lock_timeout, statement_timeout, work):
    """`work` in a short transaction under the run's timeouts (a table lock must not hang the run);
    if it fails, reported and skipped: the run goes on, unless the connection itself is gone."""
    connection.ensure_connection()
    session = connection.connection
    try:
        with transaction.atomic():
            _bound_waits(lock_timeout, statement_timeout)
            work()
    except DatabaseError as exc:
        if connection.connection is not session or not connection.is_usable():
            raise CleanupAborted(f"lost the database connection during the run ({one_line(exc)})") from exc
        totals.failed_batches += 1
        report.error(f"{what}: failed, left for the next run ({one_line(exc)})")
        logger.warning("page_failed", extra={"fields": {"what": what, "error": one_line(exc)}})


ANOMALIES_NAMED = 20  # per kind, in the report's errors; the counts are exact


def _report_anomalies(report: CleanupReport, *, accounts=None, content_types=None):
    """Batches no rule can judge, reported as errors for a person: a status the contract does not name
    (served by a partial index that is empty while the data is sane) and in-progress batches with no
    updated_at (found through the in-progress index). Neither is ever a candidate: nothing changes."""
    scans = {
        "unknown_status": GenerationStatus.objects.filter(~Q(status__in=KNOWN_STATUSES)),
        "never_updated": GenerationStatus.objects.filter(status__in=rules.IN_PROGRESS, updated_at__isnull=True),
    }
    for kind, qs in scans.items():
        if accounts:
            qs = qs.filter(account_id__in=accounts)
        if content_types:
            qs = qs.filter(content_type__in=content_types)
        named = list(qs.order_by("id").values_list("id", "status")[:ANOMALIES_NAMED])
        count = len(named) if len(named) < ANOMALIES_NAMED else qs.count()
        setattr(report.statuses, kind, count)
        for batch_id, status in named:
            if kind == "unknown_status":
                report.error(f"batch #{batch_id} has status {status!r}, which the rules do not know; not changed")
            else:
                report.error(f"batch #{batch_id} is {status} but was never updated (updated_at NULL); not changed")
        if count > len(named):
            report.error(f"{count - len(named)} more batches like these ({kind}); not changed")
        if count:
            logger.error(kind, extra={"fields": {"count": count, "ids": [batch_id for batch_id, _ in named]}})


def _keyset_pages(queryset, batch_size):
    """Pages of ids in id order, `id > last ORDER BY id LIMIT n`: never the whole table in memory."""
    last_id = 0
    while True:
        ids = list(queryset.filter(id__gt=last_id).order_by("id").values_list("id", flat=True)[:batch_size])
        if not ids:
            return
        yield ids
        last_id = ids[-1]


def count_stuck(*, stuck_after: timedelta, accounts=None, content_types=None) -> int:
    """How many batches are stuck now (for progress bars and the health page)."""
    return _stuck_candidates(cutoff=database_now() - stuck_after, accounts=accounts,
                             content_types=content_types).count()


def _process_status_page(ids, spec: _StatusPass, *, dry_run: bool, run, actor, left_alone_ids=()) -> _PageResult:
    """Lock, re-check, decide, write and record one page of status rows (inside its transaction)."""
    result = _PageResult()
    totals = result.statuses
    qs = GenerationStatus.objects.filter(id__in=ids).only(*STATUS_FIELDS).annotate(db_now=Now()).order_by("id")
    if not dry_run:
        _bound_waits(spec.lock_timeout, spec.statement_timeout)
        qs = qs.select_for_update(skip_locked=True, of=("self",))
    rows = list(qs)
    totals.skipped_busy = len(ids) - len(rows)
    for row in rows[1:]:
        # One clock per page, so the page's writes share one timestamp: PostgreSQL's statement_timestamp()
        # is one value already; SQLite's 'now' may tick between two rows of the same SELECT.
        row.db_now = rows[0].db_now

    repairs = []  # (row, decision)
    for row in rows:
        # Re-check under the row lock: a worker may have moved or finished the batch since the page was selected.
        if not spec.eligible(row):
            if row.id in left_alone_ids:
                reason = "finished" if row.status not in rules.IN_PROGRESS else "not_stuck"
                totals.details.append(_left_alone(row, reason))
                totals.left_alone += 1
            else:
                totals.moved_on += 1
            continue
        decision = spec.decide(row)
        if spec.mode == Mode.FAIL_STALLED and decision.rule != Rule.STALLED_FAILED:
            totals.details.append(_left_alone(row, "not_stalled"))
            totals.left_alone += 1
            continue
        totals.examined += 1
        if decision.rule == Rule.CORRUPT:
            totals.corrupt += 1
            result.errors.append(f"batch #{row.id} has corrupt counters (T/Q/P/C/F {decision.before}); not changed")
        elif decision.rule == Rule.STALLED:
            totals.stalled += 1
        elif decision.repairs:
            repairs.append((row, decision))
            totals.by_rule[decision.rule] += 1
        totals.details.append(_status_detail(row, decision, applied=False))

    if repairs and not dry_run:
        records = _write_repairs(repairs, run, actor)
        totals.locks_released = sum(1 for r in records if r.kind == RecordKind.LOCK)
        for detail in totals.details:
            detail.applied = detail.rule in rules.REPAIRS
    elif repairs:
        lock_ids = [row.lock_id for row, decision in repairs if decision.finishes and row.lock_id]
        result.would_release = list(GenerationLock.objects.filter(lock_id__in=lock_ids).values_list(
            "lock_id", flat=True)) if lock_ids else []
        totals.locks_released = len(result.would_release)
    for detail in totals.details:
        _log_status(detail, dry_run)
    return result


def _left_alone(row, reason):
    snapshot = status_snapshot(row)
    return StatusDetail(row.id, row.account_id, row.content_type, reason, snapshot, snapshot,
                        _idle(row), applied=False)


def _idle(row):
    if row.updated_at is None:
        return None
    return round((row.db_now - row.updated_at).total_seconds(), 1)


def _status_detail(row, decision, *, applied):
    before = status_snapshot(row)
    after = dict(before)
    if decision.repairs:
        after.update(decision.after.as_dict(), status=decision.status, updated_at=_iso(row.db_now))
        if decision.finishes:
            after["completed_at"] = _iso(row.db_now)
    return StatusDetail(row.id, row.account_id, row.content_type, decision.rule.value, before, after,
                        _idle(row), applied)


# --- The rules' writes, as SQL over the locked rows ---------------------------------------------
# rules.decide() picks each row's rule; these expressions compute, from the locked row's current
# values, what that rule writes (one UPDATE per rule per page). bulk_update of the values decided in
# Python cost 0.6 ms a row (a CASE WHEN id = ... THEN ... per row and column, built and resolved by the
# ORM): 60 s for a backlog of 100,000, six times the reference SQL's whole run (docs/benchmarks.md).
# tests/test_performance.py proves with hypothesis that they write exactly what rules.decide() says.

_T, _Q, _P, _C, _F = (F(name) for name in COUNTER_FIELDS)
# counter_overflow drops the excess Q+P+C+F-T from P first, then from Q: the counters then add up to T,
# leaving room = T-C-F (at least 1: C+F < T for this rule) in flight. Written as Q' = min(Q, room),
# P' = room - Q', which is the same and never adds the counters up: Q+P+C+F can pass the bigint limit.
_ROOM = _T - _C - _F
_OVERFLOW_QUEUED = Least(_Q, _ROOM, output_field=BigIntegerField())


def _finished_status(new_failed):
    """rules.finished_status() of the counters after the write (total_completed is never changed)."""
    return Case(When(Exact(new_failed, 0), then=Value(rules.COMPLETED)),
                When(Exact(_C, 0), then=Value(rules.FAILED)), default=Value(rules.PARTIAL))


def _finish_writes(new_failed=None):
    """rules._finish(): nothing left in flight, the missing tasks (if any) counted as failed."""
    writes = {"total_queued": Value(0), "total_processing": Value(0)}
    if new_failed is not None:
        writes["total_failed"] = new_failed
    return {**writes, "status": _finished_status(_F if new_failed is None else new_failed)}


RULE_WRITES = {
    Rule.ALL_ACCOUNTED: _finish_writes(),
    Rule.NO_ACTIVE_TASKS: _finish_writes(_T - _C),
    Rule.COUNTER_OVERFLOW: {
        "total_queued": _OVERFLOW_QUEUED,
        "total_processing": _ROOM - _OVERFLOW_QUEUED,
        # rules.progress_status() of the new counters: P' > 0 exactly when Q < room
        "status": Case(When(LessThan(_Q, _ROOM), then=Value(rules.PROCESSING)),
                       When(GreaterThan(_C, 0), then=Value(rules.PROCESSING)), default=Value(rules.QUEUING)),
    },
    Rule.STALLED_FAILED: _finish_writes(_T - _C),
}


def _write_repairs(repairs, run, actor) -> list[_Record]:
    """Write what each rule changes (one UPDATE per rule, so the query count per page is constant);
    release the finished batches' locks; record every change. Called inside the page's transaction,
    on rows it holds locked: the values the rules were decided on are the values the UPDATE reads."""
    records = []
    by_rule = defaultdict(list)
    finished_lock_ids = {}
    for row, decision in repairs:
        before = status_snapshot(row)
        changes = {**decision.changes(), "updated_at": row.db_now}
        if decision.finishes:
            changes["completed_at"] = row.db_now
            if row.lock_id:
                finished_lock_ids[row.lock_id] = row
        for name, value in changes.items():
            setattr(row, name, value)
        by_rule[decision.rule, decision.finishes].append(row.id)
        after = {**before, **{name: _iso(value) for name, value in changes.items()}}  # = status_snapshot(row)
        records.append(_Record(run.pk, RecordKind.STATUS.value, row.id, row.account_id, row.content_type,
                               decision.rule.value, before, after, actor.pk if actor else None))
    now = repairs[0][0].db_now  # one clock per page (see _process_status_page)
    for (rule, finishes), ids in by_rule.items():
        timestamps = {"updated_at": now, **({"completed_at": now} if finishes else {})}
        GenerationStatus.objects.filter(id__in=ids).update(**RULE_WRITES[rule], **timestamps)
    if finished_lock_ids:
        locks = list(GenerationLock.objects.select_for_update().filter(lock_id__in=finished_lock_ids))
        GenerationLock.objects.filter(id__in=[lock.id for lock in locks]).delete()
        for lock in locks:
            records.append(_lock_record(run, lock, RecordRule.RELEASED_WITH_BATCH, actor))
            logger.info("lock_released", extra={"fields": {
                "lock_id": lock.lock_id, "lock_pk": lock.id, "batch_id": finished_lock_ids[lock.lock_id].id,
                "account_id": lock.account_id, "content_type": lock.content_type,
            }})
    _save_records(records)
    return records


_COPY_RECORDS = sql.SQL("COPY {} ({}) FROM STDIN").format(
    sql.Identifier(RepairRecord._meta.db_table),
    sql.SQL(", ").join(sql.Identifier(RepairRecord._meta.get_field(name).column) for name in _Record._fields))


def _save_records(records: list[_Record]):
    """Insert a page's RepairRecords in one statement. On PostgreSQL with COPY: bulk_create cost
    ~130 us a record (the ORM's compiler, psycopg quoting every value into the SQL text, the server
    parsing it back), COPY ~25 us; a backlog of 100,000 writes 160,000 records: 21 s against 4 s."""
    if connection.vendor != "postgresql" or not records:
        RepairRecord.objects.bulk_create([RepairRecord(**record._asdict()) for record in records])
        return
    started = time.monotonic()
    dumps = json.dumps  # what JSONField stores (its encoder is the default one)
    with connection.cursor() as cursor, cursor.cursor.copy(_COPY_RECORDS) as copy:
        for r in records:
            copy.write_row((r.run_id, r.kind, r.target_id, r.account_id, r.content_type, r.rule, dumps(r.before),
                            None if r.after is None else dumps(r.after), r.actor_id))
    if connection.queries_logged:  # COPY bypasses the cursor wrapper: keep query counts and DEBUG honest
        connection.queries_log.append({"sql": f"{_COPY_RECORDS.as_string(None)} -- {len(records)} rows",
                                       "time": f"{time.monotonic() - started:.3f}"})


def _log_status(detail: StatusDetail, dry_run: bool):
    b, a = detail.before, detail.after
    fields = {
        "dry_run": dry_run, "id": detail.id, "account_id": detail.account_id, "content_type": detail.content_type,
        "rule": detail.rule, "status": b["status"], "idle_s": detail.idle_s,
        "counters": "/".join(str(b[name]) for name in COUNTER_FIELDS),
    }
    if detail.applied or (dry_run and detail.rule in rules.REPAIRS):
        fields["status_after"] = a["status"]
        fields["counters_after"] = "/".join(str(a[name]) for name in COUNTER_FIELDS)
    event = {
        Rule.CORRUPT: "corrupt", Rule.STALLED: "stalled",
    }.get(detail.rule, "repair" if detail.rule in rules.REPAIRS else "left_alone")
    level = logging.ERROR if event == "corrupt" else logging.INFO
    logger.log(level, event, extra={"fields": fields})


# --- Expired locks -------------------------------------------------------------------------


def _referring_batches(lock_ids):
    """lock_id -> the newest batch that names it (one query)."""
    batches = {}
    for batch in (GenerationStatus.objects.filter(lock_id__in=lock_ids)
                  .only("id", "lock_id", "status", "updated_at").order_by("lock_id", "updated_at")):
        batches[batch.lock_id] = batch  # the last one per lock_id is the newest
    return batches


def _lock_detail(lock, now, rule, batch):
    detail = LockDetail(
        id=lock.id, lock_id=lock.lock_id, account_id=lock.account_id, content_type=lock.content_type,
        locked_at=lock.locked_at, age_s=round((now - lock.locked_at).total_seconds(), 1), rule=rule,
    )
    if batch is not None:
        detail.batch_id, detail.batch_status = batch.id, batch.status
        if batch.updated_at is not None:
            detail.batch_idle_s = round((now - batch.updated_at).total_seconds(), 1)
    return detail


def _process_lock_page(ids, *, now, cutoff, rule, dry_run, run, actor, lock_timeout=None,
                       statement_timeout=None, released=frozenset()) -> _PageResult:
    """Delete one page of locks (inside its transaction), recording each with the batch that names it."""
    result = _PageResult()
    totals = result.locks
    qs = GenerationLock.objects.filter(id__in=ids).order_by("id")
    if not dry_run:
        _bound_waits(lock_timeout, statement_timeout)
        qs = qs.select_for_update(skip_locked=True)
    rows = list(qs)
    totals.skipped_busy = len(ids) - len(rows)
    # re-checked under the row lock: a lock re-taken since the page was selected is not expired
    # `released`: a dry run's locks already counted as released with their batches (a real run deleted them)
    locks = [lock for lock in rows if (cutoff is None or lock.locked_at < cutoff) and lock.lock_id not in released]
    batches = _referring_batches([lock.lock_id for lock in locks])
    totals.details = [_lock_detail(lock, now, rule, batches.get(lock.lock_id)) for lock in locks]
    totals.expired = len(locks)
    if locks and not dry_run:
        delete = GenerationLock.objects.filter(id__in=[lock.id for lock in locks])
        if cutoff is not None:
            # repeated in the DELETE: a lock released and re-taken since must survive
            delete = delete.filter(locked_at__lt=cutoff)
        totals.removed, _ = delete.delete()
        _save_records([_lock_record(run, lock, rule, actor) for lock in locks])
        for detail in totals.details:
            detail.applied = True
    for detail in totals.details:
        event = "lock_expired" if rule == RecordRule.EXPIRED_LOCK else "lock_released"
        logger.info(event, extra={"fields": {"dry_run": dry_run, **detail.as_dict()}})
    return result


def _expired_lock_candidates(*, cutoff, accounts=None, content_types=None):
    qs = GenerationLock.objects.filter(locked_at__lt=cutoff)
    if accounts:
        qs = qs.filter(account_id__in=accounts)
    if content_types:
        qs = qs.filter(content_type__in=content_types)
    return qs


# --- Entry points --------------------------------------------------------------------------


@contextmanager
def _recorded(report: CleanupReport, run: CleanupRun | None, started: float):
    """Close the run's row whatever happens. An exception escaping the run is recorded as its error
    first: cron's runner swallows exceptions and the admin shows a page, so the row is what remains,
    and it must not say ok. A lost connection becomes CleanupAborted (one line for the operator)."""
    try:
        yield
    except CleanupAborted as exc:
        report.error(str(exc))
        raise
    except DatabaseError as exc:
        if connection.is_usable():
            report.error(f"run aborted: {type(exc).__name__}: {one_line(exc)}")
            raise
        # lost between two pages (selecting the next page): the same one-line abort as inside a page
        aborted = CleanupAborted(f"lost the database connection during the run ({one_line(exc)})")
        report.error(str(aborted))
        raise aborted from exc
    except Exception as exc:
        report.error(f"run aborted: {type(exc).__name__}: {one_line(exc)}")
        raise
    finally:
        report.duration_s = time.monotonic() - started
        if run is not None:
            try:
                _finish_run(run, report)
            except DatabaseError:
                pass  # connection lost: the run row keeps an empty outcome, which the health page shows


def cleanup(
    *,
    stuck_after: timedelta,
    lock_ttl: timedelta,
    fail_stalled_after: timedelta | None = None,
    batch_size: int = 500,
    dry_run: bool = False,
    accounts: list[int] | None = None,
    content_types: list[str] | None = None,
    only: str | None = None,
    trigger: str = Trigger.COMMAND,
    actor=None,
    lock_timeout: timedelta | None = None,
    statement_timeout: timedelta | None = None,
    on_page=None,
) -> CleanupReport:
    """Repair stuck batches and delete expired locks; the scheduled job.

    `only` is None, "statuses" or "locks". `on_page(kind, details)` is called after each page
    (kind "statuses" or "locks") for progress output. Raises CleanupAborted if the database
    connection is lost; the pages committed before that stay committed and recorded.
    """
    started = time.monotonic()
    report = CleanupReport(
        trigger=trigger, dry_run=dry_run, now=database_now(), stuck_after=stuck_after, lock_ttl=lock_ttl,
        fail_stalled_after=fail_stalled_after, batch_size=batch_size,
    )
    filters = {"accounts": accounts or [], "content_types": content_types or [], "only": only}
    with _single_run(not dry_run) as may_run:
        if not may_run:
            report.outcome = Outcome.SKIPPED
            report.skipped_reason = "another run holds the lock"
            run = _start_run(report, filters=filters, actor=actor)
            report.run_id = run.pk
            _finish_run(run, report)
            logger.info("run_skipped", extra={"fields": {"run_id": run.pk, "reason": report.skipped_reason}})
            return report
        run = None if dry_run else _start_run(report, filters=filters, actor=actor)
        report.run_id = run.pk if run else None
        logger.info("run_started", extra={"fields": {
            "run_id": report.run_id, "trigger": trigger, "dry_run": dry_run, "cutoff": _iso(report.cutoff),
            "lock_cutoff": _iso(report.lock_cutoff), "batch_size": batch_size, **filters,
        }})
        would_release = set()  # dry run only: so its lock pass does not count those locks again
        with _recorded(report, run, started):
            if only in (None, "statuses"):
                _run_bounded(report, report.statuses, "the check for unjudgeable batches", lock_timeout,
                             statement_timeout, lambda: _report_anomalies(
                                 report, accounts=accounts, content_types=content_types))
                spec = _StatusPass(
                    Mode.SCHEDULED, report.cutoff,
                    report.now - fail_stalled_after if fail_stalled_after else None, lock_timeout, statement_timeout,
                )
                candidates = _stuck_candidates(cutoff=report.cutoff, accounts=accounts, content_types=content_types)
                pages = _bounded_pages(_keyset_pages(candidates, batch_size), report, report.statuses,
                                       "status pages", lock_timeout, statement_timeout)
                for ids in pages:
                    page = _run_page(report, report.statuses, f"status page #{ids[0]}..#{ids[-1]}", lambda ids=ids: (
                        _process_status_page(ids, spec, dry_run=dry_run, run=run, actor=actor)))
                    if page:
                        would_release.update(page.would_release)
                    if on_page:
                        on_page("statuses", page.statuses.details if page else [])
            if only in (None, "locks"):
                candidates = _expired_lock_candidates(
                    cutoff=report.lock_cutoff, accounts=accounts, content_types=content_types)
                pages = _bounded_pages(_keyset_pages(candidates, batch_size), report, report.locks,
                                       "lock pages", lock_timeout, statement_timeout)
                for ids in pages:
                    page = _run_page(report, report.locks, f"lock page #{ids[0]}..#{ids[-1]}", lambda ids=ids: (
                        _process_lock_page(
                            ids, now=report.now, cutoff=report.lock_cutoff, rule=RecordRule.EXPIRED_LOCK,
                            dry_run=dry_run, run=run, actor=actor, lock_timeout=lock_timeout,
                            statement_timeout=statement_timeout, released=would_release,
                        )))
                    if on_page:
                        on_page("locks", page.locks.details if page else [])
    logger.info("run_finished", extra={"fields": _summary_fields(report)})
    return report


def _summary_fields(report):
    s, locks = report.statuses, report.locks
    return {
        "run_id": report.run_id, "dry_run": report.dry_run, "outcome": report.outcome, "examined": s.examined,
        "repaired": s.repaired, **{rule.value: s.by_rule[rule] for rule in rules.REPAIRS}, "stalled": s.stalled,
        "corrupt": s.corrupt, "skipped_busy": s.skipped_busy + locks.skipped_busy,
        "locks_expired": locks.expired, "locks_removed": locks.removed, "locks_released": s.locks_released,
        "duration_s": round(report.duration_s, 3),
    }


def cleanup_from_settings(*, trigger: str, dry_run: bool = False, actor=None, **overrides) -> CleanupReport:
    """cleanup() with the parameters from settings (GENERATION_*, CLEANUP_*), any of them overridden."""
    from .conf import job_settings

    job = job_settings()
    params = {
        "stuck_after": job.stuck_after, "lock_ttl": job.lock_ttl, "fail_stalled_after": job.fail_stalled_after,
        "batch_size": job.batch_size, "lock_timeout": job.lock_timeout, "statement_timeout": job.statement_timeout,
    }
    params.update(overrides)
    return cleanup(trigger=trigger, dry_run=dry_run, actor=actor, **params)


def repair_selected(
    *,
    ids,
    mode: Mode = Mode.SCHEDULED,
    stuck_after: timedelta | None = None,
    actor=None,
    dry_run: bool = False,
    trigger: str = Trigger.ADMIN,
) -> CleanupReport:
    """Apply the rules to hand-picked batches (admin actions); the dry run is the confirmation preview.

    mode SCHEDULED: only rows stuck longer than `stuck_after` (default: the setting);
    FORCE: any queuing/processing row; FAIL_STALLED: only the stalled_failed change.
    Selected rows that are not eligible are reported as left alone with the reason.
    """
    from .conf import job_settings

    job = job_settings()
    started = time.monotonic()
    report = CleanupReport(trigger=trigger, dry_run=dry_run, now=database_now(), batch_size=job.batch_size)
    if mode == Mode.SCHEDULED:
        report.stuck_after = stuck_after or job.stuck_after
    fail_cutoff = None
    if mode == Mode.SCHEDULED and job.fail_stalled_after:
        report.fail_stalled_after = job.fail_stalled_after
        fail_cutoff = report.now - job.fail_stalled_after
    spec = _StatusPass(mode, report.cutoff, fail_cutoff, job.lock_timeout, job.statement_timeout)
    ids = sorted({int(i) for i in ids})
    run = None if dry_run else _start_run(report, filters={"ids": ids[:DETAILS_CAP], "mode": mode.value}, actor=actor)
    report.run_id = run.pk if run else None
    with _recorded(report, run, started):
        for start in range(0, len(ids), job.batch_size):
            page = ids[start:start + job.batch_size]
            _run_page(report, report.statuses, f"selected batches #{page[0]}..#{page[-1]}", lambda page=page: (
                _process_status_page(page, spec, dry_run=dry_run, run=run, actor=actor, left_alone_ids=set(page))))
    return report


def release_locks(*, ids, actor=None, dry_run: bool = False, trigger: str = Trigger.ADMIN) -> CleanupReport:
    """Delete hand-picked locks (admin), whatever their age; each deletion is recorded."""
    from .conf import job_settings

    job = job_settings()
    started = time.monotonic()
    report = CleanupReport(trigger=trigger, dry_run=dry_run, now=database_now(), lock_ttl=None,
                           batch_size=job.batch_size)
    ids = sorted({int(i) for i in ids})
    run = None if dry_run else _start_run(report, filters={"lock_ids": ids[:DETAILS_CAP]}, actor=actor)
    report.run_id = run.pk if run else None
    with _recorded(report, run, started):
        for start in range(0, len(ids), job.batch_size):
            page = ids[start:start + job.batch_size]
            _run_page(report, report.locks, f"selected locks #{page[0]}..#{page[-1]}", lambda page=page: (
                _process_lock_page(
                    page, now=report.now, cutoff=None, rule=RecordRule.RELEASED_BY_HAND, dry_run=dry_run, run=run,
                    actor=actor, lock_timeout=job.lock_timeout, statement_timeout=job.statement_timeout,
                )))
    return report
