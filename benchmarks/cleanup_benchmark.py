"""Measure the cleanup against the limit: the command, the reference SQL, the original per-row job.

    .venv/bin/python benchmarks/cleanup_benchmark.py            # the table (make bench)
    .venv/bin/python benchmarks/cleanup_benchmark.py sweep      # backlog 1k/10k/100k, docs/benchmarks.png
    .venv/bin/python benchmarks/cleanup_benchmark.py indexes    # which key the candidate index should have

Needs a PostgreSQL server where BENCH_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres)
may create databases. It creates its own, all named bench_<pid>_..., and drops them when it ends.
Each data set is built once (manage.py migrate, then INSERT ... SELECT generate_series; see
dataset.py) into a template database; every measured run gets a fresh copy (CREATE DATABASE ...
TEMPLATE ...), so each approach starts from identical data. Not part of the test suite: the full
table takes 15-30 minutes on 2 cores, most of it the per-row approach's three runs.
"""

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import dataset, reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
STUCK_AFTER = LOCK_TTL = timedelta(hours=3)
# The engine before the rule book (issue 14's "today": main at 0c5e26f). `run` measures its command beside
# this one, interleaved, so "no worse than before" (the quiet run, the peak RSS) is judged on the same machine
# in the same spell; --before none leaves it out.
BEFORE_REV = "0c5e26f"
BATCH_SIZE = 1500  # CLEANUP_BATCH_SIZE's default, for the EXPLAIN of a page
SECRET_KEY = "benchmark-only-not-a-secret"  # noqa: S105 (the processes refuse to start without one)
# Each process's stdout and event log (stderr), as cron would keep them; the last run of each kind stays.
WORK_DIR = Path(tempfile.mkdtemp(prefix="butter_bench_"))

# The query of services._stuck_candidates + _keyset_pages, as the ORM writes it.
CANDIDATE_SQL = """
SELECT "account_generation_status"."id" FROM "account_generation_status"
WHERE ("account_generation_status"."status" IN ('queuing', 'processing')
       AND "account_generation_status"."updated_at" < %(cutoff)s AND "account_generation_status"."id" > %(last)s)
ORDER BY "account_generation_status"."id" ASC LIMIT %(limit)s
"""

STATE_DIGEST_SQL = """
SELECT (SELECT md5(string_agg(concat_ws(',', id, total_requested, total_queued, total_processing, total_completed,
                                         total_failed, status, completed_at IS NULL), ';' ORDER BY id))
        FROM account_generation_status),
       (SELECT md5(coalesce(string_agg(id::text, ',' ORDER BY id), '')) FROM account_generation_locks),
       (SELECT count(*) FROM account_generation_locks)
"""


# --- Databases ------------------------------------------------------------------------------


def admin():
    return psycopg.connect(ADMIN_URL, autocommit=True)


def database_url(name):
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))


class Databases:
    """Every database this process creates, dropped at the end whatever happens."""

    def __init__(self):
        self.prefix = f"bench_{os.getpid()}_"
        self.created = []

    def create(self, tag, template=None):
        name = self.prefix + tag
        with admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if template:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)))
                # the copy's WAL would otherwise be flushed by a checkpoint in the middle of a measured run
                conn.execute("CHECKPOINT")
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return name

    def drop(self, name):
        with admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self):
        for name in list(self.created):
            try:
                self.drop(name)
            except psycopg.Error as exc:
                print(f"could not drop {name}: {exc}", file=sys.stderr)


@dataclass(frozen=True)
class Shape:
    rows: int
    backlog: int
    locks: int
    expired_locks: int
    in_flight: int = 1_000

    @property
    def tag(self):
        return f"r{self.rows}_b{self.backlog}_l{self.locks}_e{self.expired_locks}"


def build_template(dbs: Databases, shape: Shape) -> str:
    name = dbs.create(f"tmpl_{shape.tag}")
    started = time.monotonic()
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT,
                             env=command_env(name), capture_output=True, text=True)
    if migrate.returncode:
        raise SystemExit(f"migrate failed on {name}:\n{migrate.stderr}")
    with psycopg.connect(database_url(name)) as conn:
        dataset.fill(conn, rows=shape.rows, backlog=shape.backlog, in_flight=shape.in_flight, locks=shape.locks,
                     expired_locks=shape.expired_locks)
    log(f"built {name} in {time.monotonic() - started:.0f} s")
    return name


