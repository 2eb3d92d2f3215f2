"""The two tables owned by the Go backend, mirrored exactly, and this project's audit tables.

The mirrored tables are described in docs/contract.md. Their
migration (0001_initial) must keep the shape the backend created, so that an
existing database can be adopted with `migrate --fake-initial`. Notes on the
mapping:

- Counters are nullable with a database default of 0 (`db_default`), as the
  backend's ORM created them; a NULL counter is what the `corrupt` rule catches.
- Indexes are declared in Meta with explicit names instead of `db_index=True`
  or `unique=True`: on PostgreSQL those would add an extra `*_like` index to
  text columns that the backend's schema does not have.
- Timestamps are written by the backend (and by services.py with the database
  clock), never by `auto_now`, which `queryset.update()` would skip anyway.
"""

from django.conf import settings
from django.db import models
from django.db.models.functions import Now

from . import rules
from .conf import Windows


class ContentType(models.TextChoices):
    VIDEO = "video", "video"
    STORY = "story", "story"
    SLIDESHOW = "slideshow", "slideshow"


def _choices(name, values):
    """TextChoices whose values (and labels) are the rules' own constants: one vocabulary."""
    return models.TextChoices(name, [(str(value).upper(), (str(value), str(value))) for value in values])


Status = _choices("Status", rules.KNOWN_STATUSES)


class GenerationStatus(models.Model):
    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)
    account_id = models.BigIntegerField()
    content_type = models.CharField(max_length=50, choices=ContentType.choices)
    total_requested = models.BigIntegerField()
    total_queued = models.BigIntegerField(null=True, db_default=0)
    total_processing = models.BigIntegerField(null=True, db_default=0)
    total_completed = models.BigIntegerField(null=True, db_default=0)
    total_failed = models.BigIntegerField(null=True, db_default=0)
    status = models.CharField(max_length=50, choices=Status.choices, db_default="queuing")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    error_message = models.TextField(null=True, blank=True)
    error_code = models.CharField(max_length=100, null=True, blank=True)
    lock_id = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "account_generation_status"
        verbose_name = "generation status"
        verbose_name_plural = "generation statuses"
        indexes = [
            models.Index(fields=["account_id"], name="agstatus_account_id_idx"),
            models.Index(fields=["lock_id"], name="agstatus_lock_id_idx"),
            # 0003, the cleanup's candidate scan (status IN ... AND updated_at < cutoff AND id > last ORDER BY id):
            # only the in-progress rows, keyed by id so each keyset page is a short range scan. Not on
            # updated_at: the backend sets it on every save, and an indexed updated_at would make all its
            # counter updates non-HOT (measured: docs/benchmarks.md, "Index choice").
            models.Index(
                fields=["id"], name="agstatus_in_progress_idx", condition=models.Q(status__in=rules.IN_PROGRESS),
            ),
            # 0004, the scan for statuses the contract does not name (reported, never repaired): empty
            # while the data is sane, and on status only, which the index above already involves.
            models.Index(
                fields=["id"], name="agstatus_unknown_status_idx", condition=~models.Q(status__in=rules.KNOWN_STATUSES),
            ),
        ]
        permissions = [("repair_generationstatus", "Can repair stuck generation statuses")]

    def __str__(self):
        done = (self.total_completed or 0) + (self.total_failed or 0)
        return f"#{self.id} account {self.account_id} {self.content_type} {self.status} {done}/{self.total_requested}"


class GenerationLock(models.Model):
    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(null=True, blank=True)
    account_id = models.BigIntegerField()
    content_type = models.CharField(max_length=50, choices=ContentType.choices)
    locked_at = models.DateTimeField()
    lock_id = models.TextField()

    class Meta:
        db_table = "account_generation_locks"
        verbose_name = "generation lock"
        indexes = [
            models.Index(fields=["account_id"], name="aglocks_account_id_idx"),
            models.Index(fields=["locked_at"], name="aglocks_locked_at_idx"),  # 0003, the expired-lock scan
        ]
        constraints = [
            models.UniqueConstraint(fields=["account_id", "content_type"], name="idx_account_content_type"),
            models.UniqueConstraint(fields=["lock_id"], name="uni_account_generation_locks_lock_id"),
        ]
        permissions = [("release_generationlock", "Can release generation locks")]

    def __str__(self):
        return f"lock {self.lock_id} account {self.account_id} {self.content_type}"


# --- This project's own tables: what the job did, and when ----------------------------------


class Trigger(models.TextChoices):
    COMMAND = "command", "command"
    CRON = "cron", "cron"
    ADMIN = "admin", "admin"


class RunKind(models.TextChoices):
    CLEANUP = "cleanup", "cleanup"  # the job, or an admin repair or release of selected rows
    UNDO = "undo", "undo"  # undo_repair or the admin's undo: never the job's run


