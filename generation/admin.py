"""The admin: list pages, filters and actions over services (repairs) and health (read-only queries).

No repair is computed here. The actions call services.repair_selected(),
services.release_locks() and undo.undo_records() (whose dry run is the
confirmation page's preview), which record every change as a RepairRecord in a
CleanupRun with trigger `admin` and the acting user; this module adds Django's
own LogEntry for each changed row and tells the user what happened.

The mirrored tables belong to the backend: nobody adds, edits or deletes their
rows here, because a free edit would bypass the audit trail the repairs keep.
"""

import functools
import itertools
from collections import Counter
from datetime import datetime, timedelta

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType as DjangoContentType
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext

from . import health, rules, services, undo
from .conf import job_settings
from .models import CleanupRun, GenerationLock, GenerationStatus, RecordKind, RecordRule, RepairRecord, Trigger
from .report import format_duration
from .services import COUNTER_FIELDS, Mode


def _aborted_as_message(action):
    """A repair or release whose database connection is lost mid-way (services.CleanupAborted) ends
    as an error message, not a server error; the pages committed before stay, as the history shows."""

    @functools.wraps(action)
    def wrapper(modeladmin, request, queryset):
        try:
            return action(modeladmin, request, queryset)
        except services.CleanupAborted as exc:
            modeladmin.message_user(
                request, f"Aborted: {exc}. What was done before it stays done; the repair history lists it.",
                messages.ERROR)
            return None

    return wrapper

# A confirmation page posts one field per selected row back; Django refuses a request with more
# than DATA_UPLOAD_MAX_NUMBER_FIELDS (1000) fields, so a larger selection is refused up front.
CONFIRM_MAX = 500
RUN_PAGE_RECORDS = 200  # records listed on a run's page; the rest are one link away
LOG_CHUNK = 1_000  # LogEntry rows per INSERT
REFUSALS_NAMED = 10  # refused records named in an undo's message; the run's page keeps them all
COUNTER_LABELS = dict(zip(COUNTER_FIELDS, "TQPCF", strict=True))
LEFT_ALONE = {  # StatusDetail.rule for a selected row that was not eligible -> how the message says it
    "not_stuck": "not stuck", "not_stalled": "not stalled", "finished": "finished",
}

# The admin's own admin/index.html is found before ours (django.contrib.admin precedes generation in
# INSTALLED_APPS), so the Health link reaches the index through the site's index_template instead.
admin.site.index_template = "admin/generation/index.html"


def _now(request):
    """The database clock, read once per request: every row of a page is judged against the same instant."""
    if not hasattr(request, "_generation_now"):
        request._generation_now = services.database_now()
    return request._generation_now


def _when(value):
    """A timestamp short enough for a list column (site time zone), the exact one on hover."""
    if value is None:
        return "-"
    return format_html('<span class="gen-when" title="{}">{}</span>', value.isoformat(timespec="seconds"),
                       timezone.localtime(value).strftime("%Y-%m-%d %H:%M"))


def _counters(snapshot) -> str:
    return "/".join("NULL" if snapshot.get(name) is None else str(snapshot[name]) for name in COUNTER_FIELDS)


# --- Messages ----------------------------------------------------------------------------------


NAMED_IN_MESSAGE = 10  # left-alone batches named by id in a message; the rest are counted