@contextmanager
def fresh_copy(dbs: Databases, template: str):
    name = dbs.create(f"run_{len(dbs.created)}", template=template)
    try:
        yield name
    finally:
        dbs.drop(name)


# --- Measuring --------------------------------------------------------------------------------


@dataclass
class Measure:
    wall_s: float
    repaired: int
    rss_mb: float | None = None
    cpu_s: float | None = None
    digest: tuple | None = None
    records: dict | None = None
    extra: dict = field(default_factory=dict)


def command_env(database, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENERATION_", "CLEANUP_", "LOG_"))}
    env.update(DATABASE_URL=database_url(database), SECRET_KEY=SECRET_KEY, DEBUG="false", **extra)
    return env


def run_process(args, database, label, cwd=ROOT, **env):
    """Run a Python process on `database` (in `cwd`, a checkout); wall time, peak RSS and CPU of that process
    (wait4)."""
    out_path, err_path = WORK_DIR / f"{label}.out", WORK_DIR / f"{label}.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=command_env(database, **env), stdout=out,
                                stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0,):
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}:\n{err_path.read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, out_path.read_text()


def measure_command(database, *, label="command", cwd=ROOT, **env) -> Measure:
    wall, rss, cpu, out = run_process(["manage.py", "cleanup_stuck_generation", "--json"], database, label, cwd,
                                      **env)
    report = json.loads(out)
    return Measure(wall, report["statuses"]["repaired"], rss, cpu, extra={
        "duration_s": report["duration_s"], "locks_released": report["statuses"]["locks_released"],
        "locks_removed": report["locks"]["removed"], "stalled": report["statuses"]["stalled"],
        "outcome": report["outcome"]})


def checkout(rev) -> Path:
    """The project's files at `rev` (git archive), to run its command with this venv."""
    where = WORK_DIR / f"checkout_{rev}"
    where.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return compiled(where)


def compiled(where: Path) -> Path:
    """A checkout's bytecode written beforehand, as the image does (Dockerfile): under
    PYTHONDONTWRITEBYTECODE, or as a user who may not write the code's folder, every run would compile
    each of the project's modules again (~0.15 s of a quiet run on this machine)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "manage.py", "butter_admin", "generation"], cwd=where,
                   check=True)
    return where


def measure_per_row(database) -> Measure:
    wall, rss, cpu, out = run_process(["benchmarks/per_row.py"], database, "per_row")
    result = json.loads(out)
    return Measure(wall, result["repaired"], rss, cpu, extra=result)


def measure_reference(database) -> Measure:
    started = time.monotonic()
    result = reference.run(database_url(database), stuck_after=STUCK_AFTER, lock_ttl=LOCK_TTL)
    wall = time.monotonic() - started
    with psycopg.connect(database_url(database)) as conn:
        repaired = conn.execute("SELECT count(*) FROM generation_repairrecord WHERE kind = 'status'").fetchone()[0]
    return Measure(wall, repaired, extra=result)


BACKEND_TABLES = ("account_generation_status", "account_generation_locks")


def backend_rows_read(database):
    """Rows read so far from the backend's tables (sequential and through indexes), as the statistics
    collector has them: a process's counts are flushed when it exits."""
    with psycopg.connect(database_url(database)) as conn:
        return sum(n for (n,) in conn.execute(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
            "WHERE relname = ANY(%s)", [list(BACKEND_TABLES)]))


def measure_scrape(database, label):
    """One /metrics scrape's database work (benchmarks/scrape.py, a process of its own): wall and database
    time, rows read from each table."""
    _, _, _, out = run_process(["benchmarks/scrape.py", "--runs", "20"], database, label)
    return json.loads(out)


def measure_scrapes(dbs, templates, quiet_large, backlog):
    """The scrape on the quiet table (with no history, and with a year of it), on the backlog, and the rows
    the quiet cleanup run reads, to compare with."""
    scrapes = {}
    with fresh_copy(dbs, templates[quiet_large]) as database:
        before = backend_rows_read(database)
        measure_command(database, label="command_quiet_rows")
        cleanup_rows = backend_rows_read(database) - before
        scrapes["quiet"] = measure_scrape(database, "scrape_quiet")
        with psycopg.connect(database_url(database), autocommit=True) as conn:
            conn.execute(dataset.RUN_HISTORY_SQL, {"runs": dataset.YEAR_OF_RUNS})
            conn.execute("VACUUM ANALYZE generation_cleanuprun")
        scrapes["quiet_year_of_runs"] = measure_scrape(database, "scrape_quiet_history")
    with fresh_copy(dbs, templates[backlog]) as database:
        scrapes["backlog"] = measure_scrape(database, "scrape_backlog")
    for label, scrape in scrapes.items():
        log(f"scrape {label}: {scrape['wall_ms']:.1f} ms wall, {scrape['db_ms']:.1f} ms database, rows {scrape['rows']}")
    return {"scrapes": scrapes, "quiet_cleanup_rows": cleanup_rows}


def state(database):
    with psycopg.connect(database_url(database)) as conn:
        digest = conn.execute(STATE_DIGEST_SQL).fetchone()
        records = dict(conn.execute(
            "SELECT kind || ':' || rule, count(*) FROM generation_repairrecord GROUP BY 1 ORDER BY 1").fetchall())
    return digest, records


class TransactionWatch:
    """Polls pg_stat_activity for the command's session: the transactions that held a transaction id
    (wrote, so held row locks), and how long each one lasted, to within the polling interval."""

    def __init__(self, database, interval=0.01):
        self.database, self.interval = database, interval
        self.transactions = {}  # xact_start -> longest age seen (s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            while not self.stop.is_set():
                for xact_start, age in conn.execute(
                        "SELECT xact_start, extract(epoch FROM clock_timestamp() - xact_start) FROM pg_stat_activity "
                        "WHERE datname = %s AND application_name = 'butter_admin' AND backend_xid IS NOT NULL",
                        [self.database]):
                    self.transactions[xact_start] = max(self.transactions.get(xact_start, 0), float(age))
                time.sleep(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def explain(database, *, after_candidates=0, limit=BATCH_SIZE):
    """EXPLAIN (ANALYZE, BUFFERS) of a candidate page: the first one, or the one after that many candidates."""
    with psycopg.connect(database_url(database)) as conn:
        cutoff = conn.execute("SELECT now() - %s", [STUCK_AFTER]).fetchone()[0]
        last = 0
        if after_candidates:
            row = conn.execute(
                "SELECT id FROM account_generation_status WHERE status IN ('queuing', 'processing') "
                "AND updated_at < %s ORDER BY id OFFSET %s LIMIT 1", [cutoff, after_candidates - 1]).fetchone()
            last = row[0] if row else 0
        plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + CANDIDATE_SQL,
                            {"cutoff": cutoff, "last": last, "limit": limit}).fetchall()
    return last, "\n".join(line for (line,) in plan)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values):
    return statistics.median(values) if values else None


