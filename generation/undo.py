"""Undo repairs from their RepairRecords: the command `undo_repair` and the admin's "Undo selected repairs".

A status record is undone by compare-and-set: under the row's lock, one UPDATE writes the values the
record holds as `before` into the columns the repair changed, WHERE those columns still hold the
record's `after` and updated_at is still what this job last wrote. If a worker (or anyone) has written
the row since, the WHERE matches nothing and the record is refused with what differs; nothing changes.
updated_at and completed_at go back to what they were before the repair too, so an undone batch looks
exactly as it did: if it was stuck, it is stuck again, and the next scheduled run repairs it again (the
confirmation says so). Several repairs of one row come off newest first (a record is refused while a
later repair of its row stands); what an undo leaves in updated_at then counts as the job's last write
for the next one.

A lock record (an expired lock deleted, or a finished batch's lock released) is undone by inserting the
lock again with its original id, lock_id, account, content type, locked_at and created_at, only if no
other lock holds that account and content type. The unique constraints decide a race with the backend
taking the lock meanwhile: the INSERT runs in a savepoint and an IntegrityError refuses the record.
A lock re-created with its original locked_at is older than the lock TTL again if it had expired: the
next run deletes it again unless the TTL was raised.

A batch's repair and the lock released with it are one unit: undoing the status record also takes the
lock back (its record is found through the batch's lock_id, in the same run), in one transaction; if
either part is refused, both are.

Each unit is its own transaction. Undoing is recorded like any other change: a RepairRecord with rule
`undo` and `undo_of` pointing at the original, in a CleanupRun (trigger command or admin). A record is
undone at most once (its row is locked while checking), and undo records are not undone themselves.
A dry run does all of it in one transaction and rolls it back, so it says exactly what a real undo
would do at that moment.

The records come as ids, or as a queryset (`matching`: the admin's "all N matching", a run's records) read
in keyset pages of ids, newest first; the report then keeps the first `keep` outcomes and counts them all,
so memory stays flat however many records there are.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models.functions import Now

from . import expressions as ex
from .conf import JobSettings
from .db import bounded_transaction, keyset_pages, one_line
from .models import (
    CleanupRun,
    GenerationLock,
    GenerationStatus,
    Outcome,
    RecordKind,
    RecordRule,
    RepairRecord,
    RunKind,
    Trigger,
)
from .rules import COUNTER_FIELDS, FINISHING
from .runlog import start_run

# The columns a status repair may change; updated_at is compared too, and put back as well.
RESTORABLE = (*COUNTER_FIELDS, "status", "completed_at")
ERRORS_CAP = 100


class Refusal:
    """Why a record was not undone; each is one line, shown by the command and the admin."""

    NOT_FOUND = "no such repair record"
    IS_UNDO = "is itself an undo; to change the row again, repair it"
    ALREADY_UNDONE = "already undone by record #{by}"
    LATER_REPAIR = "a later repair of this batch (record #{record}) stands: undo that one first"
    NOTHING_CHANGED = "the repair changed no column that could be put back"
    ROW_GONE = "batch #{id} no longer exists"
    ROW_CHANGED = "the row changed since the repair: {differences}"
    BUSY = "the row is locked by another transaction (gave up after the lock timeout): {error}"
    LOCK_EXISTS = "lock {lock_id} exists again (#{id})"
    LOCK_TAKEN = "account {account_id} {content_type} holds another lock now ({lock_id})"
    LOCK_RACE = "another lock was taken at the same moment ({error})"
    WITH_LOCK = "its batch's lock (record #{record}) cannot be taken back: {reason}"
    WITH_BATCH = "undone only together with its batch's repair (record #{record}), which was refused: {reason}"


@dataclass
class UndoOutcome:
    record_id: int
    kind: str | None = None
    rule: str | None = None
    target_id: int | None = None
    account_id: int | None = None
    content_type: str | None = None
    undone: bool = False  # applied (never in a dry run)
    reason: str = ""  # why it was refused; empty when undone, or in a dry run when it would be
    undo_record_id: int | None = None
    with_batch: bool = False  # a lock released with its batch, taken back with the batch's record
    current: dict | None = None  # the row as found ({} for a lock that is gone)
    restored: dict | None = None  # the row after the undo (in a dry run: as it would be)

    @property
    def refused(self) -> bool:
        return bool(self.reason)

    def as_dict(self):
        return dict(self.__dict__)


@dataclass
class UndoReport:
    """The outcomes of an undo: all of them, or the first `keep`; the totals count every one."""

    trigger: str
    dry_run: bool
    run_id: int | None = None
    outcomes: list = field(default_factory=list)
    keep: int | None = None
    undone_total: int = 0  # in a dry run: would be undone
    refused_total: int = 0
    with_batch_total: int = 0  # of the undone: locks taken back with their batches

    @property
    def undone(self) -> list:
        """Undone outcomes kept (in a dry run: the ones that would be)."""
        return [o for o in self.outcomes if not o.refused]

    @property
    def refused(self) -> list:
        return [o for o in self.outcomes if o.refused]

    @property
    def truncated(self) -> bool:
        return self.undone_total + self.refused_total > len(self.outcomes)

    def add(self, outcomes):
        for outcome in outcomes:
            if outcome.refused:
                self.refused_total += 1
            else:
                self.undone_total += 1
                self.with_batch_total += outcome.with_batch
            if self.keep is None or len(self.outcomes) < self.keep:
                self.outcomes.append(outcome)

    def as_dict(self):
        return {"run_id": self.run_id, "trigger": self.trigger, "dry_run": self.dry_run,
                "undone": self.undone_total, "refused": self.refused_total,
                "outcomes": [o.as_dict() for o in self.outcomes]}


class _Refused(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# --- Entry points --------------------------------------------------------------------------


def undo_records(*, job: JobSettings, ids=None, matching=None, selection: dict | None = None, actor=None,
                 trigger: str = Trigger.COMMAND, dry_run: bool = False, keep: int | None = None) -> UndoReport:
    """Undo the given RepairRecords: `ids`, or every record of the queryset `matching` (`selection`: what the
    run records of it). One UndoOutcome per record (plus the lock released with a batch), newest first; the
    report keeps the first `keep` of them (None: all). Raises db.ConnectionLost if the database connection is
    lost (the units undone before it stay undone and recorded)."""
    report = UndoReport(trigger=trigger, dry_run=dry_run, keep=keep)
    selected = _Selected(ids, matching, selection)
    if not dry_run:
        _undo(report, selected, actor, job)
        return report
    with transaction.atomic():
        _undo(report, selected, actor, job)
        transaction.set_rollback(True)
    report.run_id = None
    for outcome in report.outcomes:
        outcome.undone, outcome.undo_record_id = False, None
    return report


def undo_run(*, job: JobSettings, run_id: int, actor=None, trigger: str = Trigger.COMMAND,
             dry_run: bool = False) -> UndoReport:
    """Undo every change a run made, its records read a page at a time. Raises CleanupRun.DoesNotExist for an
    unknown run."""
    run = CleanupRun.objects.get(pk=run_id)
    return undo_records(job=job, matching=run.records.all(), selection={"run": run.pk}, actor=actor,
                        trigger=trigger, dry_run=dry_run)


class _Selected:
    """The records to undo: ids, or a queryset read in keyset pages of ids; newest first either way."""

    def __init__(self, ids, matching, selection):
        self.ids = None if ids is None else sorted({int(i) for i in ids}, reverse=True)
        self.matching, self.selection = matching, selection

    def pages(self, size: int):
        if self.ids is None:
            yield from keyset_pages(self.matching, size, descending=True)
            return
        for start in range(0, len(self.ids), size):
            yield self.ids[start:start + size]

    def __contains__(self, record_id) -> bool:
        if self.ids is None:
            return self.matching.filter(pk=record_id).exists()
        return record_id in self.ids

    def recorded(self) -> dict:
        """What the undo's run records of its selection."""
        return {"records": self.ids[:1000]} if self.ids is not None else {"select_across": self.selection or {}}


