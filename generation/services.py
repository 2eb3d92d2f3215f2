"""Applies the repair rules through the ORM: select, lock, write, record. The write side.

Every entry point (the command, cron, the admin actions) comes through here, with the job's settings
read once by the entry point (conf.JobSettings):

- `cleanup()`: the scheduled job, a status pass then a lock pass, each in keyset pages of ids.
- `repair_selected()`: the admin's repair of hand-picked batches (scheduled rules, force, fail stalled).
- `release_locks()`: the admin's "release selected locks".

A page is set-based and one transaction (PostgreSQL):
- one select of the page's rows, locked with FOR UPDATE SKIP LOCKED (a row a worker is writing is
  skipped and counted as skipped_busy, never waited on), returning plain values annotated by the
  database with each row's verdict, its after-values and its before/after snapshots, computed by
  expressions.py's ordered CASEs from the row as locked;
- one UPDATE per rule, with the same expressions, WHERE the row's verdict is still that rule: only the
  columns the rule changes are written, under the row lock, so a worker's increment waits for the commit
  and lands on top; the audit record's after is what the database computed with the very expressions
  it wrote;
- one select and one delete of the finished batches' locks, one COPY of the page's audit records;
- the page commits whole or not at all; lock_timeout/statement_timeout bound every wait, and a page that
  fails is rolled back, reported and left for the next run.
One run at a time: a session-level advisory lock (db.single_run).

A dry run runs the same select without row locks and writes nothing (not even a run row); on unchanged
data it predicts exactly what the real run does.

On SQLite there are no row locks or advisory locks: writers are serialised per database file, and the
UPDATE's WHERE on the verdict keeps a repair from applying to a row that changed since the select (the
page is then rolled back). SQLite is for local use and demos; production runs on PostgreSQL.
"""

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum

from django.db import DatabaseError, connection

from . import expressions as ex
from . import rules
from .conf import JobSettings
from .db import ConnectionLost, bounded_transaction, database_now, keyset_pages, one_line, single_run
from .logging import log_events
from .models import GenerationLock, GenerationStatus, RecordKind, RecordRule, Trigger
from .results import CleanupReport, LockDetail, LockTotals, StatusDetail, StatusTotals, iso, keep
from .rules import COUNTER_FIELDS, Rule
from .runlog import Record, finish_run, recorded, save_records, start_run

logger = logging.getLogger(__name__)

ANOMALIES_NAMED = 20  # per kind, in the report's errors; the counts are exact


class Mode(StrEnum):
    SCHEDULED = "scheduled"  # stuck window from the settings; fail stalled only past its own window
    FORCE = "force"  # any queuing/processing row, whatever its age (admin, workers known dead)
    FAIL_STALLED = "fail_stalled"  # only the stalled_failed change, whatever the age (admin)


# --- One page of batches -----------------------------------------------------------------------

# The values a status page selects, in this order (tuples, not model instances).
_ROW = ("id", "account_id", "content_type", "lock_id", "status", *COUNTER_FIELDS,
        "verdict", "after_queued", "after_processing", "after_failed", "after_status", "idle", "before", "after")
(_ID, _ACCOUNT, _TYPE, _LOCK_ID, _STATUS, _T, _Q, _P, _C, _F,
 _VERDICT, _AQ, _AP, _AF, _ASTATUS, _IDLE, _BEFORE, _AFTER) = range(len(_ROW))


@dataclass(frozen=True)
class _StatusPass:
    judgement: ex.Judgement
    applies: frozenset  # the rules this pass writes
    reports: bool  # counts corrupt and stalled batches (every pass but the admin's fail-stalled one)
    selected: bool  # hand-picked ids: a row this pass does not judge is "left alone", not "moved on"


def _judged_rows(ids, status_pass: _StatusPass, clock, *, lock: bool):
    judgement = status_pass.judgement
    rows = GenerationStatus.objects.filter(ex.any_of("id", ids)).order_by("id")
    if lock:
        rows = rows.select_for_update(skip_locked=True, of=("self",))
    return list(rows.annotate(
        verdict=judgement.verdict(),
        after_queued=judgement.after("total_queued"),
        after_processing=judgement.after("total_processing"),
        after_failed=judgement.after("total_failed"),
        after_status=judgement.after("status"),
        idle=ex.idle(clock),
        before=ex.status_snapshot(),
        after=ex.status_snapshot_after(judgement, clock),
    ).values_list(*_ROW))


