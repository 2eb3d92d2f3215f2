"""Demo data: a realistic, deterministic mix of healthy, finished and stuck batches.

Used by `seed_demo_generation` (and so by `make demo` and the tests). Rows are
generated one at a time and inserted in chunks, so a million rows need no more
memory than one chunk. Every row inserted is recorded (DemoRow: id and lock id),
so that clearing deletes only what the demo made, and refuses a database holding
anything else.
"""

import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from .conf import Windows
from .models import ContentType, DemoRow, GenerationLock, GenerationStatus, RecordKind, Status
from .rules import Counters, finished_status, progress_status

CHUNK_SIZE = 5_000

# Category -> share of --count. Every category gets at least one row when
# --count allows it, so even a tiny demo shows every rule.
MIX = {
    "healthy": 0.20,
    "finished": 0.61,
    "all_accounted": 0.05,
    "no_active_tasks": 0.05,
    "counter_overflow": 0.04,
    "stalled": 0.04,
    "corrupt": 0.01,
}
ORPHAN_LOCK_SHARE = 0.02  # expired locks whose batch is gone
CONTENT_TYPES = [ContentType.VIDEO, ContentType.STORY, ContentType.SLIDESHOW]


@dataclass
class SeedReport:
    statuses: Counter = field(default_factory=Counter)
    locks: Counter = field(default_factory=Counter)


