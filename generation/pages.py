"""One page of the engine: a set of batches (or locks) selected, locked, judged, written and recorded in one
transaction, with a constant number of statements whatever the page holds.

A page of batches:
1. one select of the page's rows, locked with FOR UPDATE SKIP LOCKED (a row a worker is writing is skipped
   and counted as skipped_busy, never waited on), returning plain values annotated by the database with each
   row's verdict and its after-values, all from expressions.py's ordered CASEs over the row as locked;
2. one INSERT ... SELECT of the audit records of the rows it repairs (a UNION ALL of one select per rule): the
   database builds each record's before/after snapshots from the locked row, the after from the very writes
   of the row's rule that step 3 makes (the JSON never crosses into Python), before anything is written;
3. one UPDATE per rule, with the same expressions, WHERE the row's verdict is still that rule: only the
   columns the rule changes are written, under the row lock, so a worker's increment waits for the commit
   and lands on top; the record's `after` is what this UPDATE writes, at the same transaction timestamp;
4. one select of the finished batches' locks (by the primary keys step 1 found for their lock ids), one
   INSERT ... SELECT of their records and one delete.
A dry run does step 1 without row locks, and nothing else but look up which locks would be released. What a
report shows of a batch (its details, its event line) is built from the plain values of step 1; its timestamps
only while the report has room for details (a backlog's pages after that select none).

The querysets are built once per pass (a Pass), with its first page, and only filtered by each page's ids:
building the select's CASEs costs ~15 ms, which a backlog's hundreds of pages would otherwise pay each time
and a quiet run, which has no page, need not pay at all.
"""

import logging
from array import array
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import DatabaseError
from django.db.models import Value
from django.db.models.lookups import Exact

from . import expressions as ex
from . import rules
from .logging import log_events
from .models import GenerationLock, GenerationStatus, RecordKind, RecordRule
from .results import CleanupReport, LockDetail, LockTotals, StatusDetail, StatusTotals, keep
from .rules import COUNTER_FIELDS, FINISHING, Rule
from .runlog import insert_records, records_of

logger = logging.getLogger("generation.services")

# The values a page of batches selects, in this order (tuples, not model instances).
STATUS_ROW = ("id", "account_id", "content_type", "lock_id", "lock_pk", "status", *COUNTER_FIELDS, "verdict",
              "after_queued", "after_processing", "after_failed", "after_status", "idle", "updated_iso",
              "completed_iso", "after_updated_iso", "after_completed_iso")
(ID, ACCOUNT, TYPE, LOCK_ID, LOCK_PK, STATUS, T, Q, P, C, F, VERDICT, AFTER_Q, AFTER_P, AFTER_F, AFTER_STATUS, IDLE,
 UPDATED, COMPLETED, AFTER_UPDATED, AFTER_COMPLETED) = range(len(STATUS_ROW))

LOCK_ROW = ("id", "lock_id", "account_id", "content_type", "locked_iso", "expired_now", "held", "batch_id",
            "batch_status", "batch_idle")
# A lock released with its batch, as the page selects it (the batch's id and rule are added from the page)
RELEASED_LOCK = ("id", "lock_id", "account_id", "content_type", "locked_iso", "held")


class PageChanged(DatabaseError):
    """A row's verdict changed between the page's select and its UPDATE (possible only without row locks, on
    SQLite): the page is rolled back rather than half written."""


# --- A pass: how its pages judge, and the querysets they share ---------------------------------------


@dataclass(frozen=True)
class StatusPass:
    judgement: ex.Judgement
    applies: frozenset  # the rules this pass writes
    reports: bool  # counts corrupt and stalled batches (every pass but the admin's fail-stalled one)
    selected: bool  # hand-picked ids: a row the pass does not judge is "left alone", not "moved on"
    rows: object  # the annotated select, without the page's ids
    untimed: object  # the same without the four timestamps (STATUS_ROW[:UPDATED]), once the report is full
    updates: dict  # rule -> (the rows still of that verdict, the writes)
    clock: object  # the pass's clock (ex.pass_clock): how long a released lock was held
    record: dict  # rule -> its audit records' rule, before and after, as expressions over the row (records_of)