class _Details:
    """A page's rows as StatusDetail/LockDetail, built only when someone reads them (the command's lines,
    the report's first DETAILS_CAP): a backlog's rows are never all turned into objects."""

    def __init__(self, rows, make):
        self.rows, self.make = rows, make

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return (self.make(row) for row in self.rows)


@dataclass
class _Page:
    """What one page did; merged into the report only once its transaction committed."""

    statuses: StatusTotals = field(default_factory=StatusTotals)
    locks: LockTotals = field(default_factory=LockTotals)
    errors: list = field(default_factory=list)
    rows: list = field(default_factory=list)  # the status rows the report shows (not those that moved on)
    lock_rows: list = field(default_factory=list)
    lock_rule: str = RecordRule.EXPIRED_LOCK
    left_alone: set = field(default_factory=set)  # ids of the selected rows the pass did not judge
    released: dict = field(default_factory=dict)  # lock_id -> the batch it was released with (dry run: would be)
    applied: bool = False

    def status_details(self) -> _Details:
        return _Details(self.rows, lambda row: _status_detail(row, applied=self.applied,
                                                              left_alone=row[_ID] in self.left_alone))

    def lock_details(self) -> _Details:
        return _Details(self.lock_rows, lambda row: _lock_detail(row, applied=self.applied, rule=self.lock_rule))

    def merge_into(self, report: CleanupReport):
        s, r = self.statuses, report.statuses
        for name in ("examined", "stalled", "corrupt", "skipped_busy", "moved_on", "left_alone", "locks_released"):
            setattr(r, name, getattr(r, name) + getattr(s, name))
        r.by_rule.update(s.by_rule)
        for name in ("expired", "removed", "skipped_busy"):
            setattr(report.locks, name, getattr(report.locks, name) + getattr(self.locks, name))
        for message in self.errors:
            report.error(message)
        for totals, details in ((r, self.status_details()), (report.locks, self.lock_details())):
            for detail in details:
                if totals.details_truncated:
                    break
                keep(totals, detail)


def _seconds(delta):
    return None if delta is None else round(delta.total_seconds(), 1)


def _status_detail(row, *, applied: bool, left_alone: bool) -> StatusDetail:
    before = json.loads(row[_BEFORE])
    repairs = row[_VERDICT] in rules.REPAIRS and not left_alone
    after = json.loads(row[_AFTER]) if repairs else before
    return StatusDetail(row[_ID], row[_ACCOUNT], row[_TYPE], row[_VERDICT], before, after, _seconds(row[_IDLE]),
                        applied and repairs, left_alone)


def _status_page(ids, status_pass: _StatusPass, *, dry_run: bool, run, actor) -> _Page:
    """Lock, judge, write and record one page of batches (inside its transaction)."""
    page = _Page()
    totals = page.statuses
    clock = ex.page_clock(connection)
    rows = _judged_rows(ids, status_pass, clock, lock=not dry_run)
    totals.skipped_busy = len(ids) - len(rows)
    to_write = defaultdict(list)  # rule -> ids
    finished_locks = {}  # lock_id -> id of the batch this page finishes
    for row in rows:
        verdict = row[_VERDICT]
        if verdict in status_pass.applies:
            to_write[verdict].append(row[_ID])
            totals.by_rule[Rule(verdict)] += 1
            if verdict in rules.FINISHING and row[_LOCK_ID]:
                finished_locks[row[_LOCK_ID]] = row[_ID]
        elif verdict == Rule.CORRUPT and status_pass.reports:
            totals.corrupt += 1
            page.errors.append(f"batch #{row[_ID]} has corrupt counters "
                               f"({rules.COUNTERS_LABEL} {_counters(row)}); not changed")
        elif verdict == Rule.STALLED and status_pass.reports:
            totals.stalled += 1
        elif status_pass.selected:
            totals.left_alone += 1
            page.left_alone.add(row[_ID])
            page.rows.append(row)
            continue
        else:
            totals.moved_on += 1  # a worker moved or finished it since the page was selected
            continue
        totals.examined += 1
        page.rows.append(row)
    if dry_run:
        if finished_locks:
            page.released = {lock_id: finished_locks[lock_id] for lock_id in GenerationLock.objects.filter(
                ex.any_of("lock_id", finished_locks)).values_list("lock_id", flat=True)}
    elif to_write:
        _write(to_write, status_pass.judgement, clock)
        page.released = _release_and_record(rows, to_write, finished_locks, run, actor)
        page.applied = True
    totals.locks_released = len(page.released)
    _log_status_page(page, dry_run)
    return page


