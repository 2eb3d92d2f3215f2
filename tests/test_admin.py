"""The admin through Django's test client: lists, filters, actions, permissions, confirmations, history pages."""

import html
import itertools
import re
import uuid
from datetime import timedelta

import pytest
from django.contrib import messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from generation import report as wording
from generation import services, undo
from generation.admin import common as admin_common
from generation.admin import statuses as admin_statuses
from generation.db import ConnectionLost
from generation.models import (
    CleanupRun,
    GenerationLock,
    GenerationStatus,
    RecordKind,
    RecordRule,
    RepairRecord,
    Trigger,
)

from .factories import job

pytestmark = pytest.mark.django_db

STUCK = timedelta(hours=3, minutes=1)  # a minute outside the default 3h window
FRESH = timedelta(hours=2, minutes=59)  # a minute inside it
ACCOUNTS = itertools.count(1000)
STATUSES_URL = reverse("admin:generation_generationstatus_changelist")
LOCKS_URL = reverse("admin:generation_generationlock_changelist")
HEALTH_URL = reverse("admin:generation_health")
RECORDS_URL = reverse("admin:generation_repairrecord_changelist")
RUNS_URL = reverse("admin:generation_cleanuprun_changelist")


@pytest.fixture(autouse=True)
def plain_http(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # test users, fast
    # production hardening (settings.py, DEBUG off) would redirect the test client to https
    settings.SECURE_SSL_REDIRECT = False
    settings.GENERATION_STUCK_AFTER = "3h"
    settings.GENERATION_LOCK_TTL = "3h"
    settings.GENERATION_FAIL_STALLED_AFTER = ""


def batch(t, q, p, c, f, *, status="processing", idle=STUCK, lock=False, lock_age=None, content_type="video"):
    """A batch (T, Q, P, C, F) last updated `idle` ago; with `lock`, the lock it holds."""
    now = timezone.now()
    row = GenerationStatus.objects.create(
        account_id=next(ACCOUNTS), content_type=content_type, status=status, total_requested=t, total_queued=q,
        total_processing=p, total_completed=c, total_failed=f, created_at=now - idle - timedelta(minutes=30),
        started_at=now - idle - timedelta(minutes=30), updated_at=now - idle, lock_id=str(uuid.uuid4()),
    )
    if lock:
        GenerationLock.objects.create(
            account_id=row.account_id, content_type=row.content_type, lock_id=row.lock_id,
            locked_at=now - (lock_age or idle + timedelta(minutes=30)), created_at=now - idle,
        )
    return row


def counters(row):
    row.refresh_from_db()
    return (row.total_requested, row.total_queued, row.total_processing, row.total_completed, row.total_failed,
            row.status)


def user_with(django_user_model, name, *codenames):
    user = django_user_model.objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="generation", codename__in=codenames))
    return user


VIEW = ("view_generationstatus", "view_generationlock", "view_cleanuprun", "view_repairrecord")


@pytest.fixture
def operator(django_user_model):
    return user_with(django_user_model, "operator", *VIEW, "repair_generationstatus", "release_generationlock")


@pytest.fixture
def viewer(django_user_model):
    return user_with(django_user_model, "viewer", *VIEW)


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


def act(client, url, action, rows, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [row.pk for row in rows], **extra}
    return client.post(url, data, follow=True)


def row_html(html, pk):
    """The change list's or a confirmation page's table row that links to object `pk`."""
    [row] = [tr for tr in re.findall(r"<tr[^>]*>.*?</tr>", html, re.S) if re.search(rf"/{pk}/change/", tr)]
    return row


def messages_of(response):
    """(level, text) of each message, without the links a result message ends with (results_links())."""
    return [(m.level_tag, html.unescape(re.sub(r"\. <a href=.*$", "", str(m.message)))) for m in response.context["messages"]]


def result_links(response) -> list[tuple[str, str]]:
    """(href, text) of the links under the first message: its run and its repair records."""
    message = str(next(iter(response.context["messages"])).message)
    return [(html.unescape(href), text) for href, text in re.findall(r'<a href="([^"]+)">([^<]+)</a>', message)]


def listed_ids(response):
    return [obj.pk for obj in response.context["cl"].result_list]


# --- The statuses list ----------------------------------------------------------------------------


def test_list_shows_progress_counters_age_and_the_diagnosis_of_each_row(admin_client):
    rows = {
        "all_accounted": batch(10, 0, 2, 7, 3),
        "no_active_tasks": batch(10, 0, 0, 6, 1),
        "counter_overflow": batch(10, 2, 5, 6, 0),
        "stalled": batch(10, 1, 1, 3, 2),
        "corrupt": batch(3, 0, -1, 2, 0),
        "healthy": batch(10, 0, 0, 6, 1, idle=FRESH),
        "finished": batch(10, 0, 0, 10, 0, status="completed"),
    }
    response = admin_client.get(STATUSES_URL)
    assert response.status_code == 200
    html = response.content.decode()
    for verdict, row in rows.items():
        assert f'<span class="gen-diagnosis gen-{verdict}">{verdict}</span>' in row_html(html, row.pk), verdict
    stalled_row = row_html(html, rows["stalled"].pk)
    assert "5/10" in stalled_row and re.search(r">3h(1m)? ago<", stalled_row)
    assert '<span class="gen-bad">-1</span>' in row_html(html, rows["corrupt"].pk)
    assert f'href="{HEALTH_URL}"' in html


def test_stuck_filter_by_rule_and_the_window_edge(admin_client):
    stuck = batch(10, 0, 0, 10, 0)
    inside = batch(10, 0, 0, 10, 0, idle=FRESH)
    overflow = batch(10, 2, 5, 6, 0)
    finished = batch(10, 0, 0, 10, 0, status="completed")
    assert set(listed_ids(admin_client.get(STATUSES_URL + "?stuck=yes"))) == {stuck.pk, overflow.pk}
    assert listed_ids(admin_client.get(STATUSES_URL + "?stuck=all_accounted")) == [stuck.pk]
    assert listed_ids(admin_client.get(STATUSES_URL + "?stuck=counter_overflow")) == [overflow.pk]
    assert listed_ids(admin_client.get(STATUSES_URL + "?stuck=stalled")) == []
    assert set(listed_ids(admin_client.get(STATUSES_URL + "?stuck=no"))) == {inside.pk, finished.pk}


def test_search_by_account_id_and_lock_id(admin_client):
    a, b = batch(10, 0, 0, 10, 0), batch(10, 0, 0, 10, 0)
    assert listed_ids(admin_client.get(STATUSES_URL, {"q": str(a.account_id)})) == [a.pk]
    assert listed_ids(admin_client.get(STATUSES_URL, {"q": b.lock_id})) == [b.pk]
    assert listed_ids(admin_client.get(STATUSES_URL, {"q": "no-such-lock"})) == []


@pytest.mark.parametrize("term", ["²", "99999999999999999999", "-1", "١٢"])
def test_search_terms_that_are_not_bigint_ids_find_nothing_and_never_fail(admin_client, term):
    batch(10, 0, 0, 10, 0, lock=True)
    for url in (STATUSES_URL, LOCKS_URL, "/admin/generation/repairrecord/"):
        response = admin_client.get(url, {"q": term})
        assert response.status_code == 200, url
        assert response.context["cl"].result_count == 0, url
    assert admin_client.get("/admin/generation/cleanuprun/99999999999999999999/change/").status_code in (302, 404)


def _queries(client, url):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries), len(response.context["cl"].result_list)


@pytest.mark.parametrize("url", [
    STATUSES_URL, STATUSES_URL + "?stuck=yes", STATUSES_URL + "?stuck=all_accounted&content_type__exact=video",
    LOCKS_URL, LOCKS_URL + "?expired=yes",
])
def test_query_count_per_page_does_not_grow_with_the_rows(admin_client, url):
    for _ in range(10):
        batch(10, 0, 0, 10, 0, lock=True)
    few, shown = _queries(admin_client, url)
    assert shown == 10
    for _ in range(90):
        batch(10, 0, 0, 10, 0, lock=True)
    many, shown = _queries(admin_client, url)
    assert shown == 100
    assert many == few


@pytest.mark.parametrize("name", ["cleanuprun", "repairrecord"])
def test_query_count_of_the_history_lists_does_not_grow_with_the_rows(admin_client, admin_user, name):
    url = reverse(f"admin:generation_{name}_changelist")
    for _ in range(10):
        services.repair_selected(job=job(), ids=[batch(10, 0, 0, 10, 0).pk], actor=admin_user)
    few, shown = _queries(admin_client, url)
    assert shown == 10
    for _ in range(90):
        services.repair_selected(job=job(), ids=[batch(10, 0, 0, 10, 0).pk], actor=admin_user)
    many, shown = _queries(admin_client, url)
    assert shown == 100
    assert many == few


# --- Mirrored rows: no add, no edit, no delete -----------------------------------------------------


@pytest.mark.parametrize("model", [GenerationStatus, GenerationLock])
def test_mirrored_rows_cannot_be_added_edited_or_deleted_even_by_a_superuser(admin_client, model):
    row = batch(10, 0, 2, 7, 3, lock=True)
    obj = row if model is GenerationStatus else GenerationLock.objects.get(lock_id=row.lock_id)
    name = model._meta.model_name
    assert admin_client.get(reverse(f"admin:generation_{name}_add")).status_code == 403
    assert admin_client.get(reverse(f"admin:generation_{name}_delete", args=[obj.pk])).status_code == 403
    change_url = reverse(f"admin:generation_{name}_change", args=[obj.pk])
    page = admin_client.get(change_url)
    assert page.status_code == 200
    assert "<input" not in re.sub(r'<input type="hidden"[^>]*>', "", page.content.decode().split('id="content-main"')[1])
    assert admin_client.post(change_url, {"total_queued": "99", "account_id": "1"}).status_code == 403
    assert "delete_selected" not in _action_choices(admin_client, reverse(f"admin:generation_{name}_changelist"))
    assert counters(row) == (10, 0, 2, 7, 3, "processing")


def test_the_change_form_shows_counters_read_only_with_the_diagnosis_and_the_repairs(admin_client, admin_user):
    row, other = batch(10, 0, 2, 7, 3), batch(10, 0, 0, 6, 1)
    page = admin_client.get(reverse("admin:generation_generationstatus_change", args=[row.pk])).content.decode()
    assert 'name="total_queued"' not in page and 'name="status"' not in page
    assert '<span class="gen-diagnosis gen-all_accounted">all_accounted</span>' in page
    link = re.search(r'href="([^"]+)">repairs of this batch</a>', page).group(1).replace("&amp;", "&")
    services.repair_selected(job=job(), ids=[row.pk, other.pk], actor=admin_user)
    assert [r.target_id for r in admin_client.get(link).context["cl"].result_list] == [row.pk]