def status_pass(judgement: ex.Judgement, applies, *, reports: bool, selected: bool, clock) -> StatusPass:
    once = ex.CompiledOnce
    untimed = GenerationStatus.objects.order_by("id").annotate(
        verdict=once(judgement.verdict()),
        after_queued=once(judgement.after("total_queued")),
        after_processing=once(judgement.after("total_processing")),
        after_failed=once(judgement.after("total_failed")),
        after_status=once(judgement.after("status")),
        idle=ex.idle(clock),
        lock_pk=ex.named_lock(GenerationLock),
    )
    rows = untimed.annotate(  # only a report's details show them: a backlog's 100,000 need not be sent as text
        updated_iso=ex.iso_text("updated_at"),
        completed_iso=ex.iso_text("completed_at"),
        after_updated_iso=once(ex.IsoText(judgement.after_timestamp("updated_at", clock))),
        after_completed_iso=once(ex.IsoText(judgement.after_timestamp("completed_at", clock))),
    ).values_list(*STATUS_ROW)
    untimed = untimed.values_list(*STATUS_ROW[:UPDATED])
    updates = {rule: (GenerationStatus.objects.filter(Exact(once(judgement.verdict()), Value(str(rule)))),
                      {name: once(value) for name, value in ex.repair_writes(rule, clock).items()})
               for rule in applies}
    # per rule: the rule of a row the page writes is known, so its record's after is built from that rule's
    # writes, the very expressions of its UPDATE (no CASE over the verdicts)
    record = {rule: {"rule": Value(str(rule)), "before": once(ex.status_snapshot(text=False)),
                     "after": once(ex.repair_snapshot(rule, clock, text=False))} for rule in applies}
    return StatusPass(judgement, frozenset(applies), reports, selected, rows, untimed, updates, clock, record)


@dataclass(frozen=True)
class LockPass:
    rule: str  # expired_lock (the job), released_by_hand (the admin)
    expired: object  # the lock cutoffs' predicate, repeated in the DELETE; None for the admin's release
    rows: object  # the annotated select, without the page's ids


def lock_pass(*, cutoffs, rule, clock) -> LockPass:
    rows = GenerationLock.objects.order_by("id").annotate(
        # re-checked on the locked row: a lock released and re-taken since the page was selected is not expired
        expired_now=ex.still_expired(cutoffs), held=ex.held(clock), locked_iso=ex.iso_text("locked_at"),
        **ex.referring_batch_annotations(GenerationStatus, clock),
    ).values_list(*LOCK_ROW)
    return LockPass(str(rule), None if cutoffs is None else ex.expired(cutoffs), rows)


# --- What a page did ------------------------------------------------------------------------------


class RepairedIds:
    """id -> rule of the batches a pass repaired, compactly: the ids come in increasing order (keyset pages),
    so two arrays and a binary search hold 30,000 of them in ~270 KB, where a dict took ~3 MB."""

    def __init__(self):
        self.ids, self.rules, self.names = array("q"), array("b"), []

    def update(self, pairs: dict):
        for batch_id, rule in sorted(pairs.items()):
            if rule not in self.names:
                self.names.append(rule)
            at = len(self.ids) if not self.ids or batch_id > self.ids[-1] else bisect_left(self.ids, batch_id)
            self.ids.insert(at, batch_id)
            self.rules.insert(at, self.names.index(rule))

    def get(self, batch_id, default=None):
        at = bisect_left(self.ids, batch_id) if batch_id is not None else len(self.ids)
        if at < len(self.ids) and self.ids[at] == batch_id:
            return self.names[self.rules[at]]
        return default


class Details:
    """A page's rows as StatusDetail/LockDetail, built only when someone reads them (the command's lines, the
    report's first DETAILS_CAP): a backlog's rows are never all turned into objects."""

    def __init__(self, rows, make):
        self.rows, self.make = rows, make

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return (self.make(row) for row in self.rows)


