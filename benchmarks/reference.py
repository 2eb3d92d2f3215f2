"""The reference: the same repairs as one SQL statement per table, the practical limit of the database.

Applies the rules of docs/contract.md that change rows with the default settings
(all_accounted, no_active_tasks, counter_overflow; stalled and corrupt rows are left alone, as
the command leaves them), releases the finished batches' locks, deletes expired locks, and
writes the same audit rows (generation_repairrecord, with before/after as JSON) as the command,
under one generation_cleanuprun row. Benchmark only: the product applies rules.py through the ORM.
"""

import psycopg

STATUS_SNAPSHOT = """jsonb_build_object(
    'total_requested', {p}total_requested, 'total_queued', {p}total_queued,
    'total_processing', {p}total_processing, 'total_completed', {p}total_completed,
    'total_failed', {p}total_failed, 'status', {p}status, 'completed_at', {p}completed_at,
    'updated_at', {p}updated_at)"""

LOCK_SNAPSHOT = """jsonb_build_object(
    'lock_id', lock_id, 'account_id', account_id, 'content_type', content_type,
    'locked_at', locked_at, 'created_at', created_at)"""

START_RUN_SQL = """
INSERT INTO generation_cleanuprun (started_at, kind, trigger, dry_run, stuck_after, lock_ttl, filters, host, examined,
    repaired_all_accounted, repaired_no_active_tasks, repaired_counter_overflow, repaired_stalled_failed, stalled,
    corrupt, skipped_busy, locks_expired, locks_removed, locks_released, outcome, error)
VALUES (now(), 'cleanup', 'command', false, %(stuck_after)s, %(lock_ttl)s, '{}', 'reference-sql', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 'ok', '')
RETURNING id
"""

STATUS_SQL = f"""
WITH candidates AS (
    SELECT id, account_id, content_type, lock_id, status, completed_at, updated_at,
           total_requested, total_queued, total_processing, total_completed, total_failed
    FROM account_generation_status
    WHERE status IN ('queuing', 'processing') AND updated_at < now() - %(stuck_after)s
    FOR UPDATE
),
decided AS (
    SELECT *,
           CASE WHEN total_requested < 0 OR total_queued < 0 OR total_processing < 0
                     OR total_completed < 0 OR total_failed < 0
                     OR num_nulls(total_queued, total_processing, total_completed, total_failed) > 0
                    THEN NULL  -- corrupt: reported, never changed
                WHEN total_completed + total_failed >= total_requested THEN 'all_accounted'
                WHEN total_queued + total_processing = 0 THEN 'no_active_tasks'
                WHEN total_queued + total_processing + total_completed + total_failed > total_requested
                    THEN 'counter_overflow'
           END AS rule,
           total_queued + total_processing + total_completed + total_failed - total_requested AS excess
    FROM candidates
),
after AS (
    SELECT *,
           CASE WHEN rule = 'counter_overflow' THEN total_queued - (excess - least(excess, total_processing))
                ELSE 0 END AS new_queued,
           CASE WHEN rule = 'counter_overflow' THEN total_processing - least(excess, total_processing)
                ELSE 0 END AS new_processing,
           CASE WHEN rule = 'no_active_tasks' THEN total_requested - total_completed
                ELSE total_failed END AS new_failed
    FROM decided
    WHERE rule IS NOT NULL
),
updated AS (
    UPDATE account_generation_status s
    SET total_queued = a.new_queued,
        total_processing = a.new_processing,
        total_failed = a.new_failed,
        status = CASE WHEN a.rule = 'counter_overflow'
                          THEN CASE WHEN a.new_processing > 0 OR a.total_completed > 0
                                    THEN 'processing' ELSE 'queuing' END
                      WHEN a.new_failed = 0 THEN 'completed'
                      WHEN a.total_completed = 0 THEN 'failed'
                      ELSE 'partial' END,
        completed_at = CASE WHEN a.rule = 'counter_overflow' THEN s.completed_at ELSE now() END,
        updated_at = now()
    FROM after a
    WHERE s.id = a.id
    RETURNING s.id, s.account_id, s.content_type, s.lock_id, a.rule, {STATUS_SNAPSHOT.format(p="a.")} AS before,
              {STATUS_SNAPSHOT.format(p="s.")} AS after
),
status_records AS (
    INSERT INTO generation_repairrecord (run_id, kind, target_id, account_id, content_type, rule, before, after,
                                         created_at)
    SELECT %(run_id)s, 'status', id, account_id, content_type, rule, before, after, now() FROM updated
),
released AS (
    DELETE FROM account_generation_locks l
    USING updated u
    WHERE l.lock_id = u.lock_id AND u.rule <> 'counter_overflow'
    RETURNING l.*
)
INSERT INTO generation_repairrecord (run_id, kind, target_id, account_id, content_type, rule, before, after,
                                     created_at)
SELECT %(run_id)s, 'lock', id, account_id, content_type, 'released_with_batch', {LOCK_SNAPSHOT}, NULL, now()
FROM released
"""

LOCKS_SQL = f"""
WITH expired AS (
    DELETE FROM account_generation_locks WHERE locked_at < now() - %(lock_ttl)s RETURNING *
)
INSERT INTO generation_repairrecord (run_id, kind, target_id, account_id, content_type, rule, before, after,
                                     created_at)
SELECT %(run_id)s, 'lock', id, account_id, content_type, 'expired_lock', {LOCK_SNAPSHOT}, NULL, now()
FROM expired
"""

FINISH_RUN_SQL = "UPDATE generation_cleanuprun SET finished_at = now() WHERE id = %(run_id)s"


def run(database_url: str, *, stuck_after, lock_ttl) -> dict:
    """Apply the reference statements (each its own transaction); returns the rows each one changed."""
    params = {"stuck_after": stuck_after, "lock_ttl": lock_ttl}
    with psycopg.connect(database_url, autocommit=True) as conn:
        params["run_id"] = conn.execute(START_RUN_SQL, params).fetchone()[0]
        with conn.transaction():
            released = conn.execute(STATUS_SQL, params).rowcount
        with conn.transaction():
            expired = conn.execute(LOCKS_SQL, params).rowcount
        conn.execute(FINISH_RUN_SQL, params)
    return {"locks_released": released, "locks_expired": expired}