# --- Repair selected stuck generations -------------------------------------------------------------


def test_repair_stuck_repairs_the_stuck_rows_and_names_the_others(operator_client, operator):
    a1, a2 = batch(10, 0, 2, 7, 3), batch(10, 0, 0, 10, 0)
    n1 = batch(10, 0, 0, 6, 1)
    fresh = batch(10, 0, 0, 6, 1, idle=FRESH)
    response = act(operator_client, STATUSES_URL, "repair_stuck", [a1, a2, n1, fresh])
    assert messages_of(response) == [(
        "success", f"3 generations repaired (#{a1.pk}, #{a2.pk}, #{n1.pk}): 2 all_accounted, 1 no_active_tasks; "
                   f"1 healthy, left alone (#{fresh.pk})")]
    run = CleanupRun.objects.get()
    assert result_links(response) == [(reverse("admin:generation_cleanuprun_change", args=[run.pk]), f"Run #{run.pk}"),
                                      (f"{RECORDS_URL}?run__id__exact={run.pk}", "its repair records")]
    assert counters(a1) == (10, 0, 0, 7, 3, "partial")
    assert counters(a2) == (10, 0, 0, 10, 0, "completed")
    assert counters(n1) == (10, 0, 0, 6, 4, "partial")
    assert counters(fresh) == (10, 0, 0, 6, 1, "processing")

    assert (run.trigger, run.actor, run.outcome, run.repaired) == (Trigger.ADMIN, operator, "ok", 3)
    records = RepairRecord.objects.filter(run=run)
    assert {(r.target_id, r.rule, r.actor) for r in records} == {
        (a1.pk, "all_accounted", operator), (a2.pk, "all_accounted", operator), (n1.pk, "no_active_tasks", operator)}
    entries = LogEntry.objects.filter(user=operator)
    assert {(e.object_id, e.action_flag) for e in entries} == {(str(a1.pk), CHANGE), (str(a2.pk), CHANGE),
                                                               (str(n1.pk), CHANGE)}
    entry = entries.get(object_id=str(a1.pk))
    assert entry.change_message == (f"Repaired by rule all_accounted (cleanup run #{run.pk}): "
                                    "T/Q/P/C/F 10/0/2/7/3 processing -> 10/0/0/7/3 partial")
    assert entry.object_repr == f"#{a1.pk} account {a1.account_id} video partial 10/10"


def test_repair_messages_use_the_singular_and_report_locks_stalled_and_corrupt(operator_client):
    overflow = batch(10, 4, 1, 6, 1)
    response = act(operator_client, STATUSES_URL, "repair_stuck", [overflow])
    assert messages_of(response) == [("success", f"1 generation repaired (#{overflow.pk}): 1 counter_overflow")]
    assert counters(overflow) == (10, 3, 0, 6, 1, "processing")

    done = batch(4, 0, 0, 0, 0, lock=True)
    stalled, corrupt, finished = batch(10, 1, 1, 3, 2), batch(3, 0, -1, 2, 0), batch(5, 0, 0, 5, 0, status="completed")
    response = act(operator_client, STATUSES_URL, "repair_stuck", [done, stalled, corrupt, finished])
    assert messages_of(response) == [(
        "warning",
        f"1 generation repaired (#{done.pk}): 1 no_active_tasks; 1 lock released with its batch; "
        "1 stalled (work in flight, no progress), not changed; "
        f"1 corrupt (negative or NULL counters), not changed: fix by hand; 1 finished, left alone (#{finished.pk})")]
    assert not GenerationLock.objects.filter(lock_id=done.lock_id).exists()
    assert LogEntry.objects.filter(action_flag=DELETION, object_repr__contains=done.lock_id).count() == 1


def test_log_entries_are_written_in_chunks(operator_client, operator, monkeypatch):
    monkeypatch.setattr(admin_common, "LOG_CHUNK", 2)
    rows = [batch(10, 0, 0, 10, 0) for _ in range(5)]
    with CaptureQueriesContext(connection) as queries:
        act(operator_client, STATUSES_URL, "repair_stuck", rows)
    inserts = [q for q in queries if q["sql"].startswith('INSERT INTO "django_admin_log"')]
    assert len(inserts) == 3
    assert LogEntry.objects.filter(user=operator, action_flag=CHANGE).count() == 5


def test_nothing_to_repair_is_a_warning(operator_client):
    fresh = batch(10, 0, 0, 6, 1, idle=FRESH)
    response = act(operator_client, STATUSES_URL, "repair_stuck", [fresh])
    assert messages_of(response) == [("warning", f"No generation repaired; 1 healthy, left alone (#{fresh.pk})")]
    assert RepairRecord.objects.count() == 0 and LogEntry.objects.count() == 0


# --- Force repair and fail stalled: confirmation first ----------------------------------------------


def test_force_repair_confirms_first_with_before_and_after_then_applies(operator_client, operator):
    fresh = batch(10, 0, 2, 7, 3, idle=FRESH, lock=True)
    overflow = batch(10, 2, 5, 6, 0)
    finished = batch(5, 0, 0, 5, 0, status="completed")
    page = operator_client.post(STATUSES_URL, {"action": "force_repair",
                                               ACTION_CHECKBOX_NAME: [fresh.pk, overflow.pk, finished.pk]})
    assert page.status_code == 200
    assert page.templates[0].name == "admin/generation/repair_confirmation.html"
    html = page.content.decode()
    assert f"2 generations to repair (#{fresh.pk}, #{overflow.pk}): 1 all_accounted, 1 counter_overflow; 1 lock to " \
           f"release with its batch; 1 finished, left alone (#{finished.pk})." in html
    fresh_row = re.search(rf'<tr data-batch="{fresh.pk}">.*?</tr>', html, re.S).group(0)
    assert "processing 10/0/2/7/3" in fresh_row
    assert '<mark class="gen-changed">partial</mark>' in fresh_row
    assert re.search(r'title="P 2 → 0">0</mark>', fresh_row)
    assert f'<input type="hidden" name="{ACTION_CHECKBOX_NAME}" value="{finished.pk}">' in html
    assert '<input type="hidden" name="post" value="yes">' in html
    # nothing changed, nothing recorded, until the second POST
    assert counters(fresh) == (10, 0, 2, 7, 3, "processing")
    assert GenerationLock.objects.filter(lock_id=fresh.lock_id).exists()
    assert (CleanupRun.objects.count(), RepairRecord.objects.count(), LogEntry.objects.count()) == (0, 0, 0)

    response = act(operator_client, STATUSES_URL, "force_repair", [fresh, overflow, finished], post="yes")
    assert messages_of(response) == [(
        "success",
        f"2 generations repaired (#{fresh.pk}, #{overflow.pk}): 1 all_accounted, 1 counter_overflow; 1 lock released "
        f"with its batch; 1 finished, left alone (#{finished.pk})")]
    assert counters(fresh) == (10, 0, 0, 7, 3, "partial")
    assert counters(overflow) == (10, 2, 2, 6, 0, "processing")
    assert not GenerationLock.objects.filter(lock_id=fresh.lock_id).exists()
    run = CleanupRun.objects.get()
    assert (run.trigger, run.actor_id, run.filters["mode"]) == (Trigger.ADMIN, operator.pk, "force")
    assert set(RepairRecord.objects.values_list("rule", "actor")) == {
        ("all_accounted", operator.pk), ("counter_overflow", operator.pk), ("released_with_batch", operator.pk)}
    assert LogEntry.objects.filter(user=operator, action_flag=CHANGE).count() == 2
    assert LogEntry.objects.filter(user=operator, action_flag=DELETION).count() == 1


def test_fail_stalled_confirms_first_then_fails_only_the_stalled(operator_client, operator):
    stalled = batch(10, 1, 1, 3, 2, idle=FRESH)
    overflow = batch(10, 2, 5, 6, 0)
    page = operator_client.post(STATUSES_URL, {"action": "fail_stalled",
                                               ACTION_CHECKBOX_NAME: [stalled.pk, overflow.pk]})
    assert page.templates[0].name == "admin/generation/repair_confirmation.html"
    html = page.content.decode()
    assert f"1 generation to repair (#{stalled.pk}): 1 stalled_failed; 1 counter_overflow, left alone " \
           f"(#{overflow.pk})." in html
    assert "processing 10/1/1/3/2" in html
    assert counters(stalled) == (10, 1, 1, 3, 2, "processing")
    assert RepairRecord.objects.count() == 0

    response = act(operator_client, STATUSES_URL, "fail_stalled", [stalled, overflow], post="yes")
    assert messages_of(response) == [
        ("success", f"1 generation repaired (#{stalled.pk}): 1 stalled_failed; 1 counter_overflow, left alone "
                    f"(#{overflow.pk})")]
    assert counters(stalled) == (10, 0, 0, 3, 7, "partial")
    assert counters(overflow) == (10, 2, 5, 6, 0, "processing")
    record = RepairRecord.objects.get()
    assert (record.rule, record.actor, record.run.trigger) == ("stalled_failed", operator, Trigger.ADMIN)


def test_a_confirmation_with_nothing_to_change_offers_no_confirm_button(operator_client):
    finished = batch(5, 0, 0, 5, 0, status="completed")
    html = operator_client.post(STATUSES_URL, {"action": "force_repair",
                                               ACTION_CHECKBOX_NAME: [finished.pk]}).content.decode()
    assert "Nothing among the selected batches would change." in html
    assert 'type="submit" value="Yes' not in html


def test_too_many_ticked_rows_for_a_confirmation_are_refused_pointing_at_select_all(operator_client, monkeypatch):
    monkeypatch.setattr(admin_common, "CONFIRM_MAX", 2)
    rows = [batch(10, 0, 0, 10, 0) for _ in range(3)]
    response = act(operator_client, STATUSES_URL, "force_repair", rows)
    assert messages_of(response) == [("error", "Tick at most 2 generations for this action (3 ticked); to act on "
                                               "more, tick the box at the top of the list, then click “Select all …” "
                                               "above it: every row the list's filters match.")]
    assert RepairRecord.objects.count() == 0


# --- Release selected locks -----------------------------------------------------------------------