@dataclass
class Page:
    """What one page did; merged into the report only once its transaction committed."""

    statuses: StatusTotals = field(default_factory=StatusTotals)
    locks: LockTotals = field(default_factory=LockTotals)
    errors: list = field(default_factory=list)
    rows: list = field(default_factory=list)  # the batches the report shows (not those that moved on)
    left_alone: set = field(default_factory=set)  # ids of the selected batches the pass did not judge
    released: dict = field(default_factory=dict)  # lock_id -> the batch it went with (dry run: would go)
    released_rows: list = field(default_factory=list)  # each: RELEASED_LOCK's values, the batch's id and rule
    # id -> rule of the batches repaired here but left in progress with a lock id (counter_overflow): the lock
    # pass may meet their lock, and its line says the run repaired them
    repaired_unfinished: dict = field(default_factory=dict)
    lock_rows: list = field(default_factory=list)
    lock_rule: str = RecordRule.EXPIRED_LOCK
    batches_repaired: dict = field(default_factory=dict)  # a lock page's: what this run's status pass repaired
    applied: bool = False

    def status_details(self) -> Details:
        return Details(self.rows, lambda row: status_detail(row, applied=self.applied,
                                                            left_alone=row[ID] in self.left_alone))

    def lock_details(self) -> Details:
        return Details(self.lock_rows, lambda row: lock_detail(row, applied=self.applied, rule=self.lock_rule,
                                                               repaired=self.batches_repaired))

    def released_details(self) -> Details:
        """The locks released with this page's batches, each naming its batch and the rule that finished it."""
        return Details(self.released_rows, lambda row: released_detail(row, applied=self.applied))

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


def seconds(delta):
    return None if delta is None else round(delta.total_seconds(), 1)


def status_detail(row, *, applied: bool, left_alone: bool) -> StatusDetail:
    """The batch as its audit record holds it: the same columns, from the values the page selected (the after-values
    and timestamps computed by the database with the expressions the record and the UPDATE use). A row selected
    without its timestamps (a page past the report's details: the command's lines need none) gives a detail
    without them."""
    timed = len(row) > UPDATED
    before = (row[T], row[Q], row[P], row[C], row[F], row[STATUS],
              *((row[COMPLETED], row[UPDATED]) if timed else ()))  # SNAPSHOT_FIELDS
    repairs = row[VERDICT] in rules.REPAIRS and not left_alone
    after = (row[T], row[AFTER_Q], row[AFTER_P], row[C], row[AFTER_F], row[AFTER_STATUS],
             *((row[AFTER_COMPLETED], row[AFTER_UPDATED]) if timed else ())) if repairs else before
    return StatusDetail(row[ID], row[ACCOUNT], row[TYPE], row[VERDICT], before, after, seconds(row[IDLE]),
                        applied and repairs, left_alone)


def lock_detail(row, *, applied: bool, rule=RecordRule.EXPIRED_LOCK, repaired=None) -> LockDetail:
    """`repaired`: id -> rule of the batches this run repaired, so a lock line says so of its batch."""
    pk, lock_id, account_id, content_type, locked_at, _expired, held, batch_id, batch_status, batch_idle = row
    return LockDetail(id=pk, lock_id=lock_id, account_id=account_id, content_type=content_type,
                      locked_at=locked_at, age_s=seconds(held), rule=str(rule), batch_id=batch_id,
                      batch_status=batch_status, batch_idle_s=seconds(batch_idle),
                      batch_repaired=(repaired or {}).get(batch_id), applied=applied)


def released_detail(row, *, applied: bool) -> LockDetail:
    pk, lock_id, account_id, content_type, locked_at, held, batch_id, batch_rule = row
    return LockDetail(id=pk, lock_id=lock_id, account_id=account_id, content_type=content_type,
                      locked_at=locked_at, age_s=seconds(held), rule=RecordRule.RELEASED_WITH_BATCH.value,
                      batch_id=batch_id, batch_repaired=str(batch_rule), applied=applied)


def _counters(row) -> str:
    values = row[T:F + 1]
    if None in values:
        return "/".join("NULL" if value is None else str(value) for value in values)
    return "%d/%d/%d/%d/%d" % values  # noqa: UP031 - the common case, twice as fast as the join


# --- A page of batches ------------------------------------------------------------------------------


