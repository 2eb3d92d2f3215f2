"""The admin's read queries: list columns, filters and searches. The read side: nothing here writes, and
nothing here spells a rule (each comes from expressions.py).
"""

from datetime import datetime

from django.db.models import Count, Exists, Min, OuterRef, Q, Value

from . import expressions as ex
from .conf import Windows
from .models import GenerationLock, GenerationStatus, RecordKind, RecordRule, RepairRecord

BIGINT_MAX = 2**63 - 1


def as_id(term: str) -> int | None:
    """A search term as a bigint id ("4998" or "#4998"), or None (not a number, or past bigint: the query
    would fail)."""
    term = term.strip().removeprefix("#")
    return int(term) if term.isascii() and term.isdigit() and int(term) <= BIGINT_MAX else None


def count_rows(queryset) -> int:
    """How many rows a change list's queryset holds (select-across): one COUNT, its ordering dropped."""
    return queryset.order_by().count()


def first_ids(queryset, n: int, *, newest_first: bool = False) -> list[int]:
    """The first `n` ids of a selection, in id order (newest first for undo): the sample a select-across
    confirmation previews."""
    return list(queryset.order_by("-id" if newest_first else "id").values_list("id", flat=True)[:n])


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


def verdict_totals(queryset, judgement: ex.Judgement, *, now: datetime, stuck_after: Windows) -> dict:
    """How many of the selected batches an action's judgement gives each verdict, and what the list calls them:
    {(the action's verdict, the list's verdict): n}, in one GROUP BY whatever the size of the selection."""
    rows = (queryset.annotate(action_verdict=judgement.verdict(),
                              listed_verdict=diagnosis(now=now, stuck_after=stuck_after).verdict())
            .values_list("action_verdict", "listed_verdict").annotate(n=Count("id")).order_by())
    return {(action, listed): n for action, listed, n in rows}


def lock_of_batch(lock_id: str | None, *, now: datetime, lock_ttl: Windows):
    """The lock a batch refers to, as the locks list shows it (expired by its type's TTL), or None."""
    if not lock_id:
        return None
    return locks_for_list(GenerationLock.objects.filter(lock_id=lock_id), now=now, lock_ttl=lock_ttl).first()


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


def lock_totals(queryset, *, now: datetime, lock_ttl: Windows, stuck_after: Windows) -> dict:
    """How many of the selected locks there are, how many are expired, and how many belong to a batch still
    moving (releasing those lets a second batch start beside it): one query."""
    moving = GenerationStatus.objects.filter(ex.moving(stuck_after.cutoffs(now)), lock_id=OuterRef("lock_id"))
    return queryset.order_by().aggregate(
        count=Count("id"), expired=Count("id", filter=ex.expired(lock_ttl.cutoffs(now))),
        of_moving_batches=Count("id", filter=Exists(moving)))


# --- History -----------------------------------------------------------------------------------


def search_runs(queryset, term: str):
    """A run's id (12 or #12)."""
    number = as_id(term)
    return queryset.filter(id=number) if number is not None else queryset.none()


def search_records(queryset, term: str):
    """The repairs of a batch (its id, 4998 or #4998) or of an account (its id): both indexed."""
    number = as_id(term)
    if number is None:
        return queryset.none()
    return queryset.filter(Q(kind=RecordKind.STATUS, target_id=number) | Q(account_id=number))


def record_totals(queryset) -> dict:
    """The selected repair records by rule, and how many an undo must refuse whatever happens: undos themselves,
    and records undone already. One query."""
    undone = RepairRecord.objects.filter(undo_of=OuterRef("pk"))
    rows = (queryset.annotate(is_undone=Exists(undone)).values_list("rule", "is_undone")
            .annotate(n=Count("id")).order_by())
    totals = {"by_rule": {}, "undos": 0, "undone_already": 0, "count": 0}
    for rule, is_undone, n in rows:
        totals["by_rule"][rule] = totals["by_rule"].get(rule, 0) + n
        totals["count"] += n
        totals["undos"] += n if rule == RecordRule.UNDO else 0
        totals["undone_already"] += n if is_undone and rule != RecordRule.UNDO else 0
    return totals


def run_records(run_id: int, *, limit: int):
    """A run's first `limit` records in the order they were written, and how many there are in all."""
    records = RepairRecord.objects.filter(run_id=run_id).select_related("actor").order_by("id")
    return list(records[:limit]), records.count()


def iter_run_records(run_id: int, *, chunk_size: int = 2_000):
    """Every record of a run, streamed: a run over a large selection must not be loaded at once."""
    return RepairRecord.objects.filter(run_id=run_id).order_by("id").iterator(chunk_size=chunk_size)