def test_release_locks_confirms_first_flagging_locks_of_progressing_batches(operator_client, operator):
    running = batch(10, 2, 1, 5, 0, idle=timedelta(minutes=5, seconds=30), lock=True, lock_age=timedelta(hours=4))
    dead = batch(10, 0, 0, 10, 0, lock=True)
    orphan = GenerationLock.objects.create(account_id=1, content_type="story", lock_id="orphan-lock",
                                           locked_at=timezone.now() - timedelta(hours=5))
    locks = list(GenerationLock.objects.order_by("id"))
    page = operator_client.post(LOCKS_URL, {"action": "release_selected",
                                            ACTION_CHECKBOX_NAME: [lock.pk for lock in locks]})
    assert page.templates[0].name == "admin/generation/release_confirmation.html"
    html = page.content.decode()
    assert "1 lock belongs to a batch that is still progressing" in html
    running_lock = GenerationLock.objects.get(lock_id=running.lock_id)
    flagged = re.search(rf'<tr class="gen-flag" data-lock="{running_lock.pk}">.*?</tr>', html, re.S).group(0)
    assert f"batch #{running.pk} processing, moved 5m ago" in flagged and "still progressing" in flagged
    assert "no batch refers to it" in re.search(rf'<tr data-lock="{orphan.pk}">.*?</tr>', html, re.S).group(0)
    assert re.search(rf"batch #{dead.pk} processing, moved 3h(1m)? ago", html)
    assert GenerationLock.objects.count() == 3 and RepairRecord.objects.count() == 0 and LogEntry.objects.count() == 0

    response = act(operator_client, LOCKS_URL, "release_selected", locks, post="yes")
    assert messages_of(response) == [("success", f"3 locks released ({', '.join(f'#{lock.pk}' for lock in locks)})")]
    assert GenerationLock.objects.count() == 0
    assert set(RepairRecord.objects.values_list("kind", "rule", "actor")) == {
        (RecordKind.LOCK, RecordRule.RELEASED_BY_HAND, operator.pk)}
    assert RepairRecord.objects.count() == 3
    assert CleanupRun.objects.get().actor == operator
    assert set(LogEntry.objects.filter(user=operator).values_list("object_id", "action_flag")) == {
        (str(lock.pk), DELETION) for lock in locks}
    # the batches themselves are untouched: releasing a lock is not a repair
    assert counters(running) == (10, 2, 1, 5, 0, "processing")


def test_a_selection_that_vanished_records_no_empty_run(operator_client):
    row = batch(10, 0, 0, 10, 0, lock=True)
    lock = GenerationLock.objects.get(lock_id=row.lock_id)
    GenerationLock.objects.filter(pk=lock.pk).delete()
    response = act(operator_client, LOCKS_URL, "release_selected", [lock], post="yes")
    assert messages_of(response) == [("warning", "None of the selected locks is there any more.")]
    row_id = row.pk
    row.delete()
    for action in ("repair_stuck", "force_repair"):
        response = operator_client.post(STATUSES_URL, {"action": action, ACTION_CHECKBOX_NAME: [row_id]}, follow=True)
        assert messages_of(response) == [("warning", "None of the selected generations is there any more.")]
    assert CleanupRun.objects.count() == 0


def test_lock_list_shows_age_expiry_and_the_batch(admin_client):
    row = batch(10, 2, 1, 5, 0, idle=timedelta(minutes=5, seconds=30), lock=True, lock_age=timedelta(hours=4))
    fresh = batch(10, 2, 1, 5, 0, idle=timedelta(minutes=5), lock=True, lock_age=timedelta(hours=1))
    response = admin_client.get(LOCKS_URL + "?expired=yes")
    assert listed_ids(response) == [GenerationLock.objects.get(lock_id=row.lock_id).pk]
    html = response.content.decode()
    # the batch still moves (inside the stuck window): flagged, since releasing its lock lets a second batch start
    assert f'>#{row.pk}</a> processing, <span class="gen-flag-note">moved 5m ago</span>' in html
    assert re.search(r">(3h59m|4h)<", html)
    assert listed_ids(admin_client.get(LOCKS_URL + "?expired=no")) == [
        GenerationLock.objects.get(lock_id=fresh.lock_id).pk]
    assert listed_ids(admin_client.get(LOCKS_URL, {"q": str(fresh.account_id)})) == [
        GenerationLock.objects.get(lock_id=fresh.lock_id).pk]


# --- Permissions ----------------------------------------------------------------------------------


def _action_choices(client, url):
    form = client.get(url).context["action_form"]
    return set() if form is None else {choice for choice, _ in form.fields["action"].choices if choice}


def test_actions_are_offered_only_with_the_permissions(client, viewer, operator):
    client.force_login(operator)
    assert {"repair_stuck", "force_repair", "fail_stalled"} <= _action_choices(client, STATUSES_URL)
    assert "release_selected" in _action_choices(client, LOCKS_URL)
    client.force_login(viewer)
    assert _action_choices(client, STATUSES_URL) == set()
    assert _action_choices(client, LOCKS_URL) == set()


@pytest.mark.parametrize("action", ["repair_stuck", "force_repair", "fail_stalled"])
def test_a_crafted_repair_post_without_the_permission_changes_nothing(client, viewer, action):
    client.force_login(viewer)
    row = batch(10, 1, 1, 3, 2)
    done = batch(10, 0, 2, 7, 3)
    response = act(client, STATUSES_URL, action, [row, done], post="yes")
    assert response.status_code in (200, 403)
    assert counters(row) == (10, 1, 1, 3, 2, "processing")
    assert counters(done) == (10, 0, 2, 7, 3, "processing")
    assert (CleanupRun.objects.count(), RepairRecord.objects.count(), LogEntry.objects.count()) == (0, 0, 0)


def test_a_crafted_release_post_without_the_permission_changes_nothing(client, viewer):
    client.force_login(viewer)
    row = batch(10, 0, 0, 10, 0, lock=True)
    lock = GenerationLock.objects.get(lock_id=row.lock_id)
    response = act(client, LOCKS_URL, "release_selected", [lock], post="yes")
    assert response.status_code in (200, 403)
    assert GenerationLock.objects.filter(pk=lock.pk).exists()
    assert RepairRecord.objects.count() == 0


def test_the_actions_themselves_refuse_a_user_without_the_permission(viewer):
    # get_actions() hides them; this is the second line, should an action be reached another way
    request = RequestFactory().post(STATUSES_URL)
    request.user = viewer
    from django.contrib.admin import site

    status_admin, lock_admin = site._registry[GenerationStatus], site._registry[GenerationLock]
    row = batch(10, 0, 2, 7, 3, lock=True)
    for action in (status_admin.repair_stuck, status_admin.force_repair, status_admin.fail_stalled):
        with pytest.raises(PermissionDenied):
            action(request, GenerationStatus.objects.filter(pk=row.pk))
    with pytest.raises(PermissionDenied):
        lock_admin.release_selected(request, GenerationLock.objects.all())
    assert counters(row) == (10, 0, 2, 7, 3, "processing")


# --- History --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cleanuprun", "repairrecord"])
def test_history_pages_refuse_add_change_and_delete_even_to_a_superuser(admin_client, admin_user, name):
    services.repair_selected(job=job(), ids=[batch(10, 0, 2, 7, 3).pk], actor=admin_user)
    obj = (CleanupRun if name == "cleanuprun" else RepairRecord).objects.get()
    assert admin_client.get(reverse(f"admin:generation_{name}_add")).status_code == 403
    assert admin_client.post(reverse(f"admin:generation_{name}_add"), {}).status_code == 403
    change_url = reverse(f"admin:generation_{name}_change", args=[obj.pk])
    assert admin_client.get(change_url).status_code == 200  # viewing is allowed
    assert admin_client.post(change_url, {"trigger": "cron", "rule": "undo"}).status_code == 403
    assert admin_client.get(reverse(f"admin:generation_{name}_delete", args=[obj.pk])).status_code == 403
    assert admin_client.post(reverse(f"admin:generation_{name}_delete", args=[obj.pk]), {"post": "yes"}).status_code \
        == 403
    # no delete_selected; the repair list's one action is the undo, which changes the mirrored rows, not the history
    assert _action_choices(admin_client, reverse(f"admin:generation_{name}_changelist")) == (
        {"undo_selected"} if name == "repairrecord" else set())
    type(obj).objects.get(pk=obj.pk)  # still there


def test_a_runs_page_lists_its_repairs(admin_client, admin_user):
    a, n = batch(10, 0, 2, 7, 3, lock=True), batch(10, 0, 0, 6, 1)
    report = services.repair_selected(job=job(), ids=[a.pk, n.pk], actor=admin_user)
    html = admin_client.get(reverse("admin:generation_cleanuprun_change", args=[report.run_id])).content.decode()
    assert "Repairs recorded by this run (3)" in html
    assert "processing 10/0/2/7/3 → partial 10/0/0/7/3" in html
    assert "processing 10/0/0/6/1 → partial 10/0/0/6/4" in html
    assert f"lock {a.lock_id} deleted" in html
    assert f"?run__id__exact={report.run_id}" in html


def test_a_repair_shows_before_and_after_side_by_side_with_the_changes_highlighted(admin_client, admin_user):
    row = batch(10, 0, 2, 7, 3)
    services.repair_selected(job=job(), ids=[row.pk], actor=admin_user)
    record = RepairRecord.objects.get()
    html = admin_client.get(reverse("admin:generation_repairrecord_change", args=[record.pk])).content.decode()
    changed = set(re.findall(r'<tr class="gen-changed" data-field="(\w+)">', html))
    unchanged = set(re.findall(r'<tr data-field="(\w+)">', html))
    assert changed == {"total_processing", "status", "completed_at", "updated_at"}
    assert unchanged == {"total_requested", "total_queued", "total_completed", "total_failed"}
    status_row = re.search(r'data-field="status">.*?</tr>', html, re.S).group(0)
    assert "processing" in status_row and "partial" in status_row


def test_the_repair_list_filters_by_rule_trigger_and_account(admin_client, admin_user):
    a, n = batch(10, 0, 2, 7, 3), batch(10, 0, 0, 6, 1)
    services.repair_selected(job=job(), ids=[a.pk, n.pk], actor=admin_user)
    url = reverse("admin:generation_repairrecord_changelist")
    by_rule = admin_client.get(url + "?rule__exact=no_active_tasks")
    assert [r.target_id for r in by_rule.context["cl"].result_list] == [n.pk]
    assert len(listed_ids(admin_client.get(url + "?run__trigger__exact=admin"))) == 2
    assert listed_ids(admin_client.get(url + "?run__trigger__exact=cron")) == []
    by_account = admin_client.get(url, {"q": str(a.account_id)})
    assert [r.target_id for r in by_account.context["cl"].result_list] == [a.pk]