def status_page(ids, status_pass: StatusPass, *, dry_run: bool, run, actor, timed: bool = True) -> Page:
    """Lock, judge, write and record one page of batches (inside its transaction). `timed`: select the rows'
    timestamps too, which only the report's details show (results.has_room)."""
    page = Page()
    totals = page.statuses
    rows = (status_pass.rows if timed else status_pass.untimed).filter(ex.any_of("id", ids))
    rows = list(rows if dry_run else rows.select_for_update(skip_locked=True, of=("self",)))
    totals.skipped_busy = len(ids) - len(rows)
    to_write = defaultdict(list)  # rule -> ids
    finished_locks = {}  # lock_id -> (id, rule) of the batch this page finishes
    lock_pks = set()  # their rows' ids, as the page's select found them
    for row in rows:
        verdict = row[VERDICT]
        if verdict in status_pass.applies:
            to_write[verdict].append(row[ID])
            totals.by_rule[verdict] += 1  # a Rule is its str: the Counter finds it under either
            if verdict in FINISHING and row[LOCK_PK] is not None:
                finished_locks[row[LOCK_ID]] = (row[ID], verdict)
                lock_pks.add(row[LOCK_PK])
            elif verdict not in FINISHING and row[LOCK_ID]:
                page.repaired_unfinished[row[ID]] = verdict
        elif verdict == Rule.CORRUPT and status_pass.reports:
            totals.corrupt += 1
            page.errors.append(f"batch #{row[ID]} has corrupt counters ({rules.COUNTERS_LABEL} {_counters(row)}); "
                               "not changed")
        elif verdict == Rule.STALLED and status_pass.reports:
            totals.stalled += 1
        elif status_pass.selected:
            totals.left_alone += 1
            page.left_alone.add(row[ID])
            page.rows.append(row)
            continue
        else:
            totals.moved_on += 1  # a worker moved or finished it since the page was selected
            continue
        totals.examined += 1
        page.rows.append(row)
    if dry_run:
        if finished_locks:
            page.released_rows = [(*lock, *finished_locks[lock[1]]) for lock in _finished_batches_locks(
                finished_locks, lock_pks, status_pass).values_list(*RELEASED_LOCK)]
    elif to_write:
        # the records first: their before is the row as locked, their after what the UPDATEs then write
        insert_records(*(records_of(GenerationStatus.objects.filter(ex.any_of("id", batch_ids)), run=run,
                                    actor=actor, kind=RecordKind.STATUS.value, **status_pass.record[rule])
                         for rule, batch_ids in to_write.items()))
        _write(to_write, status_pass)
        page.released_rows = _release_locks(finished_locks, lock_pks, status_pass, run, actor)
        page.applied = True
    page.released_rows.sort(key=lambda row: row[6])  # in the order of their batches' lines
    page.released = {row[1]: row[6] for row in page.released_rows}
    totals.locks_released = len(page.released)
    _log_status_page(page, dry_run)
    return page


def _write(to_write: dict, status_pass: StatusPass):
    """One UPDATE per rule, only where the row's verdict is still that rule."""
    for rule, ids in to_write.items():
        still, writes = status_pass.updates[rule]
        written = still.filter(ex.any_of("id", ids)).update(**writes)
        if written != len(ids):
            raise PageChanged(f"{len(ids) - written} of {len(ids)} {rule} batches changed during the page")


def _finished_batches_locks(finished_locks: dict, lock_pks, status_pass: StatusPass):
    """By primary key (a lookup by lock_id = ANY is planned as a scan of the whole table once the page names a
    few hundred of a large table's locks: ~3x slower), and still named by the batch: a lock whose row was given
    another lock_id since the page's select is not its batch's any more."""
    return GenerationLock.objects.filter(ex.any_of("id", lock_pks), ex.any_of("lock_id", finished_locks)).annotate(
        held=ex.held(status_pass.clock), locked_iso=ex.iso_text("locked_at"))


