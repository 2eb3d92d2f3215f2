"""What the admin's pages share: the request's clock and settings, the read-only base, the one way of
writing a time, links for every `#id`, the confirmation flow (Django's delete_selected pattern, with Django's
select-across), the result messages, and Django's admin log mirroring a run's records."""

import functools
import itertools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType as DjangoContentType
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

from ..conf import JobSettings, job_settings
from ..db import ConnectionLost, database_now
from ..models import GenerationLock, GenerationStatus, RecordKind, RecordRule, RepairRecord
from ..report import format_duration, result_links, selection_refused, vanished
from ..rules import COUNTER_FIELDS, COUNTERS_LABEL, counters_text
from ..selectors import count_rows, iter_run_records

# A confirmation page posts one field per ticked row back; Django refuses a request with more than
# DATA_UPLOAD_MAX_NUMBER_FIELDS (1000) fields, so more ticked rows are refused up front. "Select all N
# matching" (select-across) has no limit: its confirmation posts the list's filters, not the rows.
CONFIRM_MAX = 500
SAMPLE = 25  # rows a select-across confirmation shows of each kind (its totals count them all)
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


def when_text(value) -> str:
    """A time as the whole admin writes it (butter_admin/formats: 2026-03-01 14:05 UTC, in the site's time zone).
    Also takes the ISO text an audit snapshot holds."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return formats.date_format(timezone.localtime(value), "DATETIME_FORMAT")


def when(value):
    """when_text() in a list or a table, the exact time (to the second, with its offset) on hover. A narrow column
    wraps it between the date and the time, never inside either."""
    if value is None:
        return "-"
    exact = (datetime.fromisoformat(value) if isinstance(value, str) else value).isoformat(timespec="seconds")
    day, _, time = when_text(value).partition(" ")
    return format_html('<span class="gen-when" title="{}"><span>{}</span> <span>{}</span></span>', exact, day, time)


def ago(now, then) -> str:
    """How long ago, as the job writes durations (3h, 1d11h); "never" for no time."""
    return "never" if then is None else format_duration(max(now - then, timedelta(0))) + " ago"


# `batch #12`, `lock #3`, `record #7`, `run #5` (and lists: `batches #1, #2`) as links to their pages.
_REFERENCES = re.compile(r"\b(batch|lock|record|run)(?:e?s)? #\d+(?:(?:, | and )#\d+)*", re.IGNORECASE)
_NUMBER = re.compile(r"#(\d+)")
_PAGES = {"batch": "generationstatus", "lock": "generationlock", "record": "repairrecord", "run": "cleanuprun"}


def change_url(noun: str, pk) -> str:
    return reverse(f"admin:generation_{_PAGES[noun]}_change", args=[pk])


def records_url(run_id) -> str:
    """The repair records list filtered to one run's."""
    return reverse("admin:generation_repairrecord_changelist") + f"?run__id__exact={run_id}"


def linked(text: str):
    """A line of text (escaped) with each `batch #12`, `record #7`, `run #5`, `lock #3` linked to its page."""
    parts, last = [], 0
    for match in _REFERENCES.finditer(text):
        noun = match.group(1).lower()
        parts.append(escape(text[last:match.start()]))
        parts.append(_NUMBER.sub(lambda number, noun=noun: format_html(
            '<a href="{}">#{}</a>', change_url(noun, number.group(1)), number.group(1)), escape(match.group(0))))
        last = match.end()
    parts.append(escape(text[last:]))
    return mark_safe("".join(parts))  # noqa: S308 - every part above is escaped or built by format_html


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


class SelectorSearch:
    """The search box through a selectors function (exact, indexed lookups: an id as `4998` or `#4998`), never
    Django's substring search, which would scan the table."""

    searched_by = None  # staticmethod(selectors.search_...): (queryset, term) -> queryset

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        return self.searched_by(queryset, search_term), False


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


@dataclass
class Selection:
    """The rows an action applies to: the ticked ones (`ids`), or with "select all N matching" every row the
    change list's filters and search match (`matching`, read by the services a page at a time)."""

    ids: list | None
    matching: object  # the change list's queryset (select-across), else None
    count: int
    filters: dict  # the change list's query string, as the run records it (select-across)

    @property
    def across(self) -> bool:
        return self.ids is None

    @property
    def sampled(self) -> bool:
        """Whether a confirmation shows only some of the rows (the first SAMPLE): its totals count them all."""
        return self.across and self.count > SAMPLE

    def rows(self) -> dict:
        """The services' arguments for these rows."""
        if self.across:
            return {"matching": self.matching, "selection": self.filters}
        return {"ids": self.ids}


def selection(modeladmin, request, queryset, noun: str) -> Selection | None:
    """What the action applies to, or None after telling the user why there is nothing to confirm."""
    if request.POST.get("select_across") == "1":
        count = count_rows(queryset)
        chosen = Selection(None, queryset, count, {"list": request.GET.urlencode() or "(no filter)", "count": count})
    else:
        ids = list(queryset.values_list("pk", flat=True))
        chosen = Selection(ids, None, len(ids), {})
        if len(ids) > CONFIRM_MAX:
            modeladmin.message_user(request, selection_refused(len(ids), CONFIRM_MAX, noun), messages.ERROR)
            return None
    if not chosen.count:
        modeladmin.message_user(request, vanished(noun), messages.WARNING)
        return None
    return chosen


def confirmed(request) -> bool:
    """The second POST of a confirmation page (Django's delete_selected pattern)."""
    return request.POST.get("post") == "yes"


def confirmation_page(modeladmin, request, template: str, *, title: str, chosen: Selection, action: str, **context):
    """A confirmation page that posts the selection back to `action` with post=yes: the ticked ids, or
    select_across=1 (the page posts to the change list's own URL, whose query string holds its filters)."""
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, template, {
        **modeladmin.admin_site.each_context(request), "title": title, "subtitle": None, "chosen": chosen,
        "ids": chosen.ids or [], "action": action, "opts": modeladmin.opts,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME, "media": modeladmin.media,
        "counters_label": COUNTERS_LABEL, **context,
    })


def result(modeladmin, request, level, text: str, run_id):
    """An action's message, then links to the run and to its repair records."""
    if run_id is None:
        modeladmin.message_user(request, text, level)
        return
    run, records = result_links(run_id)
    modeladmin.message_user(request, format_html('{}. <a href="{}">{}</a> · <a href="{}">{}</a>', text,
                                                 change_url("run", run_id), run, records_url(run_id), records), level)


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
