"""What the admin's pages share: the request's clock and settings, the read-only base, the confirmation
flow (Django's delete_selected pattern), and Django's admin log mirroring a run's records."""

import functools
import itertools

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType as DjangoContentType
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from ..conf import JobSettings, job_settings
from ..db import ConnectionLost, database_now
from ..models import GenerationLock, GenerationStatus, RecordKind, RecordRule, RepairRecord
from ..rules import COUNTER_FIELDS, COUNTERS_LABEL, counters_text
from ..selectors import iter_run_records

# A confirmation page posts one field per selected row back; Django refuses a request with more
# than DATA_UPLOAD_MAX_NUMBER_FIELDS (1000) fields, so a larger selection is refused up front.
CONFIRM_MAX = 500
LOG_CHUNK = 1_000  # LogEntry rows per INSERT
COUNTER_LABELS = dict(zip(COUNTER_FIELDS, COUNTERS_LABEL.split("/"), strict=True))


def now_of(request):
    """The database clock, read once per request: every row of a page is judged against the same instant."""
    if not hasattr(request, "_generation_now"):
        request._generation_now = database_now()
    return request._generation_now


def job_of(request) -> JobSettings:
    """The job's settings, read once per request and handed to everything the request calls."""
    if not hasattr(request, "_generation_job"):
        request._generation_job = job_settings()
    return request._generation_job


def when(value):
    """A timestamp short enough for a list column (site time zone), the exact one on hover."""
    if value is None:
        return "-"
    return format_html('<span class="gen-when" title="{}">{}</span>', value.isoformat(timespec="seconds"),
                       timezone.localtime(value).strftime("%Y-%m-%d %H:%M"))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Nobody adds, edits or deletes these rows here, not even a superuser: the backend owns the
    mirrored rows (changes go through the repair actions, which record them), and the audit rows are
    written once by the services and never edited."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AccountColumns:
    """The account and content type columns every list shows, with short headers (the list must fit)."""

    @admin.display(description="account", ordering="account_id")
    def account(self, obj):
        return obj.account_id

    @admin.display(description="type", ordering="content_type")
    def content(self, obj):
        return obj.content_type


def aborted_as_message(action):
    """An action whose database connection is lost mid-way (db.ConnectionLost) ends as an error message, not
    a server error; what was committed before stays, as the history shows."""

    @functools.wraps(action)
    def wrapper(modeladmin, request, queryset):
        try:
            return action(modeladmin, request, queryset)
        except ConnectionLost as exc:
            modeladmin.message_user(
                request, f"Aborted: {exc}. What was done before it stays done; the repair history lists it.",
                messages.ERROR)
            return None

    return wrapper


def selected_ids(modeladmin, request, queryset, noun: str) -> list | None:
    """The selected rows' ids, or None after telling the user why there is nothing to confirm."""
    ids = list(queryset.values_list("pk", flat=True))
    if not ids:
        modeladmin.message_user(request, f"None of the selected {noun} is there any more.", messages.WARNING)
        return None
    if len(ids) > CONFIRM_MAX:
        modeladmin.message_user(request, f"Select at most {CONFIRM_MAX} {noun} for this action ({len(ids)} selected).",
                                messages.ERROR)
        return None
    return ids


def confirmed(request) -> bool:
    """The second POST of a confirmation page (Django's delete_selected pattern)."""
    return request.POST.get("post") == "yes"


def confirmation_page(modeladmin, request, template: str, *, title: str, ids, action: str, **context):
    """A confirmation page that posts the selected ids back to `action` with post=yes."""
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, template, {
        **modeladmin.admin_site.each_context(request), "title": title, "subtitle": None, "ids": ids,
        "action": action, "opts": modeladmin.opts, "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media, "counters_label": COUNTERS_LABEL, **context,
    })


# --- Django's admin log, mirroring the run's records -------------------------------------------


def _log_entry(record: RepairRecord, user_id, content_types) -> LogEntry:
    run = f"cleanup run #{record.run_id}"
    if record.kind == RecordKind.STATUS:
        b, a = record.before, record.after
        obj = GenerationStatus(id=record.target_id, account_id=record.account_id, content_type=record.content_type,
                               **{name: a[name] for name in ("status", *COUNTER_FIELDS)})
        how = f"Undid repair record #{record.undo_of_id}" if record.rule == RecordRule.UNDO else \
            f"Repaired by rule {record.rule}"
        message = (f"{how} ({run}): {COUNTERS_LABEL} {counters_text(b)} {b['status']} -> "
                   f"{counters_text(a)} {a['status']}")
        flag, model = CHANGE, GenerationStatus
    elif record.rule == RecordRule.UNDO:
        # an undone lock deletion: the lock was inserted again, and the record holds it as `after`
        obj = GenerationLock(id=record.target_id, account_id=record.account_id, content_type=record.content_type,
                             lock_id=record.after["lock_id"])
        message = f"Re-created: undo of repair record #{record.undo_of_id} ({run})"
        flag, model = ADDITION, GenerationLock
    else:
        obj = GenerationLock(id=record.target_id, account_id=record.account_id, content_type=record.content_type,
                             lock_id=record.before["lock_id"])
        message = f"Deleted: {record.rule.replace('_', ' ')} ({run})"
        flag, model = DELETION, GenerationLock
    return LogEntry(user_id=user_id, content_type_id=content_types[model].pk, object_id=str(record.target_id),
                    object_repr=str(obj)[:200], action_flag=flag, change_message=message)


def log_run(request, run_id):
    """One LogEntry per row the run changed (the records say which), inserted a chunk at a time."""
    if run_id is None:
        return
    content_types = DjangoContentType.objects.get_for_models(GenerationStatus, GenerationLock)
    entries = (_log_entry(record, request.user.pk, content_types) for record in iter_run_records(run_id))
    while chunk := list(itertools.islice(entries, LOG_CHUNK)):
        LogEntry.objects.bulk_create(chunk)
