"""The repair records, read-only for everyone: the list, a record's page (before and after), and the undo of
repairs (selected ones, every one the list matches, or a whole run's from its page)."""

from datetime import datetime, timedelta

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import mark_safe

from .. import rules, selectors, undo
from ..db import ConnectionLost, database_now
from ..models import GenerationLock, GenerationStatus, RecordKind, RecordRule, RepairRecord, RunKind, Trigger
from ..report import format_duration, record_totals_summary, undo_message
from ..rules import COUNTER_FIELDS, counters_text
from .common import (
    COUNTER_LABELS,
    SAMPLE,
    AccountColumns,
    ReadOnlyAdmin,
    SelectorSearch,
    change_url,
    confirmation_page,
    confirmed,
    job_of,
    linked,
    log_run,
    result,
    selection,
    when,
)

# A snapshot's fields in the table's own column order (PostgreSQL's jsonb keeps its keys sorted, not written).
COLUMN_ORDER = {kind: [field.name for field in model._meta.fields]
                for kind, model in ((RecordKind.STATUS, GenerationStatus), (RecordKind.LOCK, GenerationLock))}
TIMES = ("created_at", "updated_at", "started_at", "completed_at", "locked_at")


def _lock_id(record: RepairRecord) -> str:
    """The lock a lock record is about: a deletion holds it as `before`, an undo (a re-creation) as `after`."""
    return (record.before or {}).get("lock_id") or (record.after or {}).get("lock_id") or ""


def change_text(record: RepairRecord) -> str:
    """What a record changed, in one line: a batch's status and counters before → after, or the lock's fate."""
    if record.kind == RecordKind.STATUS:
        b, a = record.before, record.after
        return f"{b['status']} {counters_text(b)} → {a['status']} {counters_text(a)}"
    return f"lock {_lock_id(record)} {'re-created' if record.rule == RecordRule.UNDO else 'deleted'}"


def row_link(record: RepairRecord):
    """The row a record changed, linked to its page (a deleted lock's page says it is gone)."""
    if record.kind == RecordKind.STATUS:
        return format_html('<a href="{}">batch #{}</a>', change_url("batch", record.target_id), record.target_id)
    return format_html('<a href="{}" title="{}">lock #{}</a>', change_url("lock", record.target_id), _lock_id(record),
                       record.target_id)


def _record_link(record_id, text):
    return format_html('<a href="{}">{}</a>', change_url("record", record_id), text)