def _undo(report, selected: _Selected, actor, job):
    run = None
    try:
        for page in selected.pages(job.batch_size):
            records = RepairRecord.objects.in_bulk(page)
            if run is None and records:
                run = start_run(kind=RunKind.UNDO, trigger=report.trigger, dry_run=report.dry_run,
                                filters=selected.recorded(), actor=actor)
                report.run_id = run.pk
            companions = {}  # status record id -> the lock record released with its batch, not undone yet
            for record in records.values():
                companion = _companion(record)
                if companion is not None and not _undone_by(companion):
                    companions[record.pk] = companion
            carried = {companion.pk for companion in companions.values()}  # undone with their batch's record
            for record_id in page:
                record = records.get(record_id)
                if record is None:
                    report.add([UndoOutcome(record_id, reason=Refusal.NOT_FOUND)])
                elif record_id not in carried and not _carried_later(record, selected):
                    report.add(_undo_unit(record, companions.get(record_id), run=run, actor=actor, job=job))
    finally:
        if run is not None:
            _finish(run, report)


def _carried_later(record, selected: _Selected) -> bool:
    """A lock released with its batch whose batch's record is selected too, on a later page (records come
    newest first, and the lock's record was written after its batch's): it comes off with that record."""
    if record.kind != RecordKind.LOCK or record.rule != RecordRule.RELEASED_WITH_BATCH or _undone_by(record):
        return False
    batches = GenerationStatus.objects.filter(lock_id=record.before["lock_id"]).values("pk")
    batch_record = (RepairRecord.objects.filter(run_id=record.run_id, kind=RecordKind.STATUS, rule__in=FINISHING,
                                                target_id__in=batches, pk__lt=record.pk)
                    .values_list("pk", flat=True).first())
    return batch_record is not None and batch_record in selected


