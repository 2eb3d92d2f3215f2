"""A stand-in for the Go backend: drives the two tables with the backend's own SQL, plus its failures.

What the backend does (docs/contract.md, "How the backend moves a task through the counters"),
one autocommit statement per step, each from whichever worker got the message:

- create a batch: take the account's lock (a row of account_generation_locks; the unique index
  refuses a second one) and insert the status row naming it, in one transaction;
- queue a task:     Q+1;
- pick it up:       P+1, Q-1, only while Q > 0;
- complete it:      C+1, P-1, only while P > 0;
- fail it:          F+1, and P-1 if P > 0;
- finish: the worker whose increment brought C+F to T sets the finished status and completed_at and
  deletes the lock named by the batch's lock_id, in one transaction.

Every statement sets updated_at = now(), as the backend does on every save. The faults that leave
batches stuck in production are injected per batch (see FAULTS). Plain psycopg, not Django: this
plays a foreign process with its own connections (one per thread), each named `backend_sim` in
pg_stat_activity.

The ledger: every statement that committed and changed the row is counted per batch
(`queued`, `picked`, `completed`, `failed`, ...); statements whose guard matched nothing are counted
as `rejected_*`. A test compares the table against it afterwards: the cleanup never changes C,
so C must equal the ledger exactly; F and Q equal the ledger plus what the cleanup's RepairRecords say
it changed.

Bounded: at most MAX_THREADS threads and MAX_SECONDS seconds, loopback only.
"""

import heapq
import ipaddress
import itertools
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psycopg

MAX_THREADS = 16
MAX_SECONDS = 600
CONTENT_TYPES = ("video", "story", "slideshow")
IN_PROGRESS = ("queuing", "processing")

# The ways a batch gets stuck in production, one at most per batch.
FAULTS = (
    "worker_died",  # a worker dies holding a task: P stays up (stalled)
    "lost_message",  # a task was counted as queued but its message never arrives: Q stays up (stalled)
    "never_queued",  # the enqueue crashed before counting a task: Q = P = 0 with C+F < T (no_active_tasks)
    "double_count",  # a retry counts a running task a second time: Q+P+C+F > T for a while (counter_overflow)
    "finish_never_runs",  # C+F reached T but the finish did not run (all_accounted)
    "lock_never_released",  # the finish ran but left the lock behind (an expired lock later)
    "slow",  # healthy but slower than the stuck window between steps: the cleanup races the workers
)

_SET_UPDATED = "updated_at = now()"
SQL = {
    "create_lock": (
        "INSERT INTO account_generation_locks (created_at, account_id, content_type, locked_at, lock_id) "
        "VALUES (now(), %s, %s, now(), %s) ON CONFLICT DO NOTHING RETURNING id"
    ),
    "create_batch": (
        "INSERT INTO account_generation_status (created_at, updated_at, started_at, account_id, content_type, "
        "total_requested, total_queued, total_processing, total_completed, total_failed, status, lock_id) "
        "VALUES (now(), now(), now(), %s, %s, %s, 0, 0, 0, 0, 'queuing', %s) RETURNING id"
    ),
    "queue": f"UPDATE account_generation_status SET total_queued = total_queued + 1, {_SET_UPDATED} WHERE id = %s",
    "pick": (
        "UPDATE account_generation_status SET total_processing = total_processing + 1, "
        "total_queued = total_queued - 1, "
        f"status = CASE WHEN status = 'queuing' THEN 'processing' ELSE status END, {_SET_UPDATED} "
        "WHERE id = %s AND total_queued > 0"
    ),
    "complete": (
        "UPDATE account_generation_status SET total_completed = total_completed + 1, "
        f"total_processing = total_processing - 1, {_SET_UPDATED} WHERE id = %s AND total_processing > 0 "
        "RETURNING total_requested, total_completed, total_failed, status, lock_id"
    ),
    "fail": (
        "UPDATE account_generation_status SET total_failed = total_failed + 1, "
        "total_processing = CASE WHEN total_processing > 0 THEN total_processing - 1 ELSE total_processing END, "
        f"{_SET_UPDATED} WHERE id = %s RETURNING total_requested, total_completed, total_failed, status, lock_id"
    ),
    "finish": (
        "UPDATE account_generation_status SET status = CASE WHEN total_failed = 0 THEN 'completed' "
        "WHEN total_completed = 0 THEN 'failed' ELSE 'partial' END, completed_at = now(), "
        f"{_SET_UPDATED} WHERE id = %s"
    ),
    "release": "DELETE FROM account_generation_locks WHERE lock_id = %s",
    "hold_row": "SELECT id FROM account_generation_status WHERE id = %s FOR UPDATE",
}