def allocate(count: int) -> dict[str, int]:
    """Exact row counts per category (largest remainder, at least 1 each when possible)."""
    shares = {name: count * share for name, share in MIX.items()}
    result = {name: int(value) for name, value in shares.items()}
    if count >= len(MIX):
        for name in result:
            result[name] = max(result[name], 1)
    by_remainder = sorted(shares, key=lambda name: shares[name] - int(shares[name]), reverse=True)
    i = 0
    while sum(result.values()) < count:
        result[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(result.values()) > count:
        largest = max(result, key=result.get)
        result[largest] -= 1
    return result


def _counters(rng: random.Random, category: str) -> Counters:
    total = rng.randint(1, 40)
    if category == "finished" or category == "all_accounted":
        completed = rng.randint(0, total)
        failed = total - completed
        if category == "all_accounted" and rng.random() < 0.5:
            # the finish step never ran; a worker still claims a task
            return Counters(total, 0, rng.randint(1, 3), completed, failed)
        return Counters(total, 0, 0, completed, failed)
    if category == "no_active_tasks":
        total = max(total, 2)
        completed = rng.randint(0, total - 1)
        failed = rng.randint(0, total - 1 - completed)
        return Counters(total, 0, 0, completed, failed)
    if category == "counter_overflow":
        total = max(total, 3)
        completed = rng.randint(0, total - 2)
        failed = rng.randint(0, total - 1 - completed)
        room = total - completed - failed
        processing = rng.randint(1, room + 3)
        queued = room + rng.randint(1, 3) - processing if room + 1 > processing else rng.randint(0, 2)
        return Counters(total, queued, processing, completed, failed)
    if category == "corrupt":
        if rng.random() < 0.5:
            return Counters(total, 0, -rng.randint(1, 3), rng.randint(0, total), 0)
        return Counters(total, None, 0, rng.randint(0, total), 0)
    # healthy and stalled: work in flight, counters within the total
    total = max(total, 2)
    completed = rng.randint(0, total - 2)
    failed = rng.randint(0, total - 1 - completed)
    in_flight = rng.randint(1, total - completed - failed)
    queued = rng.randint(0, in_flight)
    return Counters(total, queued, in_flight - queued, completed, failed)


def _status_for(category: str, counters: Counters) -> str:
    if category == "finished":
        return finished_status(counters)
    if category == "corrupt":
        return Status.PROCESSING
    if category in ("all_accounted", "no_active_tasks"):
        return Status.PROCESSING
    return progress_status(counters)


def _draw(rng: random.Random, remaining: dict[str, int], left: int) -> str:
    """A category drawn without replacement: exact counts, interleaved, no list of all rows."""
    pick = rng.randrange(left)
    for category, n in remaining.items():
        if pick < n:
            return category
        pick -= n
    raise AssertionError("remaining counts do not add up to left")


def _rows(rng: random.Random, counts: dict[str, int], now: datetime):
    """Yield (category, GenerationStatus, GenerationLock or None), interleaving categories."""
    remaining = dict(counts)
    left = sum(remaining.values())
    for index in range(left):
        category = _draw(rng, remaining, left)
        remaining[category] -= 1
        left -= 1

        counters = _counters(rng, category)
        if category == "healthy":
            updated_at = now - timedelta(minutes=rng.randint(1, 90))
        elif category == "finished":
            updated_at = now - timedelta(hours=rng.randint(1, 24 * 60))
        else:  # stuck: updated between 4 hours and 3 days ago
            updated_at = now - timedelta(minutes=rng.randint(4 * 60, 72 * 60))
        started_at = updated_at - timedelta(minutes=rng.randint(5, 120))
        # (account, content type) is unique per row, so any batch can hold a lock
        account_id, content_type = index // 3 + 1, CONTENT_TYPES[index % 3]
        lock_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        status = GenerationStatus(
            created_at=started_at, updated_at=updated_at, started_at=started_at,
            completed_at=updated_at if category == "finished" else None,
            account_id=account_id, content_type=content_type, status=_status_for(category, counters),
            lock_id=lock_id, **counters.as_dict(),
        )
        # in-progress batches hold their lock; half of the stuck ones still do
        holds_lock = category == "healthy" or (category != "finished" and rng.random() < 0.5)
        lock = GenerationLock(
            created_at=started_at, locked_at=started_at, account_id=account_id,
            content_type=content_type, lock_id=lock_id,
        ) if holds_lock else None
        yield category, status, lock


def _orphan_locks(rng: random.Random, count: int, now: datetime):
    for j in range(count):
        locked_at = now - timedelta(hours=rng.randint(4, 96))
        yield GenerationLock(
            created_at=locked_at, locked_at=locked_at, account_id=10**9 + j,
            content_type=CONTENT_TYPES[j % 3], lock_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        )


def _chunks(iterable, size):
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class NotDemoData(Exception):
    """The mirrored tables hold rows the demo did not insert: they are not the demo's to delete."""

    def __init__(self, statuses: int, locks: int):
        super().__init__(
            f"{statuses} generation {'status' if statuses == 1 else 'statuses'} and {locks} generation lock{'s' * (locks != 1)}"
        )
        self.statuses, self.locks = statuses, locks


class CannotRecord(Exception):
    """The demo could not record what it inserts (its table is missing, or the database returns no ids)."""


def _seeded(kind: str):
    """True for a row the demo inserted: a DemoRow with its id and its lock id. The lock id as well as
    the id, so that an id used again (SQLite reuses the highest after a delete) is not taken for the demo's."""
    return Exists(DemoRow.objects.filter(kind=kind, row_id=OuterRef("pk"), lock_id=OuterRef("lock_id")))


def _recorded() -> bool:
    return DemoRow._meta.db_table in connection.introspection.table_names()


def clear_demo_data() -> tuple[int, int]:
    """Delete the demo's rows, when they are all the mirrored tables hold; returns (statuses, locks)
    deleted. Raises NotDemoData, deleting nothing, when any other row is there: a database without
    the demo's records (any real one) counts every row as not the demo's."""
    recorded = _recorded()
    with transaction.atomic():
        if recorded:
            statuses = GenerationStatus.objects.filter(~_seeded(RecordKind.STATUS)).count()
            locks = GenerationLock.objects.filter(~_seeded(RecordKind.LOCK)).count()
        else:
            statuses, locks = GenerationStatus.objects.count(), GenerationLock.objects.count()
        if statuses or locks:
            raise NotDemoData(statuses, locks)
        if not recorded:
            return 0, 0
        # by the record, not the whole table: what is deleted is what the count above found to be the demo's
        statuses, _ = GenerationStatus.objects.filter(_seeded(RecordKind.STATUS)).delete()
        locks, _ = GenerationLock.objects.filter(_seeded(RecordKind.LOCK)).delete()
        DemoRow.objects.all().delete()
    return statuses, locks


def _record(kind: str, rows) -> None:
    if any(row.pk is None for row in rows):  # bulk_create returns ids on PostgreSQL and SQLite 3.35+
        raise CannotRecord("the database did not return the ids of the inserted rows (SQLite 3.35+ needed)")
    DemoRow.objects.bulk_create([DemoRow(kind=kind, row_id=row.pk, lock_id=row.lock_id) for row in rows])


def seed_demo_data(*, count: int, seed: int | None, lock_ttl: Windows) -> SeedReport:
    if not _recorded():
        raise CannotRecord(f"table {DemoRow._meta.db_table} is missing: run `manage.py migrate` first")
    rng = random.Random(seed)
    now = timezone.now()
    report = SeedReport()
    for chunk in _chunks(_rows(rng, allocate(count), now), CHUNK_SIZE):
        with transaction.atomic():
            statuses = GenerationStatus.objects.bulk_create([status for _, status, _ in chunk])
            locks = GenerationLock.objects.bulk_create([lock for _, _, lock in chunk if lock is not None])
            _record(RecordKind.STATUS, statuses)
            _record(RecordKind.LOCK, locks)
        report.statuses.update(category for category, _, _ in chunk)
        for lock in locks:
            report.locks["expired" if lock.locked_at < now - lock_ttl.for_type(lock.content_type) else "fresh"] += 1
    orphans = max(1, round(count * ORPHAN_LOCK_SHARE)) if count else 0
    for chunk in _chunks(_orphan_locks(rng, orphans, now), CHUNK_SIZE):
        with transaction.atomic():
            _record(RecordKind.LOCK, GenerationLock.objects.bulk_create(chunk))
        report.locks["expired, no batch"] += len(chunk)
    return report