def _counters(row) -> str:
    return "/".join("NULL" if value is None else str(value) for value in row[_T:_F + 1])


class PageChanged(DatabaseError):
    """A row's verdict changed between the page's select and its UPDATE (possible only without row locks,
    on SQLite): the page is rolled back rather than half written."""


def _write(to_write: dict, judgement: ex.Judgement, clock):
    """One UPDATE per rule, only where the row's verdict is still that rule."""
    for rule, ids in to_write.items():
        stamps = {"updated_at": clock, **({"completed_at": clock} if rule in rules.FINISHING else {})}
        written = (GenerationStatus.objects.filter(ex.any_of("id", ids)).filter(judgement.of(rule))
                   .update(**ex.WRITES[rule], **stamps))
        if written != len(ids):
            raise PageChanged(f"{len(ids) - written} of {len(ids)} {rule} batches changed during the page")


def _release_and_record(rows, to_write: dict, finished_locks: dict, run, actor) -> dict:
    """Delete the finished batches' locks and record every change of the page (one COPY); returns the
    released lock ids, each with its batch."""
    actor_id = actor.pk if actor else None
    written = {batch_id for ids in to_write.values() for batch_id in ids}
    records = [Record(run.pk, RecordKind.STATUS.value, row[_ID], row[_ACCOUNT], row[_TYPE], row[_VERDICT],
                      row[_BEFORE], row[_AFTER], actor_id) for row in rows if row[_ID] in written]
    released = {}
    if finished_locks:
        # not SKIP LOCKED: the lock must go with its batch; a lock held by another transaction waits up to
        # lock_timeout, after which the whole page is rolled back and left for the next run
        locks = list(GenerationLock.objects.filter(ex.any_of("lock_id", finished_locks)).select_for_update()
                     .values_list("id", "lock_id", "account_id", "content_type", ex.lock_snapshot()))
        GenerationLock.objects.filter(ex.any_of("id", [lock[0] for lock in locks])).delete()
        for lock_pk, lock_id, account_id, content_type, snapshot in locks:
            released[lock_id] = finished_locks[lock_id]
            records.append(Record(run.pk, RecordKind.LOCK.value, lock_pk, account_id, content_type,
                                  RecordRule.RELEASED_WITH_BATCH.value, snapshot, None, actor_id))
            logger.info("lock_released", extra={"fields": {
                "lock_id": lock_id, "lock_pk": lock_pk, "batch_id": finished_locks[lock_id],
                "account_id": account_id, "content_type": content_type}})
    save_records(records)
    return released


def _log_status_page(page: _Page, dry_run: bool):
    """One event line per batch (repair, stalled, corrupt, left_alone), written as one log record per level."""
    info, errors = [], []
    for row in page.rows:
        verdict = row[_VERDICT]
        fields = {"dry_run": dry_run, "id": row[_ID], "account_id": row[_ACCOUNT], "content_type": row[_TYPE],
                  "rule": verdict, "status": row[_STATUS], "idle_s": _seconds(row[_IDLE]), "counters": _counters(row)}
        if row[_ID] in page.left_alone:
            info.append(("left_alone", fields))
        elif verdict in rules.REPAIRS:
            fields["status_after"] = row[_ASTATUS]
            fields["counters_after"] = "/".join(str(v) for v in (row[_T], row[_AQ], row[_AP], row[_C], row[_AF]))
            info.append(("repair", fields))
        elif verdict == Rule.CORRUPT:
            errors.append(("corrupt", fields))
        else:
            info.append(("stalled", fields))
    log_events(logger, logging.INFO, info)
    log_events(logger, logging.ERROR, errors)


# --- One page of locks ---------------------------------------------------------------------------

_LOCK_ROW = ("id", "lock_id", "account_id", "content_type", "locked_at", "expired_now", "held", "batch_id",
             "batch_status", "batch_idle", "snapshot")


