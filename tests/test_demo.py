from collections import Counter
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from generation.demo import MIX, allocate
from generation.models import GenerationLock, GenerationStatus
from generation.rules import Counters, diagnose
from generation.services import database_now

from .factories import WINDOW

pytestmark = pytest.mark.django_db


def seed(*args):
    out = StringIO()
    call_command("seed_demo_generation", "--force", *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("count", [0, 1, 7, 10, 200, 12345])
def test_allocation_is_exact_and_covers_every_category(count):
    counts = allocate(count)
    assert sum(counts.values()) == count
    if count >= len(MIX):
        assert min(counts.values()) >= 1


def test_seeded_rows_diagnose_as_their_category():
    out = seed("--count", "300", "--seed", "7")
    counts = allocate(300)
    for category, n in counts.items():
        assert f"  {category:<18} {n}" in out
    cutoff = database_now() - WINDOW
    diagnosed = Counter(
        diagnose(Counters.of(row), row.status, stuck=row.updated_at < cutoff) for row in GenerationStatus.objects.all()
    )
    assert diagnosed == {
        "healthy": counts["healthy"], "finished": counts["finished"], "all_accounted": counts["all_accounted"],
        "no_active_tasks": counts["no_active_tasks"], "counter_overflow": counts["counter_overflow"],
        "stalled": counts["stalled"], "corrupt": counts["corrupt"],
    }
    assert GenerationLock.objects.filter(locked_at__lt=cutoff).exists()
    assert GenerationLock.objects.filter(locked_at__gte=cutoff).exists()


def test_same_seed_same_mix_and_clear_replaces():
    seed("--count", "50", "--seed", "3")
    first = list(GenerationStatus.objects.order_by("id").values_list("account_id", "total_requested", "status"))
    out = seed("--count", "50", "--seed", "3", "--clear")
    assert "Cleared 50 generation statuses" in out
    second = list(GenerationStatus.objects.order_by("id").values_list("account_id", "total_requested", "status"))
    assert first == second


def test_refuses_without_debug_unless_forced(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="refusing to write demo data with DEBUG off"):
        call_command("seed_demo_generation", stdout=StringIO())
    assert not GenerationStatus.objects.exists()
