"""What a run leaves behind: its CleanupRun row (opened, then closed whatever happens) and its audit records.

Shared by the cleanup (services) and undo, so every run is recorded the same way.
"""

import os
import socket
import time
from contextlib import contextmanager

from django.db import DatabaseError, connection
from django.db.models import F, IntegerField, Value
from django.db.models.functions import Cast, Now

from .db import ConnectionLost, one_line
from .logging import drain
from .models import CleanupRun, RepairRecord, RunKind, Trigger
from .rules import Rule


def start_run(*, kind=RunKind.CLEANUP, trigger, dry_run=False, filters=None, actor=None, stuck_after=None,
              lock_ttl=None, fail_stalled_after=None, batch_size=None) -> CleanupRun:
    """Open the run's row. The windows (conf.Windows, or None where none applies) are recorded as the run used
    them: each default in its duration column, the content types' own in `windows_by_type`."""
    windows = {"stuck_after": stuck_after, "lock_ttl": lock_ttl, "fail_stalled_after": fail_stalled_after}
    return CleanupRun.objects.create(
        kind=kind, trigger=trigger, dry_run=dry_run, batch_size=batch_size, filters=filters or {},
        host=socket.gethostname()[:255], pid=os.getpid(), actor=actor,
        **{name: window and window.default for name, window in windows.items()},
        windows_by_type={name: window.by_type_seconds() for name, window in windows.items()
                         if window is not None and window.by_type},
    )


def _backlog(run: CleanupRun, report) -> int | None:
    """How many batches were stuck when the run started, if it is a job run whose status pass read the whole
    table: the ones it examined, and the ones that moved on or were busy when their page came."""
    filters = run.filters or {}
    if (run.kind != RunKind.CLEANUP or run.trigger == Trigger.ADMIN or run.dry_run or report.outcome == "skipped"
            or filters.get("only") == "locks" or filters.get("accounts") or filters.get("content_types")):
        return None
    s = report.statuses
    return s.examined + s.moved_on + s.skipped_busy


def finish_run(run: CleanupRun, report):
    """Close the run's row with the report's counts (a CleanupReport)."""
    s, locks = report.statuses, report.locks
    CleanupRun.objects.filter(pk=run.pk).update(
        stuck_found=_backlog(run, report),
        finished_at=Now(), outcome=report.outcome, error="\n".join(report.errors), examined=s.examined,
        repaired_all_accounted=s.by_rule[Rule.ALL_ACCOUNTED], repaired_no_active_tasks=s.by_rule[Rule.NO_ACTIVE_TASKS],
        repaired_counter_overflow=s.by_rule[Rule.COUNTER_OVERFLOW],
        repaired_stalled_failed=s.by_rule[Rule.STALLED_FAILED], stalled=s.stalled, corrupt=s.corrupt,
        skipped_busy=s.skipped_busy + locks.skipped_busy, locks_expired=locks.expired, locks_removed=locks.removed,
        locks_released=s.locks_released,
    )


@contextmanager
def recorded(report, run: CleanupRun | None, *, finish=finish_run):
    """Close the run's row whatever happens. An exception escaping the run is recorded as its error first:
    cron's runner swallows exceptions and the admin shows a page, so the row is what remains, and it must
    not say ok. A connection lost between two transactions becomes ConnectionLost (one line)."""
    started = time.monotonic()
    try:
        yield
    except ConnectionLost as exc:
        report.error(str(exc))
        raise
    except DatabaseError as exc:
        if connection.is_usable():
            report.error(f"run aborted: {type(exc).__name__}: {one_line(exc)}")
            raise
        lost = ConnectionLost(f"lost the database connection during the run ({one_line(exc)})")
        report.error(str(lost))
        raise lost from exc
    except Exception as exc:
        report.error(f"run aborted: {type(exc).__name__}: {one_line(exc)}")
        raise
    finally:
        report.duration_s = time.monotonic() - started
        if run is not None:
            try:
                finish(run, report)
            except DatabaseError:
                pass  # connection lost: the run row keeps an empty outcome, which the health page shows
        drain()  # the run's event lines are all written when its entry point returns


def records_of(rows, *, run, actor, kind: str, rule, before, after=None):
    """The audit records of `rows` (a queryset of the batches or locks about to change, which the page holds
    locked) as a select for insert_records: `rule`, `before` and `after` are expressions over the row
    (expressions.py's snapshots, and for a batch the writes of its rule), so the snapshots never cross into
    Python and the record's after is what the same expressions then write."""
    columns = {"run": Value(run.pk), "kind": Value(kind), "target_id": F("id"), "account_id": F("account_id"),
               "content_type": F("content_type"), "rule": rule, "before": before,
               # typed, or a UNION ALL of selects takes a NULL for text
               "actor": Cast(Value(actor.pk if actor else None), output_field=IntegerField())}
    if after is not None:
        columns["after"] = after  # left out: NULL, the row is deleted
    return rows.order_by().annotate(**{f"record_{name}": value for name, value in columns.items()}).values_list(
        *(f"record_{name}" for name in columns))


def insert_records(*selects):
    """Insert the records of one or more records_of() selects (the same columns) in one INSERT ... SELECT,
    built by the database (several selects: one UNION ALL). Raw SQL around the ORM's select, because the ORM
    has no INSERT ... SELECT."""
    select = selects[0].union(*selects[1:], all=True) if len(selects) > 1 else selects[0]
    compiler = select.query.get_compiler(connection=connection)
    sql, params = compiler.as_sql()
    quote = connection.ops.quote_name
    # the columns in the order the select has them (compiler.select: the first select's, which the others share)
    names = ", ".join(quote(RepairRecord._meta.get_field(alias.removeprefix("record_")).column)
                      for _, _, alias in compiler.select)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {quote(RepairRecord._meta.db_table)} ({names}) {sql}", params)