def repair_message(report: services.CleanupReport) -> tuple[int, str]:
    """(level, text) for a repair action, e.g. "3 generations repaired: 2 all_accounted, 1 no_active_tasks;
    1 not stuck, left alone (#12)". A dry run (the confirmation page) says "to repair"."""
    s = report.statuses
    done = "to repair" if report.dry_run else "repaired"
    if s.repaired:
        head = ngettext("%(count)d generation %(done)s", "%(count)d generations %(done)s", s.repaired) % {
            "count": s.repaired, "done": done}
        head += ": " + ", ".join(f"{s.by_rule[rule]} {rule}" for rule in rules.REPAIRS if s.by_rule[rule])
    else:
        head = f"No generation {done}"
    parts = [head]
    if s.locks_released:
        released = "to release" if report.dry_run else "released"
        parts.append(ngettext("%(count)d lock %(done)s with its batch", "%(count)d locks %(done)s with their batches",
                              s.locks_released) % {"count": s.locks_released, "done": released})
    if s.stalled:
        # without an age window (force) a batch with work in flight may just be running
        parts.append(f"{s.stalled} stalled (work in flight, no progress), not changed" if report.cutoff else
                     f"{s.stalled} with work in flight (stalled or running), not changed")
    if s.corrupt:
        parts.append(f"{s.corrupt} corrupt (negative or NULL counters), not changed: fix by hand")
    reasons = Counter(detail.rule for detail in s.details if detail.rule in LEFT_ALONE)
    for reason, label in LEFT_ALONE.items():
        if reasons[reason]:
            ids = [f"#{detail.id}" for detail in s.details if detail.rule == reason]
            named = ", ".join(ids[:NAMED_IN_MESSAGE]) + (", …" if len(ids) > NAMED_IN_MESSAGE else "")
            parts.append(f"{reasons[reason]} {label}, left alone ({named})")
    unexplained = s.left_alone - sum(reasons.values())  # details are capped; the total is not
    if unexplained > 0:
        parts.append(f"{unexplained} more left alone")
    if s.skipped_busy:
        parts.append(ngettext("%(count)d busy or gone (a worker holds the row), skipped",
                              "%(count)d busy or gone (a worker holds the rows), skipped",
                              s.skipped_busy) % {"count": s.skipped_busy})
    if s.failed_batches:
        level = messages.ERROR
    elif not s.repaired or s.corrupt:
        level = messages.WARNING
    else:
        level = messages.SUCCESS
    return level, "; ".join(parts)


def release_message(report: services.CleanupReport) -> tuple[int, str]:
    locks = report.locks
    if locks.removed:
        parts = [ngettext("%(count)d lock released", "%(count)d locks released", locks.removed) % {
            "count": locks.removed}]
    else:
        parts = ["No lock released"]
    if locks.skipped_busy:
        parts.append(ngettext("%(count)d busy or already gone, skipped", "%(count)d busy or already gone, skipped",
                              locks.skipped_busy) % {"count": locks.skipped_busy})
    if locks.failed_batches:
        level = messages.ERROR
    else:
        level = messages.SUCCESS if locks.removed else messages.WARNING
    return level, "; ".join(parts)


def _undo_subject(outcome: undo.UndoOutcome) -> str:
    """A record as an undo message names it: "record #7 (counter_overflow of batch #3)"."""
    if outcome.kind == RecordKind.STATUS:
        return f"record #{outcome.record_id} ({outcome.rule} of batch #{outcome.target_id})"
    if outcome.kind == RecordKind.LOCK:
        return f"record #{outcome.record_id} ({outcome.rule} of lock #{outcome.target_id})"
    return f"record #{outcome.record_id}"


def undo_message(report: undo.UndoReport, *, selected) -> tuple[int, str]:
    """(level, text) for the undo action, e.g. "2 repairs undone (1 lock taken back with its batch); 1 refused:
    record #7 (counter_overflow of batch #3): the row changed since the repair: ...". A dry run (the confirmation
    page, which lists every refusal beside it) says "to undo" and only counts the refused."""
    done = "to undo" if report.dry_run else "undone"
    undone, refused = report.undone, report.refused
    if undone:
        head = ngettext("%(count)d repair %(done)s", "%(count)d repairs %(done)s", len(undone)) % {
            "count": len(undone), "done": done}
        # a batch's repair and the lock released with it come off together, selected or not
        carried = sum(1 for outcome in undone if outcome.record_id not in selected)
        if carried:
            head += " (" + ngettext("%(count)d lock taken back with its batch",
                                    "%(count)d locks taken back with their batches", carried) % {"count": carried} + ")"
    else:
        head = f"No repair {done}"
    parts = [head]
    if refused:
        count = ngettext("%(count)d refused", "%(count)d refused", len(refused)) % {"count": len(refused)}
        if report.dry_run:
            parts.append(count)
        else:
            named = " | ".join(f"{_undo_subject(o)}: {o.reason}" for o in refused[:REFUSALS_NAMED])
            more = len(refused) - REFUSALS_NAMED
            if more > 0:
                named += f" | and {more} more (all listed on cleanup run #{report.run_id})"
            parts.append(f"{count}: {named}")
    return (messages.WARNING if refused or not undone else messages.SUCCESS), "; ".join(parts)


# --- Django's admin log, mirroring the run's records -------------------------------------------