# --- The health page and the index -----------------------------------------------------------------


def test_health_page_is_for_staff_only(client, django_user_model, viewer):
    assert client.get(HEALTH_URL).status_code == 302
    outsider = django_user_model.objects.create_user("outsider", password="pw", is_staff=False)
    client.force_login(outsider)
    response = client.get(HEALTH_URL)
    assert response.status_code == 302 and "/login/" in response["Location"]
    client.force_login(viewer)
    assert client.get(HEALTH_URL).status_code == 200


def test_health_page_shows_counts_runs_and_the_chart(admin_client, admin_user):
    batch(10, 0, 2, 7, 3, lock=True)
    batch(10, 1, 1, 3, 2)
    batch(10, 1, 1, 3, 2)
    batch(3, 0, -1, 2, 0)
    GenerationLock.objects.create(account_id=1, content_type="story", lock_id="orphan",
                                  locked_at=timezone.now() - timedelta(hours=5))
    response = admin_client.get(HEALTH_URL)
    html = response.content.decode()
    figures = dict(re.findall(r'<tr data-rule="(\w+)">.*?<td class="gen-n">(\d+)</td>', html, re.S))
    assert figures == {"corrupt": "1", "all_accounted": "1", "no_active_tasks": "0", "counter_overflow": "0",
                       "stalled": "2"}
    assert re.search(r'id="gen-stuck-total"><strong>4</strong>', html)
    assert re.search(r'id="gen-expired-locks">2<', html)
    assert "The cleanup job has never completed a run (from cron or the command)." in html
    assert '<svg class="gen-chart"' in html and "No repairs in these days" in html

    report = services.cleanup(job=job(), trigger=Trigger.CRON)
    html = admin_client.get(HEALTH_URL).content.decode()
    assert "never completed a run" not in html
    # the corrupt batch makes every run end with errors: a finding to show, not a dead schedule
    run_url = reverse("admin:generation_cleanuprun_change", args=[report.run_id])
    assert f'The last completed job run, run <a href="{run_url}">#{report.run_id}</a>, found errors: batch <a' in html
    assert re.findall(r'<rect [^>]*fill="#0072B2"><title>[0-9-]+: 1 all_accounted</title>', html)
    assert "all_accounted (1)" in html


def test_the_admin_index_links_the_health_page(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert f'<a href="{HEALTH_URL}">Health</a>' in html
    assert 'id="recent-actions-module"' in html  # the index it extends is still there


# --- Undo selected repairs ------------------------------------------------------------------------



def status_record_of(row):
    return RepairRecord.objects.get(kind=RecordKind.STATUS, target_id=row.pk, undo_of=None)


def lock_record_of(lock_id):
    return RepairRecord.objects.get(kind=RecordKind.LOCK, before__lock_id=lock_id, undo_of=None)


def record_tr(html, record_id):
    return re.search(rf'<tr data-record="{record_id}"[^>]*>.*?</tr>', html, re.S).group(0)


def test_undo_confirms_first_with_what_each_record_would_do_then_undoes(operator_client, operator):
    finished = batch(10, 0, 2, 7, 3, lock=True)  # all_accounted, its lock (held 3h31m) released with it
    overflow = batch(10, 2, 5, 6, 0)
    lock = GenerationLock.objects.get(lock_id=finished.lock_id)
    services.repair_selected(job=job(), ids=[finished.pk, overflow.pk], actor=operator)
    finished_record, overflow_record = status_record_of(finished), status_record_of(overflow)
    released = lock_record_of(lock.lock_id)
    selected = [finished_record, overflow_record]  # not the lock's record: it comes off with its batch
    runs, records = CleanupRun.objects.count(), RepairRecord.objects.count()

    page = operator_client.post(RECORDS_URL, {"action": "undo_selected",
                                              ACTION_CHECKBOX_NAME: [r.pk for r in selected]})
    assert page.status_code == 200
    assert page.templates[0].name == "admin/generation/undo_confirmation.html"
    html = page.content.decode()
    assert f"3 repairs to undo (batch #{overflow.pk}, batch #{finished.pk}, lock #{lock.pk}; 1 lock taken back with " \
           "its batch)." in html
    row = record_tr(html, finished_record.pk)
    assert "partial 10/0/0/7/3" in row and '<mark class="gen-changed">processing</mark>' in row
    assert re.search(r'title="P 0 → 2">2</mark>', row)
    assert "completed_at <mark" in row  # the repair finished the batch: the undo empties completed_at again
    assert '<mark class="gen-changed">processing</mark>' not in record_tr(html, overflow_record.pk)  # still in progress
    lock_row = record_tr(html, released.pk)
    assert lock.lock_id in lock_row and "with its batch" in lock_row and 'class="gen-flag"' in lock_row
    assert "older than the lock TTL of video (3h): the next cleanup run deletes it again" in lock_row
    assert '<input type="hidden" name="post" value="yes">' in html and 'value="Yes, undo these repairs"' in html
    # the preview was rolled back: nothing changed, nothing recorded
    assert counters(finished) == (10, 0, 0, 7, 3, "partial") and counters(overflow) == (10, 2, 2, 6, 0, "processing")
    assert not GenerationLock.objects.filter(lock_id=lock.lock_id).exists()
    assert (CleanupRun.objects.count(), RepairRecord.objects.count(), LogEntry.objects.count()) == (runs, records, 0)

    response = act(operator_client, RECORDS_URL, "undo_selected", selected, post="yes")
    assert messages_of(response) == [("success", f"3 repairs undone (batch #{overflow.pk}, batch #{finished.pk}, lock "
                                                 f"#{lock.pk}; 1 lock taken back with its batch)")]
    assert counters(finished) == (10, 0, 2, 7, 3, "processing") and counters(overflow) == (10, 2, 5, 6, 0, "processing")
    back = GenerationLock.objects.get(pk=lock.pk)
    assert (back.lock_id, back.locked_at) == (lock.lock_id, lock.locked_at)
    run = CleanupRun.objects.latest("id")
    assert (run.trigger, run.actor, run.outcome) == (Trigger.ADMIN, operator, "ok")
    undos = RepairRecord.objects.filter(rule=RecordRule.UNDO)
    assert {(u.undo_of_id, u.kind, u.actor, u.run_id) for u in undos} == {
        (finished_record.pk, RecordKind.STATUS, operator, run.pk), (overflow_record.pk, RecordKind.STATUS, operator, run.pk),
        (released.pk, RecordKind.LOCK, operator, run.pk)}
    entries = {(e.content_type.model, e.object_id): e for e in LogEntry.objects.filter(user=operator)}
    assert {(*key, e.action_flag) for key, e in entries.items()} == {
        ("generationstatus", str(finished.pk), CHANGE), ("generationstatus", str(overflow.pk), CHANGE),
        ("generationlock", str(lock.pk), ADDITION)}
    assert entries["generationstatus", str(finished.pk)].change_message == (
        f"Undid repair record #{finished_record.pk} (cleanup run #{run.pk}): "
        "T/Q/P/C/F 10/0/0/7/3 partial -> 10/0/2/7/3 processing")
    lock_entry = entries["generationlock", str(lock.pk)]
    assert lock_entry.change_message == f"Re-created: undo of repair record #{released.pk} (cleanup run #{run.pk})"
    assert lock.lock_id in lock_entry.object_repr


def test_a_refused_undo_is_named_with_its_reason_and_changes_nothing(operator_client, operator):
    moved, calm = batch(10, 2, 5, 6, 0), batch(10, 2, 5, 6, 0)
    services.repair_selected(job=job(), ids=[moved.pk, calm.pk], actor=operator)
    moved_record, calm_record = status_record_of(moved), status_record_of(calm)
    GenerationStatus.objects.filter(pk=moved.pk).update(total_processing=3)  # someone wrote the row since
    reason = "the row changed since the repair: total_processing is 3, the repair left 2"

    html = operator_client.post(RECORDS_URL, {"action": "undo_selected",
                                              ACTION_CHECKBOX_NAME: [moved_record.pk]}).content.decode()
    assert "No repair to undo; 1 refused." in html
    assert reason in record_tr(html, moved_record.pk)
    assert "None of the selected repairs can be undone." in html and 'value="Yes, undo' not in html

    response = act(operator_client, RECORDS_URL, "undo_selected", [moved_record, calm_record], post="yes")
    assert messages_of(response) == [(
        "warning",
        f"1 repair undone (batch #{calm.pk}); 1 refused: record #{moved_record.pk} (counter_overflow of batch "
        f"#{moved.pk}): {reason}")]
    assert counters(moved) == (10, 2, 3, 6, 0, "processing")
    assert counters(calm) == (10, 2, 5, 6, 0, "processing")
    assert list(RepairRecord.objects.filter(rule=RecordRule.UNDO).values_list("undo_of", flat=True)) == [calm_record.pk]
    assert list(LogEntry.objects.values_list("object_id", flat=True)) == [str(calm.pk)]
    assert CleanupRun.objects.latest("id").outcome == "errors"

    response = act(operator_client, RECORDS_URL, "undo_selected", [moved_record], post="yes")
    assert messages_of(response)[0][0] == "warning" and messages_of(response)[0][1].startswith("No repair undone; 1 refused")
    assert counters(moved) == (10, 2, 3, 6, 0, "processing")


def test_undo_message_uses_the_singular_and_names_at_most_ten_refusals():
    def outcome(record_id, reason=""):
        return undo.UndoOutcome(record_id, kind=RecordKind.STATUS, rule="counter_overflow", target_id=record_id + 100,
                                reason=reason)

    done = undo.UndoReport(trigger=Trigger.ADMIN, dry_run=False, run_id=5)
    done.add([outcome(1)])
    assert wording.undo_message(done) == (messages.SUCCESS, "1 repair undone (batch #101)")
    report = undo.UndoReport(trigger=Trigger.ADMIN, dry_run=False, run_id=5)
    report.add([outcome(i, "busy") for i in range(10, 22)])
    level, text = wording.undo_message(report)
    assert level == messages.WARNING
    assert text.startswith("No repair undone; 12 refused: record #10 (counter_overflow of batch #110): busy | ")
    assert text.count(": busy") == 10 and text.endswith(" | and 2 more (all listed on cleanup run #5)")


def test_a_lost_connection_during_the_undo_is_an_error_message(operator_client, operator, monkeypatch):
    row = batch(10, 2, 5, 6, 0)
    services.repair_selected(job=job(), ids=[row.pk], actor=operator)
    record = status_record_of(row)

    def aborted(**kwargs):
        raise ConnectionLost("lost the database connection (server closed the connection unexpectedly)")

    monkeypatch.setattr(undo, "undo_records", aborted)
    response = act(operator_client, RECORDS_URL, "undo_selected", [record])
    assert messages_of(response) == [("error", "Undo aborted: lost the database connection (server closed the "
                                               "connection unexpectedly). Nothing was changed.")]
    response = act(operator_client, RECORDS_URL, "undo_selected", [record], post="yes")
    assert messages_of(response) == [("error", "Undo aborted: lost the database connection (server closed the "
                                               "connection unexpectedly). The repairs undone before it stay undone; "
                                               "the repair history lists them.")]


def test_too_large_a_selection_to_undo_is_refused(operator_client, operator, monkeypatch):
    monkeypatch.setattr(admin_common, "CONFIRM_MAX", 1)
    rows = [batch(10, 2, 5, 6, 0) for _ in range(2)]
    services.repair_selected(job=job(), ids=[r.pk for r in rows], actor=operator)
    response = act(operator_client, RECORDS_URL, "undo_selected", list(RepairRecord.objects.all()))
    [(level, text)] = messages_of(response)
    assert level == "error" and text.startswith("Tick at most 1 repairs for this action (2 ticked)")
    assert not RepairRecord.objects.filter(rule=RecordRule.UNDO).exists()


def test_undo_needs_the_repair_permission(client, viewer, operator):
    row = batch(10, 2, 5, 6, 0)
    services.repair_selected(job=job(), ids=[row.pk], actor=operator)
    record = status_record_of(row)
    record_url = reverse("admin:generation_repairrecord_change", args=[record.pk])
    client.force_login(operator)
    assert _action_choices(client, RECORDS_URL) == {"undo_selected"}
    assert 'id="gen-undo-form"' in client.get(record_url).content.decode()

    client.force_login(viewer)
    assert _action_choices(client, RECORDS_URL) == set()
    assert 'id="gen-undo-form"' not in client.get(record_url).content.decode()
    for extra in ({}, {"post": "yes"}):
        response = act(client, RECORDS_URL, "undo_selected", [record], **extra)
        assert response.status_code in (200, 403)
        assert response.templates[0].name != "admin/generation/undo_confirmation.html"
    assert counters(row) == (10, 2, 2, 6, 0, "processing")
    assert (RepairRecord.objects.count(), LogEntry.objects.count()) == (1, 0)

    request = RequestFactory().post(RECORDS_URL)
    request.user = viewer
    from django.contrib.admin import site

    with pytest.raises(PermissionDenied):
        site._registry[RepairRecord].undo_selected(request, RepairRecord.objects.all())
    assert counters(row) == (10, 2, 2, 6, 0, "processing")


def test_the_undo_button_on_a_repairs_page_leads_to_the_confirmation(operator_client, operator):
    row = batch(10, 2, 5, 6, 0)
    services.repair_selected(job=job(), ids=[row.pk], actor=operator)
    record = status_record_of(row)
    html = operator_client.get(reverse("admin:generation_repairrecord_change", args=[record.pk])).content.decode()
    form = re.search(r'<form method="post" action="([^"]+)" id="gen-undo-form".*?</form>', html, re.S)
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]+)">', form.group(0)))
    assert form.group(1) == RECORDS_URL and fields["action"] == "undo_selected"
    assert fields[ACTION_CHECKBOX_NAME] == str(record.pk)
    page = operator_client.post(form.group(1), {k: v for k, v in fields.items() if k != "csrfmiddlewaretoken"})
    assert page.templates[0].name == "admin/generation/undo_confirmation.html"
    assert f"1 repair to undo (batch #{row.pk})." in page.content.decode()
    assert counters(row) == (10, 2, 2, 6, 0, "processing")


