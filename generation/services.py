"""Applies the repair rules through the ORM: select, lock, write, record. The write side.

Every entry point (the command, cron, the admin actions) comes through here, with the job's settings
read once by the entry point (conf.JobSettings):

- `cleanup()`: the scheduled job, a status pass then a lock pass, each in keyset pages of ids.
- `repair_selected()`: the admin's repair of hand-picked batches (scheduled rules, force, fail stalled).
- `release_locks()`: the admin's "release selected locks".
The admin's two take the rows an operator picked as `ids`, or, when they selected "all N matching" (Django's
select-across), as `matching`: the change list's filtered queryset, read in keyset pages of ids like the
cleanup's candidates, so memory stays flat however many rows match.

A page is set-based and one transaction (PostgreSQL):
- one select of the page's rows, locked with FOR UPDATE SKIP LOCKED (a row a worker is writing is
  skipped and counted as skipped_busy, never waited on), returning plain values annotated by the
  database with each row's verdict and its after-values, computed by expressions.py's ordered CASEs from
  the row as locked;
- one INSERT ... SELECT of the repaired rows' audit records, their before/after snapshots built by the
  database from the locked rows with the same expressions;
- one UPDATE per rule, with the same expressions, WHERE the row's verdict is still that rule: only the
  columns the rule changes are written, under the row lock, so a worker's increment waits for the commit
  and lands on top; the audit record's after is what the database computed with the very expressions
  it wrote;
- one select of the finished batches' locks, one INSERT ... SELECT of their records, one delete;
- the page commits whole or not at all; lock_timeout/statement_timeout bound every wait, and a page that
  fails is rolled back, reported and left for the next run.
One run at a time: a session-level advisory lock (db.single_run).

A dry run runs the same select without row locks and writes nothing (not even a run row); on unchanged
data it predicts exactly what the real run does.

On SQLite there are no row locks or advisory locks: writers are serialised per database file, and the
UPDATE's WHERE on the verdict keeps a repair from applying to a row that changed since the select (the
page is then rolled back). SQLite is for local use and demos; production runs on PostgreSQL.
"""

import logging
from enum import StrEnum

from django.db import DatabaseError, connection

from . import expressions as ex
from . import rules
from .conf import JobSettings
from .db import ConnectionLost, bounded_transaction, database_now, keyset_pages, one_line, single_run
from .logging import drain, log_event
from .models import GenerationLock, GenerationStatus, RecordRule, Trigger
from .pages import Page, RepairedIds, lock_page, lock_pass, status_page, status_pass
from .results import CleanupReport, has_room
from .rules import Rule
from .runlog import finish_run, recorded, start_run

logger = logging.getLogger(__name__)

ANOMALIES_NAMED = 20  # per kind, in the report's errors; the counts are exact


class Mode(StrEnum):
    SCHEDULED = "scheduled"  # stuck window from the settings; fail stalled only past its own window
    FORCE = "force"  # any queuing/processing row, whatever its age (admin, workers known dead)
    FAIL_STALLED = "fail_stalled"  # only the stalled_failed change, whatever the age (admin)


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
    log_event(logger, logging.WARNING, "page_failed", {"what": what, "error": one_line(exc)})


def _run_page(report, totals, what, job: JobSettings, work) -> Page | None:
    """One page = one transaction. A page that fails is rolled back, reported and left for the next run;
    the run goes on, unless the connection itself is gone (ConnectionLost)."""
    try:
        with bounded_transaction(job.lock_timeout, job.statement_timeout, flush=False):
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
            log_event(logger, logging.ERROR, kind, {"count": count, "ids": [batch_id for batch_id, _ in named]})


def _scoped(queryset, accounts, content_types):
    if accounts:
        queryset = queryset.filter(account_id__in=accounts)
    if content_types:
        queryset = queryset.filter(content_type__in=content_types)
    return queryset


def stuck_candidates(*, cutoffs, accounts=None, content_types=None):
    return _scoped(GenerationStatus.objects.filter(ex.stuck(cutoffs)), accounts, content_types)


def expired_lock_candidates(*, cutoffs, accounts=None, content_types=None):
    return _scoped(GenerationLock.objects.filter(ex.expired(cutoffs)), accounts, content_types)


def count_stuck(*, job: JobSettings, accounts=None, content_types=None) -> int:
    """How many batches are stuck now (for the command's progress bar)."""
    return stuck_candidates(cutoffs=job.stuck_after.cutoffs(database_now()), accounts=accounts,
                            content_types=content_types).count()