@admin.register(RepairRecord)
class RepairRecordAdmin(SelectorSearch, AccountColumns, ReadOnlyAdmin):
    list_display = ("id", "created", "rule_badge", "target", "account", "run_link", "change")
    list_filter = ("rule", "kind", "run__trigger", "run__outcome", "content_type", "created_at")
    list_select_related = ("run", "actor")
    show_facets = admin.ShowFacets.NEVER  # grows with every run, like the statuses
    search_fields = ("account_id",)
    search_help_text = "A batch id (4998 or #4998) for its repairs, or an account id."
    searched_by = staticmethod(selectors.search_records)
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
        # before on one line, after on the next; a break is allowed after each slash of large counters
        before, after = (mark_safe(escape(part).replace("/", "/<wbr>")) for part in change_text(obj).split(" → "))  # noqa: S308
        return format_html('<span class="gen-mono gen-small">{}<br>→ {}</span>', before, after)

    @admin.display(description="row", ordering="target_id")
    def target(self, obj):
        return row_link(obj)

    @admin.display(description="run", ordering="run_id")
    def run_link(self, obj):
        run = obj.run
        undo_run = " undo" if run.kind == RunKind.UNDO else ""
        by = f" ({obj.actor})" if obj.actor else ""
        return format_html('<a href="{}">#{}</a>{} {}{}', change_url("run", obj.run_id), obj.run_id, undo_run,
                           run.trigger, by)

    @admin.display(description="undoes")
    def undoes(self, obj):
        if obj.undo_of_id is None:
            return "-"
        original = obj.undo_of
        return format_html('<span id="gen-undo-of">{} ({} of {})</span>',
                           _record_link(original.pk, f"record #{original.pk}"), original.rule, row_link(original))

    @admin.display(description="undone by")
    def undone_by_link(self, obj):
        undos = list(obj.undone_by.select_related("run", "actor").order_by("pk"))
        if not undos:
            return "not undone"
        return format_html('<span id="gen-undone-by">{}</span>', format_html_join(
            ", ", "{} (run {} {}{})",
            ((_record_link(u.pk, f"record #{u.pk}"), format_html('<a href="{}">#{}</a>', change_url("run", u.run_id),
                                                                 u.run_id), u.run.trigger,
              f" by {u.actor}" if u.actor else "") for u in undos)))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        record = self.get_object(request, object_id)
        offer_undo = (record is not None and record.rule != RecordRule.UNDO and self.has_repair_permission(request)
                      and not record.undone_by.exists())
        extra_context = {
            **(extra_context or {}),
            "comparison": _comparison(record) if record else [],
            # the heading names the row it changed, linked ("counter_overflow of batch #76")
            **({"subtitle": linked(f"{record.rule} of {'batch' if record.kind == RecordKind.STATUS else 'lock'} "
                                   f"#{record.target_id}")} if record else {}),
            "is_undo": record is not None and record.rule == RecordRule.UNDO,
            "offer_undo": offer_undo,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # --- undo

    @admin.action(description="Undo selected repairs…", permissions=["repair"])
    def undo_selected(self, request, queryset):
        """Django's delete_selected pattern: the undo's dry run as the preview, the undo on the second POST. With
        "select all N matching" (a run's "Undo this run"), the totals by rule and the dry run of the newest few."""
        if not self.has_repair_permission(request):  # get_actions() hides it; this guards the call itself
            raise PermissionDenied
        chosen = selection(self, request, queryset, "repairs")
        if not chosen:
            return None
        job, go = job_of(request), confirmed(request)
        rows = chosen.rows() if go else {
            "ids": selectors.first_ids(chosen.matching, SAMPLE, newest_first=True) if chosen.across else chosen.ids}
        try:
            report = undo.undo_records(job=job, **rows, actor=request.user, trigger=Trigger.ADMIN, dry_run=not go,
                                       keep=SAMPLE if chosen.across else None)
        except ConnectionLost as exc:
            after = "The repairs undone before it stay undone; the repair history lists them." if go else \
                "Nothing was changed."
            self.message_user(request, f"Undo aborted: {exc}. {after}", messages.ERROR)
            return None
        level, text = undo_message(report)
        if go:
            log_run(request, report.run_id)
            result(self, request, level, text, report.run_id)
            return None
        if chosen.across:
            text = record_totals_summary(selectors.record_totals(chosen.matching))
        now = database_now()
        rows = [_undo_row(outcome, now=now, job=job) for outcome in report.outcomes]
        return confirmation_page(
            self, request, "admin/generation/undo_confirmation.html", title="Undo repairs", chosen=chosen,
            action="undo_selected", summary=text, undone=[row for row in rows if not row["outcome"].refused],
            refused=[row for row in rows if row["outcome"].refused])


def _undo_row(outcome: undo.UndoOutcome, *, now, job) -> dict:
    """One record on the undo confirmation page: the row as it is and as the undo would leave it, or the refusal.
    A batch gets its updated_at back, so one that was stuck is stuck again; a lock comes back with its original
    locked_at: one that had expired is expired again, and the next cleanup run deletes it again unless the TTL was
    raised."""
    row = {"outcome": outcome, "carried": outcome.with_batch, "is_status": outcome.kind == RecordKind.STATUS}
    if outcome.refused or outcome.restored is None:
        return row
    if row["is_status"]:
        now_row, after = outcome.current, outcome.restored
        updated = datetime.fromisoformat(after["updated_at"]) if after["updated_at"] else None
        idle = None if updated is None else max(now - updated, timedelta(0))
        window = job.stuck_after.for_type(outcome.content_type)
        row.update({
            "status_before": now_row["status"], "status_after": after["status"],
            "status_changed": now_row["status"] != after["status"],
            "cells": [{"label": COUNTER_LABELS[name], "before": now_row[name], "after": after[name],
                       "changed": now_row[name] != after[name]} for name in COUNTER_FIELDS],
            "completed_at": (when(after["completed_at"]) if after["completed_at"] else "NULL")
            if now_row["completed_at"] != after["completed_at"] else None,
            "updated_at": when(after["updated_at"]), "idle": format_duration(idle) if idle is not None else "",
            "stuck_again": after["status"] in rules.IN_PROGRESS and idle is not None
            and not rules.still_moving(after["status"], idle, window),
        })
    else:
        held = max(now - datetime.fromisoformat(outcome.restored["locked_at"]), timedelta(0))
        ttl = job.lock_ttl.for_type(outcome.content_type)  # the TTL of the lock's own content type
        row.update({"lock_id": outcome.restored["lock_id"], "held": format_duration(held),
                    "expired_again": held > ttl, "lock_ttl": format_duration(ttl)})
    return row


def _shown(name, value):
    return when(value) if name in TIMES and value else value


def _comparison(record: RepairRecord) -> list[dict]:
    """Each field before and after, side by side, in the table's column order: a deleted row (a released lock) has
    no after, a re-created one (an undone lock deletion) no before."""
    before, after = record.before or {}, record.after
    names = [*before, *(name for name in (after or {}) if name not in before)]
    order = COLUMN_ORDER.get(record.kind, [])
    names.sort(key=lambda name: order.index(name) if name in order else len(order))
    created = not before and after is not None
    return [
        {
            "name": name,
            "before": "(absent)" if created else _shown(name, before.get(name)),
            "after": "(deleted)" if after is None else _shown(name, after.get(name)),
            "changed": after is None or created or before.get(name) != after.get(name),
        }
        for name in names
    ]