# --- Reports ----------------------------------------------------------------------------------


def machine():
    memory_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    with admin() as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        settings = dict(conn.execute(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
            "('shared_buffers', 'synchronous_commit', 'max_wal_size', 'work_mem')").fetchall())
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "commit": commit or "unknown",
        "nproc": os.cpu_count(), "cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1), "postgresql": version, "python": platform.python_version(),
        "pg_settings": settings,
    }


def fmt(value, unit="", digits=2):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def print_machine(info):
    print(f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gb']} GB RAM, PostgreSQL "
          f"{info['postgresql']} ({', '.join(f'{k}={v}' for k, v in sorted(info['pg_settings'].items()))}), "
          f"Python {info['python']}; code at commit {info['commit']}. The machine was shared with other work "
          "while measured.")


# --- Modes ------------------------------------------------------------------------------------


def measure_approaches(dbs, template, runs, approaches, *, check_state=True):
    """Median of `runs` fresh-copy runs per approach, interleaved (run 1 of each approach, then run 2 ...)
    so that a slower spell of a shared machine falls on all of them; the first run of each is checked
    for the end state."""
    results, digests = {name: [] for name, _ in approaches}, {}
    for i in range(runs):
        for name, measure in approaches:
            with fresh_copy(dbs, template) as database:
                sample = measure(database)
                if check_state and i == 0:
                    sample.digest, sample.records = state(database)
                    digests[name] = sample.digest
            results[name].append(sample)
            log(f"{name} run {i + 1}/{runs}: {sample.wall_s:.2f} s, {sample.repaired} repaired"
                + (f", peak RSS {sample.rss_mb:.0f} MB, CPU {sample.cpu_s:.1f} s" if sample.rss_mb else ""))
    identical = len(set(digests.values())) == 1 if check_state else None
    return results, identical


