"""The two tables owned by the Go backend, mirrored exactly, and this project's audit tables.

The mirrored tables are described in ../shared/spec/repair-rules.md. Their
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

from django.db import models


class ContentType(models.TextChoices):
    VIDEO = "video", "video"
    STORY = "story", "story"
    SLIDESHOW = "slideshow", "slideshow"


class Status(models.TextChoices):
    QUEUING = "queuing", "queuing"
    PROCESSING = "processing", "processing"
    COMPLETED = "completed", "completed"
    PARTIAL = "partial", "partial"
    FAILED = "failed", "failed"


IN_PROGRESS_STATUSES = (Status.QUEUING, Status.PROCESSING)


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
        ]
        constraints = [
            models.UniqueConstraint(fields=["account_id", "content_type"], name="idx_account_content_type"),
            models.UniqueConstraint(fields=["lock_id"], name="uni_account_generation_locks_lock_id"),
        ]
        permissions = [("release_generationlock", "Can release generation locks")]

    def __str__(self):
        return f"lock {self.lock_id} account {self.account_id} {self.content_type}"
