"""The generation statuses (the backend's batches): list, diagnosis, filters, the repair actions, the health page."""

from datetime import timedelta

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from .. import health, rules, selectors, services
from ..models import GenerationStatus, RecordKind
from ..report import format_duration, format_windows, repair_message
from ..rules import COUNTER_FIELDS
from ..services import Mode
from .common import (
    COUNTER_LABELS,
    AccountColumns,
    ReadOnlyAdmin,
    aborted_as_message,
    confirmation_page,
    confirmed,
    job_of,
    log_run,
    now_of,
    selected_ids,
)


class StuckFilter(admin.SimpleListFilter):
    title = "stuck"
    parameter_name = "stuck"

    def lookups(self, request, model_admin):
        window = format_windows(job_of(request).stuck_after)
        return [
            ("yes", f"stuck (idle over {window})"),
            *[(rule.value, f"stuck: {rule}") for rule in rules.STUCK_RULES],
            ("no", "not stuck"),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        window = {"now": now_of(request), "stuck_after": job_of(request).stuck_after}
        if value == "no":
            return selectors.filter_not_stuck(queryset, **window)
        rule = None if value == "yes" else value
        if rule is not None and rule not in rules.STUCK_RULES:
            return queryset.none()
        return selectors.filter_stuck(queryset, **window, rule=rule)


@admin.register(GenerationStatus)
class GenerationStatusAdmin(AccountColumns, ReadOnlyAdmin):
    list_display = ("id", "account", "content", "status", "diagnosis", "progress", "queued", "processing", "completed",
                    "failed", "updated")
    list_filter = (StuckFilter, "status", "content_type", "updated_at")
    search_fields = ("account_id", "lock_id")
    search_help_text = "A batch id (4998 or #4998), an account id, or a lock id (exact)."
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
        return selectors.statuses_for_list(super().get_queryset(request), now=now_of(request),
                                           stuck_after=job_of(request).stuck_after)

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        return selectors.search_statuses(queryset, search_term), False

    def get_urls(self):
        return [
            path("health/", self.admin_site.admin_view(self.health_view), name="generation_health"),
            *super().get_urls(),
        ]

    # --- columns (short headers: the diagnosis must stay in view beside the sidebar and the filters)

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
        verdict = getattr(obj, "verdict", None)  # annotated by selectors.statuses_for_list
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

    def _done(self, request, report):
        log_run(request, report.run_id)
        level, text = repair_message(report)
        self.message_user(request, text, level)
        if report.statuses.failed_batches:
            self.message_user(request, "Rolled back: " + " | ".join(report.errors), messages.ERROR)

    @admin.action(description="Repair selected stuck generations", permissions=["repair"])
    @aborted_as_message
    def repair_stuck(self, request, queryset):
        self._require_repair(request)
        ids = selected_ids(self, request, queryset, "generations")
        if ids:
            self._done(request, services.repair_selected(job=job_of(request), ids=ids, mode=Mode.SCHEDULED,
                                                         actor=request.user))

    @admin.action(description="Force repair selected generations (ignore the age window)…", permissions=["repair"])
    @aborted_as_message
    def force_repair(self, request, queryset):
        return self._confirmed_repair(
            request, queryset, Mode.FORCE, "force_repair", title="Force repair generations",
            intro="The repair rules will be applied to these batches whatever their age, as if their workers were "
                  "known to be dead. Stalled and corrupt batches are not changed.")

    @admin.action(description="Fail selected stalled generations…", permissions=["repair"])
    @aborted_as_message
    def fail_stalled(self, request, queryset):
        return self._confirmed_repair(
            request, queryset, Mode.FAIL_STALLED, "fail_stalled", title="Fail stalled generations",
            intro="The tasks still queued or processing in these stalled batches will be counted as failed and the "
                  "batches finished, whatever their age. Only stalled batches are changed.")

    def _confirmed_repair(self, request, queryset, mode, action, *, title, intro):
        """Django's delete_selected pattern: a preview first (the service's dry run), the change on the second POST."""
        self._require_repair(request)
        ids = selected_ids(self, request, queryset, "generations")
        if not ids:
            return None
        repair = {"job": job_of(request), "ids": ids, "mode": mode, "actor": request.user}
        if confirmed(request):
            self._done(request, services.repair_selected(**repair))
            return None
        preview = services.repair_selected(**repair, dry_run=True)
        changes = [_status_change_row(d) for d in preview.statuses.details if _changes(d)]
        unchanged = [_status_change_row(d) for d in preview.statuses.details if not _changes(d)]
        return confirmation_page(
            self, request, "admin/generation/repair_confirmation.html", title=title, ids=ids, action=action,
            intro=intro, summary=repair_message(preview)[1], changes=changes, unchanged=unchanged,
            locks_released=preview.statuses.locks_released)

    # --- the health page

    def health_view(self, request):
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/generation/health.html", {
            **self.admin_site.each_context(request), "title": "Generation health", "subtitle": None,
            "health": health.overview(job=job_of(request)), "opts": self.opts, "stuck_rules": rules.STUCK_RULES,
        })


def _changes(detail) -> bool:
    return detail.rule in rules.REPAIRS and not detail.left_alone


def _status_change_row(detail) -> dict:
    """One row of the confirmation table: status and each counter before and after, the changed ones marked."""
    b, a = detail.before, detail.after
    cells = [{"label": COUNTER_LABELS[name], "before": b[name], "after": a[name], "changed": b[name] != a[name]}
             for name in COUNTER_FIELDS]
    return {
        "detail": detail,
        "rule": detail.rule,
        "status_before": b["status"], "status_after": a["status"], "status_changed": b["status"] != a["status"],
        "cells": cells,
        "idle": format_duration(detail.idle_s) if detail.idle_s is not None else "never updated",
    }
