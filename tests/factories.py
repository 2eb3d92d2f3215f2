"""Rows for tests, placed in time relative to the database clock."""

import json
import uuid
from dataclasses import replace
from datetime import timedelta

from generation import expressions
from generation.conf import JobSettings, job_settings
from generation.db import database_now
from generation.models import GenerationLock, GenerationStatus
from generation.rules import Counters, progress_status

WINDOW = timedelta(hours=3)
OUTSIDE = WINDOW + timedelta(minutes=1)  # stuck: idle one minute longer than the window
INSIDE = WINDOW - timedelta(minutes=1)  # not stuck yet


def job(**overrides) -> JobSettings:
    """The job's settings (as an entry point reads them) with some replaced; None too (fail_stalled_after=None:
    never)."""
    return replace(job_settings(), **overrides)


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


def snapshot_of(row) -> dict:
    """A status row's snapshot as the database builds it for the audit records (expressions.status_snapshot)."""
    text = type(row).objects.filter(pk=row.pk).values_list(expressions.status_snapshot(), flat=True).get()
    return json.loads(text)
