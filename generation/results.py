"""What a run returns: the report types the command, cron, the admin and the JSON output all render.

Plain data, no ORM and no wording (report.py words them). A report's counts are exact; its per-row
details are capped, so memory stays flat however large the backlog.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import rules
from .conf import Cutoffs, Windows

DETAILS_CAP = 1_000  # per report
ERRORS_CAP = 100


def iso(value):
    return value.isoformat() if isinstance(value, datetime) else value


def seconds(value: timedelta | None):
    """A duration as whole seconds, for JSON."""
    return None if value is None else int(value.total_seconds())


# A batch's audit snapshot (RepairRecord.before/after, a report's details): its fields, the times as ISO text
SNAPSHOT_TIMES = ("completed_at", "updated_at")
SNAPSHOT_FIELDS = (*rules.COUNTER_FIELDS, "status", *SNAPSHOT_TIMES)


@dataclass(slots=True)
class StatusDetail:
    """A batch as a report shows it. Its before and after are the audit record's snapshots (SNAPSHOT_FIELDS),
    kept as value tuples and made dicts when read: a report holds up to DETAILS_CAP of them while a backlog's
    pages go by, and two dicts each cost twice the memory. Those of a page past the report's details (only the
    command's lines read them) have no times."""

    id: int
    account_id: int
    content_type: str
    rule: str  # a Rule, or the Verdict of a selected row left alone (healthy, finished, ...)
    before_values: tuple
    after_values: tuple
    idle_s: float | None
    applied: bool
    left_alone: bool = False  # a selected row the pass did not judge (its verdict says why)

    @property
    def before(self) -> dict:
        return _snapshot(self.before_values)

    @property
    def after(self) -> dict:
        return _snapshot(self.after_values)

    def as_dict(self):
        return {"id": self.id, "account_id": self.account_id, "content_type": self.content_type, "rule": self.rule,
                "before": self.before, "after": self.after, "idle_s": self.idle_s, "applied": self.applied,
                "left_alone": self.left_alone}


@dataclass(slots=True)
class LockDetail:
    id: int
    lock_id: str
    account_id: int
    content_type: str
    locked_at: datetime | str
    age_s: float
    rule: str  # expired_lock, released_with_batch, released_by_hand
    batch_id: int | None = None
    batch_status: str | None = None
    batch_idle_s: float | None = None
    batch_repaired: str | None = None  # the rule by which this run repaired (or would repair) the batch
    applied: bool = False

    def as_dict(self):
        return {**{name: getattr(self, name) for name in self.__slots__}, "locked_at": iso(self.locked_at)}


@dataclass
class StatusTotals:
    examined: int = 0
    by_rule: Counter = field(default_factory=Counter)
    stalled: int = 0
    corrupt: int = 0
    skipped_busy: int = 0
    moved_on: int = 0  # no longer stuck once locked: a worker got there first
    unknown_status: int = 0  # a status the contract does not name: never a candidate, reported
    never_updated: int = 0  # queuing/processing with updated_at NULL: its age is unknown, reported
    left_alone: int = 0  # admin: selected but not eligible (healthy, finished, not stalled, ...)
    locks_released: int = 0
    failed_batches: int = 0
    details: list = field(default_factory=list)
    details_truncated: bool = False

    @property
    def repaired(self):
        return sum(self.by_rule.values())


@dataclass
class LockTotals:
    expired: int = 0
    removed: int = 0
    skipped_busy: int = 0
    failed_batches: int = 0
    details: list = field(default_factory=list)
    details_truncated: bool = False


def _snapshot(values: tuple) -> dict:
    """SNAPSHOT_FIELDS' values, or all but the times (a detail the report does not keep: pages.status_detail)."""
    fields = SNAPSHOT_FIELDS[:-len(SNAPSHOT_TIMES)] if len(values) < len(SNAPSHOT_FIELDS) else SNAPSHOT_FIELDS
    return dict(zip(fields, values, strict=True))


def has_room(totals) -> bool:
    """Whether a report's totals would keep another detail (keep)."""
    return len(totals.details) < DETAILS_CAP


def keep(totals, detail):
    """Add a detail to a report's totals, up to DETAILS_CAP."""
    if has_room(totals):
        totals.details.append(detail)
    else:
        totals.details_truncated = True


def seconds_by_type(windows: Windows | None) -> dict:
    return {} if windows is None else {name: seconds(window) for name, window in windows.by_type}


def iso_by_type(cutoffs: Cutoffs | None) -> dict:
    return {} if cutoffs is None else {name: iso(cutoff) for name, cutoff in cutoffs.by_type}