class Outcome(models.TextChoices):
    OK = "ok", "ok"
    ERRORS = "errors", "errors"
    SKIPPED = "skipped", "skipped"


# A run's outcome as the metrics spell it beyond Outcome: `unfinished` for a run row without one (still
# running, or its process died: /metrics only) and `failed` for a run that could not reach the database or
# was aborted (the job's own report only: such a run may leave no row).
UNFINISHED, FAILED = "unfinished", "failed"


class CleanupRun(models.Model):
    """One run of the cleanup (command, cron or an admin action) or of an undo. Outcome is empty while it
    runs and stays empty if the process died before finishing."""

    started_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)
    kind = models.CharField(max_length=10, choices=RunKind.choices, db_default=RunKind.CLEANUP)
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    dry_run = models.BooleanField(default=False)
    # parameters used: each window's default, and the content types' own windows in seconds
    # ({"stuck_after": {"video": 28800.0}, ...}; a window with no override of any type is not in it)
    stuck_after = models.DurationField(null=True, blank=True)
    lock_ttl = models.DurationField(null=True, blank=True)
    fail_stalled_after = models.DurationField(null=True, blank=True)
    windows_by_type = models.JSONField(default=dict, db_default={}, blank=True)  # raw INSERTs (benchmarks) too
    batch_size = models.PositiveIntegerField(null=True, blank=True)
    filters = models.JSONField(default=dict, blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # counts
    examined = models.PositiveIntegerField(default=0)
    repaired_all_accounted = models.PositiveIntegerField(default=0)
    repaired_no_active_tasks = models.PositiveIntegerField(default=0)
    repaired_counter_overflow = models.PositiveIntegerField(default=0)
    repaired_stalled_failed = models.PositiveIntegerField(default=0)
    stalled = models.PositiveIntegerField(default=0)
    corrupt = models.PositiveIntegerField(default=0)
    skipped_busy = models.PositiveIntegerField(default=0)
    locks_expired = models.PositiveIntegerField(default=0)
    locks_removed = models.PositiveIntegerField(default=0)
    locks_released = models.PositiveIntegerField(default=0)
    # how many batches were stuck when a job run over the whole table started: those it examined, those that
    # moved on before their page and those busy (None: an admin or undo run, a filtered or lock-only run, a
    # skipped one). The health page charts the backlog from it without scanning the statuses.
    stuck_found = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["trigger", "outcome", "-started_at"], name="cleanup_run_outcome_idx")]

    def __str__(self):
        return f"{'undo' if self.kind == RunKind.UNDO else 'cleanup'} run #{self.id}"

    def windows(self, name: str) -> Windows | None:
        """The window the run used (stuck_after, lock_ttl, fail_stalled_after), per content type."""
        return Windows.recorded(getattr(self, name), self.windows_by_type.get(name))

    @property
    def repaired(self):
        return (
            self.repaired_all_accounted + self.repaired_no_active_tasks
            + self.repaired_counter_overflow + self.repaired_stalled_failed
        )


class RecordKind(models.TextChoices):
    STATUS = "status", "generation status"
    LOCK = "lock", "generation lock"


# Why a record was written: a status repair's Rule, or what happened to a lock, or an undo.
RecordRule = _choices(
    "RecordRule", [*rules.REPAIRS, "expired_lock", "released_with_batch", "released_by_hand", "undo"])


class RepairRecord(models.Model):
    """One change to one mirrored row, with the values before and after. Written once, never updated."""

    run = models.ForeignKey(CleanupRun, on_delete=models.PROTECT, related_name="records")
    kind = models.CharField(max_length=10, choices=RecordKind.choices)
    target_id = models.BigIntegerField()
    account_id = models.BigIntegerField()
    content_type = models.CharField(max_length=50)
    rule = models.CharField(max_length=30, choices=RecordRule.choices)
    before = models.JSONField()
    after = models.JSONField(null=True, blank=True)  # None: the row was deleted
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    undo_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="undone_by")
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["account_id", "-created_at"], name="repair_record_account_idx"),
            models.Index(fields=["kind", "target_id"], name="repair_record_target_idx"),
        ]

    def __str__(self):
        return f"{self.rule} on {self.kind} #{self.target_id}"


class DemoRow(models.Model):
    """A mirrored row that seed_demo_generation inserted, by id and lock id. `--clear` deletes the
    mirrored tables only when every row in them is one of these: a database holding anything else
    (a backend's rows, or no record at all, as in any real database) is not the demo's to wipe."""

    kind = models.CharField(max_length=10, choices=RecordKind.choices)
    row_id = models.BigIntegerField()
    lock_id = models.TextField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "row_id"], name="demo_row_kind_row_id_uniq")]

    def __str__(self):
        return f"demo {self.kind} #{self.row_id}"
