"""The admin's read queries: list columns, filters and searches. The read side: nothing here writes, and
nothing here spells a rule (each comes from expressions.py).
"""

from datetime import datetime

from django.db.models import Count, Min, Q, Value

from . import expressions as ex
from .conf import Windows
from .models import GenerationStatus, RepairRecord

BIGINT_MAX = 2**63 - 1


def as_id(term: str) -> int | None:
    """A search term as a bigint id ("4998" or "#4998"), or None (not a number, or past bigint: the query
    would fail)."""
    term = term.strip().removeprefix("#")
    return int(term) if term.isascii() and term.isdigit() and int(term) <= BIGINT_MAX else None


# --- Generation statuses -----------------------------------------------------------------------


def diagnosis(*, now: datetime, stuck_after: Windows) -> ex.Judgement:
    """How the admin judges a row: rules.diagnose() with its content type's stuck window, no fail-stalled window."""
    return ex.Judgement(cutoffs=stuck_after.cutoffs(now))


def statuses_for_list(queryset, *, now: datetime, stuck_after: Windows):
    """The change list's rows with their `verdict` (rules.diagnose, in SQL) and `checked_at` (the database
    clock the page was judged at), so each row's diagnosis and age need no query of their own."""
    return queryset.annotate(verdict=diagnosis(now=now, stuck_after=stuck_after).verdict(), checked_at=Value(now))


def filter_stuck(queryset, *, now: datetime, stuck_after: Windows, rule: str | None = None):
    """Stuck rows, optionally only those a given rule (rules.STUCK_RULES) would apply to."""
    queryset = queryset.filter(ex.stuck(stuck_after.cutoffs(now)))
    if rule is not None:
        queryset = queryset.filter(diagnosis(now=now, stuck_after=stuck_after).of(rule))
    return queryset


def stuck_groups(*, now: datetime, stuck_after: Windows) -> dict:
    """Stuck batches by (content type, verdict): their count and the oldest one's updated_at. One scan of the
    in-progress index whatever the size of the table; the health page and the metrics both read this."""
    rows = (filter_stuck(GenerationStatus.objects.all(), now=now, stuck_after=stuck_after)
            .annotate(verdict=diagnosis(now=now, stuck_after=stuck_after).verdict())
            .values_list("content_type", "verdict").annotate(n=Count("id"), oldest=Min("updated_at")).order_by())
    return {(content_type, verdict): (n, oldest) for content_type, verdict, n, oldest in rows}


def filter_not_stuck(queryset, *, now: datetime, stuck_after: Windows):
    return queryset.exclude(ex.stuck(stuck_after.cutoffs(now)))


def search_statuses(queryset, term: str):
    """A batch id (4998 or #4998), an account id, or an exact lock id: all indexed, where a substring search
    would scan the table."""
    term = term.strip()
    if (number := as_id(term)) is not None:
        return queryset.filter(Q(id=number) | Q(account_id=number) | Q(lock_id=term))
    return queryset.filter(lock_id=term)


# --- Generation locks --------------------------------------------------------------------------


def locks_for_list(queryset, *, now: datetime, lock_ttl: Windows):
    """Locks with the batch that refers to them, in the page's one query (correlated subqueries on the
    indexed lock_id), whether each is expired (by its content type's TTL), and the database clock the page
    was computed with."""
    clock = Value(now)
    return queryset.annotate(**ex.referring_batch_annotations(GenerationStatus, clock),
                             is_expired=ex.still_expired(lock_ttl.cutoffs(now)), checked_at=clock)


def filter_expired(queryset, *, now: datetime, lock_ttl: Windows, expired: bool):
    condition = ex.expired(lock_ttl.cutoffs(now))
    return queryset.filter(condition) if expired else queryset.exclude(condition)


def search_locks(queryset, term: str):
    """A lock's id (#12), an account id, or an exact lock id."""
    term = term.strip()
    if (number := as_id(term)) is not None:
        return queryset.filter(Q(id=number) | Q(account_id=number) | Q(lock_id=term))
    return queryset.filter(lock_id=term)


# --- History -----------------------------------------------------------------------------------


def run_records(run_id: int, *, limit: int):
    """A run's first `limit` records in the order they were written, and how many there are in all."""
    records = RepairRecord.objects.filter(run_id=run_id).select_related("actor").order_by("id")
    return list(records[:limit]), records.count()


def iter_run_records(run_id: int, *, chunk_size: int = 2_000):
    """Every record of a run, streamed: a run over a large selection must not be loaded at once."""
    return RepairRecord.objects.filter(run_id=run_id).order_by("id").iterator(chunk_size=chunk_size)