@dataclass
class Batch:
    id: int
    total: int
    lock_id: str
    fault: str | None


@dataclass(order=True)
class _Message:
    due: float
    seq: int
    kind: str = field(compare=False)  # "queue" (count and send a task) or "run" (pick up and finish a task)
    batch: Batch = field(compare=False)
    task: int = field(compare=False)
    copy: int = field(compare=False, default=0)  # 1: the second copy a retry made (double_count)


def _is_loopback(host: str) -> bool:
    if not host or host.startswith("/") or host == "localhost":
        return True  # no host or a Unix socket path: this machine
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Simulator:
    """Threads playing the backend's workers. Use as a context manager, or start() then stop().

    `conninfo`: keyword arguments for psycopg.connect (host, port, user, password, dbname).
    `fault_rate`: share of batches that get one fault from `faults`.
    `slow_delay`: (min, max) seconds a slow or faulty batch waits between steps; make it longer than the
    cleanup's stuck window so that the cleanup finds such batches idle.
    """

    def __init__(self, conninfo: dict, *, threads: int = 4, seconds: float = 60.0, max_batches: int | None = None,
                 tasks: tuple[int, int] = (1, 6), fault_rate: float = 0.2, faults: tuple[str, ...] = FAULTS,
                 slow_delay: tuple[float, float] = (1.5, 2.5), fail_rate: float = 0.1, hold_rate: float = 0.01,
                 accounts: int = 20_000, seed: int = 0):
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads must be 1..{MAX_THREADS}")
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS}]")
        if not _is_loopback(str(conninfo.get("host") or "")):
            raise ValueError(f"the simulator only talks to a database on this machine, not {conninfo.get('host')!r}")
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        # synchronous_commit off: a commit is visible to other sessions exactly as before, only not waited
        # on to reach the disk, so the simulator is not bound by fsync latency (no crash is simulated)
        self.conninfo = {**conninfo, "application_name": "backend_sim", "autocommit": True,
                         "options": "-c statement_timeout=10000 -c lock_timeout=10000 -c synchronous_commit=off"}
        self.threads, self.seconds, self.max_batches = threads, seconds, max_batches
        self.tasks, self.fault_rate, self.faults = tasks, fault_rate, tuple(faults)
        self.slow_delay, self.fail_rate, self.hold_rate = slow_delay, fail_rate, hold_rate
        self.accounts, self.seed = accounts, seed

        self._heap: list[_Message] = []
        self._heap_lock = threading.Lock()
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._created = 0
        self._created_lock = threading.Lock()
        # per-thread ledgers, merged on demand: no lock on the hot path
        self._ledgers: list[defaultdict[int, Counter]] = []
        self._stats: list[Counter] = []
        self.batches: dict[int, Batch] = {}
        self.errors: list[str] = []
        self.started_at = self.stopped_at = None

    # --- control --------------------------------------------------------------------------

    def start(self):
        self.started_at = time.monotonic()
        deadline = self.started_at + self.seconds
        for n in range(self.threads):
            ledger, stats = defaultdict(Counter), Counter()
            self._ledgers.append(ledger)
            self._stats.append(stats)
            worker = threading.Thread(target=self._run, args=(n, deadline, ledger, stats),
                                      name=f"backend-sim-{n}", daemon=True)
            self._workers.append(worker)
            worker.start()
        return self

    def stop(self, timeout: float = 30.0):
        """Stop the workers (messages still pending are abandoned, like a backend shut down) and wait."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout)
        if any(worker.is_alive() for worker in self._workers):
            raise RuntimeError("simulator threads did not stop")
        self.stopped_at = time.monotonic()

    def wait(self):
        """Block until the time is up (or stop() was called)."""
        for worker in self._workers:
            worker.join()
        self.stopped_at = self.stopped_at or time.monotonic()

    @property
    def running(self) -> bool:
        return any(worker.is_alive() for worker in self._workers)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- results --------------------------------------------------------------------------

    @property
    def ledger(self) -> dict[int, Counter]:
        """batch id -> committed changes by kind (queued, picked, completed, failed, finished, ...)."""
        merged = defaultdict(Counter)
        for ledger in self._ledgers:
            for batch_id, counts in list(ledger.items()):
                merged[batch_id].update(counts)
        return dict(merged)

    @property
    def stats(self) -> Counter:
        total = Counter()
        for stats in self._stats:
            total.update(stats)
        return total

    # --- the workers ----------------------------------------------------------------------

    def _run(self, n, deadline, ledger, stats):
        rng = random.Random(self.seed * 1000 + n)
        try:
            with psycopg.connect(**self.conninfo) as conn:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    message = self._next_message()
                    try:
                        if message is not None:
                            self._handle(conn, rng, message, ledger, stats)
                        elif self._may_create():
                            self._create(conn, rng, ledger, stats)
                        else:
                            time.sleep(0.002)
                    except psycopg.errors.QueryCanceled as exc:
                        # a timeout: the statement did not commit; the ledger does not count it
                        stats["timeouts"] += 1
                        self._error(f"{threading.current_thread().name}: {exc}")
        except psycopg.OperationalError as exc:
            self._error(f"{threading.current_thread().name}: connection failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            self._error(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")

    def _error(self, text):
        self.errors.append(" ".join(text.split()))

    def _may_create(self):
        with self._heap_lock:
            pending = sum(1 for m in self._heap if m.due <= time.monotonic())
        if pending > self.threads * 4:
            return False
        with self._created_lock:
            if self.max_batches is not None and self._created >= self.max_batches:
                return False
            self._created += 1
            return True

    def _send(self, kind, batch, task, *, delay=0.0, copy=0):
        with self._heap_lock:
            heapq.heappush(self._heap, _Message(time.monotonic() + delay, next(self._seq), kind, batch, task, copy))

    def _next_message(self):
        with self._heap_lock:
            if self._heap and self._heap[0].due <= time.monotonic():
                return heapq.heappop(self._heap)
        return None

    def _delay(self, rng, batch):
        return rng.uniform(*self.slow_delay) if batch.fault in ("slow", "double_count") else 0.0

    def _create(self, conn, rng, ledger, stats):
        account, content_type = rng.randrange(1, self.accounts + 1), rng.choice(CONTENT_TYPES)
        lock_id = str(uuid.uuid4())
        total = rng.randint(*self.tasks)
        with conn.transaction():
            if conn.execute(SQL["create_lock"], [account, content_type, lock_id]).fetchone() is None:
                stats["lock_taken"] += 1  # a batch of this account and type is running: the backend refuses
                return
            batch_id = conn.execute(SQL["create_batch"], [account, content_type, total, lock_id]).fetchone()[0]
        fault = rng.choice(self.faults) if rng.random() < self.fault_rate else None
        batch = Batch(batch_id, total, lock_id, fault)
        self.batches[batch_id] = batch
        ledger[batch_id]["created"] += 1
        stats["batches"] += 1
        if fault:
            stats[f"fault_{fault}"] += 1
        faulty_task = rng.randrange(total)
        for task in range(total):
            if fault == "never_queued" and task == faulty_task:
                continue
            # slow batches enqueue their tasks over time, so the batch sits at Q = P = 0 in between
            self._send("queue", batch, task, delay=self._delay(rng, batch) * (task > 0))

    def _handle(self, conn, rng, message, ledger, stats):
        batch, kind = message.batch, message.kind
        counts = ledger[batch.id]
        faulty = message.task == 0 and message.copy == 0
        if kind == "queue":
            self._execute(conn, "queue", batch, counts, stats)
            if batch.fault == "lost_message" and faulty:
                return  # counted as queued, but nobody will ever receive it
            self._send("run", batch, message.task, delay=self._delay(rng, batch))
            return
        # kind == "run": pick the task up, then complete or fail it
        if not self._execute(conn, "pick", batch, counts, stats):
            return  # nothing queued any more (a phantom copy, or the cleanup dropped it): message dropped
        if batch.fault == "double_count" and faulty:
            # the retry fires while this attempt still runs: the task is counted and sent a second time
            self._execute(conn, "queue", batch, counts, stats)
            self._send("run", batch, message.task, delay=self._delay(rng, batch), copy=1)
        if batch.fault == "worker_died" and faulty:
            return  # the worker died with the task in processing
        # slow batches are idle long enough to be the cleanup's candidates: hold those more often
        if rng.random() < self.hold_rate * (20 if batch.fault in ("slow", "double_count") else 1):
            self._hold_row(conn, rng, batch, stats)
        outcome = "fail" if rng.random() < self.fail_rate else "complete"
        row = self._execute(conn, outcome, batch, counts, stats)
        if row is None:
            return
        total, completed, failed, status, lock_id = row
        if completed + failed >= total and status in IN_PROGRESS:
            if batch.fault == "finish_never_runs":
                return
            with conn.transaction():
                conn.execute(SQL["finish"], [batch.id])
                if batch.fault != "lock_never_released":
                    released = conn.execute(SQL["release"], [lock_id]).rowcount
            counts["finished"] += 1
            if batch.fault != "lock_never_released":
                counts["lock_released"] += released

    def _hold_row(self, conn, rng, batch, stats):
        """A slow backend transaction holding the row for a moment: the cleanup must skip it, not wait."""
        with conn.transaction():
            conn.execute(SQL["hold_row"], [batch.id])
            time.sleep(rng.uniform(0.05, 0.2))
        stats["rows_held"] += 1

    def _execute(self, conn, name, batch, counts, stats):
        """One autocommit statement; counted in the ledger only if it committed and changed the row.
        Returns the RETURNING row, True for a change without one, None when the guard matched nothing."""
        cursor = conn.execute(SQL[name], [batch.id])
        stats["statements"] += 1
        if cursor.rowcount != 1:
            counts[f"rejected_{name}"] += 1
            stats[f"rejected_{name}"] += 1
            return None
        kind = {"queue": "queued", "pick": "picked", "complete": "completed", "fail": "failed"}[name]
        counts[kind] += 1
        stats[kind] += 1
        return cursor.fetchone() if cursor.description else True


def conninfo_from_django(connection) -> dict:
    """psycopg.connect keywords for the database a Django connection uses (the test database in tests)."""
    s = connection.settings_dict
    info = {"host": s.get("HOST") or "127.0.0.1", "port": s.get("PORT") or 5432, "user": s.get("USER") or "postgres",
            "dbname": s["NAME"]}
    if s.get("PASSWORD"):
        info["password"] = s["PASSWORD"]
    return info


def backend_connection(connection, **kwargs):
    """One more connection to the same database, as another process of the backend would hold (autocommit)."""
    return psycopg.connect(**conninfo_from_django(connection), application_name="backend_sim", autocommit=True,
                           **kwargs)
