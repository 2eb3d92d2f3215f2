"""The job's history, read-only for everyone: cleanup runs, repair records, and the undo of repairs."""

from datetime import datetime, timedelta

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from .. import selectors, undo
from ..db import ConnectionLost, database_now
from ..models import CleanupRun, RecordKind, RecordRule, RepairRecord, Trigger
from ..report import format_duration, format_windows, undo_message
from ..rules import COUNTER_FIELDS, counters_text
from .common import (
    COUNTER_LABELS,
    AccountColumns,
    ReadOnlyAdmin,
    confirmation_page,
    confirmed,
    job_of,
    log_run,
    selected_ids,
    when,
)

RUN_PAGE_RECORDS = 200  # records listed on a run's page; the rest are one link away


@admin.register(CleanupRun)
class CleanupRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "started", "kind", "trigger", "actor", "outcome_label", "examined", "repaired_total", "stalled",
                    "corrupt", "locks", "duration")
    list_filter = ("kind", "trigger", "outcome", "dry_run", "started_at")
    list_select_related = ("actor",)
    ordering = ("-id",)  # newest first: ids follow started_at, and one sort key keeps the headers plain
    list_per_page = 100
    fieldsets = (
        (None, {"fields": ("id", "kind", "trigger", "actor", "outcome_label", "error", "started_at", "finished_at", "duration",
                           "dry_run", "host", "pid")}),
        ("Parameters", {"fields": ("stuck_after_windows", "lock_ttl_windows", "fail_stalled_windows", "batch_size",
                                   "filters")}),
        ("Counts", {"fields": ("examined", "repaired_all_accounted", "repaired_no_active_tasks",
                               "repaired_counter_overflow", "repaired_stalled_failed", "stalled", "corrupt",
                               "skipped_busy", "locks_expired", "locks_removed", "locks_released")}),
    )
    readonly_fields = ("outcome_label", "duration", "stuck_after_windows", "lock_ttl_windows", "fail_stalled_windows")

    @admin.display(description="started", ordering="started_at")
    def started(self, obj):
        return when(obj.started_at)

    @admin.display(description="locks deleted")
    def locks(self, obj):
        return obj.locks_removed + obj.locks_released

    @admin.display(description="outcome", ordering="outcome")
    def outcome_label(self, obj):
        return obj.outcome or "unfinished"

    @admin.display(description="repaired")
    def repaired_total(self, obj):
        return obj.repaired

    # the windows the run used, each content type's own beside the default (3h, video 8h)
    @admin.display(description="stuck after")
    def stuck_after_windows(self, obj):
        return _windows_label(obj.windows("stuck_after"))

    @admin.display(description="lock TTL")
    def lock_ttl_windows(self, obj):
        return _windows_label(obj.windows("lock_ttl"))

    @admin.display(description="fail stalled after")
    def fail_stalled_windows(self, obj):
        return _windows_label(obj.windows("fail_stalled_after"))

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.finished_at is None or obj.started_at is None:
            return "-"
        seconds = (obj.finished_at - obj.started_at).total_seconds()
        return f"{seconds:.2f}s" if seconds < 60 else format_duration(seconds)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run_id = selectors.as_id(object_id)
        records, count = selectors.run_records(run_id, limit=RUN_PAGE_RECORDS) if run_id is not None else ([], 0)
        extra_context = {
            **(extra_context or {}), "records": [_record_row(r) for r in records], "records_count": count,
            "records_url": reverse("admin:generation_repairrecord_changelist") + f"?run__id__exact={object_id}",
        }
        return super().change_view(request, object_id, form_url, extra_context)


def _windows_label(windows) -> str:
    return format_windows(windows) if windows is not None else "-"


def _lock_id(record: RepairRecord) -> str:
    """The lock a lock record is about: a deletion holds it as `before`, an undo (a re-creation) as `after`."""
    return (record.before or {}).get("lock_id") or (record.after or {}).get("lock_id") or ""


def _record_row(record: RepairRecord) -> dict:
    if record.kind == RecordKind.STATUS:
        b, a = record.before, record.after
        change = f"{b['status']} {counters_text(b)} → {a['status']} {counters_text(a)}"
    elif record.rule == RecordRule.UNDO:
        change = f"lock {_lock_id(record)} re-created"
    else:
        change = f"lock {_lock_id(record)} deleted"
    return {"record": record, "change": change}


def _record_link(record_id, text):
    return format_html('<a href="{}">{}</a>', reverse("admin:generation_repairrecord_change", args=[record_id]), text)


@admin.register(RepairRecord)
class RepairRecordAdmin(AccountColumns, ReadOnlyAdmin):
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
        account_id = selectors.as_id(term)
        return (queryset.filter(account_id=account_id) if account_id is not None else queryset.none()), False

    @admin.display(description="at", ordering="created_at")
    def created(self, obj):
        return when(obj.created_at)

    @admin.display(description="rule", ordering="rule")
    def rule_badge(self, obj):
        return format_html('<span class="gen-diagnosis gen-{}">{}</span>', obj.rule, obj.rule)

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
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # --- undo

    @admin.action(description="Undo selected repairs…", permissions=["repair"])
    def undo_selected(self, request, queryset):
        """Django's delete_selected pattern: the undo's dry run as the preview, the undo on the second POST."""
        if not self.has_repair_permission(request):  # get_actions() hides it; this guards the call itself
            raise PermissionDenied
        ids = selected_ids(self, request, queryset, "repairs")
        if not ids:
            return None
        job, go = job_of(request), confirmed(request)
        try:
            report = undo.undo_records(job=job, ids=ids, actor=request.user, trigger=Trigger.ADMIN, dry_run=not go)
        except ConnectionLost as exc:
            after = "The repairs undone before it stay undone; the repair history lists them." if go else \
                "Nothing was changed."
            self.message_user(request, f"Undo aborted: {exc}. {after}", messages.ERROR)
            return None
        level, text = undo_message(report, selected=set(ids))
        if go:
            log_run(request, report.run_id)
            self.message_user(request, text, level)
            return None
        now = database_now()
        rows = [_undo_row(outcome, selected=set(ids), now=now, lock_ttl=job.lock_ttl) for outcome in report.outcomes]
        return confirmation_page(
            self, request, "admin/generation/undo_confirmation.html", title="Undo repairs", ids=ids,
            action="undo_selected", summary=text, undone=[row for row in rows if not row["outcome"].refused],
            refused=[row for row in rows if row["outcome"].refused])


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
        ttl = lock_ttl.for_type(outcome.content_type)  # the TTL of the lock's own content type
        row.update({"lock_id": outcome.restored["lock_id"], "held": format_duration(held),
                    "expired_again": held > ttl, "lock_ttl": format_duration(ttl)})
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