def _lock_detail(row, *, applied: bool, rule=RecordRule.EXPIRED_LOCK) -> LockDetail:
    pk, lock_id, account_id, content_type, locked_at, _expired, held, batch_id, batch_status, batch_idle, _ = row
    return LockDetail(id=pk, lock_id=lock_id, account_id=account_id, content_type=content_type,
                      locked_at=locked_at, age_s=_seconds(held), rule=str(rule), batch_id=batch_id,
                      batch_status=batch_status, batch_idle_s=_seconds(batch_idle), applied=applied)


def _lock_page(ids, *, cutoff, rule, dry_run, run, actor, released=frozenset()) -> _Page:
    """Delete one page of locks (inside its transaction), recording each with the batch that refers to it.
    `cutoff` None: the admin's release, whatever the age. `released`: a dry run's locks already counted as
    released with their batches (a real run deleted them in its status pass)."""
    page = _Page(lock_rule=str(rule))
    clock = ex.page_clock(connection)
    locks = GenerationLock.objects.filter(ex.any_of("id", ids)).order_by("id")
    if not dry_run:
        locks = locks.select_for_update(skip_locked=True, of=("self",))
    rows = list(locks.annotate(
        # re-checked under the row lock: a lock released and re-taken since the page was selected is not expired
        expired_now=ex.still_expired(cutoff),
        held=ex.held(clock), **ex.referring_batch_annotations(GenerationStatus, clock), snapshot=ex.lock_snapshot(),
    ).values_list(*_LOCK_ROW))
    page.locks.skipped_busy = len(ids) - len(rows)
    page.lock_rows = [row for row in rows if row[5] and row[1] not in released]
    page.locks.expired = len(page.lock_rows)
    if page.lock_rows and not dry_run:
        deleting = GenerationLock.objects.filter(ex.any_of("id", [row[0] for row in page.lock_rows]))
        if cutoff is not None:
            deleting = deleting.filter(ex.expired(cutoff))  # repeated in the DELETE: a re-taken lock must survive
        page.locks.removed, _ = deleting.delete()
        actor_id = actor.pk if actor else None
        save_records([Record(run.pk, RecordKind.LOCK.value, row[0], row[2], row[3], str(rule), row[10], None, actor_id)
                      for row in page.lock_rows])
        page.applied = True
    event = "lock_expired" if rule == RecordRule.EXPIRED_LOCK else "lock_released"
    log_events(logger, logging.INFO, [(event, {"dry_run": dry_run, **detail.as_dict()})
                                      for detail in page.lock_details()])
    return page


# --- Passes and runs ------------------------------------------------------------------------------


def _pages(report, totals, what, job: JobSettings, candidates):
    """Keyset pages of ids, each selected in a short transaction of its own under the run's timeouts (a
    table lock must not hang the run between two pages). If selecting fails, the rest of the pass is left
    for the next run, reported; the run goes on."""
    pages = keyset_pages(candidates, job.batch_size)
    last_id = 0
    while True:
        try:
            with bounded_transaction(job.lock_timeout, job.statement_timeout):
                ids = next(pages, None)
        except ConnectionLost:
            raise
        except DatabaseError as exc:
            _failed(report, totals, f"{what} after #{last_id}: could not select the next page, left for the next "
                                    f"run ({one_line(exc)})", f"{what} after #{last_id}", exc)
            return
        if not ids:
            return
        last_id = ids[-1]
        yield ids


def _failed(report, totals, message, what, exc):
    totals.failed_batches += 1
    report.error(message)
    logger.warning("page_failed", extra={"fields": {"what": what, "error": one_line(exc)}})


def _run_page(report, totals, what, job: JobSettings, work) -> _Page | None:
    """One page = one transaction. A page that fails is rolled back, reported and left for the next run;
    the run goes on, unless the connection itself is gone (ConnectionLost)."""
    try:
        with bounded_transaction(job.lock_timeout, job.statement_timeout):
            page = work()
    except ConnectionLost:
        raise
    except DatabaseError as exc:
        _failed(report, totals, f"{what}: rolled back, left for the next run ({one_line(exc)})", what, exc)
        return None
    page.merge_into(report)
    return page


