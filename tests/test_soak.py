"""Soak: the simulated backend writes for SOAK_SECONDS (default 60) while the cleanup runs over and over.

The cleanup uses a one-second stuck window, so it keeps finding batches that a fault left behind (and
slow healthy ones it races). Afterwards the table is compared with three independent accounts:

- the simulator's ledger: every increment it committed (C exactly, since the cleanup never writes C;
  F and Q plus what the cleanup's RepairRecords say it changed);
- a row history kept by a trigger installed for this test only: every UPDATE of a status row and every
  DELETE of a lock, with the old and new row and the application that made it (`butter_admin` is the
  cleanup, `backend_sim` the simulator);
- the RepairRecords: one per change the cleanup made, before/after equal to the history's old/new.

Run it shorter locally: SOAK_SECONDS=15 pytest tests/test_soak.py.
"""

import json
import logging
import os
import random
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from generation import rules, services
from generation.models import CleanupRun, GenerationLock, GenerationStatus, RepairRecord
from generation.rules import Counters

from .factories import job
from .simulator import Simulator, conninfo_from_django

# ~60 s of simulated traffic; the timeout leaves room for a slow machine (pyproject sets 120 s for the rest)
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
STUCK_AFTER = timedelta(seconds=1)
LOCK_TTL = timedelta(seconds=3)
FAIL_STALLED_AFTER = timedelta(seconds=3)
COUNTERS = ("total_requested", "total_queued", "total_processing", "total_completed", "total_failed")
CLEANUP_APP, BACKEND_APP = "butter_admin", "backend_sim"

HISTORY_DDL = """
CREATE TABLE soak_history (
    seq bigserial PRIMARY KEY,
    tbl text NOT NULL,
    op text NOT NULL,
    row_id bigint NOT NULL,
    app text NOT NULL DEFAULT current_setting('application_name'),
    old jsonb,
    new jsonb
);
CREATE FUNCTION soak_history_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO soak_history (tbl, op, row_id, old, new)
    VALUES (TG_TABLE_NAME, TG_OP, COALESCE(NEW.id, OLD.id),
            CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE to_jsonb(OLD) END,
            CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END);
    RETURN NULL;
END $$;
CREATE TRIGGER soak_status_history AFTER UPDATE ON account_generation_status
    FOR EACH ROW EXECUTE FUNCTION soak_history_log();
CREATE TRIGGER soak_lock_history AFTER DELETE ON account_generation_locks
    FOR EACH ROW EXECUTE FUNCTION soak_history_log();
"""
HISTORY_DROP = """
DROP TRIGGER IF EXISTS soak_status_history ON account_generation_status;
DROP TRIGGER IF EXISTS soak_lock_history ON account_generation_locks;
DROP FUNCTION IF EXISTS soak_history_log();
DROP TABLE IF EXISTS soak_history;
"""


@pytest.fixture
def row_history():
    with connection.cursor() as cursor:
        cursor.execute(HISTORY_DROP)
        cursor.execute(HISTORY_DDL)
    yield
    with connection.cursor() as cursor:
        cursor.execute(HISTORY_DROP)


@pytest.fixture
def quiet_event_log():
    """Thousands of repairs would each log a line; the figures at the end say it all."""
    logger = logging.getLogger("generation")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def _time(value):
    return None if value is None else datetime.fromisoformat(value)


def _same(snapshot, row):
    """A RepairRecord snapshot against a row from the history (to_jsonb of the table row)."""
    return (all(snapshot[name] == row[name] for name in (*COUNTERS, "status"))
            and _time(snapshot["completed_at"]) == _time(row["completed_at"])
            and _time(snapshot["updated_at"]) == _time(row["updated_at"]))


def _sum(values):
    return sum(values[name] for name in COUNTERS[1:])


