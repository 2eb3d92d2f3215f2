"""The database mechanics every entry point shares: the clock, one run at a time, bounded waits, keyset
pages, and one way of telling a failed statement from a lost connection.

Nothing here knows the rules (expressions.py) or what a run records (runlog.py).
"""

from contextlib import contextmanager
from datetime import datetime, timedelta

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

# pg_try_advisory_lock key for "a cleanup run is in progress" (b"butter_c" as an int64).
ADVISORY_LOCK_KEY = int.from_bytes(b"butter_c", "big")


class ConnectionLost(Exception):
    """The database connection was lost: the run cannot go on. The message is one line."""


def one_line(exc) -> str:
    """An exception as one line (database errors span several), for reports, logs and messages."""
    return " ".join(str(exc).split()) or type(exc).__name__


def database_name() -> str:
    """Which database, for an operator's error line: never the URL (it carries the password)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite database {s['NAME']}"
    return f"database {s.get('NAME')} on {s.get('HOST') or 'localhost'}:{s.get('PORT') or 5432}"


def database_now() -> datetime:
    """The database's clock: the cutoffs must not depend on the clock of the host running the job.
    (SQLite runs in this process, so its clock is this host's.)"""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            return cursor.fetchone()[0]
    return timezone.now()


@contextmanager
def single_run(enabled: bool = True):
    """Yield whether this process may run: a session-level advisory lock on PostgreSQL, so a second run
    started anywhere (cron, a CronJob, a person) skips instead of working beside the first."""
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


def _milliseconds(value: timedelta | None) -> str:
    return f"{int(value.total_seconds() * 1000) if value else 0}ms"


def bound_waits(lock_timeout: timedelta | None, statement_timeout: timedelta | None, *, flush: bool = True):
    """Transaction-local settings (PostgreSQL): timeouts, so one page never hangs the run; and, with flush=False,
    a commit that does not wait for the WAL to reach the disk (synchronous_commit = off)."""
    if connection.vendor != "postgresql" or not (lock_timeout or statement_timeout or not flush):
        return
    values = {"lock_timeout": _milliseconds(lock_timeout), "statement_timeout": _milliseconds(statement_timeout)}
    if not flush:  # otherwise the server's own synchronous_commit (on, remote_apply, ...) stands
        values["synchronous_commit"] = "off"
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join("set_config(%s, %s, true)" for _ in values),
                       [part for item in values.items() for part in item])


@contextmanager
def bounded_transaction(lock_timeout: timedelta | None = None, statement_timeout: timedelta | None = None, *,
                        flush: bool = True):
    """One transaction under the given timeouts. A DatabaseError that leaves the connection usable propagates
    as it is (the caller reports it and goes on); one that lost the connection becomes ConnectionLost.

    flush=False commits without waiting for the disk (the engine's pages: a page's rows and records are one
    transaction, so a crash of the server can only lose whole pages, which the next run redoes; the run row,
    closed last with a normal commit, makes every page before it durable). A page of 2,000 batches waited
    ~17 ms for its commit: a second of a 100,000-batch backlog's run.

    When the commit or rollback fails on a dead connection, atomic() closes it and Django silently opens a
    new one on the next query: that session holds none of this one's locks (the run's advisory lock), so
    the run must stop rather than go on there.
    """
    connection.ensure_connection()
    session = connection.connection
    try:
        with transaction.atomic():
            bound_waits(lock_timeout, statement_timeout, flush=flush)
            yield
    except DatabaseError as exc:
        if lost(session):
            raise ConnectionLost(f"lost the database connection during the run ({one_line(exc)})") from exc
        raise


def lost(session=None) -> bool:
    """Whether the connection is gone (or was replaced since `session` was the live one)."""
    return (session is not None and connection.connection is not session) or not connection.is_usable()


def keyset_pages(queryset, batch_size: int, *, after: int = 0, descending: bool = False):
    """Pages of ids in id order, `id > last ORDER BY id LIMIT n`: never the whole table in memory, and
    each page an index range scan however far into the table it is. `descending`: newest first,
    `id < last ORDER BY id DESC` (from the top; `after` is then ignored)."""
    last_id = None if descending else after
    while True:
        if descending:
            page = (queryset if last_id is None else queryset.filter(id__lt=last_id)).order_by("-id")
        else:
            page = queryset.filter(id__gt=last_id).order_by("id")
        ids = list(page.values_list("id", flat=True)[:batch_size])
        if not ids:
            return
        yield ids
        last_id = ids[-1]