def _companion(record):
    """The lock released together with a batch by the same repair (same run), found through the batch's lock_id."""
    if record.kind != RecordKind.STATUS or record.rule not in FINISHING:
        return None
    lock_id = GenerationStatus.objects.filter(pk=record.target_id).values_list("lock_id", flat=True).first()
    if not lock_id:
        return None
    return RepairRecord.objects.filter(run_id=record.run_id, kind=RecordKind.LOCK,
                                       rule=RecordRule.RELEASED_WITH_BATCH, before__lock_id=lock_id).first()


def _undone_by(record, *, lock=False):
    """The id of the record that undid this one, or None. With lock, the original record's row is locked
    first: of two undos of one record at once, the second waits here, then sees the first one's record."""
    if lock:
        list(RepairRecord.objects.filter(pk=record.pk).select_for_update())
    return RepairRecord.objects.filter(undo_of=record.pk).values_list("pk", flat=True).first()


def _finish(run, report):
    refusals = [f"record #{o.record_id}: {o.reason}" for o in report.refused]
    try:
        CleanupRun.objects.filter(pk=run.pk).update(
            finished_at=Now(), outcome=Outcome.ERRORS if report.refused_total else Outcome.OK,
            error="\n".join(refusals[:ERRORS_CAP]), examined=report.undone_total + report.refused_total)
    except DatabaseError:
        pass  # connection lost (ConnectionLost is on its way): the run row keeps an empty outcome


# --- One unit: a record, and the lock released with its batch ------------------------------


def _outcome(record, *, with_batch=False) -> UndoOutcome:
    return UndoOutcome(record.pk, kind=record.kind, rule=record.rule, target_id=record.target_id,
                       account_id=record.account_id, content_type=record.content_type, with_batch=with_batch)


def _undo_unit(record, companion, *, run, actor, job) -> list[UndoOutcome]:
    """One transaction (a savepoint in a dry run): the record, and the lock released with its batch."""
    main = _outcome(record)
    outcomes = [main] + ([_outcome(companion, with_batch=True)] if companion is not None else [])
    try:
        with bounded_transaction(job.lock_timeout, job.statement_timeout):
            changes = [(main, _undo_one(record, main, run=run, actor=actor))]
            if companion is not None:
                with_lock = outcomes[1]
                try:
                    changes.append((with_lock, _undo_one(companion, with_lock, run=run, actor=actor)))
                except _Refused as exc:
                    with_lock.reason = exc.reason
                    raise _Refused(Refusal.WITH_LOCK.format(record=companion.pk, reason=exc.reason)) from None
            for outcome, change in changes:
                change.save(force_insert=True)
                outcome.undo_record_id = change.pk
    except _Refused as exc:
        main.reason = exc.reason
        for other in outcomes[1:]:
            other.reason = other.reason or Refusal.WITH_BATCH.format(record=record.pk, reason=exc.reason)
    except DatabaseError as exc:  # not ConnectionLost (bounded_transaction raises that): the row was busy
        for outcome in outcomes:
            outcome.reason = outcome.reason or Refusal.BUSY.format(error=one_line(exc))
    for outcome in outcomes:
        outcome.undone = not outcome.reason
        if outcome.reason:
            outcome.undo_record_id = None
    return outcomes


def _undo_one(record, outcome, *, run, actor) -> RepairRecord:
    """Check and apply the undo of one record; returns the undo's RepairRecord, unsaved."""
    if record.rule == RecordRule.UNDO:
        raise _Refused(Refusal.IS_UNDO)
    undone_by = _undone_by(record, lock=True)
    if undone_by:
        raise _Refused(Refusal.ALREADY_UNDONE.format(by=undone_by))
    if record.kind == RecordKind.STATUS:
        return _undo_status(record, outcome, run=run, actor=actor)
    return _undo_lock(record, outcome, run=run, actor=actor)


# --- Status rows: compare-and-set ----------------------------------------------------------


def _time(text):
    return None if text is None else datetime.fromisoformat(text)


def _value(name, snapshot_value):
    """A snapshot value (JSON) as the column holds it."""
    return _time(snapshot_value) if name in ("completed_at", "updated_at") else snapshot_value