def _report_anomalies(report: CleanupReport, *, accounts=None, content_types=None):
    """Batches no rule can judge, reported as errors for a person: a status the contract does not name
    (served by a partial index that is empty while the data is sane) and in-progress batches with no
    updated_at (found through the in-progress index). Neither is ever a candidate: nothing changes."""
    for kind, condition in (("unknown_status", ex.unknown_status()), ("never_updated", ex.never_updated())):
        batches = _scoped(GenerationStatus.objects.filter(condition), accounts, content_types)
        named = list(batches.order_by("id").values_list("id", "status")[:ANOMALIES_NAMED])
        count = len(named) if len(named) < ANOMALIES_NAMED else batches.count()
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


def _scoped(queryset, accounts, content_types):
    if accounts:
        queryset = queryset.filter(account_id__in=accounts)
    if content_types:
        queryset = queryset.filter(content_type__in=content_types)
    return queryset


def stuck_candidates(*, cutoff, accounts=None, content_types=None):
    return _scoped(GenerationStatus.objects.filter(ex.stuck(cutoff)), accounts, content_types)


def expired_lock_candidates(*, cutoff, accounts=None, content_types=None):
    return _scoped(GenerationLock.objects.filter(ex.expired(cutoff)), accounts, content_types)


def count_stuck(*, job: JobSettings, accounts=None, content_types=None) -> int:
    """How many batches are stuck now (for the command's progress bar)."""
    return stuck_candidates(cutoff=database_now() - job.stuck_after, accounts=accounts,
                            content_types=content_types).count()


def cleanup(*, job: JobSettings, dry_run: bool = False, accounts: list[int] | None = None,
            content_types: list[str] | None = None, only: str | None = None, trigger: str = Trigger.COMMAND,
            actor=None, on_page=None) -> CleanupReport:
    """Repair stuck batches and delete expired locks: the scheduled job.

    `only` is None, "statuses" or "locks". `on_page(kind, details)` is called after each page (kind
    "statuses" or "locks", the page's details) for progress output. Raises ConnectionLost if the database
    connection is lost; the pages committed before that stay committed and recorded.
    """
    report = CleanupReport(trigger=trigger, dry_run=dry_run, now=database_now(), stuck_after=job.stuck_after,
                           lock_ttl=job.lock_ttl, fail_stalled_after=job.fail_stalled_after,
                           batch_size=job.batch_size)
    filters = {"accounts": accounts or [], "content_types": content_types or [], "only": only}
    run_fields = {"trigger": trigger, "dry_run": dry_run, "filters": filters, "actor": actor,
                  "stuck_after": job.stuck_after, "lock_ttl": job.lock_ttl,
                  "fail_stalled_after": job.fail_stalled_after, "batch_size": job.batch_size}
    with single_run(not dry_run) as may_run:
        if not may_run:
            report.outcome, report.skipped_reason = "skipped", "another run holds the lock"
            run = start_run(**run_fields)
            report.run_id = run.pk
            finish_run(run, report)
            logger.info("run_skipped", extra={"fields": {"run_id": run.pk, "reason": report.skipped_reason}})
            return report
        run = None if dry_run else start_run(**run_fields)
        report.run_id = run.pk if run else None
        logger.info("run_started", extra={"fields": {
            "run_id": report.run_id, "trigger": trigger, "dry_run": dry_run, "cutoff": iso(report.cutoff),
            "lock_cutoff": iso(report.lock_cutoff), "batch_size": job.batch_size, **filters}})
        with recorded(report, run):
            released = set()
            if only in (None, "statuses"):
                released = _status_pass(report, job, run, actor, accounts, content_types, on_page)
            if only in (None, "locks"):
                _expired_lock_pass(report, job, run, actor, accounts, content_types, on_page, released)
    logger.info("run_finished", extra={"fields": report.summary_fields()})
    return report


def _status_pass(report, job, run, actor, accounts, content_types, on_page) -> set:
    """Repair the stuck batches; returns the lock ids released with them (a dry run's: would be)."""
    try:
        with bounded_transaction(job.lock_timeout, job.statement_timeout):
            _report_anomalies(report, accounts=accounts, content_types=content_types)
    except ConnectionLost:
        raise
    except DatabaseError as exc:
        what = "the check for unjudgeable batches"
        _failed(report, report.statuses, f"{what}: failed, left for the next run ({one_line(exc)})", what, exc)
    status_pass = _StatusPass(ex.Judgement(cutoff=report.cutoff, fail_stalled=report.fail_cutoff),
                              frozenset(rules.REPAIRS), reports=True, selected=False)
    candidates = stuck_candidates(cutoff=report.cutoff, accounts=accounts, content_types=content_types)
    released = set()
    for ids in _pages(report, report.statuses, "status pages", job, candidates):
        page = _run_page(report, report.statuses, f"status page #{ids[0]}..#{ids[-1]}", job, lambda ids=ids: (
            _status_page(ids, status_pass, dry_run=report.dry_run, run=run, actor=actor)))
        if page:
            released.update(page.released)
        if on_page:
            on_page("statuses", page.status_details() if page else [])
    return released