class CleanupLoop:
    """Runs the cleanup back to back while the simulator writes: mostly the service, every fourth run the
    command itself (exit code and JSON), some runs with a fail-stalled window, page sizes varied."""

    def __init__(self, seed=7):
        self.rng = random.Random(seed)
        self.reports = []
        self.problems = []

    def params(self, n):
        return {
            "stuck_after": STUCK_AFTER, "lock_ttl": LOCK_TTL, "batch_size": self.rng.choice([25, 100, 500]),
            "fail_stalled_after": FAIL_STALLED_AFTER if n % 3 == 2 else None,
            "lock_timeout": timedelta(seconds=2), "statement_timeout": timedelta(seconds=20),
        }

    def run_once(self, n):
        params = self.params(n)
        if n % 4 == 3:
            args = ["--json", "--stuck-after", "1s", "--lock-ttl", "3s", "--batch-size", str(params["batch_size"])]
            if params["fail_stalled_after"]:
                args += ["--fail-stalled-after", "3s"]
            out = StringIO()
            try:
                call_command("cleanup_stuck_generation", *args, stdout=out)
            except CommandError as exc:
                self.problems.append(f"command exited {exc.returncode}: {exc}")
            report = json.loads(out.getvalue())
            self.reports.append(report)
        else:
            report = services.cleanup(job=job(**params)).as_dict()
            self.reports.append(report)
        if report["outcome"] != "ok":
            self.problems.append(f"run #{report['run_id']}: {report['outcome']} {report['errors']}")

    def run_while(self, simulator):
        n = 0
        while simulator.running:
            self.run_once(n)
            n += 1
            time.sleep(0.2)

    def total(self, part, key):
        return sum(r[part][key] for r in self.reports)


def _history():
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq, tbl, op, row_id, app, old, new FROM soak_history ORDER BY seq")
        for seq, tbl, op, row_id, app, old, new in cursor.fetchall():
            yield {"seq": seq, "tbl": tbl, "op": op, "row_id": row_id, "app": app,
                   "old": json.loads(old) if isinstance(old, str) else old,
                   "new": json.loads(new) if isinstance(new, str) else new}


def check_records_match_history(history):
    """Every change the cleanup made is in the history once, with exactly one RepairRecord whose before/after
    are the row before and after that change; no record without a change. Returns record id -> history seq."""
    changes = defaultdict(list)
    for entry in history:
        if entry["app"] == CLEANUP_APP:
            kind = "status" if entry["tbl"] == "account_generation_status" else "lock"
            changes[(kind, entry["row_id"])].append(entry)
    records = defaultdict(list)
    for record in RepairRecord.objects.order_by("id"):
        records[(record.kind, record.target_id)].append(record)
    assert set(changes) == set(records), "a change without a record, or a record without a change"
    seq_of = {}
    for key, entries in changes.items():
        assert len(entries) == len(records[key]), f"{key}: {len(entries)} changes, {len(records[key])} records"
        for entry, record in zip(entries, records[key], strict=True):
            if key[0] == "status":
                assert entry["op"] == "UPDATE"
                assert _same(record.before, entry["old"]), f"record #{record.pk} before != row before"
                assert _same(record.after, entry["new"]), f"record #{record.pk} after != row after"
            else:
                assert entry["op"] == "DELETE" and record.after is None
                assert record.before["lock_id"] == entry["old"]["lock_id"]
                assert _time(record.before["locked_at"]) == _time(entry["old"]["locked_at"])
            seq_of[record.pk] = entry["seq"]
    return seq_of


def check_ledger(simulator):
    """No lost increment: the table holds every increment the simulator committed, plus the cleanup's changes."""
    ledger = simulator.ledger
    rows = {row.id: row for row in GenerationStatus.objects.all()}
    assert set(rows) == set(ledger), "status rows the simulator did not create, or created rows missing"
    repair_delta = defaultdict(Counter)
    for record in RepairRecord.objects.filter(kind="status"):
        for name in COUNTERS:
            repair_delta[record.target_id][name] += record.after[name] - record.before[name]
    lost = Counter()
    for batch_id, counts in ledger.items():
        row, delta = rows[batch_id], repair_delta[batch_id]
        assert delta["total_completed"] == 0 and delta["total_requested"] == 0, "the cleanup never writes C or T"
        assert row.total_requested == simulator.batches[batch_id].total
        lost["completed"] += abs(counts["completed"] - row.total_completed)
        lost["failed"] += abs(counts["failed"] + delta["total_failed"] - row.total_failed)
        lost["queued"] += abs(counts["queued"] - counts["picked"] + delta["total_queued"] - row.total_queued)
        # a failure takes one from P only if P > 0, so the ledger bounds P rather than fixing it
        p_most = counts["picked"] - counts["completed"] + delta["total_processing"]
        if not p_most - counts["failed"] <= row.total_processing <= p_most:
            lost["processing"] += 1
    return lost


