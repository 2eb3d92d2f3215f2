"""The benchmark's data: a large account_generation_status table with a stuck backlog, and the locks table.

Built with INSERT ... SELECT generate_series (seconds for a million rows) into tables that
`manage.py migrate` created, so every index the project ships is in place. Deterministic: the
same parameters always give the same rows, so every approach starts from identical data.

Shape of the status table (ids 1..rows):
- `backlog` stuck rows, spread evenly over the whole id range (a worst case for the heap: one
  stuck row every rows/backlog rows), idle for 4 hours to 2 days, cycling through the rules
  (the `kind` column of STUCK_KINDS: three all_accounted, three no_active_tasks, three
  counter_overflow and one stalled in every ten), each with a lock it still names;
- `in_flight` healthy rows at the end of the id range, updated within the last hour;
- all the others finished (completed, partial, failed) days ago, as in a table that keeps
  every batch ever made.

The locks table has `locks` rows, one per account ('video'): `expired_locks` of them spread evenly
and held for 5 hours (expired for the default 3 hour TTL), the others taken within the last hour.
Stuck batch number s names lock s % locks + 1, so the finishing rules release some of them.
"""

# (rule the row should hit, status, T, Q, P, C, F): the worked examples of docs/contract.md,
# chosen so every combination of changed columns the engine groups by occurs.
STUCK_KINDS = [
    ("all_accounted", "processing", 10, 0, 0, 10, 0),
    ("all_accounted", "processing", 10, 0, 2, 7, 3),
    ("all_accounted", "queuing", 5, 0, 0, 0, 5),
    ("no_active_tasks", "processing", 10, 0, 0, 6, 1),
    ("no_active_tasks", "queuing", 4, 0, 0, 0, 0),
    ("no_active_tasks", "processing", 8, 0, 0, 3, 0),
    ("counter_overflow", "processing", 10, 2, 5, 6, 0),
    ("counter_overflow", "processing", 10, 4, 1, 6, 1),
    ("counter_overflow", "processing", 10, 3, 0, 7, 2),
    ("stalled", "processing", 10, 1, 1, 3, 2),
]

_KINDS_VALUES = ", ".join(
    f"({n}, '{status}', {t}, {q}, {p}, {c}, {f})" for n, (_rule, status, t, q, p, c, f) in enumerate(STUCK_KINDS)
)

# %(rows)s, %(backlog)s, %(in_flight)s, %(locks)s are bound by psycopg.
STATUS_SQL = f"""
WITH kinds(k, status, t, q, p, c, f) AS (VALUES {_KINDS_VALUES}),
series AS (
    SELECT i,
           -- row i is stuck when the running count floor(i * backlog / rows) steps up at i
           (i::numeric * %(backlog)s) %% %(rows)s < %(backlog)s AS stuck,
           floor((i::numeric - 1) * %(backlog)s / %(rows)s)::bigint AS s
    FROM generate_series(1, %(rows)s::bigint) AS i
)
INSERT INTO account_generation_status (
    id, created_at, updated_at, account_id, content_type, total_requested, total_queued, total_processing,
    total_completed, total_failed, status, started_at, completed_at, error_message, error_code, lock_id)
SELECT
    i,
    now() - interval '30 days' + i * interval '1 second',
    CASE WHEN stuck THEN now() - interval '4 hours' - (s %% 2700) * interval '1 minute'
         WHEN i > %(rows)s - %(in_flight)s THEN now() - (i %% 60) * interval '1 minute'
         ELSE now() - interval '29 days' + i * interval '1 second' END,
    CASE WHEN stuck THEN s %% %(locks)s + 1 ELSE i %% 50000 + 1 END,
    CASE WHEN stuck THEN 'video' ELSE (ARRAY['video', 'story', 'slideshow'])[i %% 3 + 1] END,
    CASE WHEN stuck THEN kinds.t ELSE 10 END,
    CASE WHEN stuck THEN kinds.q WHEN i > %(rows)s - %(in_flight)s THEN 3 ELSE 0 END,
    CASE WHEN stuck THEN kinds.p WHEN i > %(rows)s - %(in_flight)s THEN 2 ELSE 0 END,
    CASE WHEN stuck THEN kinds.c WHEN i > %(rows)s - %(in_flight)s THEN 5 WHEN i %% 7 = 0 THEN 8 ELSE 10 END,
    CASE WHEN stuck THEN kinds.f WHEN i > %(rows)s - %(in_flight)s THEN 0 WHEN i %% 7 = 0 THEN 2 ELSE 0 END,
    CASE WHEN stuck THEN kinds.status WHEN i > %(rows)s - %(in_flight)s THEN 'processing'
         WHEN i %% 7 = 0 THEN 'partial' ELSE 'completed' END,
    now() - interval '30 days' + i * interval '1 second',
    CASE WHEN stuck OR i > %(rows)s - %(in_flight)s THEN NULL
         ELSE now() - interval '29 days' + i * interval '1 second' END,
    '',
    '',
    CASE WHEN stuck THEN 'lock-' || (s %% %(locks)s + 1) ELSE 'done-' || i END
FROM series LEFT JOIN kinds ON kinds.k = series.s %% {len(STUCK_KINDS)}
"""