def _log_entry(record: RepairRecord, user_id, content_types) -> LogEntry:
    run = f"cleanup run #{record.run_id}"
    if record.kind == RecordKind.STATUS:
        b, a = record.before, record.after
        obj = GenerationStatus(id=record.target_id, account_id=record.account_id, content_type=record.content_type,
                               **{name: a[name] for name in ("status", *COUNTER_FIELDS)})
        how = f"Undid repair record #{record.undo_of_id}" if record.rule == RecordRule.UNDO else \
            f"Repaired by rule {record.rule}"
        message = f"{how} ({run}): T/Q/P/C/F {_counters(b)} {b['status']} -> {_counters(a)} {a['status']}"
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
    entries = (_log_entry(record, request.user.pk, content_types) for record in health.iter_run_records(run_id))
    while chunk := list(itertools.islice(entries, LOG_CHUNK)):
        LogEntry.objects.bulk_create(chunk)


# --- Generation statuses -----------------------------------------------------------------------


class StuckFilter(admin.SimpleListFilter):
    title = "stuck"
    parameter_name = "stuck"

    def lookups(self, request, model_admin):
        window = format_duration(job_settings().stuck_after)
        return [
            ("yes", f"stuck (idle over {window})"),
            *[(rule.value, f"stuck: {rule}") for rule in health.STUCK_RULES],
            ("no", "not stuck"),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        cutoff = _now(request) - job_settings().stuck_after
        if value == "no":
            return health.filter_not_stuck(queryset, cutoff=cutoff)
        rule = None if value == "yes" else value
        if rule is not None and rule not in health.STUCK_RULES:
            return queryset.none()
        return health.filter_stuck(queryset, cutoff=cutoff, rule=rule)


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


@admin.register(GenerationStatus)
class GenerationStatusAdmin(ReadOnlyAdmin):
    list_display = ("id", "account", "content", "status", "diagnosis", "progress", "queued", "processing", "completed",
                    "failed", "updated")
    list_filter = (StuckFilter, "status", "content_type", "updated_at")
    search_fields = ("account_id", "lock_id")
    search_help_text = "An account id, or a lock id (exact)."
    # the primary key's index: the table is large and has no index on updated_at
    ordering = ("-id",)
    list_per_page = 100
    show_full_result_count = False  # spares a COUNT(*) of the whole table on every filtered page
    show_facets = admin.ShowFacets.NEVER  # a COUNT per filter choice is too much for the backend's big table
    actions = ("repair_stuck", "force_repair", "fail_stalled")
    fieldsets = (
        (None, {"fields": ("id", "account_id", "content_type", "status", "diagnosis", "lock_id", "repairs")}),
        ("Counters (owned by the backend; changed here only by the repair actions)", {
            "fields": ("total_requested", "total_queued", "total_processing", "total_completed", "total_failed")}),
        ("Times", {"fields": ("created_at", "started_at", "updated_at", "completed_at")}),
        ("Error", {"fields": ("error_code", "error_message")}),
    )
    readonly_fields = ("diagnosis", "repairs")

    def has_repair_permission(self, request):
        return request.user.has_perm("generation.repair_generationstatus")

    def get_queryset(self, request):
        return health.statuses_for_list(super().get_queryset(request), now=_now(request),
                                        stuck_after=job_settings().stuck_after)

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        return health.search_statuses(queryset, search_term), False

    def get_urls(self):
        return [
            path("health/", self.admin_site.admin_view(self.health_view), name="generation_health"),
            *super().get_urls(),
        ]

    # --- columns (short headers: the diagnosis must stay in view beside the sidebar and the filters)

    @admin.display(description="account", ordering="account_id")
    def account(self, obj):
        return obj.account_id

    @admin.display(description="type", ordering="content_type")
    def content(self, obj):
        return obj.content_type

    @admin.display(description="progress", ordering="total_completed")
    def progress(self, obj):
        done = (obj.total_completed or 0) + (obj.total_failed or 0)
        total = obj.total_requested
        percent = 0 if not total or total <= 0 else max(0, min(100, round(100 * done / total)))
        return format_html(
            '<span class="gen-progress" title="C+F {} of T {}"><span style="width: {}%"></span></span> {}/{}',
            done, total, percent, done, total)

    def _counter(self, value):
        if value is None or value < 0:
            return format_html('<span class="gen-bad">{}</span>', "NULL" if value is None else value)
        return value

    @admin.display(description="Q", ordering="total_queued")
    def queued(self, obj):
        return self._counter(obj.total_queued)

    @admin.display(description="P", ordering="total_processing")
    def processing(self, obj):
        return self._counter(obj.total_processing)

    @admin.display(description="C", ordering="total_completed")
    def completed(self, obj):
        return self._counter(obj.total_completed)

    @admin.display(description="F", ordering="total_failed")
    def failed(self, obj):
        return self._counter(obj.total_failed)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj):
        if obj.updated_at is None:
            return "never"
        ago = format_duration(max(obj.checked_at - obj.updated_at, timedelta(0)))
        return format_html('<span title="{}">{} ago</span>', obj.updated_at.isoformat(timespec="seconds"), ago)

    @admin.display(description="diagnosis")
    def diagnosis(self, obj):
        verdict = rules.diagnose(rules.Counters.of(obj), obj.status, stuck=bool(getattr(obj, "is_stuck", False)))
        return format_html('<span class="gen-diagnosis gen-{}">{}</span>', verdict, verdict)

    @admin.display(description="repair history")
    def repairs(self, obj):
        url = reverse("admin:generation_repairrecord_changelist")
        return format_html('<a href="{}?kind={}&amp;target_id={}">repairs of this batch</a>', url,
                           RecordKind.STATUS.value, obj.pk)

    # --- actions

    def _require_repair(self, request):
        # get_actions() already hides the actions without the permission; this guards the call itself
        if not self.has_repair_permission(request):
            raise PermissionDenied

    def _gone(self, request):
        # the selected rows vanished since the page was shown: no run is recorded for nothing
        self.message_user(request, "None of the selected generations is there any more.", messages.WARNING)

    def _done(self, request, report):
        log_run(request, report.run_id)
        level, text = repair_message(report)
        self.message_user(request, text, level)
        if report.statuses.failed_batches:
            self.message_user(request, "Rolled back: " + " | ".join(report.errors), messages.ERROR)

    @admin.action(description="Repair selected stuck generations", permissions=["repair"])
    @_aborted_as_message
    def repair_stuck(self, request, queryset):
        self._require_repair(request)
        ids = list(queryset.values_list("pk", flat=True))
        if not ids:
            return self._gone(request)
        self._done(request, services.repair_selected(ids=ids, mode=Mode.SCHEDULED, actor=request.user))

    @admin.action(description="Force repair selected generations (ignore the age window)…", permissions=["repair"])
    @_aborted_as_message
    def force_repair(self, request, queryset):
        return self._confirmed_repair(
            request, queryset, Mode.FORCE, "force_repair", title="Force repair generations",
            intro="The repair rules will be applied to these batches whatever their age, as if their workers were "
                  "known to be dead. Stalled and corrupt batches are not changed.")

    @admin.action(description="Fail selected stalled generations…", permissions=["repair"])
    @_aborted_as_message
    def fail_stalled(self, request, queryset):
        return self._confirmed_repair(
            request, queryset, Mode.FAIL_STALLED, "fail_stalled", title="Fail stalled generations",
            intro="The tasks still queued or processing in these stalled batches will be counted as failed and the "
                  "batches finished, whatever their age. Only stalled batches are changed.")

    def _confirmed_repair(self, request, queryset, mode, action, *, title, intro):
        """Django's delete_selected pattern: a preview first (the service's dry run), the change on the second POST."""
        self._require_repair(request)
        ids = list(queryset.values_list("pk", flat=True))
        if not ids:
            return self._gone(request)
        if len(ids) > CONFIRM_MAX:
            self.message_user(request, f"Select at most {CONFIRM_MAX} generations for this action "
                                       f"({len(ids)} selected).", messages.ERROR)
            return None
        if request.POST.get("post") == "yes":
            self._done(request, services.repair_selected(ids=ids, mode=mode, actor=request.user))
            return None
        preview = services.repair_selected(ids=ids, mode=mode, actor=request.user, dry_run=True)
        changes = [_status_change_row(d) for d in preview.statuses.details if d.rule in rules.REPAIRS]
        unchanged = [_status_change_row(d) for d in preview.statuses.details if d.rule not in rules.REPAIRS]
        _level, summary = repair_message(preview)
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "subtitle": None,
            "intro": intro,
            "summary": summary,
            "changes": changes,
            "unchanged": unchanged,
            "locks_released": preview.statuses.locks_released,
            "ids": ids,
            "action": action,
            "opts": self.opts,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/generation/repair_confirmation.html", context)

    # --- the health page

    def health_view(self, request):
        context = {
            **self.admin_site.each_context(request),
            "title": "Generation health",
            "subtitle": None,
            "health": health.overview(),
            "opts": self.opts,
            "stuck_rules": health.STUCK_RULES,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/generation/health.html", context)


def _status_change_row(detail: services.StatusDetail) -> dict:
    """One row of the confirmation table: status and each counter before and after, the changed ones marked."""
    b, a = detail.before, detail.after
    cells = [{"label": COUNTER_LABELS[name], "before": b[name], "after": a[name], "changed": b[name] != a[name]}
             for name in COUNTER_FIELDS]
    return {
        "detail": detail,
        "rule": detail.rule.replace("_", " ") if detail.rule in LEFT_ALONE else detail.rule,
        "status_before": b["status"], "status_after": a["status"], "status_changed": b["status"] != a["status"],
        "cells": cells,
        "idle": format_duration(detail.idle_s) if detail.idle_s is not None else "never updated",
    }


# --- Generation locks --------------------------------------------------------------------------


class ExpiredFilter(admin.SimpleListFilter):
    title = "expired"
    parameter_name = "expired"

    def lookups(self, request, model_admin):
        ttl = format_duration(job_settings().lock_ttl)
        return [("yes", f"expired (held over {ttl})"), ("no", "not expired")]

    def queryset(self, request, queryset):
        if self.value() not in ("yes", "no"):
            return queryset
        return health.filter_expired(queryset, cutoff=_now(request) - job_settings().lock_ttl,
                                     expired=self.value() == "yes")


@admin.register(GenerationLock)
class GenerationLockAdmin(ReadOnlyAdmin):
    list_display = ("lock", "account", "content", "locked", "age", "expired", "batch")
    list_filter = (ExpiredFilter, "content_type")
    search_fields = ("account_id", "lock_id")
    search_help_text = "An account id, or a lock id (exact)."
    ordering = ("locked_at", "id")  # the oldest, most suspicious first
    list_per_page = 100
    show_full_result_count = False
    actions = ("release_selected",)
    fields = ("id", "lock_id", "account_id", "content_type", "locked_at", "created_at", "age", "expired", "batch")
    readonly_fields = ("age", "expired", "batch")

    def has_release_permission(self, request):
        return request.user.has_perm("generation.release_generationlock")

    def get_queryset(self, request):
        return health.locks_for_list(super().get_queryset(request), now=_now(request))

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        return health.search_locks(queryset, search_term), False

    @admin.display(description="lock id", ordering="lock_id")
    def lock(self, obj):
        # a UUID's first block tells locks apart on a page; the whole id is on hover and on the lock's page
        short = obj.lock_id if len(obj.lock_id) <= 13 else obj.lock_id[:8] + "…"
        return format_html('<span class="gen-mono" title="{}">{}</span>', obj.lock_id, short)

    @admin.display(description="account", ordering="account_id")
    def account(self, obj):
        return obj.account_id

    @admin.display(description="type", ordering="content_type")
    def content(self, obj):
        return obj.content_type

    @admin.display(description="locked at", ordering="locked_at")
    def locked(self, obj):
        return _when(obj.locked_at)

    @admin.display(description="age", ordering="locked_at")
    def age(self, obj):
        return format_duration(max(obj.checked_at - obj.locked_at, timedelta(0)))

    @admin.display(description="expired", boolean=True)
    def expired(self, obj):
        return obj.locked_at < obj.checked_at - job_settings().lock_ttl

    @admin.display(description="batch")
    def batch(self, obj):
        if obj.batch_id is None:
            return "none refers to it"
        url = reverse("admin:generation_generationstatus_change", args=[obj.batch_id])
        idle = obj.checked_at - obj.batch_updated_at if obj.batch_updated_at else None
        moved = f"moved {format_duration(max(idle, timedelta(0)))} ago" if idle is not None else "never moved"
        if obj.batch_status in rules.IN_PROGRESS and idle is not None and idle < job_settings().stuck_after:
            # the batch still moves: releasing its lock lets a second batch start beside it
            return format_html('<a href="{}">#{}</a> {}, <span class="gen-flag-note">{}</span>', url, obj.batch_id,
                               obj.batch_status, moved)
        return format_html('<a href="{}">#{}</a> {}, {}', url, obj.batch_id, obj.batch_status, moved)

    @admin.action(description="Release selected locks…", permissions=["release"])
    @_aborted_as_message
    def release_selected(self, request, queryset):
        if not self.has_release_permission(request):
            raise PermissionDenied
        ids = list(queryset.values_list("pk", flat=True))
        if not ids:
            self.message_user(request, "None of the selected locks is there any more.", messages.WARNING)
            return None
        if len(ids) > CONFIRM_MAX:
            self.message_user(request, f"Select at most {CONFIRM_MAX} locks for this action ({len(ids)} selected).",
                              messages.ERROR)
            return None
        if request.POST.get("post") == "yes":
            report = services.release_locks(ids=ids, actor=request.user)
            log_run(request, report.run_id)
            level, text = release_message(report)
            self.message_user(request, text, level)
            if report.locks.failed_batches:
                self.message_user(request, "Rolled back: " + " | ".join(report.errors), messages.ERROR)
            return None
        preview = services.release_locks(ids=ids, actor=request.user, dry_run=True)
        stuck_after = job_settings().stuck_after.total_seconds()
        rows = [_lock_row(detail, stuck_after) for detail in preview.locks.details]
        context = {
            **self.admin_site.each_context(request),
            "title": "Release generation locks",
            "subtitle": None,
            "rows": rows,
            "progressing": sum(1 for row in rows if row["progressing"]),
            "ids": ids,
            "action": "release_selected",
            "opts": self.opts,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/generation/release_confirmation.html", context)


def _lock_row(detail: services.LockDetail, stuck_after_s: float) -> dict:
    """A lock on the confirmation page; flagged when its batch is in progress and moved within the stuck window:
    releasing it lets a second batch start for the same account and content type while this one still runs."""
    progressing = (detail.batch_status in rules.IN_PROGRESS and detail.batch_idle_s is not None
                   and detail.batch_idle_s < stuck_after_s)
    if detail.batch_id is None:
        batch = "no batch refers to it"
    elif detail.batch_idle_s is None:
        batch = f"batch #{detail.batch_id} {detail.batch_status}, never moved"
    else:
        batch = f"batch #{detail.batch_id} {detail.batch_status}, moved {format_duration(detail.batch_idle_s)} ago"
    return {"detail": detail, "age": format_duration(detail.age_s), "batch": batch, "progressing": progressing}


# --- History: read-only for everyone -----------------------------------------------------------


@admin.register(CleanupRun)
class CleanupRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "started", "trigger", "actor", "outcome_label", "examined", "repaired_total", "stalled",
                    "corrupt", "locks", "duration")
    list_filter = ("trigger", "outcome", "dry_run", "started_at")
    list_select_related = ("actor",)
    ordering = ("-id",)  # newest first: ids follow started_at, and one sort key keeps the headers plain
    list_per_page = 100
    fieldsets = (
        (None, {"fields": ("id", "trigger", "actor", "outcome_label", "error", "started_at", "finished_at", "duration",
                           "dry_run", "host", "pid")}),
        ("Parameters", {"fields": ("stuck_after", "lock_ttl", "fail_stalled_after", "batch_size", "filters")}),
        ("Counts", {"fields": ("examined", "repaired_all_accounted", "repaired_no_active_tasks",
                               "repaired_counter_overflow", "repaired_stalled_failed", "stalled", "corrupt",
                               "skipped_busy", "locks_expired", "locks_removed", "locks_released")}),
    )
    readonly_fields = ("outcome_label", "duration")

    @admin.display(description="started", ordering="started_at")
    def started(self, obj):
        return _when(obj.started_at)

    @admin.display(description="locks deleted")
    def locks(self, obj):
        return obj.locks_removed + obj.locks_released

    @admin.display(description="outcome", ordering="outcome")
    def outcome_label(self, obj):
        return obj.outcome or "unfinished"

    @admin.display(description="repaired")
    def repaired_total(self, obj):
        return obj.repaired

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.finished_at is None or obj.started_at is None:
            return "-"
        seconds = (obj.finished_at - obj.started_at).total_seconds()
        return f"{seconds:.2f}s" if seconds < 60 else format_duration(seconds)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run_id = health.as_id(object_id)
        records, count = health.run_records(run_id, limit=RUN_PAGE_RECORDS) if run_id is not None else ([], 0)
        extra_context = {
            **(extra_context or {}), "records": [_record_row(r) for r in records], "records_count": count,
            "records_url": reverse("admin:generation_repairrecord_changelist") + f"?run__id__exact={object_id}",
        }
        return super().change_view(request, object_id, form_url, extra_context)


def _lock_id(record: RepairRecord) -> str:
    """The lock a lock record is about: a deletion holds it as `before`, an undo (a re-creation) as `after`."""
    return (record.before or {}).get("lock_id") or (record.after or {}).get("lock_id") or ""


def _record_row(record: RepairRecord) -> dict:
    if record.kind == RecordKind.STATUS:
        b, a = record.before, record.after
        change = f"{b['status']} {_counters(b)} → {a['status']} {_counters(a)}"
    elif record.rule == RecordRule.UNDO:
        change = f"lock {_lock_id(record)} re-created"
    else:
        change = f"lock {_lock_id(record)} deleted"
    return {"record": record, "change": change}


def _record_link(record_id, text):
    return format_html('<a href="{}">{}</a>', reverse("admin:generation_repairrecord_change", args=[record_id]), text)


@admin.register(RepairRecord)
class RepairRecordAdmin(ReadOnlyAdmin):
    list_display = ("id", "created", "rule_badge", "target", "account", "content", "actor", "run_link", "change")
    list_filter = ("rule", "kind", "run__trigger", "run__outcome", "content_type", "created_at")
    list_select_related = ("run", "actor")
    show_facets = admin.ShowFacets.NEVER  # grows with every run, like the statuses
    search_fields = ("account_id",)
    search_help_text = "An account id."
    ordering = ("-id",)  # newest first
    list_per_page = 100
    actions = ("undo_selected",)
    readonly_fields = ("target", "run_link", "undoes", "undone_by_link")

    def get_fields(self, request, obj=None):
        # an undo names what it undid; any other record names the undo that took it back, if any
        link = "undoes" if obj is not None and obj.rule == RecordRule.UNDO else "undone_by_link"
        return ("id", "created_at", "rule", "kind", "target", "account_id", "content_type", "actor", "run_link", link)

    def has_repair_permission(self, request):
        # undoing a repair changes the mirrored rows as a repair does: the same permission
        return request.user.has_perm("generation.repair_generationstatus")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        account_id = health.as_id(term)
        return (queryset.filter(account_id=account_id) if account_id is not None else queryset.none()), False

    @admin.display(description="at", ordering="created_at")
    def created(self, obj):
        return _when(obj.created_at)

    @admin.display(description="rule", ordering="rule")
    def rule_badge(self, obj):
        return format_html('<span class="gen-diagnosis gen-{}">{}</span>', obj.rule, obj.rule)

    @admin.display(description="account", ordering="account_id")
    def account(self, obj):
        return obj.account_id

    @admin.display(description="type", ordering="content_type")
    def content(self, obj):
        return obj.content_type

    @admin.display(description="change")
    def change(self, obj):
        if obj.kind == RecordKind.LOCK:
            return "re-created" if obj.rule == RecordRule.UNDO else "deleted"  # the lock id is on hover over the target
        return format_html('<span class="gen-mono gen-small">{}</span>', _record_row(obj)["change"])

    @admin.display(description="target", ordering="target_id")
    def target(self, obj):
        if obj.kind == RecordKind.LOCK:
            return format_html('<span title="{}">lock #{}</span>', _lock_id(obj), obj.target_id)
        url = reverse("admin:generation_generationstatus_change", args=[obj.target_id])
        return format_html('<a href="{}">batch #{}</a>', url, obj.target_id)

    @admin.display(description="run", ordering="run_id")
    def run_link(self, obj):
        url = reverse("admin:generation_cleanuprun_change", args=[obj.run_id])
        return format_html('<a href="{}">#{} {}</a>', url, obj.run_id, obj.run.trigger)

    @admin.display(description="undoes")
    def undoes(self, obj):
        if obj.undo_of_id is None:
            return "-"
        original = obj.undo_of
        row = "batch" if original.kind == RecordKind.STATUS else "lock"
        return format_html('<span id="gen-undo-of">{} ({} of {} #{})</span>',
                           _record_link(original.pk, f"record #{original.pk}"), original.rule, row, original.target_id)

    @admin.display(description="undone by")
    def undone_by_link(self, obj):
        undos = list(obj.undone_by.select_related("run", "actor").order_by("pk"))
        if not undos:
            return "not undone"
        return format_html('<span id="gen-undone-by">{}</span>', format_html_join(
            ", ", "{} (run #{} {}{})",
            ((_record_link(u.pk, f"record #{u.pk}"), u.run_id, u.run.trigger, f" by {u.actor}" if u.actor else "")
             for u in undos)))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        record = self.get_object(request, object_id)
        offer_undo = (record is not None and record.rule != RecordRule.UNDO and self.has_repair_permission(request)
                      and not record.undone_by.exists())
        extra_context = {
            **(extra_context or {}),
            "comparison": _comparison(record) if record else [],
            "is_undo": record is not None and record.rule == RecordRule.UNDO,
            "offer_undo": offer_undo,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # --- undo

    @admin.action(description="Undo selected repairs…", permissions=["repair"])
    def undo_selected(self, request, queryset):
        """Django's delete_selected pattern: the undo's dry run as the preview, the undo on the second POST."""
        if not self.has_repair_permission(request):  # get_actions() hides it; this guards the call itself
            raise PermissionDenied
        ids = list(queryset.values_list("pk", flat=True))
        if not ids:
            self.message_user(request, "None of the selected repairs is there any more.", messages.WARNING)
            return None
        if len(ids) > CONFIRM_MAX:
            self.message_user(request, f"Select at most {CONFIRM_MAX} repairs for this action ({len(ids)} selected).",
                              messages.ERROR)
            return None
        confirmed = request.POST.get("post") == "yes"
        try:
            report = undo.undo_records(ids=ids, actor=request.user, trigger=Trigger.ADMIN, dry_run=not confirmed)
        except undo.UndoAborted as exc:
            after = ("The repairs undone before it stay undone; the repair history lists them." if confirmed
                     else "Nothing was changed.")
            self.message_user(request, f"Undo aborted: {exc}. {after}", messages.ERROR)
            return None
        if confirmed:
            log_run(request, report.run_id)
            level, text = undo_message(report, selected=set(ids))
            self.message_user(request, text, level)
            return None
        now, lock_ttl = services.database_now(), job_settings().lock_ttl
        rows = [_undo_row(outcome, selected=set(ids), now=now, lock_ttl=lock_ttl) for outcome in report.outcomes]
        context = {
            **self.admin_site.each_context(request),
            "title": "Undo repairs",
            "subtitle": None,
            "summary": undo_message(report, selected=set(ids))[1],
            "undone": [row for row in rows if not row["outcome"].refused],
            "refused": [row for row in rows if row["outcome"].refused],
            "lock_ttl": format_duration(lock_ttl),
            "ids": ids,
            "action": "undo_selected",
            "opts": self.opts,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/generation/undo_confirmation.html", context)


def _undo_row(outcome: undo.UndoOutcome, *, selected, now, lock_ttl) -> dict:
    """One record on the undo confirmation page: the row as it is and as the undo would leave it, or the refusal.
    A lock comes back with its original locked_at: one that had expired is expired again, and the next cleanup
    run deletes it again unless the TTL was raised."""
    row = {"outcome": outcome, "carried": outcome.record_id not in selected,
           "is_status": outcome.kind == RecordKind.STATUS}
    if outcome.refused or outcome.restored is None:
        return row
    if row["is_status"]:
        now_row, after = outcome.current, outcome.restored
        row.update({
            "status_before": now_row["status"], "status_after": after["status"],
            "status_changed": now_row["status"] != after["status"],
            "cells": [{"label": COUNTER_LABELS[name], "before": now_row[name], "after": after[name],
                       "changed": now_row[name] != after[name]} for name in COUNTER_FIELDS],
            "completed_at": (now_row["completed_at"], after["completed_at"])
            if now_row["completed_at"] != after["completed_at"] else None,
        })
    else:
        held = max(now - datetime.fromisoformat(outcome.restored["locked_at"]), timedelta(0))
        row.update({"lock_id": outcome.restored["lock_id"], "held": format_duration(held),
                    "expired_again": held > lock_ttl})
    return row


def _comparison(record: RepairRecord) -> list[dict]:
    """Each field before and after, side by side: a deleted row (a released lock) has no after, a re-created one
    (an undone lock deletion) no before."""
    before, after = record.before or {}, record.after
    names = list(before) + [name for name in (after or {}) if name not in before]
    created = not before and after is not None
    return [
        {
            "name": name,
            "before": "(absent)" if created else before.get(name),
            "after": "(deleted)" if after is None else after.get(name),
            "changed": after is None or created or before.get(name) != after.get(name),
        }
        for name in names
    ]