def cleanup(*, job: JobSettings, dry_run: bool = False, accounts: list[int] | None = None,
            content_types: list[str] | None = None, only: str | None = None, trigger: str = Trigger.COMMAND,
            actor=None, on_page=None) -> CleanupReport:
    """Repair stuck batches and delete expired locks: the scheduled job.

    `only` is None, "statuses" or "locks". `on_page(kind, details)` is called after each page for progress
    output: kind "statuses" or "locks" with the page's details, and after a page of batches that released
    locks with them, "released" with those locks' details. Raises ConnectionLost if the database connection
    is lost; the pages committed before that stay committed and recorded.
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
            log_event(logger, logging.INFO, "run_skipped", {"run_id": run.pk, "reason": report.skipped_reason})
            return report
        run = None if dry_run else start_run(**run_fields)
        report.run_id = run.pk if run else None
        log_event(logger, logging.INFO, "run_started", {
            "run_id": report.run_id, "trigger": trigger, "dry_run": dry_run, **report.cutoff_fields(),
            "batch_size": job.batch_size, **filters})
        with recorded(report, run):
            released, repaired = set(), RepairedIds()
            if only in (None, "statuses"):
                released, repaired = _status_pass(report, job, run, actor, accounts, content_types, on_page)
            if only in (None, "locks"):
                _expired_lock_pass(report, job, run, actor, accounts, content_types, on_page, released, repaired)
    log_event(logger, logging.INFO, "run_finished", report.summary_fields())
    drain()
    return report


def _status_pass(report, job, run, actor, accounts, content_types, on_page) -> tuple[set, dict]:
    """Repair the stuck batches. Returns, for the lock pass: in a dry run, the lock ids it would release with
    the batches, so that the lock pass does not count them again (a real run has deleted them; it keeps none);
    and id -> rule of the batches repaired but left in progress with their lock, for the lock pass's lines
    (ids, not rows: a backlog's worth stays small)."""
    try:
        with bounded_transaction(job.lock_timeout, job.statement_timeout):
            _report_anomalies(report, accounts=accounts, content_types=content_types)
    except ConnectionLost:
        raise
    except DatabaseError as exc:
        what = "the check for unjudgeable batches"
        _failed(report, report.statuses, f"{what}: failed, left for the next run ({one_line(exc)})", what, exc)
    candidates = stuck_candidates(cutoffs=report.cutoffs, accounts=accounts, content_types=content_types)
    released, repaired, judged = set(), RepairedIds(), None
    for ids in _pages(report, report.statuses, "status pages", job, candidates):
        judged = judged or status_pass(  # built with the first page: a quiet run has none and skips its cost
            ex.Judgement(cutoffs=report.cutoffs, fail_stalled=report.fail_cutoffs), rules.REPAIRS, reports=True,
            selected=False, clock=ex.pass_clock(connection))
        page = _run_page(report, report.statuses, f"status page #{ids[0]}..#{ids[-1]}", job,
                         lambda ids=ids, judged=judged: status_page(ids, judged, dry_run=report.dry_run, run=run,
                                                                    actor=actor, timed=has_room(report.statuses)))
        if page:
            repaired.update(page.repaired_unfinished)
            if report.dry_run:
                released.update(page.released)
        if on_page:
            on_page("statuses", page.status_details() if page else [])
            if page and page.released_rows:
                on_page("released", page.released_details())
        page = None  # not held while the next page is selected and fetched: memory is one page's
    return released, repaired


def _expired_lock_pass(report, job, run, actor, accounts, content_types, on_page, released, repaired):
    candidates = expired_lock_candidates(cutoffs=report.lock_cutoffs, accounts=accounts, content_types=content_types)
    judged = None
    for ids in _pages(report, report.locks, "lock pages", job, candidates):
        judged = judged or lock_pass(cutoffs=report.lock_cutoffs, rule=RecordRule.EXPIRED_LOCK,
                                     clock=ex.pass_clock(connection))
        page = _run_page(report, report.locks, f"lock page #{ids[0]}..#{ids[-1]}", job,
                         lambda ids=ids, judged=judged: lock_page(ids, judged, dry_run=report.dry_run, run=run,
                                                                  actor=actor, released=released, repaired=repaired))
        if on_page:
            on_page("locks", page.lock_details() if page else [])
        page = None


def judgement_for(mode: Mode, *, job: JobSettings, now) -> tuple[ex.Judgement, tuple]:
    """How a repair of selected batches judges them, and the rules it applies: the one mapping from an admin
    action's mode to the rule book (repair_selected, and the admin's totals before a select-across repair).

    SCHEDULED: only rows stuck longer than the window (and failing stalled ones past the fail-stalled window, if
    set); FORCE: any queuing/processing row; FAIL_STALLED: only the stalled_failed change."""
    if mode == Mode.SCHEDULED:
        fail = job.fail_stalled_after.cutoffs(now) if job.fail_stalled_after else None
        return ex.Judgement(cutoffs=job.stuck_after.cutoffs(now), fail_stalled=fail), rules.REPAIRS
    if mode == Mode.FORCE:
        return ex.Judgement(cutoffs=None), rules.REPAIRS
    return ex.Judgement(cutoffs=None, fail_stalled=True), (Rule.STALLED_FAILED,)


def repair_selected(*, job: JobSettings, ids=None, matching=None, selection: dict | None = None,
                    mode: Mode = Mode.SCHEDULED, actor=None, dry_run: bool = False,
                    trigger: str = Trigger.ADMIN) -> CleanupReport:
    """Apply the rules to hand-picked batches (admin actions); the dry run is the confirmation preview.

    The batches are `ids`, or every row of the queryset `matching` (select-across; `selection` is what the run
    records of it, e.g. the change list's filters). Selected rows that are not eligible (judgement_for) are
    reported as left alone with their verdict.
    """
    report = CleanupReport(trigger=trigger, dry_run=dry_run, now=database_now(), batch_size=job.batch_size)
    if mode == Mode.SCHEDULED:
        report.stuck_after, report.fail_stalled_after = job.stuck_after, job.fail_stalled_after
    judgement, applies = judgement_for(mode, job=job, now=report.now)
    judged = status_pass(judgement, applies, reports=mode != Mode.FAIL_STALLED, selected=True,
                         clock=ex.pass_clock(connection))
    run = None if dry_run else start_run(
        trigger=trigger, filters={**_recorded_selection(ids, selection), "mode": mode.value}, actor=actor,
        stuck_after=report.stuck_after, fail_stalled_after=report.fail_stalled_after, batch_size=job.batch_size)
    report.run_id = run.pk if run else None
    with recorded(report, run):
        for page in _selected_pages(report, report.statuses, "selected batches", job, ids, matching):
            _run_page(report, report.statuses, f"selected batches #{page[0]}..#{page[-1]}", job, lambda page=page: (
                status_page(page, judged, dry_run=dry_run, run=run, actor=actor, timed=has_room(report.statuses))))
    return report


def release_locks(*, job: JobSettings, ids=None, matching=None, selection: dict | None = None, actor=None,
                  dry_run: bool = False, trigger: str = Trigger.ADMIN) -> CleanupReport:
    """Delete hand-picked locks (admin), whatever their age; each deletion is recorded. The locks are `ids`, or
    every row of the queryset `matching` (select-across), as for repair_selected."""
    report = CleanupReport(trigger=trigger, dry_run=dry_run, now=database_now(), batch_size=job.batch_size)
    run = None if dry_run else start_run(trigger=trigger, filters=_recorded_selection(ids, selection, "lock_ids"),
                                         actor=actor, batch_size=job.batch_size)
    report.run_id = run.pk if run else None
    judged = lock_pass(cutoffs=None, rule=RecordRule.RELEASED_BY_HAND, clock=ex.pass_clock(connection))
    with recorded(report, run):
        for page in _selected_pages(report, report.locks, "selected locks", job, ids, matching):
            _run_page(report, report.locks, f"selected locks #{page[0]}..#{page[-1]}", job, lambda page=page: (
                lock_page(page, judged, dry_run=dry_run, run=run, actor=actor)))
    return report


def _recorded_selection(ids, selection, name="ids") -> dict:
    """What a run records of its selection: the first 1,000 ids picked, or what matched (select-across)."""
    if ids is None:
        return {"select_across": selection or {}}
    return {name: sorted({int(i) for i in ids})[:1000]}


def _selected_pages(report, totals, what, job: JobSettings, ids, matching):
    """Pages of the batch size, each then its own transaction: hand-picked ids in order, or keyset pages of the
    matching queryset (each selected in a short transaction of its own, as the cleanup's candidates are)."""
    if ids is None:
        yield from _pages(report, totals, what, job, matching)
        return
    ids = sorted({int(i) for i in ids})
    for start in range(0, len(ids), job.batch_size):
        yield ids[start:start + job.batch_size]
