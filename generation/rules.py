"""The repair rules of docs/contract.md, as pure functions: the contract in Python, and the oracle.

No Django, no ORM and no clock: a decision is made from a batch's counters and status, whether it is
stuck, and whether the operator asked to fail stalled batches that are idle long enough. The database
form of these rules (what the engine, the admin and the health page run) is expressions.py, proven equal
to this module by tests/test_expressions.py. Each rule is found below under its code name.

The project's vocabulary is defined here once: the statuses, the rule names, what the admin calls a row
(its verdict), and the T/Q/P/C/F way of writing counters. models.py builds its choices from these.
"""

from dataclasses import dataclass, fields, replace
from enum import StrEnum

QUEUING, PROCESSING = "queuing", "processing"
COMPLETED, PARTIAL, FAILED = "completed", "partial", "failed"
IN_PROGRESS = (QUEUING, PROCESSING)
FINISHED = (COMPLETED, PARTIAL, FAILED)
KNOWN_STATUSES = IN_PROGRESS + FINISHED

COUNTER_FIELDS = ("total_requested", "total_queued", "total_processing", "total_completed", "total_failed")
COUNTERS_LABEL = "T/Q/P/C/F"  # how every report, log line and page names the five counters, in this order


class Rule(StrEnum):
    CORRUPT = "corrupt"
    ALL_ACCOUNTED = "all_accounted"
    NO_ACTIVE_TASKS = "no_active_tasks"
    COUNTER_OVERFLOW = "counter_overflow"
    STALLED = "stalled"
    STALLED_FAILED = "stalled_failed"


# Rules that change the row; `corrupt` and `stalled` are only reported.
REPAIRS = (Rule.ALL_ACCOUNTED, Rule.NO_ACTIVE_TASKS, Rule.COUNTER_OVERFLOW, Rule.STALLED_FAILED)
# Repairs that finish the batch: completed_at is set and the batch's lock released.
FINISHING = (Rule.ALL_ACCOUNTED, Rule.NO_ACTIVE_TASKS, Rule.STALLED_FAILED)
# What a stuck batch can be diagnosed as without a fail-stalled window, in decide()'s order.
STUCK_RULES = (Rule.CORRUPT, Rule.ALL_ACCOUNTED, Rule.NO_ACTIVE_TASKS, Rule.COUNTER_OVERFLOW, Rule.STALLED)


class Verdict(StrEnum):
    """What a row that no rule judges is called (the admin's diagnosis, the reasons an action leaves a row
    alone); a row that a rule judges is called by its Rule."""

    UNKNOWN_STATUS = "unknown_status"  # a status the contract does not name: never a candidate, a person must look
    FINISHED = "finished"
    NEVER_UPDATED = "never_updated"  # in progress with updated_at NULL: its age is unknown, so never stuck
    HEALTHY = "healthy"  # in progress, and moved within the stuck window


@dataclass(frozen=True)
class Counters:
    """T, Q, P, C, F; named like the table's columns. None stands for NULL."""

    total_requested: int | None
    total_queued: int | None
    total_processing: int | None
    total_completed: int | None
    total_failed: int | None

    @classmethod
    def of(cls, row) -> "Counters":
        """From anything with the five counter attributes (a model instance, a namedtuple)."""
        return cls(*(getattr(row, f.name) for f in fields(cls)))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def is_corrupt(self) -> bool:
        return any(value is None or value < 0 for value in self.as_dict().values())

    @property
    def accounted(self) -> int:
        return self.total_completed + self.total_failed

    @property
    def in_flight(self) -> int:
        return self.total_queued + self.total_processing

    def __str__(self):
        return counters_text(self.as_dict())


def counters_text(values: dict) -> str:
    """The five counters of a row or snapshot as T/Q/P/C/F, e.g. 10/0/2/7/3 (NULL for a NULL counter)."""
    return "/".join("NULL" if values.get(name) is None else str(values[name]) for name in COUNTER_FIELDS)


def finished_status(c: Counters) -> str:
    if c.total_failed == 0:
        return COMPLETED
    if c.total_completed == 0:
        return FAILED
    return PARTIAL


def progress_status(c: Counters) -> str:
    return PROCESSING if c.total_processing > 0 or c.total_completed > 0 else QUEUING


@dataclass(frozen=True)
class RepairDecision:
    rule: Rule | None
    before: Counters
    status_before: str
    after: Counters
    status: str
    finishes: bool = False  # set completed_at and release the batch's lock

    @property
    def repairs(self) -> bool:
        return self.rule in REPAIRS

    def changes(self) -> dict:
        """Only the columns the rule changes (never write the others: a worker may be moving them)."""
        changed = {
            name: value for name, value in self.after.as_dict().items() if getattr(self.before, name) != value
        }
        if self.status != self.status_before:
            changed["status"] = self.status
        return changed


def _finish(c: Counters, **counters) -> tuple[Counters, str]:
    after = replace(c, total_queued=0, total_processing=0, **counters)
    return after, finished_status(after)


def decide(counters: Counters, status: str, *, fail_stalled: bool = False) -> RepairDecision:
    """The first rule that matches a stuck candidate (status queuing/processing).

    `fail_stalled` is true only when the operator set a fail-stalled window and
    this batch has been idle longer than it. A batch that is not in progress is
    not a candidate: rule None, nothing changes.
    """

    def decision(rule, after=counters, new_status=status, finishes=False):
        return RepairDecision(rule, counters, status, after, new_status, finishes)

    if status not in IN_PROGRESS:
        return decision(None)
    c = counters
    if c.is_corrupt:
        return decision(Rule.CORRUPT)
    if c.accounted >= c.total_requested:
        return decision(Rule.ALL_ACCOUNTED, *_finish(c), finishes=True)
    if c.in_flight == 0:
        return decision(Rule.NO_ACTIVE_TASKS, *_finish(c, total_failed=c.total_requested - c.total_completed),
                        finishes=True)
    excess = c.in_flight + c.accounted - c.total_requested
    if excess > 0:
        # Phantom retries: drop the excess from processing first, then from queued.
        from_processing = min(excess, c.total_processing)
        after = replace(
            c,
            total_processing=c.total_processing - from_processing,
            total_queued=c.total_queued - (excess - from_processing),
        )
        return decision(Rule.COUNTER_OVERFLOW, after, progress_status(after))
    if fail_stalled:
        return decision(Rule.STALLED_FAILED, *_finish(c, total_failed=c.total_requested - c.total_completed),
                        finishes=True)
    return decision(Rule.STALLED)


def still_moving(status: str | None, idle, stuck_after) -> bool:
    """A batch in progress that moved within the stuck window (idle and stuck_after: timedeltas; idle None
    when it never moved): releasing its lock would let a second batch start beside it."""
    return status in IN_PROGRESS and idle is not None and idle < stuck_after


def diagnose(counters: Counters, status: str, *, stuck: bool | None, fail_stalled: bool = False) -> str:
    """A row's verdict: a Verdict, or the rule that applies to it now.

    `stuck` is whether the row is idle longer than its window (always True where no window applies, as
    in the admin's force repair), or None when its age is unknown (updated_at NULL). `fail_stalled` as
    for decide(). expressions.verdict() is this function in SQL.
    """
    if status not in KNOWN_STATUSES:
        return Verdict.UNKNOWN_STATUS.value
    if status not in IN_PROGRESS:
        return Verdict.FINISHED.value
    if stuck is None:
        return Verdict.NEVER_UPDATED.value
    if not stuck:
        return Verdict.HEALTHY.value
    return decide(counters, status, fail_stalled=fail_stalled).rule.value
