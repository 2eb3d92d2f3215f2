"""The job's runs, read-only for everyone: the list, and a run's page with its repairs and "Undo this run"."""

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from .. import selectors
from ..models import CleanupRun, RunKind
from ..report import format_duration, format_windows, selection_text
from .common import ReadOnlyAdmin, SelectorSearch, linked, records_url, when
from .records import change_text, row_link

RUN_PAGE_RECORDS = 200  # records listed on a run's page; the rest are one link away
_FIELDS = ("id", "kind", "trigger", "actor", "outcome_label", "errors", "started_at", "finished_at", "duration",
           "selection", "dry_run", "host", "pid")


def _windows_label(windows) -> str:
    return format_windows(windows) if windows is not None else "-"


@admin.register(CleanupRun)
class CleanupRunAdmin(SelectorSearch, ReadOnlyAdmin):
    list_display = ("id", "started", "what", "outcome_label", "found", "examined_count", "repaired_total",
                    "stalled_count", "corrupt_count", "locks", "duration")
    list_filter = ("kind", "trigger", "outcome", "dry_run", "started_at")
    list_select_related = ("actor",)
    search_fields = ("id",)
    search_help_text = "A run's id (12 or #12)."
    searched_by = staticmethod(selectors.search_runs)
    ordering = ("-id",)  # newest first: ids follow started_at, and one sort key keeps the headers plain
    list_per_page = 100
    readonly_fields = ("outcome_label", "errors", "duration", "selection", "stuck_after_windows", "lock_ttl_windows",
                       "fail_stalled_windows")

    def get_fieldsets(self, request, obj=None):
        if obj is not None and obj.kind == RunKind.UNDO:
            return ((None, {"fields": _FIELDS}), ("Counts", {"fields": ("examined",)}))
        return (
            (None, {"fields": _FIELDS}),
            ("Parameters", {"fields": ("stuck_after_windows", "lock_ttl_windows", "fail_stalled_windows",
                                       "batch_size")}),
            ("Counts", {"fields": ("stuck_found", "examined", "repaired_all_accounted", "repaired_no_active_tasks",
                                   "repaired_counter_overflow", "repaired_stalled_failed", "stalled", "corrupt",
                                   "skipped_busy", "locks_expired", "locks_removed", "locks_released")}),
        )

    # --- columns (short: the row must fit beside the sidebar and the filters)

    @admin.display(description="started", ordering="started_at")
    def started(self, obj):
        return when(obj.started_at)

    @admin.display(description="run", ordering="trigger")
    def what(self, obj):
        by = f" ({obj.actor})" if obj.actor else ""
        if obj.kind == RunKind.UNDO:
            return format_html('<span class="gen-diagnosis gen-undo">undo</span> {}{}', obj.trigger, by)
        return format_html("{}{}{}", obj.trigger, by, " (dry run)" if obj.dry_run else "")

    @admin.display(description="outcome", ordering="outcome")
    def outcome_label(self, obj):
        outcome = obj.outcome or "unfinished"
        return format_html('<span class="gen-diagnosis gen-outcome-{}">{}</span>', outcome, outcome)

    def _job_count(self, obj, value):
        return "-" if obj.kind == RunKind.UNDO else value

    @admin.display(description="found stuck")
    def found(self, obj):
        return "-" if obj.stuck_found is None else obj.stuck_found

    @admin.display(description="examined")
    def examined_count(self, obj):
        return obj.examined  # an undo run: the records it examined

    @admin.display(description="repaired")
    def repaired_total(self, obj):
        return self._job_count(obj, obj.repaired)

    @admin.display(description="stalled")
    def stalled_count(self, obj):
        return self._job_count(obj, obj.stalled)

    @admin.display(description="corrupt")
    def corrupt_count(self, obj):
        return self._job_count(obj, obj.corrupt)

    @admin.display(description="locks deleted")
    def locks(self, obj):
        return self._job_count(obj, obj.locks_removed + obj.locks_released)

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.finished_at is None or obj.started_at is None:
            return "-"
        seconds = (obj.finished_at - obj.started_at).total_seconds()
        return f"{seconds:.2f}s" if seconds < 60 else format_duration(seconds)

    # --- a run's page

    @admin.display(description="errors")
    def errors(self, obj):
        if not obj.error:
            return "-"
        return format_html_join(mark_safe("<br>"), "{}", ((linked(line),) for line in obj.error.splitlines()))

    @admin.display(description="selection")
    def selection(self, obj):
        return linked(selection_text(obj.filters or {}, undo=obj.kind == RunKind.UNDO))

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

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run_id = selectors.as_id(object_id)
        run = self.get_object(request, object_id) if run_id is not None else None
        records, count = selectors.run_records(run_id, limit=RUN_PAGE_RECORDS) if run is not None else ([], 0)
        offer_undo = (run is not None and run.kind == RunKind.CLEANUP and count > 0
                      and request.user.has_perm("generation.repair_generationstatus"))
        extra_context = {
            **(extra_context or {}), "records_count": count, "records_url": records_url(object_id),
            "records": [{"record": r, "row": row_link(r), "change": change_text(r)} for r in records],
            "offer_undo": offer_undo, "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return super().change_view(request, object_id, form_url, extra_context)