@dataclass
class CleanupReport:
    """A run's counts and details. The windows are the run's (conf.Windows, a default and per-type overrides;
    None where none applies: the admin's force repair, a lock release); the cutoffs are theirs at `now`, the
    database clock read once at the start of the run."""

    trigger: str
    dry_run: bool
    now: datetime
    stuck_after: Windows | None = None
    lock_ttl: Windows | None = None
    fail_stalled_after: Windows | None = None
    batch_size: int | None = None
    run_id: int | None = None
    outcome: str = "ok"
    skipped_reason: str = ""
    errors: list = field(default_factory=list)
    statuses: StatusTotals = field(default_factory=StatusTotals)
    locks: LockTotals = field(default_factory=LockTotals)
    duration_s: float = 0.0

    @property
    def cutoffs(self) -> Cutoffs | None:
        return self.stuck_after.cutoffs(self.now) if self.stuck_after else None

    @property
    def lock_cutoffs(self) -> Cutoffs | None:
        return self.lock_ttl.cutoffs(self.now) if self.lock_ttl else None

    @property
    def fail_cutoffs(self) -> Cutoffs | None:
        return self.fail_stalled_after.cutoffs(self.now) if self.fail_stalled_after else None

    def cutoff_fields(self, *, every: bool = False) -> dict:
        """The cutoffs as the JSON report and the run_started event write them: `cutoff` and `lock_cutoff` are
        the defaults' (every content type's unless it has its own), then each type's own (the event: only
        when there are)."""
        fields = {"cutoff": iso(self.cutoffs and self.cutoffs.default),
                  "lock_cutoff": iso(self.lock_cutoffs and self.lock_cutoffs.default)}
        for name, cutoffs in (("cutoff_by_type", self.cutoffs), ("lock_cutoff_by_type", self.lock_cutoffs)):
            if every or (cutoffs is not None and cutoffs.by_type):
                fields[name] = iso_by_type(cutoffs)
        return fields

    def error(self, message):
        if len(self.errors) < ERRORS_CAP:
            self.errors.append(message)
        self.outcome = "errors"

    def as_dict(self):
        s, locks = self.statuses, self.locks
        return {
            "run_id": self.run_id,
            "trigger": self.trigger,
            "dry_run": self.dry_run,
            "outcome": self.outcome,
            "skipped_reason": self.skipped_reason,
            "now": iso(self.now),
            **self.cutoff_fields(every=True),
            # the windows' defaults (every content type's unless it has its own), then each type's own
            "stuck_after_s": seconds(self.stuck_after and self.stuck_after.default),
            "lock_ttl_s": seconds(self.lock_ttl and self.lock_ttl.default),
            "fail_stalled_after_s": seconds(self.fail_stalled_after and self.fail_stalled_after.default),
            "stuck_after_by_type_s": seconds_by_type(self.stuck_after),
            "lock_ttl_by_type_s": seconds_by_type(self.lock_ttl),
            "fail_stalled_after_by_type_s": seconds_by_type(self.fail_stalled_after),
            "batch_size": self.batch_size,
            "statuses": {
                "examined": s.examined,
                "repaired": s.repaired,
                "by_rule": {rule.value: s.by_rule[rule] for rule in rules.REPAIRS},
                "stalled": s.stalled,
                "corrupt": s.corrupt,
                "skipped_busy": s.skipped_busy,
                "moved_on": s.moved_on,
                "unknown_status": s.unknown_status,
                "never_updated": s.never_updated,
                "left_alone": s.left_alone,
                "locks_released": s.locks_released,
                "failed_batches": s.failed_batches,
                "details": [d.as_dict() for d in s.details],
                "details_truncated": s.details_truncated,
            },
            "locks": {
                "expired": locks.expired,
                "removed": locks.removed,
                "skipped_busy": locks.skipped_busy,
                "failed_batches": locks.failed_batches,
                "details": [d.as_dict() for d in locks.details],
                "details_truncated": locks.details_truncated,
            },
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
        }

    def summary_fields(self) -> dict:
        """The run_finished event's fields."""
        s, locks = self.statuses, self.locks
        return {
            "run_id": self.run_id, "dry_run": self.dry_run, "outcome": self.outcome, "examined": s.examined,
            "repaired": s.repaired, **{rule.value: s.by_rule[rule] for rule in rules.REPAIRS}, "stalled": s.stalled,
            "corrupt": s.corrupt, "skipped_busy": s.skipped_busy + locks.skipped_busy,
            "locks_expired": locks.expired, "locks_removed": locks.removed, "locks_released": s.locks_released,
            "duration_s": round(self.duration_s, 3),
        }
