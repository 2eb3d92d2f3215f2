"""What a run leaves behind: its CleanupRun row (opened, then closed whatever happens) and its audit records.

Shared by the cleanup (services) and undo, so every run is recorded the same way.
"""

import json
import os
import socket
import time
from contextlib import contextmanager
from typing import NamedTuple

from django.db import DatabaseError, connection
from django.db.models.functions import Now
from psycopg import sql

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


class Record(NamedTuple):
    """A RepairRecord's columns, saved with the rest of its page by save_records. `before` and `after` are
    JSON text, as the database built it (expressions.status_snapshot, lock_snapshot). A tuple, not a model
    instance: building 160,000 RepairRecord instances cost 4 s of a 100,000 backlog's run."""

    run_id: int
    kind: str
    target_id: int
    account_id: int
    content_type: str
    rule: str
    before: str
    after: str | None
    actor_id: int | None


_COPY_RECORDS = sql.SQL("COPY {} ({}) FROM STDIN").format(
    sql.Identifier(RepairRecord._meta.db_table),
    sql.SQL(", ").join(sql.Identifier(RepairRecord._meta.get_field(name).column) for name in Record._fields))


def save_records(records: list[Record]):
    """Insert a page's RepairRecords in one statement. On PostgreSQL with COPY, raw SQL because the ORM has
    no COPY: bulk_create cost ~130 us a record (the ORM's compiler, psycopg quoting every value into the SQL
    text, the server parsing it back), COPY ~25 us; a backlog of 100,000 writes 160,000 records."""
    if not records:
        return
    if connection.vendor != "postgresql":
        RepairRecord.objects.bulk_create([
            RepairRecord(**{**r._asdict(), "before": json.loads(r.before),
                            "after": None if r.after is None else json.loads(r.after)})
            for r in records])
        return
    started = time.monotonic()
    with connection.cursor() as cursor, cursor.cursor.copy(_COPY_RECORDS) as copy:
        for record in records:
            copy.write_row(record)
    if connection.queries_logged:  # COPY bypasses the cursor wrapper: keep query counts and DEBUG honest
        connection.queries_log.append({"sql": f"{_COPY_RECORDS.as_string(None)} -- {len(records)} rows",
                                       "time": f"{time.monotonic() - started:.3f}"})