def _expired_lock_pass(report, job, run, actor, accounts, content_types, on_page, released):
    candidates = expired_lock_candidates(cutoff=report.lock_cutoff, accounts=accounts, content_types=content_types)
    for ids in _pages(report, report.locks, "lock pages", job, candidates):
        page = _run_page(report, report.locks, f"lock page #{ids[0]}..#{ids[-1]}", job, lambda ids=ids: (
            _lock_page(ids, cutoff=report.lock_cutoff, rule=RecordRule.EXPIRED_LOCK, dry_run=report.dry_run,
                       run=run, actor=actor, released=released if report.dry_run else frozenset())))
        if on_page:
            on_page("locks", page.lock_details() if page else [])


def repair_selected(*, job: JobSettings, ids, mode: Mode = Mode.SCHEDULED, actor=None, dry_run: bool = False,
                    trigger: str = Trigger.ADMIN) -> CleanupReport:
    """Apply the rules to hand-picked batches (admin actions); the dry run is the confirmation preview.

    mode SCHEDULED: only rows stuck longer than the window (and failing stalled ones past the fail-stalled
    window, if set); FORCE: any queuing/processing row; FAIL_STALLED: only the stalled_failed change.
    Selected rows that are not eligible are reported as left alone with their verdict.
    """
    report = CleanupReport(trigger=trigger, dry_run=dry_run, now=database_now(), batch_size=job.batch_size)
    if mode == Mode.SCHEDULED:
        report.stuck_after, report.fail_stalled_after = job.stuck_after, job.fail_stalled_after
        judgement, applies = ex.Judgement(cutoff=report.cutoff, fail_stalled=report.fail_cutoff), rules.REPAIRS
    elif mode == Mode.FORCE:
        judgement, applies = ex.Judgement(cutoff=None), rules.REPAIRS
    else:
        judgement, applies = ex.Judgement(cutoff=None, fail_stalled=True), (Rule.STALLED_FAILED,)
    status_pass = _StatusPass(judgement, frozenset(applies), reports=mode != Mode.FAIL_STALLED, selected=True)
    ids = sorted({int(i) for i in ids})
    run = None if dry_run else start_run(
        trigger=trigger, filters={"ids": ids[:1000], "mode": mode.value}, actor=actor,
        stuck_after=report.stuck_after, fail_stalled_after=report.fail_stalled_after, batch_size=job.batch_size)
    report.run_id = run.pk if run else None
    with recorded(report, run):
        for start in range(0, len(ids), job.batch_size):
            page = ids[start:start + job.batch_size]
            _run_page(report, report.statuses, f"selected batches #{page[0]}..#{page[-1]}", job, lambda page=page: (
                _status_page(page, status_pass, dry_run=dry_run, run=run, actor=actor)))
    return report


def release_locks(*, job: JobSettings, ids, actor=None, dry_run: bool = False,
                  trigger: str = Trigger.ADMIN) -> CleanupReport:
    """Delete hand-picked locks (admin), whatever their age; each deletion is recorded."""
    report = CleanupReport(trigger=trigger, dry_run=dry_run, now=database_now(), batch_size=job.batch_size)
    ids = sorted({int(i) for i in ids})
    run = None if dry_run else start_run(trigger=trigger, filters={"lock_ids": ids[:1000]}, actor=actor,
                                         batch_size=job.batch_size)
    report.run_id = run.pk if run else None
    with recorded(report, run):
        for start in range(0, len(ids), job.batch_size):
            page = ids[start:start + job.batch_size]
            _run_page(report, report.locks, f"selected locks #{page[0]}..#{page[-1]}", job, lambda page=page: (
                _lock_page(page, cutoff=None, rule=RecordRule.RELEASED_BY_HAND, dry_run=dry_run, run=run,
                           actor=actor)))
    return report