def test_undo_records_pages_link_both_ways_and_show_what_changed(admin_client, admin_user):
    row = batch(10, 0, 2, 7, 3, lock=True)
    lock = GenerationLock.objects.get(lock_id=row.lock_id)
    services.repair_selected(job=job(), ids=[row.pk], actor=admin_user)
    original, released = status_record_of(row), lock_record_of(lock.lock_id)
    report = undo.undo_records(job=job(), ids=[original.pk], actor=admin_user, trigger=Trigger.ADMIN)
    status_undo = RepairRecord.objects.get(undo_of=original)
    lock_undo = RepairRecord.objects.get(undo_of=released)

    def page(record):
        response = admin_client.get(reverse("admin:generation_repairrecord_change", args=[record.pk]))
        assert response.status_code == 200
        return response.content.decode()

    html = page(status_undo)
    changed = set(re.findall(r'<tr class="gen-changed" data-field="(\w+)">', html))
    assert changed == {"total_processing", "status", "completed_at", "updated_at"}
    assert set(re.findall(r'<tr data-field="(\w+)">', html)) == {
        "total_requested", "total_queued", "total_completed", "total_failed"}
    status_row = re.search(r'data-field="status">.*?</tr>', html, re.S).group(0)
    assert status_row.index("partial") < status_row.index("processing")  # before: what the repair left
    assert "Highlighted: the fields this undo changed." in html
    undo_of = re.search(r'<span id="gen-undo-of">.*?</span>', html, re.S).group(0)
    assert (f'/{original.pk}/change/">record #{original.pk}</a> (all_accounted of <a href="'
            f'{reverse("admin:generation_generationstatus_change", args=[row.pk])}">batch #{row.pk}</a>)') in undo_of
    assert 'id="gen-undo-form"' not in html  # an undo is not undone; the row is repaired again instead

    html = page(lock_undo)
    rows = {name: (before, after) for name, before, after in re.findall(
        r'<tr class="gen-changed" data-field="(\w+)">.*?<td class="gen-mono">(.*?)</td>\s*'
        r'<td class="gen-mono gen-after">(.*?)</td>', html, re.S)}
    assert rows["lock_id"] == ("(absent)", lock.lock_id)
    assert set(rows) == {"lock_id", "account_id", "content_type", "locked_at", "created_at"}
    lock_url = reverse("admin:generation_generationlock_change", args=[lock.pk])
    assert (f'/{released.pk}/change/">record #{released.pk}</a> (released_with_batch of <a href="{lock_url}" '
            f'title="{lock.lock_id}">lock #{lock.pk}</a>)') in html

    for record, undone_by in ((original, status_undo), (released, lock_undo)):
        html = page(record)
        by = re.search(r'<span id="gen-undone-by">.*?</span>', html, re.S).group(0)
        run_url = reverse("admin:generation_cleanuprun_change", args=[report.run_id])
        assert (f'/{undone_by.pk}/change/">record #{undone_by.pk}</a> (run <a href="{run_url}">#{report.run_id}</a> '
                "admin by admin)") in by
        assert 'id="gen-undo-form"' not in html  # already undone
    assert "not undone" in page(RepairRecord.objects.create(
        run=original.run, kind=RecordKind.LOCK, target_id=999, account_id=1, content_type="video",
        rule=RecordRule.EXPIRED_LOCK, before={"lock_id": "x"}, after=None))

    run_html = admin_client.get(reverse("admin:generation_cleanuprun_change", args=[report.run_id])).content.decode()
    assert f"lock {lock.lock_id} re-created" in run_html and "lock None" not in run_html
    assert "partial 10/0/0/7/3 → processing 10/0/2/7/3" in run_html
    assert f'undo</span> of <a href="/admin/generation/repairrecord/{original.pk}/change/">#{original.pk}</a>' in run_html
    list_html = admin_client.get(RECORDS_URL + "?rule__exact=undo").content.decode()
    lock_tr = row_html(list_html, lock_undo.pk)
    assert f'<a href="{lock_url}" title="{lock.lock_id}">lock #{lock.pk}</a>' in lock_tr and "re-created" in lock_tr

    html = admin_client.post(RECORDS_URL, {"action": "undo_selected",
                                           ACTION_CHECKBOX_NAME: [status_undo.pk, original.pk]}).content.decode()
    assert "is itself an undo; to change the row again, repair it" in record_tr(html, status_undo.pk)
    assert f"already undone by record #{status_undo.pk}" in record_tr(html, original.pk)


@pytest.mark.parametrize("url", [STATUSES_URL, LOCKS_URL, "/admin/generation/cleanuprun/",
                                 "/admin/generation/repairrecord/", STATUSES_URL + "health/"])
