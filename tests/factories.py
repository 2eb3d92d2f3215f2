"""Rows for tests, placed in time relative to the database clock."""

import uuid
from datetime import timedelta

from generation.models import GenerationLock, GenerationStatus
from generation.rules import Counters, progress_status
from generation.services import database_now

WINDOW = timedelta(hours=3)
OUTSIDE = WINDOW + timedelta(minutes=1)  # stuck: idle one minute longer than the window
INSIDE = WINDOW - timedelta(minutes=1)  # not stuck yet


def make_batch(counters, *, idle=OUTSIDE, status=None, lock_held_for=None, account_id=None, content_type="video"):
    """A batch whose updated_at is `idle` ago; with a lock row taken `lock_held_for` ago if given."""
    counters = counters if isinstance(counters, Counters) else Counters(*counters)
    now = database_now()
    account_id = account_id if account_id is not None else GenerationStatus.objects.count() + 1
    lock_id = str(uuid.uuid4())
    if status is None:
        status = progress_status(counters) if not counters.is_corrupt else "processing"
    batch = GenerationStatus.objects.create(
        created_at=now - idle - timedelta(minutes=5), updated_at=now - idle, started_at=now - idle,
        account_id=account_id, content_type=content_type, status=status, lock_id=lock_id, **counters.as_dict(),
    )
    if lock_held_for is not None:
        make_lock(account_id=account_id, content_type=content_type, lock_id=lock_id, held_for=lock_held_for)
    return batch


def make_lock(*, account_id, content_type="video", lock_id=None, held_for=OUTSIDE):
    locked_at = database_now() - held_for
    return GenerationLock.objects.create(
        created_at=locked_at, locked_at=locked_at, account_id=account_id, content_type=content_type,
        lock_id=lock_id or str(uuid.uuid4()),
    )


def counters_of(batch):
    batch.refresh_from_db()
    return Counters.of(batch)
