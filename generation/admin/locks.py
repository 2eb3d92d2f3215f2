"""The generation locks: list (age, expired, the batch that holds the lock), the release action."""

from datetime import timedelta

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.urls import reverse
from django.utils.html import format_html

from .. import rules, selectors, services
from ..models import GenerationLock
from ..report import format_duration, format_windows, lock_totals_summary, release_message
from .common import (
    SAMPLE,
    AccountColumns,
    ReadOnlyAdmin,
    SelectorSearch,
    aborted_as_message,
    confirmation_page,
    confirmed,
    job_of,
    log_run,
    now_of,
    result,
    selection,
    when_text,
)


class ExpiredFilter(admin.SimpleListFilter):
    title = "expired"
    parameter_name = "expired"

    def lookups(self, request, model_admin):
        ttl = format_windows(job_of(request).lock_ttl)
        return [("yes", f"expired (held over {ttl})"), ("no", "not expired")]

    def queryset(self, request, queryset):
        if self.value() not in ("yes", "no"):
            return queryset
        return selectors.filter_expired(queryset, now=now_of(request), lock_ttl=job_of(request).lock_ttl,
                                        expired=self.value() == "yes")


@admin.register(GenerationLock)
class GenerationLockAdmin(SelectorSearch, AccountColumns, ReadOnlyAdmin):
    list_display = ("lock", "account", "content", "age", "expiry", "batch")
    list_filter = (ExpiredFilter, "content_type")
    search_fields = ("account_id", "lock_id")
    search_help_text = "A lock's id (#12), an account id, or a lock id (exact)."
    searched_by = staticmethod(selectors.search_locks)
    ordering = ("locked_at", "id")  # the oldest, most suspicious first
    list_per_page = 100
    show_full_result_count = False
    actions = ("release_selected",)
    fields = ("id", "lock_id", "account_id", "content_type", "locked_at", "created_at", "age", "expiry", "batch")
    readonly_fields = ("age", "expiry", "batch")

    def has_release_permission(self, request):
        return request.user.has_perm("generation.release_generationlock")

    def get_queryset(self, request):
        self._job = job_of(request)  # the columns below have no request of their own (the same for every request)
        return selectors.locks_for_list(super().get_queryset(request), now=now_of(request),
                                        lock_ttl=job_of(request).lock_ttl)

    @admin.display(description="lock id", ordering="lock_id")
    def lock(self, obj):
        # a UUID's first block tells locks apart on a page; the whole id is on hover and on the lock's page
        short = obj.lock_id if len(obj.lock_id) <= 13 else obj.lock_id[:8] + "…"
        return format_html('<span class="gen-mono" title="{}">{}</span>', obj.lock_id, short)

    @admin.display(description="held", ordering="locked_at")
    def age(self, obj):
        return format_html('<span title="locked at {}">{}</span>', when_text(obj.locked_at),
                           format_duration(max(obj.checked_at - obj.locked_at, timedelta(0))))

    @admin.display(description="expires", ordering="locked_at")
    def expiry(self, obj):
        """Expired (by its content type's TTL: selectors.locks_for_list) is a problem the next run deletes."""
        ttl = self._job.lock_ttl.for_type(obj.content_type)
        held = max(obj.checked_at - obj.locked_at, timedelta(0))
        if obj.is_expired:
            return format_html('<span class="gen-diagnosis gen-expired" title="TTL {}">expired {} ago</span>',
                               format_duration(ttl), format_duration(max(held - ttl, timedelta(0))))
        return format_html('<span title="TTL {}">in {}</span>', format_duration(ttl),
                           format_duration(max(ttl - held, timedelta(0))))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        offer = self.has_release_permission(request)
        return super().change_view(request, object_id, form_url, {
            **(extra_context or {}), "offer_release": offer, "action_checkbox_name": ACTION_CHECKBOX_NAME})

    @admin.display(description="batch")
    def batch(self, obj):
        if obj.batch_id is None:
            return "none refers to it"
        url = reverse("admin:generation_generationstatus_change", args=[obj.batch_id])
        idle = obj.batch_idle
        moved = f"moved {format_duration(max(idle, timedelta(0)))} ago" if idle is not None else "never moved"
        # the batch holds the lock of its own account and content type: the lock's type is the batch's
        if rules.still_moving(obj.batch_status, idle, self._job.stuck_after.for_type(obj.content_type)):
            # the batch still moves: releasing its lock lets a second batch start beside it
            return format_html('<a href="{}">#{}</a> {}, <span class="gen-flag-note">{}</span>', url, obj.batch_id,
                               obj.batch_status, moved)
        return format_html('<a href="{}">#{}</a> {}, {}', url, obj.batch_id, obj.batch_status, moved)

    @admin.action(description="Release selected locks…", permissions=["release"])
    @aborted_as_message
    def release_selected(self, request, queryset):
        if not self.has_release_permission(request):
            raise PermissionDenied
        chosen = selection(self, request, queryset, "locks")
        if not chosen:
            return None
        job = job_of(request)
        if confirmed(request):
            report = services.release_locks(job=job, **chosen.rows(), actor=request.user)
            log_run(request, report.run_id)
            level, text = release_message(report)
            result(self, request, level, text, report.run_id)
            if report.locks.failed_batches:
                self.message_user(request, "Rolled back: " + " | ".join(report.errors), messages.ERROR)
            return None
        ids = selectors.first_ids(chosen.matching, SAMPLE) if chosen.across else chosen.ids
        preview = services.release_locks(job=job, ids=ids, actor=request.user, dry_run=True)
        rows = [_lock_row(detail, job.stuck_after.for_type(detail.content_type)) for detail in preview.locks.details]
        context = {"rows": rows, "progressing": sum(1 for row in rows if row["progressing"])}
        if chosen.across:
            totals = selectors.lock_totals(chosen.matching, now=now_of(request), lock_ttl=job.lock_ttl,
                                           stuck_after=job.stuck_after)
            context.update(summary=lock_totals_summary(totals), progressing=totals["of_moving_batches"])
        return confirmation_page(self, request, "admin/generation/release_confirmation.html",
                                 title="Release generation locks", chosen=chosen, action="release_selected", **context)


def _lock_row(detail, stuck_after: timedelta) -> dict:
    """A lock on the confirmation page; flagged when its batch is in progress and moved within its type's stuck window:
    releasing it lets a second batch start for the same account and content type while this one still runs."""
    idle = None if detail.batch_idle_s is None else timedelta(seconds=detail.batch_idle_s)
    progressing = rules.still_moving(detail.batch_status, idle, stuck_after)
    if detail.batch_id is None:
        batch = "no batch refers to it"
    elif detail.batch_idle_s is None:
        batch = f"batch #{detail.batch_id} {detail.batch_status}, never moved"
    else:
        batch = f"batch #{detail.batch_id} {detail.batch_status}, moved {format_duration(detail.batch_idle_s)} ago"
    return {"detail": detail, "age": format_duration(detail.age_s), "batch": batch, "progressing": progressing}