def test_anonymous_users_are_sent_to_the_login_page(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_actions_require_the_csrf_token(operator):
    from django.test import Client

    stuck = batch(10, 0, 0, 6, 1)
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(operator)
    response = csrf_client.post(STATUSES_URL, {"action": "repair_stuck", "_selected_action": [stuck.pk]})
    assert response.status_code == 403
    assert counters(stuck) == (10, 0, 0, 6, 1, "processing")
    assert not RepairRecord.objects.exists()


def test_a_repair_that_loses_its_connection_is_an_error_message_and_the_run_says_errors(operator_client,
                                                                                          monkeypatch):
    from generation import services as engine

    stuck = batch(10, 0, 0, 6, 1)

    def lost(*args, **kwargs):
        raise ConnectionLost("lost the database connection during the run (terminated)")

    monkeypatch.setattr(engine, "status_page", lost)
    response = act(operator_client, STATUSES_URL, "repair_stuck", [stuck])
    [(level, text)] = messages_of(response)
    assert level == "error" and text.startswith("Aborted: lost the database connection during the run")
    run = CleanupRun.objects.get()
    assert run.outcome == "errors" and "lost the database connection" in run.error
    assert counters(stuck) == (10, 0, 0, 6, 1, "processing")


# --- The roles as setup_roles creates them: viewer and repairer ----------------------------------------


@pytest.fixture
def role_client(client, django_user_model):
    """A logged-in client for a user put in a role the way operators do it: `setup_roles --user --role`."""
    from generation import roles

    roles.sync_roles()

    def as_role(role):
        roles.assign_role(username=f"{role}-user", role=role, password="a-long-enough-password-42")
        user = django_user_model.objects.get(username=f"{role}-user")
        client.force_login(user)
        return client, user

    return as_role


def test_a_viewer_sees_every_list_record_and_the_health_page_but_no_action(role_client, admin_user):
    row = batch(10, 2, 5, 6, 0, lock=True)
    services.repair_selected(job=job(), ids=[row.pk], actor=admin_user)
    record = status_record_of(row)
    client, _ = role_client("viewer")
    pages = [STATUSES_URL, LOCKS_URL, RECORDS_URL, HEALTH_URL, reverse("admin:generation_cleanuprun_changelist"),
             reverse("admin:generation_generationstatus_change", args=[row.pk]),
             reverse("admin:generation_repairrecord_change", args=[record.pk]),
             reverse("admin:generation_cleanuprun_change", args=[record.run_id])]
    for url in pages:
        assert client.get(url).status_code == 200, url
    for url in (STATUSES_URL, LOCKS_URL, RECORDS_URL, reverse("admin:generation_cleanuprun_changelist")):
        assert _action_choices(client, url) == set(), url
    assert 'id="gen-undo-form"' not in client.get(reverse("admin:generation_repairrecord_change",
                                                          args=[record.pk])).content.decode()
    # the login attempts are the superuser's business
    assert client.get(reverse("admin:axes_accessattempt_changelist")).status_code == 403


def test_a_viewers_crafted_posts_change_nothing(role_client, admin_user):
    stuck, stalled = batch(10, 0, 0, 6, 1), batch(10, 1, 1, 3, 2)
    undoable = batch(10, 2, 5, 6, 0)
    services.repair_selected(job=job(), ids=[undoable.pk], actor=admin_user)
    record = status_record_of(undoable)
    expired = batch(10, 0, 0, 10, 0, status="completed", lock=True)
    lock = GenerationLock.objects.get(lock_id=expired.lock_id)
    runs, records = CleanupRun.objects.count(), RepairRecord.objects.count()
    client, _ = role_client("viewer")
    for action in ("repair_stuck", "force_repair", "fail_stalled"):
        for extra in ({}, {"post": "yes"}):
            assert act(client, STATUSES_URL, action, [stuck, stalled], **extra).status_code in (200, 403)
    assert act(client, LOCKS_URL, "release_selected", [lock], post="yes").status_code in (200, 403)
    assert act(client, RECORDS_URL, "undo_selected", [record], post="yes").status_code in (200, 403)
    assert counters(stuck) == (10, 0, 0, 6, 1, "processing") and counters(stalled) == (10, 1, 1, 3, 2, "processing")
    assert counters(undoable) == (10, 2, 2, 6, 0, "processing")
    assert GenerationLock.objects.filter(pk=lock.pk).exists()
    assert (CleanupRun.objects.count(), RepairRecord.objects.count(), LogEntry.objects.count()) == (runs, records, 0)


def test_a_repairer_can_run_every_action(role_client):
    client, user = role_client("repairer")
    assert {"repair_stuck", "force_repair", "fail_stalled"} <= _action_choices(client, STATUSES_URL)
    assert _action_choices(client, LOCKS_URL) == {"release_selected"}
    assert _action_choices(client, RECORDS_URL) == {"undo_selected"}

    stuck, fresh, stalled = batch(10, 0, 0, 6, 1), batch(10, 2, 5, 6, 0, idle=FRESH), batch(10, 1, 1, 3, 2)
    act(client, STATUSES_URL, "repair_stuck", [stuck])
    act(client, STATUSES_URL, "force_repair", [fresh], post="yes")
    act(client, STATUSES_URL, "fail_stalled", [stalled], post="yes")
    assert counters(stuck) == (10, 0, 0, 6, 4, "partial")
    assert counters(fresh) == (10, 2, 2, 6, 0, "processing")
    assert counters(stalled) == (10, 0, 0, 3, 7, "partial")
    act(client, RECORDS_URL, "undo_selected", [status_record_of(fresh)], post="yes")
    assert counters(fresh) == (10, 2, 5, 6, 0, "processing")
    held = batch(10, 0, 0, 10, 0, status="completed", lock=True)
    act(client, LOCKS_URL, "release_selected", [GenerationLock.objects.get(lock_id=held.lock_id)], post="yes")
    assert not GenerationLock.objects.filter(lock_id=held.lock_id).exists()
    assert set(RepairRecord.objects.values_list("actor", flat=True)) == {user.pk}
    assert LogEntry.objects.filter(user=user).count() == 5


# --- Working by ids and links (issue 10) -----------------------------------------------------------


def form_of(html, form_id):
    """(action URL, the hidden fields but the CSRF token) of the POST form `form_id` on a page."""
    form = re.search(rf'<form method="post" action="([^"]+)" id="{form_id}".*?</form>', html, re.S)
    assert form, f"no form {form_id}"
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]+)">', form.group(0)))
    fields.pop("csrfmiddlewaretoken", None)
    return html_unescape(form.group(1)), fields


def html_unescape(text):
    return html.unescape(text)


