"""The repair rules as ORM expressions: the one database form of rules.py.

Everything that asks the database a rule's question uses this module and nothing else: the engine's
pages and its dry run (services), the admin's columns, filters and confirmation pages (selectors), the
health page (health) and undo. tests/test_expressions.py proves each expression equal to rules.py,
exhaustively over small counters (NULL and negatives included) and by property tests up to +-2^63, on
PostgreSQL and SQLite.

How the rules are written here:
- One ordered CASE decides a row's verdict (rules.diagnose); each value a repair writes (rules.decide)
  is its own CASE over the same ordered conditions, so a rule's writes are only ever computed for the
  rows that rule judges: after the corrupt test (NULL or negative counters), nothing can overflow.
- No sum of two counters is ever computed: C + F >= T is written C >= T - F, and so on, because each
  counter may be up to 2^63 - 1 and a bigint sum would fail the whole statement.
- A repair's writes are expressions over the row's current values (`F()`), so the UPDATE computes them
  from the row it holds locked, and the select that records them computes the same values from the same
  row: what the audit record says is what the UPDATE wrote.
"""

import json

from django.db.models import (
    BigIntegerField,
    BooleanField,
    Case,
    CharField,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Func,
    Lookup,
    OuterRef,
    Q,
    Subquery,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Cast, JSONObject, Least
from django.db.models.lookups import Exact
from django.utils import timezone

from . import rules
from .conf import Cutoffs
from .results import SNAPSHOT_FIELDS, SNAPSHOT_TIMES
from .rules import COUNTER_FIELDS, Rule, Verdict

T, QUEUED, PROCESSING, COMPLETED, FAILED = (F(name) for name in COUNTER_FIELDS)

# --- Helpers the ORM does not have -------------------------------------------------------------


class AnyOf(Lookup):
    """`column = ANY(%s)` with the values as ONE array parameter. `id__in` with a page of thousands of ids
    builds (and psycopg quotes) one placeholder per id: about 1.2 s of a 100,000-row backlog's run.
    SQLite has no arrays: `IN (SELECT value FROM json_each(%s))`, one JSON text parameter."""

    lookup_name = "any"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = list(self.rhs)
        if values and set(map(type, values)) == {int}:
            # an id list as one array literal: psycopg dumps a list element by element, ~4 ms per page of 2,000
            return f"{lhs} = ANY(%s::bigint[])", [*lhs_params, "{" + ",".join(map(str, values)) + "}"]
        return f"{lhs} = ANY(%s)", [*lhs_params, values]

    def as_sqlite(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        # the column's compiled name and a placeholder: the values themselves travel as one parameter
        return f"{lhs} IN (SELECT value FROM json_each(%s))", [*lhs_params, json.dumps(list(self.rhs))]  # noqa: S608


def any_of(field: str, values) -> AnyOf:
    return AnyOf(F(field), list(values))


class TransactionNow(Func):
    """PostgreSQL's CURRENT_TIMESTAMP: the start of the transaction, the same value in every statement of
    it. A page's select (which records the time in the audit row) and its UPDATE (which writes it) agree
    without the timestamp ever crossing into Python. (Django's Now() is STATEMENT_TIMESTAMP() there.)"""

    template = "CURRENT_TIMESTAMP"
    output_field = DateTimeField()


def pass_clock(connection):
    """The clock a page's statements share: the page transaction's on PostgreSQL; on SQLite, whose 'now'
    moves between two statements, the pass's start as a parameter of every statement of the pass."""
    if connection.vendor == "postgresql":
        return TransactionNow()
    return Value(timezone.now(), output_field=DateTimeField())


class IsoTime(Func):
    """A timestamp as JSON holds it in a snapshot: ISO 8601 with the offset, as Python's isoformat() writes
    it. PostgreSQL's jsonb writes timestamptz so already; SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC."""

    output_field = TextField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return compiler.compile(self.source_expressions[0])

    def as_sqlite(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="(REPLACE(%(expressions)s, ' ', 'T') || '+00:00')",
                           **extra_context)


class IsoText(IsoTime):
    """A timestamp as that ISO 8601 text in a select of its own (a lock's locked_at in a report line): text from
    the database, not a datetime that psycopg parses and Python formats back, 70,000 times in a backlog's run."""

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="(to_json(%(expressions)s) #>> '{}')", **extra_context)


def iso_text(field: str) -> IsoText:
    return IsoText(F(field))


class CompiledOnce(Func):
    """An expression whose SQL is built once and then reused. A pass sends the same select and the same
    UPDATEs for each of its pages, only the page's ids change; building the select's CASEs cost ~6 ms a page,
    each UPDATE's ~2 ms: most of the Python time of a page of 2,000 batches besides the rows themselves. Only
    for expressions over the columns of one table (their SQL does not depend on the query they are in)."""

    template = "%(expressions)s"

    def __init__(self, expression):
        super().__init__(expression)
        self._resolved = None
        self._compiled = {}

    def resolve_expression(self, *args, **kwargs):
        # the same resolved copy for every query: the UPDATEs of a pass resolve their values each time
        if self._resolved is None:
            self._resolved = super().resolve_expression(*args, **kwargs)
            self._resolved._compiled = self._compiled
        return self._resolved

    @property
    def convert_value(self):
        # no int()/str() per value: the databases return these CASEs' values in their own types already
        return self._convert_value_noop

    def as_sql(self, compiler, connection, **extra_context):
        if connection.vendor not in self._compiled:
            sql, params = compiler.compile(self.source_expressions[0])
            self._compiled[connection.vendor] = (sql, tuple(params))
        sql, params = self._compiled[connection.vendor]
        return sql, list(params)


def _since(clock, field: str) -> ExpressionWrapper:
    return ExpressionWrapper(clock - F(field), output_field=DurationField())


# --- Which rows are judged ---------------------------------------------------------------------


def in_progress() -> Q:
    return Q(status__in=rules.IN_PROGRESS)


def unknown_status() -> Q:
    """A status the contract does not name (the partial index agstatus_unknown_status_idx, empty while sane)."""
    return ~Q(status__in=rules.KNOWN_STATUSES)


def never_updated() -> Q:
    """In progress with no updated_at: its age is unknown, so no window can call it stuck."""
    return in_progress() & Q(updated_at__isnull=True)


def _past(field: str, lookup: str, cutoffs: Cutoffs, bound) -> Q:
    """`field` compared with the cutoff of each row's own content type, in one predicate:
    (content_type = 'video' AND field < %s) OR (NOT content_type IN ('video', ...) AND field < %s), each named
    type a branch and the default one for the others (none where there is no default: those never pass).
    The branches share one bound, said once more outright (field < the latest cutoff), so that an index on
    `field` (the locks' locked_at) still serves the scan as one range. A single window is just field < %s."""

    def compared(cutoff):
        return Q(**{f"{field}__{lookup}": cutoff})

    if not cutoffs.by_type:
        return compared(cutoffs.default)
    branches = Q()
    for content_type, cutoff in cutoffs.by_type:
        branches |= Q(content_type=content_type) & compared(cutoff)
    if cutoffs.default is not None:
        branches |= ~Q(content_type__in=cutoffs.types) & compared(cutoffs.default)
    return compared(bound) & branches


def idle_since_before(cutoffs: Cutoffs) -> Q:
    """Not updated since before its content type's cutoff (a NULL updated_at is not: its age is unknown)."""
    return _past("updated_at", "lt", cutoffs, cutoffs.latest)


def stuck(cutoffs: Cutoffs) -> Q:
    """The job's candidates: in progress and idle since before their type's cutoff (rules' "stuck")."""
    return in_progress() & idle_since_before(cutoffs)


def moving(cutoffs: Cutoffs) -> Q:
    """In progress and updated since its type's cutoff: a batch still moving (the stuck window's complement)."""
    return in_progress() & _past("updated_at", "gte", cutoffs, cutoffs.earliest)


def expired(cutoffs: Cutoffs) -> Q:
    """A lock held since before its content type's cutoff."""
    return _past("locked_at", "lt", cutoffs, cutoffs.latest)


def still_expired(cutoffs: Cutoffs | None):
    """Whether a lock is expired, as a column (re-checked on the locked row); None: any age counts."""
    if cutoffs is None:
        return Value(True)
    return Case(When(expired(cutoffs), then=Value(True)), default=Value(False), output_field=BooleanField())


# --- The rules' conditions, in rules.decide()'s order -------------------------------------------
# Each is only meaningful after the ones before it were false (first match wins): they are only ever
# used inside the ordered CASEs below, never alone.


def _corrupt() -> Q:
    condition = Q()
    for name in COUNTER_FIELDS:
        condition |= Q(**{f"{name}__isnull": True}) | Q(**{f"{name}__lt": 0})
    return condition


def _room():
    """T - C - F: the tasks still without an outcome (positive once all_accounted is ruled out)."""
    return T - COMPLETED - FAILED


_CONDITIONS = {
    Rule.CORRUPT: _corrupt(),
    Rule.ALL_ACCOUNTED: Q(total_completed__gte=T - FAILED),  # C + F >= T
    Rule.NO_ACTIVE_TASKS: Q(total_queued=0, total_processing=0),  # Q + P == 0
    Rule.COUNTER_OVERFLOW: Q(total_queued__gt=_room() - PROCESSING),  # Q + P + C + F > T
}


# --- What each repair writes --------------------------------------------------------------------


def _finished_status(new_failed) -> Case:
    """rules.finished_status() of the counters after the write (total_completed is never written)."""
    return Case(When(Exact(new_failed, 0), then=Value(rules.COMPLETED)),
                When(total_completed=0, then=Value(rules.FAILED)),
                default=Value(rules.PARTIAL), output_field=CharField())


def _finish(new_failed=None) -> dict:
    """rules._finish(): nothing left in flight, the missing tasks (if any) counted as failed."""
    writes = {"total_queued": Value(0), "total_processing": Value(0)}
    if new_failed is not None:
        writes["total_failed"] = new_failed
    writes["status"] = _finished_status(FAILED if new_failed is None else new_failed)
    return writes


_OVERFLOW_QUEUED = Least(QUEUED, _room(), output_field=BigIntegerField())

# The columns each repair writes, as expressions over the row's current values. counter_overflow drops
# the excess Q+P+C+F-T from P first, then from Q, so the counters add up to T again: that leaves room =
# T-C-F in flight, Q' = min(Q, room) and P' = room - Q' (the same thing, with no sum that could overflow).
WRITES = {
    Rule.ALL_ACCOUNTED: _finish(),
    Rule.NO_ACTIVE_TASKS: _finish(T - COMPLETED),
    Rule.COUNTER_OVERFLOW: {
        "total_queued": _OVERFLOW_QUEUED,
        "total_processing": _room() - _OVERFLOW_QUEUED,
        # rules.progress_status() of the new counters: P' > 0 exactly when Q < room
        "status": Case(When(total_queued__lt=_room(), then=Value(rules.PROCESSING)),
                       When(total_completed__gt=0, then=Value(rules.PROCESSING)),
                       default=Value(rules.QUEUING), output_field=CharField()),
    },
    Rule.STALLED_FAILED: _finish(T - COMPLETED),
}
WRITTEN = ("total_queued", "total_processing", "total_failed", "status")  # every column a repair may write


# --- A judgement: the ordered CASE, and everything that shares its order ---------------------------


class Judgement:
    """How a pass judges rows; rules.diagnose() with its arguments, as SQL.

    `cutoffs`: a row is stuck when idle since before its content type's cutoff; None judges every
    in-progress row whatever its age (the admin's force and fail-stalled actions). `fail_stalled`: True
    fails every stalled row, Cutoffs those idle since before their type's (a type without a fail-stalled
    window: none of its rows), None none (rules.decide()'s fail_stalled).
    """

    def __init__(self, *, cutoffs: Cutoffs | None, fail_stalled: Cutoffs | bool | None = None):
        self.cutoffs, self.fail_stalled = cutoffs, fail_stalled
        self.branches = self._branches()

    def _branches(self) -> list[tuple[Q | None, str]]:
        """(condition, verdict) in order; the last one's condition is None (the default)."""
        branches = [(unknown_status(), Verdict.UNKNOWN_STATUS), (~in_progress(), Verdict.FINISHED)]
        if self.cutoffs is not None:
            branches += [(Q(updated_at__isnull=True), Verdict.NEVER_UPDATED),
                         (~idle_since_before(self.cutoffs), Verdict.HEALTHY)]
        branches += [(condition, rule) for rule, condition in _CONDITIONS.items()]
        if self.fail_stalled is True:
            branches.append((None, Rule.STALLED_FAILED))
        else:
            if isinstance(self.fail_stalled, Cutoffs):
                branches.append((idle_since_before(self.fail_stalled), Rule.STALLED_FAILED))
            branches.append((None, Rule.STALLED))
        return branches

    def _case(self, value_of, output_field) -> Case:
        whens = [When(condition, then=value_of(verdict)) for condition, verdict in self.branches[:-1]]
        return Case(*whens, default=value_of(self.branches[-1][1]), output_field=output_field)

    def verdict(self) -> Case:
        """rules.diagnose(): a Verdict or the Rule that applies to the row."""
        return self._case(lambda verdict: Value(str(verdict)), CharField())

    def after(self, column: str) -> Case:
        """The column's value after the repair of the row's verdict (its current value if none applies)."""
        output = CharField() if column == "status" else BigIntegerField()
        return self._case(lambda verdict: WRITES.get(verdict, {}).get(column, F(column)), output)

    def after_timestamp(self, column: str, clock) -> Case:
        """updated_at after the repair (every repair stamps it), completed_at (the finishing repairs)."""
        stamped = rules.REPAIRS if column == "updated_at" else rules.FINISHING
        return self._case(lambda verdict: clock if verdict in stamped else F(column), DateTimeField())

    def of(self, verdict: str) -> Exact:
        """The rows whose verdict is `verdict` (an UPDATE's WHERE, a list filter)."""
        return Exact(self.verdict(), Value(str(verdict)))


# --- Snapshots: what an audit record holds, built by the database ----------------------------------


def status_snapshot(values: dict | None = None, *, text: bool = True):
    """A status row's repairable values as JSON (RepairRecord.before/after): text to read in Python, or the
    JSON value itself to insert (text=False). `values` replaces columns by expressions (the after-values);
    timestamps as ISO 8601 text."""
    values = values or {}
    snapshot = JSONObject(**{
        name: IsoTime(values.get(name, F(name))) if name in SNAPSHOT_TIMES else values.get(name, F(name))
        for name in SNAPSHOT_FIELDS
    })
    return Cast(snapshot, TextField()) if text else snapshot


def repair_writes(rule: str, clock) -> dict:
    """Every column a repair by `rule` writes: its WRITES, updated_at stamped with the clock, and completed_at
    too if it finishes the batch. The UPDATE writes these and the audit record's after is built from them."""
    return {**WRITES[rule], "updated_at": clock, **({"completed_at": clock} if rule in rules.FINISHING else {})}


def repair_snapshot(rule: str, clock, *, text: bool = True):
    """The snapshot of a batch after its repair by `rule` (RepairRecord.after): no CASE, the rule is known."""
    return status_snapshot(repair_writes(rule, clock), text=text)


def lock_snapshot(*, text: bool = True):
    """A lock row as JSON (RepairRecord.before of a deleted lock): text, or the JSON value (text=False)."""
    snapshot = JSONObject(lock_id=F("lock_id"), account_id=F("account_id"), content_type=F("content_type"),
                          locked_at=IsoTime(F("locked_at")), created_at=IsoTime(F("created_at")))
    return Cast(snapshot, TextField()) if text else snapshot


# --- Locks and the batches that refer to them --------------------------------------------------------


def referring_batch(model, lock_id=None):
    """The batch that refers to a lock: the one that moved last (a NULL updated_at counts as never moved,
    so last), then the highest id. One ordering for the locks list, the release preview and the report."""
    lock_id = OuterRef("lock_id") if lock_id is None else lock_id
    return model.objects.filter(lock_id=lock_id).order_by(F("updated_at").desc(nulls_last=True), "-id")


def named_lock(model):
    """The id of the lock a batch names (lock_id is unique among locks), NULL if none."""
    return Subquery(model.objects.filter(lock_id=OuterRef("lock_id")).values("id")[:1])


def referring_batch_annotations(model, clock) -> dict:
    """batch_id, batch_status, batch_idle (None if never updated) of each lock's referring batch."""
    batch = referring_batch(model)
    return {
        "batch_id": Subquery(batch.values("id")[:1]),
        "batch_status": Subquery(batch.values("status")[:1]),
        "batch_idle": ExpressionWrapper(clock - Subquery(batch.values("updated_at")[:1]),
                                        output_field=DurationField()),
    }


def idle(clock) -> ExpressionWrapper:
    """How long since a batch last moved (NULL when never)."""
    return _since(clock, "updated_at")


def held(clock) -> ExpressionWrapper:
    """How long a lock has been held."""
    return _since(clock, "locked_at")
