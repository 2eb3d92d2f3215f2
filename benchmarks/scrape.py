"""What one /metrics scrape costs the database: generation.metrics.read_state(), the work behind every scrape,
run as a process like the command, against the database DATABASE_URL names. Prints one JSON object:

- wall_ms: the median of `--runs` reads (Python and database, on a warm cache), and each run;
- db_ms: the database's own time for the same queries (planning + execution, summed from EXPLAIN ANALYZE);
- rows: rows the reads took from each table (sequential and through indexes), from pg_stat_xact_user_tables;
- queries: how many statements one scrape sends.

    DATABASE_URL=postgres://... SECRET_KEY=x python benchmarks/scrape.py --runs 20
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("account_generation_status", "account_generation_locks", "generation_cleanuprun", "generation_repairrecord")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "butter_admin.settings")
    import django

    django.setup()
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from generation import metrics

    def rows_read():
        with connection.cursor() as cursor:
            cursor.execute("SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                           "FROM pg_stat_xact_user_tables WHERE relname = ANY(%s)", [list(TABLES)])
            return dict(cursor.fetchall())

    metrics.read_state()  # warm the cache and the connection
    walls = []
    for _ in range(args.runs):
        started = time.perf_counter()
        metrics.read_state()
        walls.append((time.perf_counter() - started) * 1000)

    with transaction.atomic():  # the statistics of this transaction alone
        before = rows_read()
        with CaptureQueriesContext(connection) as captured:
            state = metrics.read_state()
        after = rows_read()
    queries = [q["sql"] for q in captured.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
    db_ms = 0.0
    with connection.cursor() as cursor:
        for query in queries:
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}")
            [plan] = cursor.fetchone()[0]
            db_ms += plan["Planning Time"] + plan["Execution Time"]
    print(json.dumps({
        "wall_ms": statistics.median(walls), "runs_ms": [round(w, 2) for w in walls], "db_ms": round(db_ms, 2),
        "rows": {table: after.get(table, 0) - before.get(table, 0) for table in TABLES},
        "queries": len(queries), "stuck": sum(state.stuck.values()),
    }))


if __name__ == "__main__":
    main()