def _release_locks(finished_locks: dict, lock_pks, status_pass: StatusPass, run, actor) -> list:
    """Record and delete the finished batches' locks; returns them (RELEASED_LOCK's values, then their batch's id
    and rule)."""
    if not finished_locks:
        return []
    # not SKIP LOCKED: the lock must go with its batch; a lock held by another transaction waits up to
    # lock_timeout, after which the whole page is rolled back and left for the next run
    locks = list(_finished_batches_locks(finished_locks, lock_pks, status_pass).select_for_update()
                 .values_list(*RELEASED_LOCK))
    releasing = GenerationLock.objects.filter(ex.any_of("id", [lock[0] for lock in locks]))
    _record_removals(releasing, RecordRule.RELEASED_WITH_BATCH, run=run, actor=actor)
    releasing.delete()
    released = [(*lock, *finished_locks[lock[1]]) for lock in locks]
    logged = tuple(released)  # the caller sorts its list while the writer thread may be reading this
    log_events(logger, logging.INFO, lambda: (
        ("lock_released", {"lock_id": lock_id, "lock_pk": lock_pk, "batch_id": batch_id, "account_id": account_id,
                           "content_type": content_type})
        for lock_pk, lock_id, account_id, content_type, _locked_at, _held, batch_id, _rule in logged))
    return released


def _record_removals(locks, rule, *, run, actor):
    """The audit records of the locks about to be deleted (the queryset the DELETE then uses): each lock's
    snapshot as `before`, no `after`."""
    insert_records(records_of(locks, run=run, actor=actor, kind=RecordKind.LOCK.value, rule=Value(str(rule)),
                              before=ex.lock_snapshot(text=False)))


def _log_status_page(page: Page, dry_run: bool):
    """One event line per batch (repair, stalled, corrupt, left_alone), as one record per level. The lines are
    built on the event writer's thread, while this one waits for the database (logging.log_events)."""
    rows, left_alone = [row[:UPDATED] for row in page.rows], frozenset(page.left_alone)  # not the timestamps

    def events(wanted):  # a generator: the page's lines are formatted one at a time, not held as dicts
        for row in rows:
            verdict = row[VERDICT]
            if row[ID] in left_alone:
                event = "left_alone"
            elif verdict in rules.REPAIRS:
                event = "repair"
            else:
                event = "corrupt" if verdict == Rule.CORRUPT else "stalled"
            if (event == "corrupt") != wanted:
                continue
            fields = {"dry_run": dry_run, "id": row[ID], "account_id": row[ACCOUNT], "content_type": row[TYPE],
                      "rule": verdict, "status": row[STATUS], "idle_s": seconds(row[IDLE]), "counters": _counters(row)}
            if event == "repair":
                fields["status_after"] = row[AFTER_STATUS]
                fields["counters_after"] = f"{row[T]}/{row[AFTER_Q]}/{row[AFTER_P]}/{row[C]}/{row[AFTER_F]}"
            yield event, fields

    log_events(logger, logging.INFO, lambda: events(False))
    if page.statuses.corrupt:  # the only rows that log an ERROR line
        log_events(logger, logging.ERROR, lambda: events(True))


# --- A page of locks ---------------------------------------------------------------------------------


def lock_page(ids, lock_pass: LockPass, *, dry_run: bool, run, actor, released=frozenset(), repaired=None) -> Page:
    """Delete one page of locks (inside its transaction), recording each with the batch that refers to it.
    `released`: a dry run's locks already counted as released with their batches (a real run deleted them in
    its status pass); `repaired`: id -> rule of the batches the run's status pass repaired (or would)."""
    page = Page(lock_rule=lock_pass.rule, batches_repaired=repaired or {})
    rows = lock_pass.rows.filter(ex.any_of("id", ids))
    rows = list(rows if dry_run else rows.select_for_update(skip_locked=True, of=("self",)))
    page.locks.skipped_busy = len(ids) - len(rows)
    page.lock_rows = [row for row in rows if row[5] and row[1] not in released]
    page.locks.expired = len(page.lock_rows)
    if page.lock_rows and not dry_run:
        deleting = GenerationLock.objects.filter(ex.any_of("id", [row[0] for row in page.lock_rows]))
        if lock_pass.expired is not None:
            deleting = deleting.filter(lock_pass.expired)  # repeated in the DELETE: a re-taken lock must survive
        _record_removals(deleting, lock_pass.rule, run=run, actor=actor)
        page.locks.removed, _ = deleting.delete()
        page.applied = True
    event = "lock_expired" if lock_pass.rule == RecordRule.EXPIRED_LOCK else "lock_released"
    details = page.lock_details()
    log_events(logger, logging.INFO, lambda: ((event, {"dry_run": dry_run, **detail.as_dict()}) for detail in details))
    return page
