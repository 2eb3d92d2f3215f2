"""The generation statuses (the backend's batches): list, diagnosis, filters, a batch's page, the repair actions,
the health page."""

from collections import Counter, defaultdict
from datetime import timedelta

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from .. import health, rules, selectors, services
from ..models import GenerationStatus, RecordKind
from ..report import (
    bad_counter,
    corrupt_fix,
    diagnosis_text,
    format_duration,
    format_windows,
    repair_message,
    selection_effect,
    selection_summary,
)
from ..rules import COUNTER_FIELDS, Counters, Verdict
from ..services import Mode
from .common import (
    COUNTER_LABELS,
    SAMPLE,
    AccountColumns,
    ReadOnlyAdmin,
    SelectorSearch,
    aborted_as_message,
    ago,
    confirmation_page,
    confirmed,
    job_of,
    log_run,
    now_of,
    result,
    selection,
    when,
    when_text,
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


def _bad(value):
    return format_html('<span class="gen-bad">{}</span>', "NULL" if value is None else value)


def _explained(name: str, word: str):
    """A counter on a batch's page: a NULL or negative one highlighted, with why it is a problem."""

    @admin.display(description=f"{COUNTER_LABELS[name]}: {word}")
    def show(self, obj):
        value = getattr(obj, name)
        problem = bad_counter(value)
        return format_html('{}<span class="gen-flag-note">: {}</span>', _bad(value), problem) if problem else value

    return show


@admin.register(GenerationStatus)
class GenerationStatusAdmin(SelectorSearch, AccountColumns, ReadOnlyAdmin):
    list_display = ("id", "account", "content", "status", "diagnosis", "progress", "counters", "updated")
    list_filter = (StuckFilter, "status", "content_type", "updated_at")
    search_fields = ("account_id", "lock_id")
    search_help_text = "A batch id (4998 or #4998), an account id, or a lock id (exact)."
    searched_by = staticmethod(selectors.search_statuses)
    # the primary key's index: the table is large and has no index on updated_at
    ordering = ("-id",)
    list_per_page = 100
    show_full_result_count = False  # spares a COUNT(*) of the whole table on every filtered page
    show_facets = admin.ShowFacets.NEVER  # a COUNT per filter choice is too much for the backend's big table
    actions = ("repair_stuck", "force_repair", "fail_stalled")
    fieldsets = (
        (None, {"fields": ("id", "account_id", "content_type", "status", "diagnosis", "idle", "lock", "repairs")}),
        ("Counters (owned by the backend; changed here only by the repair actions)", {
            "fields": ("requested", "queued_total", "processing_total", "completed_total", "failed_total")}),
        ("Times", {"fields": ("created_at", "started_at", "updated_at", "completed_at")}),
        ("Error", {"fields": ("error_code", "error_message")}),
    )
    readonly_fields = ("diagnosis", "idle", "lock", "repairs", "requested", "queued_total", "processing_total",
                       "completed_total", "failed_total")

    def has_repair_permission(self, request):
        return request.user.has_perm("generation.repair_generationstatus")

    def get_queryset(self, request):
        return selectors.statuses_for_list(super().get_queryset(request), now=now_of(request),
                                           stuck_after=job_of(request).stuck_after)

    def get_urls(self):
        return [
            path("health/", self.admin_site.admin_view(self.health_view), name="generation_health"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}),
                                                 "stuck_oldest_first": self.stuck_oldest_first(request)})

    def stuck_oldest_first(self, request) -> str:
        """The list filtered to the stuck batches, sorted by updated_at ascending: one click from the list and from
        the index. The `o` parameter counts the list's columns, the action checkbox first when the user has
        actions."""
        columns = ["action_checkbox", *self.list_display] if self.get_actions(request) else list(self.list_display)
        return reverse("admin:generation_generationstatus_changelist") + f"?stuck=yes&o={columns.index('updated')}"

    # --- columns (short headers: the row must fit beside the sidebar and the filters)

    @admin.display(description="progress", ordering="total_completed")
    def progress(self, obj):
        done = (obj.total_completed or 0) + (obj.total_failed or 0)
        total = obj.total_requested
        percent = 0 if not total or total <= 0 else max(0, min(100, round(100 * done / total)))
        return format_html(
            '<span class="gen-progress" title="C+F {} of T {}"><span style="width: {}%"></span></span> {}/{}',
            done, total, percent, done, total if total is not None and total >= 0 else _bad(total))

    @admin.display(description="Q/P/C/F")
    def counters(self, obj):
        values = (obj.total_queued, obj.total_processing, obj.total_completed, obj.total_failed)
        # a break is allowed after each slash: large counters wrap instead of widening the list
        return format_html('<span class="gen-mono">{}</span>', format_html_join(
            mark_safe("/<wbr>"), "{}", ((value if value is not None and value >= 0 else _bad(value),) for value in values)))

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj):
        if obj.updated_at is None:
            return "never"
        return format_html('<span title="{}">{}</span>', when_text(obj.updated_at), ago(obj.checked_at, obj.updated_at))

    @admin.display(description="diagnosis")
    def diagnosis(self, obj):
        verdict = getattr(obj, "verdict", None)  # annotated by selectors.statuses_for_list
        return format_html('<span class="gen-diagnosis gen-{}">{}</span>', verdict, verdict)

    # --- a batch's page

    @admin.display(description="idle")
    def idle(self, obj):
        if obj.updated_at is None:
            return "unknown: never updated"
        return format_html("{} (last updated {})", format_duration(max(obj.checked_at - obj.updated_at, timedelta(0))),
                           when(obj.updated_at))

    @admin.display(description="lock")
    def lock(self, obj):
        held = obj.held_lock  # get_object
        if held is None:
            return "none held" if obj.lock_id else "-"
        url = reverse("admin:generation_generationlock_change", args=[held.pk])
        held_for = format_duration(max(held.checked_at - held.locked_at, timedelta(0)))
        template = '<a href="{}">lock #{}</a> <span class="gen-mono">{}</span>, held {}, ' + (
            '<span class="gen-diagnosis gen-expired">expired</span>' if held.is_expired else "not expired")
        return format_html(template, url, held.pk, held.lock_id, held_for)

    @admin.display(description="repair history")
    def repairs(self, obj):
        url = reverse("admin:generation_repairrecord_changelist")
        return format_html('<a href="{}?kind={}&amp;target_id={}">repairs of this batch</a>', url,
                           RecordKind.STATUS.value, obj.pk)

    requested = _explained("total_requested", "requested")
    queued_total = _explained("total_queued", "queued")
    processing_total = _explained("total_processing", "processing")
    completed_total = _explained("total_completed", "completed")
    failed_total = _explained("total_failed", "failed")

    def get_object(self, request, object_id, from_field=None):
        """The batch with the list's verdict (get_queryset) and the lock it refers to, as the locks list shows it."""
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj.held_lock = selectors.lock_of_batch(obj.lock_id, now=now_of(request), lock_ttl=job_of(request).lock_ttl)
        return obj

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        extra = self._batch_page(request, obj, job_of(request)) if obj is not None else {}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    def _batch_page(self, request, obj, job) -> dict:
        """What a batch's page adds: its diagnosis in one line, what to do about bad counters, the actions that
        apply to it (each through its confirmation page)."""
        content_type = obj.content_type
        idle = None if obj.updated_at is None else max(obj.checked_at - obj.updated_at, timedelta(0))
        fail = job.fail_stalled_after.for_type(content_type) if job.fail_stalled_after else None
        counters = Counters.of(obj)
        offers = []
        if self.has_repair_permission(request):
            if obj.verdict in rules.REPAIRS:
                offers.append(("force_repair", "Repair this batch…"))
            elif obj.verdict == rules.Rule.STALLED:
                offers.append(("fail_stalled", "Fail this stalled batch…"))
            elif obj.verdict == Verdict.HEALTHY and rules.diagnose(counters, obj.status, stuck=True) in rules.REPAIRS:
                offers.append(("force_repair", "Force repair (it is still moving)…"))
        release = obj.held_lock if request.user.has_perm("generation.release_generationlock") else None
        return {
            "verdict": obj.verdict,
            "explanation": diagnosis_text(obj.verdict, status=obj.status, idle=idle, fail_stalled_after=fail,
                                          stuck_after=job.stuck_after.for_type(content_type)),
            "counters_fix": corrupt_fix(obj.pk, next(name for name, value in counters.as_dict().items()
                                                     if bad_counter(value))) if counters.is_corrupt else "",
            "offers": offers, "release": release, "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }

    # --- actions

    def _require_repair(self, request):
        # get_actions() already hides the actions without the permission; this guards the call itself
        if not self.has_repair_permission(request):
            raise PermissionDenied

    def _done(self, request, report):
        log_run(request, report.run_id)
        level, text = repair_message(report, listed=_listed(report.statuses.details, job_of(request)))
        result(self, request, level, text, report.run_id)
        if report.statuses.failed_batches:
            self.message_user(request, "Rolled back: " + " | ".join(report.errors), messages.ERROR)

    @admin.action(description="Repair selected stuck generations", permissions=["repair"])
    @aborted_as_message
    def repair_stuck(self, request, queryset):
        self._require_repair(request)
        chosen = selection(self, request, queryset, "generations")
        if chosen:
            self._done(request, services.repair_selected(job=job_of(request), **chosen.rows(), mode=Mode.SCHEDULED,
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
        """Django's delete_selected pattern: a preview first (the service's dry run), the change on the second POST.
        With "select all N matching", the preview is the totals by rule (one query) and a sample of rows."""
        self._require_repair(request)
        chosen = selection(self, request, queryset, "generations")
        if not chosen:
            return None
        job = job_of(request)
        if confirmed(request):
            self._done(request, services.repair_selected(job=job, **chosen.rows(), mode=mode, actor=request.user))
            return None
        ids = selectors.first_ids(chosen.matching, SAMPLE * 4) if chosen.across else chosen.ids
        preview = services.repair_selected(job=job, ids=ids, mode=mode, actor=request.user, dry_run=True)
        listed = _listed(preview.statuses.details, job)
        rows = [_status_change_row(d, listed[d.id]) for d in preview.statuses.details]
        changes, unchanged = [r for r in rows if r["changes"]], [r for r in rows if not r["changes"]]
        context = {"intro": intro, "changes": changes, "unchanged": unchanged,
                   "locks_released": preview.statuses.locks_released,
                   "summary": repair_message(preview, listed=listed)[1]}
        if chosen.across:
            totals = self._totals(request, chosen, mode, job)
            context.update(totals=totals, summary=selection_summary(totals), changes=changes[:SAMPLE],
                           unchanged=unchanged[:SAMPLE], will_change=any(t["changes"] for t in totals))
        else:
            context["will_change"] = bool(changes)
        return confirmation_page(self, request, "admin/generation/repair_confirmation.html", title=title,
                                 chosen=chosen, action=action, **context)

    def _totals(self, request, chosen, mode, job) -> list[dict]:
        """Every matching batch by the action's verdict, each with what the list calls them (one GROUP BY)."""
        now = now_of(request)
        judgement, applies = services.judgement_for(mode, job=job, now=now)
        by_verdict = defaultdict(Counter)
        for (verdict, listed), n in selectors.verdict_totals(chosen.matching, judgement, now=now,
                                                             stuck_after=job.stuck_after).items():
            by_verdict[verdict][listed] += n
        reports = mode != Mode.FAIL_STALLED
        order = [*applies, rules.Rule.STALLED, rules.Rule.CORRUPT]
        verdicts = sorted(by_verdict, key=lambda v: (order.index(v) if v in order else len(order), v))
        return [{"verdict": verdict, "count": sum(by_verdict[verdict].values()),
                 "effect": selection_effect(verdict, applies=applies, reports=reports),
                 "changes": verdict in applies, "listed": sorted(by_verdict[verdict].items())} for verdict in verdicts]

    # --- the health page

    def health_view(self, request):
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/generation/health.html", {
            **self.admin_site.each_context(request), "title": "Generation health", "subtitle": None,
            "health": health.overview(job=job_of(request)), "opts": self.opts, "stuck_rules": rules.STUCK_RULES,
            "refresh": request.GET.get("refresh") != "off",
        })


def _listed(details, job) -> dict:
    """What the list calls each batch of a report: a repair judged without the age window (force, fail stalled)
    calls a batch still moving by its counters, the list calls it healthy (rules.still_moving, its type's window)."""
    words = {}
    for detail in details:
        idle = None if detail.idle_s is None else timedelta(seconds=detail.idle_s)
        moving = rules.still_moving(detail.before["status"], idle, job.stuck_after.for_type(detail.content_type))
        words[detail.id] = Verdict.HEALTHY.value if moving else detail.rule
    return words


def _status_change_row(detail, listed: str) -> dict:
    """One row of the confirmation table: status and each counter before and after, the changed ones marked; a
    row left alone is called what the list calls it."""
    b, a = detail.before, detail.after
    cells = [{"label": COUNTER_LABELS[name], "before": b[name], "after": a[name], "changed": b[name] != a[name]}
             for name in COUNTER_FIELDS]
    changes = detail.rule in rules.REPAIRS and not detail.left_alone
    return {
        "detail": detail, "changes": changes,
        "rule": detail.rule if changes else listed,
        "status_before": b["status"], "status_after": a["status"], "status_changed": b["status"] != a["status"],
        "cells": cells,
        "idle": format_duration(detail.idle_s) if detail.idle_s is not None else "never updated",
    }