LOCKS_SQL = """
INSERT INTO account_generation_locks (id, created_at, account_id, content_type, locked_at, lock_id)
SELECT k,
       now() - interval '5 hours',
       k,
       'video',
       CASE WHEN (k::numeric * %(expired_locks)s) %% %(locks)s < %(expired_locks)s THEN now() - interval '5 hours'
            ELSE now() - (k %% 60) * interval '1 minute' END,
       'lock-' || k
FROM generate_series(1, %(locks)s::bigint) AS k
"""

RESET_SEQUENCES_SQL = """
SELECT setval(pg_get_serial_sequence('account_generation_status', 'id'), %(rows)s + 1),
       setval(pg_get_serial_sequence('account_generation_locks', 'id'), %(locks)s + 1)
"""


def fill(conn, *, rows: int, backlog: int, in_flight: int, locks: int, expired_locks: int):
    """Insert the rows into the (empty, migrated) tables of `conn` (a psycopg connection), then
    VACUUM ANALYZE as autovacuum would have done on a long-lived table."""
    if backlog + in_flight > rows:
        raise ValueError(f"backlog {backlog} + in flight {in_flight} exceeds the table's {rows} rows")
    if expired_locks > locks:
        raise ValueError(f"{expired_locks} expired locks of only {locks}")
    params = {"rows": rows, "backlog": backlog, "in_flight": in_flight, "locks": max(locks, 1),
              "expired_locks": expired_locks}
    with conn.transaction():
        conn.execute(STATUS_SQL, params)
        if locks:
            conn.execute(LOCKS_SQL, params)
        conn.execute(RESET_SEQUENCES_SQL, params)
    autocommit, conn.autocommit = conn.autocommit, True
    try:
        conn.execute("VACUUM ANALYZE account_generation_status")
        conn.execute("VACUUM ANALYZE account_generation_locks")
    finally:
        conn.autocommit = autocommit


# The job's run history: one finished cron run every 30 minutes going back `runs` runs (17,520 is a year at
# the default schedule), a few repairs and lock removals on each: what the scrape's run queries read.
RUN_HISTORY_SQL = """
INSERT INTO generation_cleanuprun (started_at, finished_at, trigger, dry_run, filters, host, examined,
    repaired_all_accounted, repaired_no_active_tasks, repaired_counter_overflow, repaired_stalled_failed, stalled,
    corrupt, skipped_busy, locks_expired, locks_removed, locks_released, outcome, error)
SELECT now() - i * interval '30 minutes', now() - i * interval '30 minutes' + interval '2 seconds', 'cron', false,
       '{}', 'bench', i %% 5, i %% 3, i %% 2, 0, 0, 0, 0, 0, i %% 2, i %% 2, i %% 3, 'ok', ''
FROM generate_series(1, %(runs)s) AS i
"""
YEAR_OF_RUNS = 17_520
