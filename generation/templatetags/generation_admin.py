"""The admin templates' helpers: the one way of writing a time and a duration, `#id` links, the index's counts."""

from django import template
from django.contrib import admin
from django.urls import reverse

from .. import health
from ..admin.common import ago, job_of, linked, now_of, when
from ..models import GenerationStatus

register = template.Library()


@register.filter(name="when")
def when_filter(value):
    """{{ run.started_at|when }}: 2026-03-01 14:05 UTC, the exact time on hover."""
    return when(value)


@register.filter(name="ago")
def ago_filter(value, now):
    """{{ run.started_at|ago:health.now }}: 3h5m ago."""
    return ago(now, value)


@register.filter(name="linked")
def linked_filter(text):
    """{{ warning|linked }}: every `batch #12`, `record #7`, `run #5`, `lock #3` in the text links to its page."""
    return linked(str(text))


@register.simple_tag(takes_context=True)
def generation_problems(context) -> dict:
    """The stuck batches and expired locks now, for the admin index, with the lists that show them."""
    request = context["request"]
    stuck, expired = health.problems(now=now_of(request), job=job_of(request))
    statuses = admin.site.get_model_admin(GenerationStatus)
    return {"stuck": stuck, "expired": expired, "stuck_url": statuses.stuck_oldest_first(request),
            "expired_url": reverse("admin:generation_generationlock_changelist") + "?expired=yes"}