def summary(samples):
    return {
        "wall_s": median([s.wall_s for s in samples]),
        "repaired": samples[0].repaired,
        "rss_mb": median([s.rss_mb for s in samples if s.rss_mb is not None]),
        "cpu_s": median([s.cpu_s for s in samples if s.cpu_s is not None]),
        "runs": [round(s.wall_s, 2) for s in samples],
    }


def mode_run(args, dbs):
    info = machine()
    compiled(ROOT)
    backlog = Shape(args.rows, args.backlog, args.locks, args.locks // 10)
    quiet_large = Shape(args.rows, 0, 1_000, 0)
    quiet_small = Shape(args.quiet_rows, 0, 1_000, 0)
    templates = {shape: build_template(dbs, shape) for shape in (backlog, quiet_large, quiet_small)}

    approaches = [("command", measure_command), ("reference", measure_reference),
                  ("command_quiet_log", lambda db: measure_command(db, label="command_quiet_log", LOG_LEVEL="WARNING"))]
    quiet_runs = [("quiet_large", quiet_large, ROOT), ("quiet_small", quiet_small, ROOT)]
    if args.before != "none":
        before = checkout(args.before)
        approaches.append(("before", lambda db: measure_command(db, label="before", cwd=before)))
        quiet_runs.append(("quiet_large_before", quiet_large, before))
    if not args.skip_per_row:
        approaches.append(("per_row", measure_per_row))
    results, identical = measure_approaches(dbs, templates[backlog], args.runs, approaches)
    quiet = {label: [] for label, _, _ in quiet_runs}
    for i in range(args.runs):
        for label, shape, cwd in quiet_runs:
            with fresh_copy(dbs, templates[shape]) as database:
                sample = measure_command(database, label=label, cwd=cwd)
            quiet[label].append(sample)
            log(f"{label} run {i + 1}/{args.runs}: {sample.wall_s:.2f} s, peak RSS {sample.rss_mb:.0f} MB")

    with fresh_copy(dbs, templates[backlog]) as database, TransactionWatch(database) as watch:
        watched = measure_command(database, label="command_watched")
    with fresh_copy(dbs, templates[backlog]) as database:
        first_page = explain(database)
        later_page = explain(database, after_candidates=args.backlog // 2)
    with fresh_copy(dbs, templates[quiet_large]) as database:
        quiet_page = explain(database)
    scrape = measure_scrapes(dbs, templates, quiet_large, backlog)

    s = {name: summary(samples) for name, samples in results.items()}
    q = {name: summary(samples) for name, samples in quiet.items()}
    data = {"machine": info, "before_rev": args.before, "shape": backlog.__dict__, "results": s, "quiet": q, "identical": identical,
            "states": {name: {"digest": samples[0].digest, "records": samples[0].records}
                       for name, samples in results.items()},
            "command_extra": results["command"][0].extra,
            "watch": {"transactions": len(watch.transactions),
                      "longest_s": max(watch.transactions.values(), default=0),
                      "pages": watched.extra},
            "explain": {"first": first_page, "later": later_page, "quiet": quiet_page}, "scrape": scrape}
    if args.save:
        Path(args.save).write_text(json.dumps(data, indent=1, default=str))
    print_run_report(data, args)


def print_run_report(data, args):
    s, q, shape = data["results"], data["quiet"], data["shape"]
    print_machine(data["machine"])
    print(f"\nData: account_generation_status {shape['rows']:,} rows, {shape['backlog']:,} stuck "
          f"(3 in 10 all_accounted, 3 no_active_tasks, 3 counter_overflow, 1 stalled), {shape['in_flight']:,} "
          f"healthy in flight; account_generation_locks {shape['locks']:,} rows, {shape['expired_locks']:,} expired. "
          f"Medians of {args.runs} runs, each on a fresh copy of the data.\n")
    print("| approach | wall time | batches repaired/s | peak RSS | CPU (process) | runs (s) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    rows = [("1. the command (`cleanup_stuck_generation --json`, whole process)", s["command"]),
            ("1b. the same with LOG_LEVEL=WARNING (no event line per row)", s["command_quiet_log"]),
            ("2. reference SQL (one statement per table)", s["reference"])]
    if "per_row" in s:
        rows.append(("3. per-row ORM (the original job's pattern)", s["per_row"]))
    rows += [(f"4a. quiet: the command, {shape['rows']:,} rows, nothing stuck", q["quiet_large"]),
             (f"4b. quiet: the command, {args.quiet_rows:,} rows, nothing stuck", q["quiet_small"])]
    before_rev = data.get("before_rev", "none")
    if "before" in s:
        rows += [(f"5. before: the command at {before_rev} (the engine before the rule book)", s["before"]),
                 (f"5a. before: quiet, {shape['rows']:,} rows, nothing stuck", q["quiet_large_before"])]
    for label, r in rows:
        rate = r["repaired"] / r["wall_s"] if r["repaired"] else None
        print(f"| {label} | {fmt(r['wall_s'], ' s')} | {fmt(rate, '', 0)} | {fmt(r['rss_mb'], ' MB', 1)} "
              f"| {fmt(r['cpu_s'], ' s')} | {', '.join(map(str, r['runs']))} |")

    ratio_12 = s["command"]["wall_s"] / s["reference"]["wall_s"]
    ratio_31 = s["per_row"]["wall_s"] / s["command"]["wall_s"] if "per_row" in s else None
    ratio_quiet = q["quiet_large"]["wall_s"] / q["quiet_small"]["wall_s"]
    rss_delta = s["command"]["rss_mb"] - q["quiet_large"]["rss_mb"]
    watch = data["watch"]
    pages = -(-shape["backlog"] // BATCH_SIZE) + -(-shape["expired_locks"] // BATCH_SIZE)
    print("\n| target | measured | met |")
    print("| --- | ---: | :---: |")
    print(f"| command <= 1.5x reference SQL (at least <= 2x) | {ratio_12:.2f}x | {yes(ratio_12 <= 1.5)}"
          f"{'' if ratio_12 <= 1.5 else ' (<= 2x: ' + yes(ratio_12 <= 2) + ')'} |")
    if ratio_31 is not None:
        print(f"| per-row >= 10x the command | {ratio_31:.1f}x | {yes(ratio_31 >= 10)} |")
    print(f"| quiet {shape['rows']:,} rows <= 1.5x quiet {args.quiet_rows:,} rows | {ratio_quiet:.2f}x "
          f"| {yes(ratio_quiet <= 1.5)} |")
    if "before" in s:
        quiet_large, quiet_before = q["quiet_large"]["wall_s"], q["quiet_large_before"]["wall_s"]
        print(f"| quiet {shape['rows']:,} rows no slower than before ({before_rev}: {quiet_before:.2f} s) "
              f"| {quiet_large:.2f} s | {yes(quiet_large <= quiet_before)} |")
        rss, rss_before = s["command"]["rss_mb"], s["before"]["rss_mb"]
        print(f"| peak RSS with the backlog no worse than before ({before_rev}: {rss_before:.1f} MB) | {rss:.1f} MB "
              f"(quiet run +{rss_delta:.0f} MB) | {yes(rss <= rss_before)} |")
        print(f"| ... (for the record) the command against before | {s['command']['wall_s']:.2f} s against "
              f"{s['before']['wall_s']:.2f} s: {s['before']['wall_s'] / s['command']['wall_s']:.1f}x faster | |")
    print(f"| no transaction holds row locks for more than one batch | {watch['transactions']} writing "
          f"transactions seen for ~{pages} pages, longest {watch['longest_s'] * 1000:.0f} ms | "
          f"{yes(watch['transactions'] >= pages * 0.9)} |")
    scrape = data["scrape"]
    quiet_scrape = scrape["scrapes"]["quiet"]
    scraped_rows = sum(quiet_scrape["rows"][table] for table in BACKEND_TABLES)
    print(f"| a /metrics scrape of the quiet {shape['rows']:,} rows < 100 ms of database time | "
          f"{quiet_scrape['db_ms']:.1f} ms | {yes(quiet_scrape['db_ms'] < 100)} |")
    print(f"| ... reading no more of the backend's rows than the quiet cleanup run | {scraped_rows:,} rows "
          f"(the run: {scrape['quiet_cleanup_rows']:,}) | {yes(scraped_rows <= scrape['quiet_cleanup_rows'])} |")
    print("\n/metrics scrape (generation.metrics.read_state; median of 20 reads, database time from EXPLAIN ANALYZE):\n")
    print("| data | wall time | database time | queries | rows read: statuses, locks, run history, audit records |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, title in (("quiet", f"quiet, {shape['rows']:,} rows, nothing stuck"),
                         ("quiet_year_of_runs", "the same with a year of run history (17,520 runs)"),
                         ("backlog", f"{shape['backlog']:,} stuck of {shape['rows']:,}")):
        r = scrape["scrapes"][label]
        rows = ", ".join(f"{r['rows'][table]:,}" for table in ("account_generation_status", "account_generation_locks",
                                                              "generation_cleanuprun", "generation_repairrecord"))
        print(f"| {title} | {r['wall_ms']:.1f} ms | {r['db_ms']:.1f} ms | {r['queries']} | {rows} |")
    print(f"\nSame end state (counters, statuses, whether completed_at is set, remaining locks) for "
          f"{', '.join(data['states'])}: {'yes' if data['identical'] else 'NO'}\n")
    for name, st in data["states"].items():
        print(f"    {name}: state {st['digest'][0][:12]}, locks {st['digest'][2]:,} left, records {st['records']}")
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the candidate query, first page (backlog):\n")
    print(indent(data["explain"]["first"][1]))
    print(f"\nlater page (id > {data['explain']['later'][0]}, half the backlog behind it):\n")
    print(indent(data["explain"]["later"][1]))
    print("\nfirst page of the quiet table:\n")
    print(indent(data["explain"]["quiet"][1]))


def yes(ok):
    return "yes" if ok else "**no**"


def indent(text):
    return "\n".join("    " + line for line in text.splitlines())


def mode_sweep(args, dbs):
    info = machine()
    compiled(ROOT)
    points = {}
    for backlog in args.backlogs:
        shape = Shape(args.rows, backlog, args.locks, backlog // 10)
        template = build_template(dbs, shape)
        approaches = [("command", measure_command), ("reference", measure_reference), ("per_row", measure_per_row)]
        results, identical = measure_approaches(dbs, template, args.runs, approaches)
        points[backlog] = {name: summary(samples) for name, samples in results.items()}
        points[backlog]["identical"] = identical
        dbs.drop(template)
    data = {"machine": info, "rows": args.rows, "locks": args.locks, "points": points}
    if args.save:
        Path(args.save).write_text(json.dumps(data, indent=1, default=str))
    print_machine(info)
    print(f"\nBacklog sweep on {args.rows:,} rows ({args.locks:,} locks, a tenth of the backlog's number expired); "
          f"medians of {args.runs} runs, wall time in seconds:\n")
    print("| backlog | command | reference SQL | per-row ORM | command / reference | per-row / command | same state |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
    for backlog, p in points.items():
        c, r, pr = p["command"]["wall_s"], p["reference"]["wall_s"], p["per_row"]["wall_s"]
        print(f"| {backlog:,} | {c:.2f} | {r:.2f} | {pr:.2f} | {c / r:.2f}x | {pr / c:.1f}x "
              f"| {'yes' if p['identical'] else 'NO'} |")
    plot(points, args)


def plot(points, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backlogs = sorted(points)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, label, style in (("per_row", "3. per-row ORM (original job)", "s-"),
                               ("command", "1. cleanup_stuck_generation", "o-"),
                               ("reference", "2. reference SQL", "^-")):
        ax.plot(backlogs, [points[b][name]["wall_s"] for b in backlogs], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"stuck batches (of {args.rows:,} rows)")
    ax.set_ylabel(f"wall time, s (median of {args.runs} runs)")
    ax.set_title("Clearing a backlog: time against backlog size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot)
    print(f"\nplot: {args.plot}")


INDEX_VARIANTS = {
    "no index (0001 only)": None,
    "(id) WHERE in progress [0003]": "(id)",
    "(updated_at) WHERE in progress": "(updated_at)",
    "(updated_at, id) WHERE in progress": "(updated_at, id)",
    "(id, updated_at) WHERE in progress": "(id, updated_at)",
}


def mode_indexes(args, dbs):
    """The candidate query under each index key, on a backlog and on a quiet table; and what each key
    costs the backend: the share of its counter updates that stay HOT (no index entries written)."""
    info = machine()
    shapes = {"backlog": Shape(args.rows, args.backlog, 1_000, 0), "quiet": Shape(args.rows, 0, 1_000, 0)}
    rows = []
    for label, shape in shapes.items():
        template = build_template(dbs, shape)
        with fresh_copy(dbs, template) as database, psycopg.connect(database_url(database), autocommit=True) as conn:
            conn.execute("DROP INDEX agstatus_in_progress_idx")
            for variant, key in INDEX_VARIANTS.items():
                conn.execute("DROP INDEX IF EXISTS bench_candidate_idx")
                if key:
                    conn.execute(f"CREATE INDEX bench_candidate_idx ON account_generation_status {key} "
                                 "WHERE status IN ('queuing', 'processing')")
                conn.execute("VACUUM ANALYZE account_generation_status")
                timings = {}
                for page, after in (("first", 0), ("later", shape.backlog // 2)):
                    times, plan = [], ""
                    for _ in range(7):
                        _, plan = explain(database, after_candidates=after)
                        times.append(float(re.search(r"Execution Time: ([\d.]+)", plan).group(1)))
                    scan = re.search(r"(Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan)( using (\S+))?", plan)
                    timings[page] = (median(times), scan.group(0) if scan else "?")
                hot = hot_share(conn, shape) if label == "quiet" else None
                rows.append((label, variant, timings, hot))
                log(f"{label} {variant}: {timings} hot={hot}")
        dbs.drop(template)
    print_machine(info)
    print(f"\nCandidate query (one page of {BATCH_SIZE}) on {args.rows:,} rows: backlog = {args.backlog:,} stuck; "
          "quiet = nothing stuck, 1,000 in flight. Median execution time of 7 EXPLAIN ANALYZE runs, and the plan's "
          "scan. HOT = share of 5,000 backend-style counter updates (`total_completed + 1, updated_at = now()`) "
          "that were heap-only, i.e. wrote no index entry.\n")
    print("| index | table | first page | later page | HOT updates |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, variant, timings, hot in rows:
        first, later = timings["first"], timings["later"]
        print(f"| {variant} | {label} | {first[0]:.2f} ms ({first[1]}) | {later[0]:.2f} ms ({later[1]}) "
              f"| {'' if hot is None else f'{hot:.0%}'} |")


def hot_share(conn, shape):
    """Backend-style updates of in-flight rows, each its own transaction; the share that were HOT."""
    first = shape.rows - shape.in_flight + 1
    before = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                          "WHERE relname = 'account_generation_status'").fetchone()
    conn.execute("SET synchronous_commit = off")
    for i in range(5_000):
        conn.execute("UPDATE account_generation_status SET total_completed = total_completed + 1, "
                     "updated_at = now() WHERE id = %s", [first + (i * 7919) % shape.in_flight])
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")
    after = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                         "WHERE relname = 'account_generation_status'").fetchone()
    updates, hot = after[0] - before[0], after[1] - before[1]
    return hot / updates if updates else None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark the cleanup (see the module docstring).")
    parser.add_argument("mode", nargs="?", choices=["run", "sweep", "indexes"], default="run")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of account_generation_status")
    parser.add_argument("--backlog", type=int, default=100_000, help="stuck batches (run, indexes)")
    parser.add_argument("--backlogs", type=lambda text: [int(x) for x in text.split(",")],
                        default=[1_000, 10_000, 100_000], help="sweep: comma-separated backlog sizes")
    parser.add_argument("--locks", type=int, default=100_000, help="rows of account_generation_locks (10%% expired)")
    parser.add_argument("--quiet-rows", type=int, default=10_000, help="the small quiet table's rows")
    parser.add_argument("--runs", type=int, default=3, help="runs per approach (the median is reported)")
    parser.add_argument("--skip-per-row", action="store_true", help="run: leave out the slow per-row approach")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "benchmarks.png"), help="sweep: where the plot goes")
    parser.add_argument("--save", help="also write the raw results as JSON to this file")
    parser.add_argument("--before", default=BEFORE_REV,
                        help=f"run: the commit whose command is measured beside this one (default {BEFORE_REV}, "
                             "the engine before the rule book; none: leave it out)")
    args = parser.parse_args(argv)

    # a SIGTERM must still drop the databases
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    dbs = Databases()
    try:
        {"run": mode_run, "sweep": mode_sweep, "indexes": mode_indexes}[args.mode](args, dbs)
    finally:
        dbs.drop_all()


if __name__ == "__main__":
    main()