def check_overflow_repairs(history, seq_of):
    """After a counter_overflow repair the counters add up to T; a batch above T later was pushed there by a
    backend increment that came after the repair. Returns how many batches went above T again."""
    overflow = RepairRecord.objects.filter(rule="counter_overflow")
    last_repair = {}
    for record in overflow:
        assert _sum(record.after) == record.after["total_requested"], f"record #{record.pk} left Q+P+C+F != T"
        last_repair[record.target_id] = max(last_repair.get(record.target_id, 0), seq_of[record.pk])
    grew_after = set()
    for entry in history:
        if (entry["tbl"] == "account_generation_status" and entry["app"] == BACKEND_APP
                and entry["seq"] > last_repair.get(entry["row_id"], float("inf"))
                and _sum(entry["new"]) > _sum(entry["old"])):
            grew_after.add(entry["row_id"])
    above_again = 0
    for row in GenerationStatus.objects.filter(id__in=list(last_repair)):
        if _sum(row.__dict__) > row.total_requested:
            above_again += 1
            assert row.id in grew_after, f"batch #{row.id} is above T after its overflow repair with no later increment"
    return above_again


def check_final_run(report, final_details):
    """With the backend stopped, the last run leaves only stalled and corrupt batches stuck, each reported."""
    cutoff = report.now - STUCK_AFTER
    stuck = list(GenerationStatus.objects.filter(status__in=rules.IN_PROGRESS, updated_at__lt=cutoff))
    reported = {d.id: d.rule for d in final_details}
    for row in stuck:
        decision = rules.decide(Counters.of(row), row.status)
        assert decision.rule in (rules.Rule.STALLED, rules.Rule.CORRUPT), f"batch #{row.id} still {decision.rule}"
        assert reported.get(row.id) == decision.rule.value, f"stuck batch #{row.id} was not reported"
    assert report.statuses.stalled + report.statuses.corrupt == len(stuck)
    assert not GenerationLock.objects.filter(locked_at__lt=report.now - LOCK_TTL).exists()
    return len(stuck)


def test_soak_no_lost_increment_and_every_repair_recorded(row_history, quiet_event_log, record_property):
    simulator = Simulator(conninfo_from_django(connection), threads=4, seconds=SOAK_SECONDS, seed=11)
    loop = CleanupLoop()
    simulator.start()
    try:
        loop.run_while(simulator)
    finally:
        simulator.stop()

    # the backend has stopped: wait out both windows, then one last run reports what is left
    time.sleep(max(STUCK_AFTER, LOCK_TTL).total_seconds() + 0.5)
    final_details = []
    final = services.cleanup(job=job(stuck_after=STUCK_AFTER, lock_ttl=LOCK_TTL, batch_size=500),
                             on_page=lambda kind, details: final_details.extend(details) if kind == "statuses" else None)

    history = list(_history())
    seq_of = check_records_match_history(history)
    lost = check_ledger(simulator)
    above_again = check_overflow_repairs(history, seq_of)
    left_stuck = check_final_run(final, final_details)

    stats, records = simulator.stats, Counter(RepairRecord.objects.values_list("rule", flat=True))
    increments = stats["queued"] + stats["picked"] + stats["completed"] + stats["failed"]
    figures = (
        f"soak {SOAK_SECONDS:.0f}s: {stats['batches']} batches, {increments} increments committed "
        f"(queued {stats['queued']}, picked {stats['picked']}, completed {stats['completed']}, "
        f"failed {stats['failed']}), {stats['statements']} backend statements; "
        f"faults {', '.join(f'{k[6:]} {v}' for k, v in sorted(stats.items()) if k.startswith('fault_'))}; "
        f"{CleanupRun.objects.count()} cleanup runs, {sum(records.values())} repair records "
        f"({', '.join(f'{rule} {n}' for rule, n in sorted(records.items()))}); "
        f"skipped busy {loop.total('statuses', 'skipped_busy') + loop.total('locks', 'skipped_busy')}, "
        f"moved on {loop.total('statuses', 'moved_on')}; above T again after an overflow repair (explained by a "
        f"later increment) {above_again}; left stalled at the end {left_stuck}; "
        f"lost increments {sum(lost.values())}"
    )
    print("\n" + figures)
    record_property("figures", figures)

    assert not simulator.errors, simulator.errors[:5]
    assert not loop.problems, loop.problems[:5]
    assert sum(lost.values()) == 0, f"lost increments: {dict(lost)}"
    assert stats["batches"] >= 20 * SOAK_SECONDS, "the simulator was too slow to load the cleanup"
    # the cleanup had work of every kind, not just an idle table
    for rule in ("all_accounted", "no_active_tasks", "expired_lock", "released_with_batch"):
        assert records[rule] > 0, f"no {rule} repair in the soak"
    if SOAK_SECONDS >= 30:
        assert records["counter_overflow"] > 0 and records["stalled_failed"] > 0