def _last_written(record) -> str:
    """The updated_at this job last wrote to the record's row, as far as the record's `after` reaches: the
    repair's own, or, where later repairs of the row were undone since, the last undo's (each of them started
    from where the one before ended). Refuses while a later repair stands."""
    later = list(RepairRecord.objects.filter(kind=RecordKind.STATUS, target_id=record.target_id, pk__gt=record.pk)
                 .order_by("pk"))
    undone = set(RepairRecord.objects.filter(undo_of__in=later).values_list("undo_of", flat=True))
    last = record.after["updated_at"]
    for other in later:
        if other.rule != RecordRule.UNDO and other.pk not in undone:
            raise _Refused(Refusal.LATER_REPAIR.format(record=other.pk))
        if _time(other.before["updated_at"]) != _time(last):
            break  # someone else wrote the row in between: the compare below refuses
        last = other.after["updated_at"]
    return last


def _undo_status(record, outcome, *, run, actor) -> RepairRecord:
    changed = [name for name in RESTORABLE if _value(name, record.before[name]) != _value(name, record.after[name])]
    if not changed:
        raise _Refused(Refusal.NOTHING_CHANGED)
    current = _snapshot(GenerationStatus, record.target_id, ex.status_snapshot(), lock=True)
    if current is None:
        raise _Refused(Refusal.ROW_GONE.format(id=record.target_id))
    outcome.current = current
    expected = {**{name: record.after[name] for name in changed}, "updated_at": _last_written(record)}
    differences = [
        f"{name} is {_shown(current[name])}, " + (f"the repair left {_shown(value)}" if name != "updated_at"
                                                  else f"this job last wrote {value}")
        for name, value in expected.items() if _value(name, current[name]) != _value(name, value)
    ]
    if differences:
        raise _Refused(Refusal.ROW_CHANGED.format(differences="; ".join(differences)))
    matched = GenerationStatus.objects.filter(
        pk=record.target_id, **{name: _value(name, value) for name, value in expected.items()},
    ).update(**{name: _value(name, record.before[name]) for name in (*changed, "updated_at")})
    if matched != 1:  # cannot happen under the row lock; the WHERE is the guarantee all the same
        raise _Refused(Refusal.ROW_CHANGED.format(differences="the compare-and-set matched no row"))
    outcome.restored = _snapshot(GenerationStatus, record.target_id, ex.status_snapshot())
    return RepairRecord(run=run, kind=RecordKind.STATUS, target_id=record.target_id, account_id=record.account_id,
                        content_type=record.content_type, rule=RecordRule.UNDO, before=current,
                        after=outcome.restored, actor=actor, undo_of=record)


def _snapshot(model, pk, snapshot, *, lock=False) -> dict | None:
    """A row's snapshot as the audit records hold it (built by the database), or None if it is gone."""
    rows = model.objects.filter(pk=pk)
    if lock:
        rows = rows.select_for_update(of=("self",))
    text = rows.values_list(snapshot, flat=True).first()
    return None if text is None else json.loads(text)


def _shown(value):
    return "NULL" if value is None else value


# --- Locks: taken back if the place is free ------------------------------------------------


def _lock_refusal(snapshot):
    """Why the lock cannot be re-created now, or None."""
    same = GenerationLock.objects.filter(lock_id=snapshot["lock_id"]).first()
    if same is not None:
        return Refusal.LOCK_EXISTS.format(lock_id=snapshot["lock_id"], id=same.pk)
    other = GenerationLock.objects.filter(account_id=snapshot["account_id"],
                                          content_type=snapshot["content_type"]).first()
    if other is not None:
        return Refusal.LOCK_TAKEN.format(account_id=snapshot["account_id"], content_type=snapshot["content_type"],
                                         lock_id=other.lock_id)
    return None


def _undo_lock(record, outcome, *, run, actor) -> RepairRecord:
    snapshot = record.before
    outcome.current = {}
    refusal = _lock_refusal(snapshot)
    if refusal:
        raise _Refused(refusal)
    lock = GenerationLock(
        id=record.target_id, lock_id=snapshot["lock_id"], account_id=snapshot["account_id"],
        content_type=snapshot["content_type"], locked_at=_time(snapshot["locked_at"]),
        created_at=_time(snapshot.get("created_at")),
    )
    try:
        with transaction.atomic():  # a savepoint: the unique constraints decide a race with the backend
            lock.save(force_insert=True)
    except IntegrityError as exc:
        raise _Refused(_lock_refusal(snapshot) or Refusal.LOCK_RACE.format(error=one_line(exc))) from None
    outcome.restored = _snapshot(GenerationLock, lock.pk, ex.lock_snapshot())
    return RepairRecord(run=run, kind=RecordKind.LOCK, target_id=lock.pk, account_id=lock.account_id,
                        content_type=lock.content_type, rule=RecordRule.UNDO, before={}, after=outcome.restored,
                        actor=actor, undo_of=record)