def text_of(markup):
    """What a person reads: the tags taken out."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_search_finds_a_run_by_id_and_repairs_by_batch_id_as_well_as_by_account(admin_client, admin_user):
    first, second = batch(10, 0, 0, 10, 0), batch(10, 0, 0, 10, 0)
    run_a = services.repair_selected(job=job(), ids=[first.pk], actor=admin_user).run_id
    run_b = services.repair_selected(job=job(), ids=[second.pk], actor=admin_user).run_id
    for term in (str(run_a), f"#{run_a}", f" #{run_a} "):
        assert listed_ids(admin_client.get(RUNS_URL, {"q": term})) == [run_a], term
    assert listed_ids(admin_client.get(RUNS_URL, {"q": "cron"})) == []
    record_a, record_b = status_record_of(first), status_record_of(second)
    for term in (str(first.pk), f"#{first.pk}"):
        assert listed_ids(admin_client.get(RECORDS_URL, {"q": term})) == [record_a.pk], term
    assert listed_ids(admin_client.get(RECORDS_URL, {"q": str(second.account_id)})) == [record_b.pk]
    assert run_b != run_a
    assert "A batch id (4998 or #4998)" in admin_client.get(RECORDS_URL).content.decode()


def test_an_expired_lock_is_shown_as_a_problem_not_with_a_green_check(admin_client):
    expired = batch(10, 0, 0, 10, 0, status="completed", lock=True, lock_age=timedelta(hours=5))
    fresh = batch(10, 0, 0, 6, 1, idle=FRESH, lock=True, lock_age=timedelta(hours=1))
    html = admin_client.get(LOCKS_URL).content.decode()
    assert "icon-yes.svg" not in html and "icon-no.svg" not in html
    expired_lock = GenerationLock.objects.get(lock_id=expired.lock_id)
    fresh_lock = GenerationLock.objects.get(lock_id=fresh.lock_id)
    # (on PostgreSQL the page's clock is the test transaction's start, a moment before the rows were made)
    assert re.search(r'<span class="gen-diagnosis gen-expired" title="TTL 3h">expired (2h|1h59m) ago</span>',
                     row_html(html, expired_lock.pk))
    assert re.search(r'<span title="TTL 3h">in (2h|1h59m)</span>', row_html(html, fresh_lock.pk))
    page = admin_client.get(reverse("admin:generation_generationlock_change", args=[expired_lock.pk])).content.decode()
    assert re.search(r"expired (2h|1h59m) ago", page)


@pytest.mark.parametrize(("counters_", "options", "verdict", "says"), [
    ((10, 0, 2, 7, 3), {}, "all_accounted", "every task has an outcome (C + F ≥ T) but the batch was never finished"),
    ((10, 0, 0, 6, 1), {}, "no_active_tasks", "nothing is queued or processing, but outcomes are missing"),
    ((10, 2, 5, 6, 0), {}, "counter_overflow", "its counters add up to more than T"),
    ((10, 1, 1, 3, 2), {}, "stalled", "work is claimed but nothing moved"),
    ((3, 0, -1, 2, 0), {}, "corrupt", "with a NULL or negative counter: the job never changes it"),
    ((10, 0, 2, 7, 3), {"idle": FRESH}, "healthy", "within its stuck window (3h); nothing to do"),
    ((10, 0, 0, 10, 0), {"status": "completed"}, "finished", "Finished (completed): nothing to do."),
])
def test_a_batchs_page_explains_its_diagnosis_in_one_line(admin_client, counters_, options, verdict, says):
    row = batch(*counters_, **options)
    html = admin_client.get(reverse("admin:generation_generationstatus_change", args=[row.pk])).content.decode()
    explanation = re.search(r'<p class="gen-explain" id="gen-explanation">(.*?)</p>', html, re.S).group(1)
    assert f'<span class="gen-diagnosis gen-{verdict}">{verdict}</span>' in explanation
    assert says in html_unescape(explanation)
    if verdict not in ("healthy", "finished"):
        assert re.search(r"Stuck \(idle 3h(1m)?, over 3h\)", explanation)
    assert re.search(r"3h(1m)?|2h59m", html)  # how long it has been idle, on the page


def test_a_corrupt_batchs_page_highlights_the_bad_counters_with_what_to_do(admin_client):
    row = batch(3, 0, -1, 2, 0)
    GenerationStatus.objects.filter(pk=row.pk).update(total_failed=None)
    html = admin_client.get(reverse("admin:generation_generationstatus_change", args=[row.pk])).content.decode()
    assert '<span class="gen-bad">-1</span><span class="gen-flag-note">: a count of tasks cannot be below zero' \
           '</span>' in html
    assert '<span class="gen-bad">NULL</span><span class="gen-flag-note">: the backend never wrote it</span>' in html
    fix = html_unescape(re.search(r'<li class="error" id="gen-counters-fix">(.*?)</li>', html, re.S).group(1))
    assert "The job never changes a batch with a NULL or negative counter" in fix
    assert f"SET total_processing = <the right value> WHERE id = {row.pk}" in fix  # the first bad counter
    assert 'id="gen-force_repair"' not in html and 'id="gen-fail_stalled"' not in html  # nothing a rule can do


def test_a_batchs_page_offers_the_actions_that_apply_through_their_confirmation_pages(operator_client, operator):
    stuck = batch(10, 0, 2, 7, 3, lock=True)
    url = reverse("admin:generation_generationstatus_change", args=[stuck.pk])
    html = operator_client.get(url).content.decode()
    lock = GenerationLock.objects.get(lock_id=stuck.lock_id)
    assert f'<a href="{reverse("admin:generation_generationlock_change", args=[lock.pk])}">lock #{lock.pk}</a>' in html
    action, fields = form_of(html, "gen-force_repair")
    assert (action, fields) == (STATUSES_URL, {"action": "force_repair", ACTION_CHECKBOX_NAME: str(stuck.pk)})
    assert "Repair this batch…" in html
    page = operator_client.post(action, fields)
    assert page.templates[0].name == "admin/generation/repair_confirmation.html"
    assert f'<tr data-batch="{stuck.pk}">' in page.content.decode()
    assert counters(stuck) == (10, 0, 2, 7, 3, "processing")  # nothing until the confirmation is posted

    action, fields = form_of(html, "gen-release-lock")
    assert (action, fields) == (LOCKS_URL, {"action": "release_selected", ACTION_CHECKBOX_NAME: str(lock.pk)})
    page = operator_client.post(action, fields)
    assert page.templates[0].name == "admin/generation/release_confirmation.html"
    assert GenerationLock.objects.filter(pk=lock.pk).exists()

    stalled = batch(10, 1, 1, 3, 2)
    html = operator_client.get(reverse("admin:generation_generationstatus_change", args=[stalled.pk])).content.decode()
    action, fields = form_of(html, "gen-fail_stalled")
    assert fields == {"action": "fail_stalled", ACTION_CHECKBOX_NAME: str(stalled.pk)}
    assert operator_client.post(action, fields).templates[0].name == "admin/generation/repair_confirmation.html"

    moving = batch(10, 0, 0, 10, 0, idle=FRESH)  # healthy by age, finished by its counters: force applies
    html = operator_client.get(reverse("admin:generation_generationstatus_change", args=[moving.pk])).content.decode()
    assert "Force repair (it is still moving)…" in html and form_of(html, "gen-force_repair")
    running = batch(10, 2, 2, 3, 0, idle=FRESH)  # healthy and its counters are fine: nothing to offer
    finished = batch(10, 0, 0, 10, 0, status="completed")
    for row in (running, finished):
        html = operator_client.get(reverse("admin:generation_generationstatus_change", args=[row.pk])).content.decode()
        assert 'class="gen-tool-form"' not in html


def test_a_viewer_is_offered_no_action_on_a_batchs_page(client, viewer):
    row = batch(10, 0, 2, 7, 3, lock=True)
    client.force_login(viewer)
    html = client.get(reverse("admin:generation_generationstatus_change", args=[row.pk])).content.decode()
    assert 'class="gen-tool-form"' not in html and "all_accounted" in html


def test_a_message_names_up_to_ten_ids_then_counts_the_rest(operator_client):
    rows = [batch(10, 0, 0, 10, 0) for _ in range(12)]
    response = act(operator_client, STATUSES_URL, "repair_stuck", rows)
    named = ", ".join(f"#{row.pk}" for row in rows[:10])
    assert messages_of(response) == [("success", f"12 generations repaired ({named} and 2 more): 12 all_accounted")]
    assert wording.named([1, 2, 3], 3) == "#1, #2, #3"
    assert wording.named(range(20), 25) == "#0, #1, #2, #3, #4, #5, #6, #7, #8, #9 and 15 more"


def test_a_runs_page_links_every_id_and_offers_to_undo_the_run(operator_client, operator):
    stuck = batch(10, 0, 2, 7, 3, lock=True)
    corrupt = batch(3, 0, -1, 2, 0)
    lock = GenerationLock.objects.get(lock_id=stuck.lock_id)
    report = services.cleanup(job=job(), trigger=Trigger.CRON)
    html = operator_client.get(reverse("admin:generation_cleanuprun_change", args=[report.run_id])).content.decode()
    batch_url = reverse("admin:generation_generationstatus_change", args=[stuck.pk])
    assert f'<a href="{batch_url}">batch #{stuck.pk}</a>' in html
    assert f'<a href="{reverse("admin:generation_generationlock_change", args=[lock.pk])}"' in html
    corrupt_url = reverse("admin:generation_generationstatus_change", args=[corrupt.pk])
    assert f'batch <a href="{corrupt_url}">#{corrupt.pk}</a> has corrupt counters' in html  # the run's errors
    assert "the whole table" in html

    action, fields = form_of(html, "gen-undo-run")
    assert action == f"{RECORDS_URL}?run__id__exact={report.run_id}"
    assert fields == {"action": "undo_selected", "select_across": "1", ACTION_CHECKBOX_NAME: "all"}
    page = operator_client.post(action, fields)
    assert page.templates[0].name == "admin/generation/undo_confirmation.html"
    preview = page.content.decode()
    assert "2 repair records selected: 1 all_accounted, 1 released_with_batch" in preview
    assert '<input type="hidden" name="select_across" value="1">' in preview
    assert counters(stuck) == (10, 0, 0, 7, 3, "partial")

    response = operator_client.post(action, {**fields, "post": "yes"}, follow=True)
    [(level, text)] = messages_of(response)
    assert level == "success" and text.startswith(f"2 repairs undone (batch #{stuck.pk}, lock #{lock.pk}")
    assert counters(stuck) == (10, 0, 2, 7, 3, "processing")
    assert GenerationLock.objects.filter(pk=lock.pk).exists()
    undo_run = CleanupRun.objects.latest("id")
    assert (undo_run.kind, undo_run.filters) == (
        "undo", {"select_across": {"list": f"run__id__exact={report.run_id}", "count": 2}})
    html = operator_client.get(reverse("admin:generation_cleanuprun_change", args=[undo_run.pk])).content.decode()
    assert 'id="gen-undo-run"' not in html  # an undo run is not undone: its rows are repaired again instead
    assert "Parameters" not in html and "repaired_all_accounted" not in html


def test_undo_runs_are_shown_as_undo_runs(admin_client, admin_user):
    row = batch(10, 2, 5, 6, 0)
    services.repair_selected(job=job(), ids=[row.pk], actor=admin_user)
    report = undo.undo_records(job=job(), ids=[status_record_of(row).pk], actor=admin_user, trigger=Trigger.ADMIN)
    html = admin_client.get(RUNS_URL).content.decode()
    undo_row = row_html(html, report.run_id)
    assert '<span class="gen-diagnosis gen-undo">undo</span> admin (admin)' in undo_row
    for column in ("found", "repaired_total", "stalled_count", "corrupt_count", "locks"):  # job figures: none
        assert f'<td class="field-{column}">-</td>' in undo_row, column
    assert '<td class="field-examined_count">1</td>' in undo_row  # the records it examined
    health = admin_client.get(HEALTH_URL).content.decode()
    assert f"run #{report.run_id}</a>" not in health.split('id="gen-runs"')[1].split("</table>")[0]


def test_a_records_page_shows_before_and_after_in_the_tables_column_order(admin_client, admin_user):
    row = batch(10, 0, 2, 7, 3)
    services.repair_selected(job=job(), ids=[row.pk], actor=admin_user)
    record = status_record_of(row)
    html = admin_client.get(reverse("admin:generation_repairrecord_change", args=[record.pk])).content.decode()
    fields = re.findall(r'data-field="(\w+)"', html)
    assert fields == ["updated_at", "total_requested", "total_queued", "total_processing", "total_completed",
                      "total_failed", "status", "completed_at"]
    batch_url = reverse("admin:generation_generationstatus_change", args=[row.pk])
    assert f'<h2>all_accounted of batch <a href="{batch_url}">#{row.pk}</a></h2>' in html  # the heading links it
    updated = re.search(r'data-field="updated_at">.*?</tr>', html, re.S).group(0)
    assert re.search(r"^\s*updated_at\s+\d{4}-\d\d-\d\d \d\d:\d\d UTC\s+\d{4}-\d\d-\d\d \d\d:\d\d UTC\s*$",
                     text_of(updated.split(">", 1)[1]))


def test_one_datetime_format_with_the_time_zone_everywhere(admin_client, admin_user):
    row = batch(10, 0, 2, 7, 3, lock=True)
    services.cleanup(job=job(), trigger=Trigger.CRON)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
    pages = [reverse("admin:generation_generationstatus_change", args=[row.pk]), RUNS_URL, RECORDS_URL, HEALTH_URL,
             reverse("admin:generation_cleanuprun_change", args=[CleanupRun.objects.get().pk])]
    for url in pages:
        html = text_of(admin_client.get(url).content.decode())
        assert re.search(stamp, html), url
        assert not re.search(r"\b(a\.m\.|p\.m\.|noon|midnight)", html), url  # Django's English default
        assert not re.search(r"\d+:\d\d:\d\d</", html), url  # a timedelta printed as 3:00:00


def test_the_site_is_titled_for_this_product_without_a_view_site_link(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert "butter_admin: generation cleanup" in html and "Django administration" not in html
    assert "View site" not in html


def test_the_admin_index_shows_the_stuck_and_expired_counts_linking_to_the_filtered_lists(admin_client):
    batch(10, 0, 2, 7, 3)
    batch(10, 1, 1, 3, 2, lock=True, lock_age=timedelta(hours=4))
    batch(10, 0, 0, 6, 1, idle=FRESH)
    html = admin_client.get(reverse("admin:index")).content.decode()
    stuck = re.search(r'<tr id="gen-index-stuck">.*?</tr>', html, re.S).group(0)
    expired = re.search(r'<tr id="gen-index-expired">.*?</tr>', html, re.S).group(0)
    assert re.search(r'<strong class="gen-flag-note">2</strong>', stuck)
    assert re.search(r'<strong class="gen-flag-note">1</strong>', expired)
    stuck_url = html_unescape(re.search(r'href="([^"]+)"', stuck).group(1))
    assert set(listed_ids(admin_client.get(stuck_url))) == set(
        GenerationStatus.objects.filter(total_queued__gte=0, updated_at__lt=timezone.now() - timedelta(hours=3))
        .values_list("pk", flat=True))
    expired_url = html_unescape(re.search(r'href="([^"]+)"', expired).group(1))
    assert len(listed_ids(admin_client.get(expired_url))) == 1


def test_the_statuses_list_reaches_stuck_oldest_first_in_one_click(admin_client, viewer):
    from django.test import Client

    viewer_client = Client()
    viewer_client.force_login(viewer)
    older, old = batch(10, 0, 0, 10, 0, idle=timedelta(hours=9)), batch(10, 2, 5, 6, 0, idle=timedelta(hours=5))
    oldest = batch(10, 1, 1, 3, 2, idle=timedelta(days=2))
    batch(10, 0, 0, 6, 1, idle=FRESH)
    for client in (admin_client, viewer_client):  # with actions (a checkbox column first) and without
        html = client.get(STATUSES_URL).content.decode()
        url = html_unescape(re.search(r'<a href="([^"]+)" id="gen-stuck-oldest">Stuck, oldest first</a>', html).group(1))
        assert listed_ids(client.get(url)) == [oldest.pk, older.pk, old.pk]


def test_the_health_page_refreshes_itself_unless_told_not_to(admin_client):
    html = admin_client.get(HEALTH_URL).content.decode()
    assert '<meta http-equiv="refresh" content="60">' in html
    assert '<a href="?refresh=off">stop reloading</a>' in html
    html = admin_client.get(HEALTH_URL, {"refresh": "off"}).content.decode()
    assert 'http-equiv="refresh"' not in html and '<a href="?">reload every minute</a>' in html


def test_the_health_page_charts_the_backlog_per_run_linking_each_run(admin_client):
    batch(10, 0, 2, 7, 3)
    batch(10, 1, 1, 3, 2)
    first = services.cleanup(job=job(), trigger=Trigger.CRON)
    batch(10, 0, 0, 6, 1)
    second = services.cleanup(job=job(), trigger=Trigger.COMMAND)
    services.cleanup(job=job(), trigger=Trigger.COMMAND, content_types=["story"])  # a part of the table: not charted
    assert [r.stuck_found for r in CleanupRun.objects.order_by("id")] == [2, 2, None]
    html = admin_client.get(HEALTH_URL).content.decode()
    chart = html.split('id="gen-backlog"')[1].split("</svg>")[0]
    for run, repaired in ((first, 1), (second, 1)):
        url = reverse("admin:generation_cleanuprun_change", args=[run.run_id])
        assert re.search(rf'<a href="{url}"><rect [^>]*fill="#0072B2"><title>run #{run.run_id}, [0-9: -]+: '
                         rf'{repaired} repaired</title>', chart)
        assert re.search(rf'<a href="{url}"><rect [^>]*fill="#E69F00"><title>run #{run.run_id}, [0-9: -]+: 1 stalled',
                         chart)
    assert "Stuck batches found by each run of the job, last 2 runs" in html


def test_confirmation_pages_call_the_rows_they_leave_alone_what_the_list_calls_them(operator_client):
    moving = batch(10, 1, 1, 3, 2, idle=FRESH)  # work in flight, moved a minute inside the window: "healthy"
    stalled = batch(10, 1, 1, 3, 2)  # the same, a minute outside: "stalled"
    fresh_overflow = batch(10, 2, 5, 6, 0, idle=FRESH)
    html = operator_client.post(STATUSES_URL, {"action": "force_repair",
                                               ACTION_CHECKBOX_NAME: [moving.pk, stalled.pk]}).content.decode()
    assert '<span class="gen-diagnosis gen-healthy">healthy</span>' in record_batch_tr(html, moving.pk)
    assert '<span class="gen-diagnosis gen-stalled">stalled</span>' in record_batch_tr(html, stalled.pk)
    assert "No generation to repair; 1 healthy, 1 stalled (work in flight), not changed." in html
    html = operator_client.post(STATUSES_URL, {"action": "fail_stalled",
                                               ACTION_CHECKBOX_NAME: [fresh_overflow.pk, stalled.pk]}).content.decode()
    assert '<span class="gen-diagnosis gen-healthy">healthy</span>' in record_batch_tr(html, fresh_overflow.pk)
    assert f"1 healthy, left alone (#{fresh_overflow.pk})" in html


def record_batch_tr(html, pk):
    return re.search(rf'<tr data-batch="{pk}">.*?</tr>', html, re.S).group(0)


def test_the_undo_preview_says_it_restores_updated_at_and_the_batch_looks_as_it_did(operator_client, operator):
    idle = timedelta(days=1, hours=11)
    stalled = batch(10, 1, 1, 3, 2, idle=idle)
    act(operator_client, STATUSES_URL, "fail_stalled", [stalled], post="yes")
    page_url = reverse("admin:generation_generationstatus_change", args=[stalled.pk])
    assert "Finished (partial)" in operator_client.get(page_url).content.decode()
    record = status_record_of(stalled)
    html = operator_client.post(RECORDS_URL, {"action": "undo_selected", ACTION_CHECKBOX_NAME: [record.pk]}
                                ).content.decode()
    assert "<strong>its updated_at and completed_at included</strong>" in html
    row = record_tr(html, record.pk)
    assert re.search(r"updated_at back to \d{4}-\d\d-\d\d \d\d:\d\d UTC \(idle 1d1[01]h\)", text_of(row))
    assert "stuck again: the next run repairs it again" in row
    act(operator_client, RECORDS_URL, "undo_selected", [record], post="yes")
    page = operator_client.get(page_url).content.decode()
    assert re.search(r"Stuck \(idle 1d1[01]h, over 3h\)", page) and "gen-stalled" in page


# --- Select all N matching (Django's select-across) ---------------------------------------------------


def across(client, url, action, **extra):
    """The action on every row the list at `url` matches, as Django posts it after "Select all N"."""
    return client.post(url, {"action": action, "select_across": "1", ACTION_CHECKBOX_NAME: ["all"], **extra},
                       follow=True)


def test_repair_stuck_applies_to_every_matching_batch_page_by_page(operator_client, settings, monkeypatch):
    settings.CLEANUP_BATCH_SIZE = 2
    stuck = [batch(10, 0, 0, 10, 0) for _ in range(5)]
    other = batch(10, 0, 0, 6, 1)  # stuck, but not all_accounted: the filter leaves it out
    pages = []
    real = services.status_page
    monkeypatch.setattr(services, "status_page", lambda ids, *a, **k: pages.append(list(ids)) or real(ids, *a, **k))
    response = across(operator_client, STATUSES_URL + "?stuck=all_accounted", "repair_stuck")
    assert [len(page) for page in pages] == [2, 2, 1]  # keyset pages of the batch size, never all ids at once
    [(level, text)] = messages_of(response)
    assert level == "success" and text.startswith("5 generations repaired (")
    assert all(counters(row)[-1] == "completed" for row in stuck)
    assert counters(other) == (10, 0, 0, 6, 1, "processing")
    run = CleanupRun.objects.get()
    assert run.filters == {"select_across": {"list": "stuck=all_accounted", "count": 5}, "mode": "scheduled"}
    assert "all 5 that matched the list's filters: stuck=all_accounted (scheduled)" in html_unescape(
        operator_client.get(reverse("admin:generation_cleanuprun_change", args=[run.pk])).content.decode())


def test_force_repair_of_all_matching_confirms_with_totals_by_rule_and_a_sample(operator_client, monkeypatch):
    monkeypatch.setattr(admin_common, "CONFIRM_MAX", 2)  # ticked rows are refused above this; select-across is not
    monkeypatch.setattr(admin_statuses, "SAMPLE", 2)
    monkeypatch.setattr(admin_common, "SAMPLE", 2)
    finished = [batch(10, 0, 2, 7, 3) for _ in range(4)]
    moving = batch(10, 0, 0, 10, 0, idle=FRESH)  # "healthy" in the list, all_accounted once forced
    stalled, corrupt = batch(10, 1, 1, 3, 2), batch(3, 0, -1, 2, 0)
    untouched = batch(10, 0, 0, 10, 0, status="completed")
    url = STATUSES_URL + "?status__exact=processing"
    page = operator_client.post(url, {"action": "force_repair", "select_across": "1", ACTION_CHECKBOX_NAME: ["all"]})
    assert page.templates[0].name == "admin/generation/repair_confirmation.html"
    html = page.content.decode()
    assert "All <strong>7</strong> generation statuses that match the list's filters and search are selected" in html
    assert "7 batches selected: 5 to repair; 1 not changed: work in flight; 1 not changed: fix by hand." in html
    totals = {verdict: html_unescape(row) for verdict, row in re.findall(
        r'<tr data-verdict="(\w+)">(.*?)</tr>', html, re.S)}
    assert list(totals) == ["all_accounted", "stalled", "corrupt"]
    assert re.search(r'gen-n">5</td>\s*<td>to repair</td>\s*<td>4 <span[^>]*>all_accounted</span>, 1 <span[^>]*>'
                     r'healthy</span>', totals["all_accounted"])
    assert len(re.findall(r'<tr data-batch="', html.split('id="gen-changes"')[1].split("</table>")[0])) == 2
    assert "A sample: the first 2 batches that change" in html
    assert f'name="{ACTION_CHECKBOX_NAME}" value="{finished[0].pk}"' not in html  # the filters, not the rows
    assert '<input type="hidden" name="select_across" value="1">' in html
    assert all(counters(row) == (10, 0, 2, 7, 3, "processing") for row in finished)

    response = across(operator_client, url, "force_repair", post="yes")
    [(level, text)] = messages_of(response)
    assert level == "warning" and text.startswith("5 generations repaired (")
    assert all(counters(row) == (10, 0, 0, 7, 3, "partial") for row in finished)
    assert counters(moving)[-1] == "completed"
    assert counters(stalled) == (10, 1, 1, 3, 2, "processing") and counters(corrupt) == (3, 0, -1, 2, 0, "processing")
    assert counters(untouched) == (10, 0, 0, 10, 0, "completed")


def test_release_of_all_matching_locks_confirms_with_totals_and_a_sample(operator_client):
    expired = [batch(10, 0, 0, 10, 0, status="completed", lock=True, lock_age=timedelta(hours=5)) for _ in range(3)]
    moving = batch(10, 1, 1, 3, 2, idle=timedelta(minutes=5), lock=True, lock_age=timedelta(hours=4))
    kept = batch(10, 1, 1, 3, 2, idle=FRESH, lock=True, lock_age=timedelta(hours=1))
    url = LOCKS_URL + "?expired=yes"
    html = operator_client.post(url, {"action": "release_selected", "select_across": "1",
                                      ACTION_CHECKBOX_NAME: ["all"]}).content.decode()
    assert "4 locks selected, to be deleted whatever their age: 4 expired, 0 not expired yet; 1 belong to batches " \
           "still moving" in html
    assert "1 lock belongs to a batch that is still progressing" in html
    response = across(operator_client, url, "release_selected", post="yes")
    [(level, text)] = messages_of(response)
    assert level == "success" and text.startswith("4 locks released (")
    assert not GenerationLock.objects.filter(lock_id__in=[row.lock_id for row in [*expired, moving]]).exists()
    assert GenerationLock.objects.filter(lock_id=kept.lock_id).exists()


def test_undo_of_all_matching_records_names_the_first_and_counts_every_one(operator_client, operator, settings):
    settings.CLEANUP_BATCH_SIZE = 2
    rows = [batch(10, 2, 5, 6, 0) for _ in range(13)]
    services.repair_selected(job=job(), ids=[row.pk for row in rows], actor=operator)
    response = across(operator_client, RECORDS_URL + "?rule__exact=counter_overflow", "undo_selected", post="yes")
    [(level, text)] = messages_of(response)
    newest = ", ".join(f"batch #{row.pk}" for row in reversed(rows[3:]))
    assert (level, text) == ("success", f"13 repairs undone ({newest} and 3 more)")
    assert all(counters(row) == (10, 2, 5, 6, 0, "processing") for row in rows)
