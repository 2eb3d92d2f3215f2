"""Windows per content type (issue 12): GENERATION_STUCK_AFTER=3h,video=8h and the like, through the command
(options and settings), the admin, the health page, the metrics and the runs' records; bad values refused at
start-up and by the options with one line. A minute either side of each window, for each type."""

import json
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from generation import metrics, services
from generation.checks import Messages, check_window_content_types
from generation.conf import Windows, parse_fail_stalled_windows, parse_windows
from generation.models import CleanupRun, GenerationLock, GenerationStatus, RecordKind, RepairRecord
from generation.report import format_windows

from .factories import job, make_batch, make_lock
from .helpers import manage

MINUTE = timedelta(minutes=1)
H = timedelta(hours=1)
STATUSES_URL = reverse("admin:generation_generationstatus_changelist")
LOCKS_URL = reverse("admin:generation_generationlock_changelist")
HEALTH_URL = reverse("admin:generation_health")
REPAIRABLE = (4, 0, 0, 0, 0)  # no_active_tasks once stuck: repaired, or left alone


@pytest.fixture(autouse=True)
def plain_settings(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.SECURE_SSL_REDIRECT = False
    settings.GENERATION_STUCK_AFTER = "3h"
    settings.GENERATION_LOCK_TTL = "3h"
    settings.GENERATION_FAIL_STALLED_AFTER = ""


def run_command(*args):
    out = StringIO()
    try:
        call_command("cleanup_stuck_generation", *args, stdout=out, stderr=StringIO())
    except CommandError as exc:  # exit 1 (errors found) still prints the report first
        assert exc.returncode == 1, exc
    return out.getvalue()


def edge_batches():
    """GENERATION_STUCK_AFTER=3h,video=8h: a batch a minute either side of each type's window (slideshow and
    story by the default, video by its own), and the acceptance's 5h pair. name -> (batch, stuck?)."""
    return {
        "video 5h": (make_batch(REPAIRABLE, idle=5 * H, content_type="video"), False),
        "story 5h": (make_batch(REPAIRABLE, idle=5 * H, content_type="story"), True),
        "video 8h01m": (make_batch(REPAIRABLE, idle=8 * H + MINUTE, content_type="video"), True),
        "video 7h59m": (make_batch(REPAIRABLE, idle=8 * H - MINUTE, content_type="video"), False),
        "story 3h01m": (make_batch(REPAIRABLE, idle=3 * H + MINUTE, content_type="story"), True),
        "story 2h59m": (make_batch(REPAIRABLE, idle=3 * H - MINUTE, content_type="story"), False),
        "slideshow 3h01m": (make_batch(REPAIRABLE, idle=3 * H + MINUTE, content_type="slideshow"), True),
        "slideshow 2h59m": (make_batch(REPAIRABLE, idle=3 * H - MINUTE, content_type="slideshow"), False),
    }


def repaired(batches) -> dict:
    """name -> whether the batch was repaired (its status is no longer in progress)."""
    statuses = dict(GenerationStatus.objects.values_list("id", "status"))
    return {name: statuses[batch.pk] not in ("queuing", "processing") for name, (batch, _) in batches.items()}


def expected(batches) -> dict:
    return {name: stuck for name, (_, stuck) in batches.items()}


# --- The command ------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["setting", "option"])
def test_the_command_repairs_each_batch_by_its_own_types_window(settings, how):
    if how == "setting":
        settings.GENERATION_STUCK_AFTER = "3h,video=8h"
        args = ["--json"]
    else:
        args = ["--json", "--stuck-after", "3h,video=8h"]  # replaces the setting (3h for every type)
    batches = edge_batches()
    report = json.loads(run_command(*args))
    assert repaired(batches) == expected(batches)
    assert report["statuses"]["repaired"] == sum(expected(batches).values()) == 4
    # the report: the defaults where they always were, each type's own beside them
    assert (report["stuck_after_s"], report["stuck_after_by_type_s"]) == (3 * 3600, {"video": 8 * 3600})
    assert (report["lock_ttl_s"], report["lock_ttl_by_type_s"]) == (3 * 3600, {})
    assert set(report["cutoff_by_type"]) == {"video"}
    # the run records the windows it used
    run = CleanupRun.objects.get(pk=report["run_id"])
    assert (run.stuck_after, run.windows_by_type) == (3 * H, {"stuck_after": {"video": 28800.0}})
    assert run.windows("stuck_after") == parse_windows("3h,video=8h") and run.windows("fail_stalled_after") is None


@pytest.mark.django_db
def test_the_dry_run_predicts_the_same_batches_and_the_start_line_names_each_window(settings):
    settings.GENERATION_STUCK_AFTER = "3h,video=8h"
    settings.GENERATION_LOCK_TTL = "3h,video=8h"
    settings.GENERATION_FAIL_STALLED_AFTER = "video=2d"
    batches = edge_batches()
    out = run_command("--dry-run")
    assert out.splitlines()[0] == ("Cleanup (DRY RUN: nothing will be written): stuck after 3h, video 8h; lock TTL "
                                   "3h, video 8h; fail stalled after video 2d, other types never; batch size 1500")
    would = {int(m) for m in re.findall(r"would repair #(\d+) ", out)}
    assert would == {batch.pk for batch, stuck in batches.values() if stuck}
    assert not any(repaired(batches).values())
    run_command()
    assert repaired(batches) == expected(batches)


@pytest.mark.django_db
def test_the_fail_stalled_window_of_one_type_leaves_the_others_stalled(settings):
    settings.GENERATION_FAIL_STALLED_AFTER = "video=1d"
    stalled = (10, 1, 1, 3, 2)
    video = make_batch(stalled, idle=24 * H + MINUTE, content_type="video")
    video_inside = make_batch(stalled, idle=24 * H - MINUTE, content_type="video")
    story = make_batch(stalled, idle=48 * H, content_type="story")
    report = json.loads(run_command("--json"))
    assert report["statuses"]["by_rule"]["stalled_failed"] == 1 and report["statuses"]["stalled"] == 2
    assert (report["fail_stalled_after_s"], report["fail_stalled_after_by_type_s"]) == (None, {"video": 86400})
    for batch, status in ((video, "partial"), (video_inside, "processing"), (story, "processing")):
        batch.refresh_from_db()
        assert batch.status == status


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["setting", "option"])
def test_locks_expire_by_their_own_types_ttl(settings, how):
    """GENERATION_LOCK_TTL=3h,video=8h: a video lock held 5h stays, a story lock held 5h goes; a minute
    either side of each type's TTL."""
    args = ["--lock-ttl", "3h,video=8h"] if how == "option" else []
    if how == "setting":
        settings.GENERATION_LOCK_TTL = "3h,video=8h"
    locks = {
        "video 5h": (make_lock(account_id=1, content_type="video", held_for=5 * H), False),
        "story 5h": (make_lock(account_id=2, content_type="story", held_for=5 * H), True),
        "video 8h01m": (make_lock(account_id=3, content_type="video", held_for=8 * H + MINUTE), True),
        "video 7h59m": (make_lock(account_id=4, content_type="video", held_for=8 * H - MINUTE), False),
        "story 3h01m": (make_lock(account_id=5, content_type="story", held_for=3 * H + MINUTE), True),
        "story 2h59m": (make_lock(account_id=6, content_type="story", held_for=3 * H - MINUTE), False),
    }
    report = json.loads(run_command("--json", "--only", "locks", *args))
    remaining = set(GenerationLock.objects.values_list("id", flat=True))
    assert {name: lock.pk not in remaining for name, (lock, _) in locks.items()} == {
        name: expired for name, (_, expired) in locks.items()}
    assert report["locks"]["removed"] == 3 and report["lock_ttl_by_type_s"] == {"video": 8 * 3600}
    assert set(RepairRecord.objects.filter(kind=RecordKind.LOCK).values_list("target_id", flat=True)) == {
        lock.pk for lock, expired in locks.values() if expired}


# --- Bad values: one line, naming the option or the setting and the bad part ---------------------------------


@pytest.mark.parametrize(("args", "line"), [
    (("--stuck-after", "video=0"), "argument --stuck-after: 'video=0' has a bad part 'video=0': '0' must be a positive "
                                   "duration"),
    (("--stuck-after", "video=8h,video=9h"), "argument --stuck-after: 'video=8h,video=9h' names video twice"),
    (("--stuck-after", "x"), "argument --stuck-after: 'x' is not a duration (use e.g. 90m, 3h, 1h30m, 45s or plain "
                             "seconds) nor durations by content type (e.g. 3h,video=8h,story=45m)"),
    (("--stuck-after", "video=8h"), "argument --stuck-after: 'video=8h' has no default for the other content types"),
    (("--lock-ttl", "3h,video:8h"), "argument --lock-ttl: '3h,video:8h' has a bad part 'video:8h': not a duration or "
                                    "TYPE=DURATION"),
    (("--fail-stalled-after", "video=-1h"), "argument --fail-stalled-after: 'video=-1h' has a bad part 'video=-1h': "
                                            "'-1h' must be a positive duration"),
])
def test_a_bad_window_option_exits_2_with_one_line_naming_the_option(args, line):
    result = manage("cleanup_stuck_generation", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [error] = [text for text in result.stderr.splitlines() if "error:" in text]
    assert error.split("error: ", 1)[1].startswith(line)


@pytest.mark.parametrize(("variable", "value", "line"), [
    ("GENERATION_STUCK_AFTER", "3h,video=0", "GENERATION_STUCK_AFTER='3h,video=0' has a bad part 'video=0': '0' must "
                                             "be a positive duration"),
    ("GENERATION_LOCK_TTL", "3h,story=1h,story=2h", "GENERATION_LOCK_TTL='3h,story=1h,story=2h' names story twice"),
    ("GENERATION_FAIL_STALLED_AFTER", "1d,=2d", "GENERATION_FAIL_STALLED_AFTER='1d,=2d' has a bad part '=2d': not a "
                                                "duration or TYPE=DURATION"),
])
@pytest.mark.parametrize("command", [("check",), ("cleanup_stuck_generation", "--dry-run")])
def test_a_bad_window_setting_stops_start_up_with_one_line_naming_the_variable_and_the_bad_part(command, variable,
                                                                                                value, line):
    result = manage(*command, env={variable: value})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [text for text in result.stderr.splitlines() if variable in text]
    assert len(lines) == 1 and lines[0].startswith(f"?: (generation.E002) {line}")


def test_a_content_type_the_contract_does_not_name_is_allowed_but_warned_about(settings):
    settings.GENERATION_STUCK_AFTER = "3h,video=8h,podcast=1d"
    settings.GENERATION_FAIL_STALLED_AFTER = "Video=2d"
    warnings = check_window_content_types()
    assert [(w.id, w.msg) for w in warnings] == [
        (Messages.UNKNOWN_CONTENT_TYPE_ID, "GENERATION_STUCK_AFTER gives a window to content type 'podcast', which "
                                           "the contract does not name (video, story, slideshow)."),
        (Messages.UNKNOWN_CONTENT_TYPE_ID, "GENERATION_FAIL_STALLED_AFTER gives a window to content type 'Video', "
                                           "which the contract does not name (video, story, slideshow)."),
    ]
    assert all(w.hint == Messages.UNKNOWN_CONTENT_TYPE_HINT for w in warnings)
    settings.GENERATION_STUCK_AFTER = "3h,video=8h,story=45m,slideshow=1h"
    settings.GENERATION_FAIL_STALLED_AFTER = ""
    assert check_window_content_types() == []


def test_manage_check_warns_of_an_unknown_content_type_and_still_passes():
    result = manage("check", env={"GENERATION_LOCK_TTL": "3h,podcast=1d"})
    assert result.returncode == 0, result.stderr
    assert "?: (generation.W003) GENERATION_LOCK_TTL gives a window to content type 'podcast'" in result.stderr


def test_the_windows_text_names_the_default_then_each_type():
    assert format_windows(parse_windows("3h")) == "3h"
    assert format_windows(parse_windows("3h,video=8h,story=45m")) == "3h, story 45m, video 8h"  # types by name
    assert format_windows(parse_fail_stalled_windows("video=1d")) == "video 1d, other types never"
    assert format_windows(Windows(90 * MINUTE, (("video", 8 * H + 30 * MINUTE),))) == "1h30m, video 8h30m"


# --- The admin ---------------------------------------------------------------------------------------


@pytest.fixture
def operator_client(client, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="generation", codename__in=(
        "view_generationstatus", "view_generationlock", "view_cleanuprun", "view_repairrecord",
        "repair_generationstatus", "release_generationlock")))
    client.force_login(user)
    return client


def listed(response) -> set:
    return {obj.pk for obj in response.context["cl"].result_list}


@pytest.mark.django_db
def test_the_admins_repair_action_repairs_each_selected_batch_by_its_own_types_window(settings, operator_client):
    settings.GENERATION_STUCK_AFTER = "3h,video=8h"
    batches = edge_batches()
    response = operator_client.post(STATUSES_URL, {"action": "repair_stuck", ACTION_CHECKBOX_NAME: [
        batch.pk for batch, _ in batches.values()]}, follow=True)
    assert repaired(batches) == expected(batches)
    [message] = [m.message for m in response.context["messages"]]
    assert re.match(r"4 generations repaired \(#\d+, #\d+, #\d+, #\d+\): 4 no_active_tasks; 4 healthy, left alone \(",
                    message)
    run = CleanupRun.objects.get(trigger="admin")
    assert run.windows("stuck_after") == parse_windows("3h,video=8h")


@pytest.mark.django_db
def test_the_admins_list_filter_and_diagnosis_use_each_rows_own_window(settings, admin_client):
    settings.GENERATION_STUCK_AFTER = "3h,video=8h"
    batches = edge_batches()
    stuck = {batch.pk for batch, is_stuck in batches.values() if is_stuck}
    response = admin_client.get(STATUSES_URL + "?stuck=yes")
    assert listed(response) == stuck
    assert "stuck (idle over 3h, video 8h)" in response.content.decode()
    assert listed(admin_client.get(STATUSES_URL + "?stuck=no_active_tasks")) == stuck
    assert listed(admin_client.get(STATUSES_URL + "?stuck=no")) == {batch.pk for batch, _ in batches.values()} - stuck
    verdicts = {obj.pk: obj.verdict for obj in admin_client.get(STATUSES_URL).context["cl"].result_list}
    assert verdicts == {batch.pk: "no_active_tasks" if is_stuck else "healthy" for batch, is_stuck in batches.values()}


@pytest.mark.django_db
def test_the_admins_locks_list_says_expired_by_each_locks_own_ttl(settings, admin_client):
    settings.GENERATION_LOCK_TTL = "3h,video=8h"
    video = make_lock(account_id=1, content_type="video", held_for=5 * H)
    story = make_lock(account_id=2, content_type="story", held_for=5 * H)
    old_video = make_lock(account_id=3, content_type="video", held_for=8 * H + MINUTE)
    response = admin_client.get(LOCKS_URL)
    assert {lock.pk: lock.is_expired for lock in response.context["cl"].result_list} == {
        video.pk: False, story.pk: True, old_video.pk: True}
    response = admin_client.get(LOCKS_URL + "?expired=yes")
    assert listed(response) == {story.pk, old_video.pk}
    assert "expired (held over 3h, video 8h)" in response.content.decode()
    assert listed(admin_client.get(LOCKS_URL + "?expired=no")) == {video.pk}


@pytest.mark.django_db
def test_locks_of_batches_still_moving_by_their_types_window_are_flagged_in_the_list_and_the_release(settings,
                                                                                                   operator_client):
    """A video batch that moved 5h ago still moves under video=8h: releasing its lock would let a second batch
    start beside it. A story batch idle as long is stuck, not moving."""
    settings.GENERATION_STUCK_AFTER = "3h,video=8h"
    video = make_batch((10, 2, 1, 5, 0), idle=5 * H, content_type="video", lock_held_for=6 * H)
    story = make_batch((10, 2, 1, 5, 0), idle=5 * H, content_type="story", lock_held_for=6 * H)
    video_lock, story_lock = (GenerationLock.objects.get(lock_id=b.lock_id) for b in (video, story))
    html = operator_client.get(LOCKS_URL).content.decode()
    assert f'>#{video.pk}</a> processing, <span class="gen-flag-note">moved 5h ago</span>' in html
    assert f'>#{story.pk}</a> processing, moved 5h ago' in html
    page = operator_client.post(LOCKS_URL, {"action": "release_selected",
                                            ACTION_CHECKBOX_NAME: [video_lock.pk, story_lock.pk]}).content.decode()
    assert "1 lock belongs to a batch that is still progressing" in page
    assert re.search(rf'<tr class="gen-flag" data-lock="{video_lock.pk}">', page)
    assert re.search(rf'<tr data-lock="{story_lock.pk}">', page)


@pytest.mark.django_db
def test_the_health_page_counts_and_labels_by_each_types_window(settings, admin_client):
    settings.GENERATION_STUCK_AFTER = "3h,video=8h"
    settings.GENERATION_LOCK_TTL = "3h,video=8h"
    settings.GENERATION_FAIL_STALLED_AFTER = "video=2d"
    edge_batches()
    make_lock(account_id=900, content_type="video", held_for=5 * H)  # not expired: video's TTL is 8h
    make_lock(account_id=901, content_type="story", held_for=5 * H)
    # expired, and its batch moved within video's 8h window (7h59m ago): still moving
    make_batch((10, 3, 2, 1, 0), idle=8 * H - MINUTE, content_type="story", lock_held_for=4 * H)
    response = admin_client.get(HEALTH_URL)
    health = response.context["health"]
    assert health.stuck_by_rule["no_active_tasks"] == 4
    assert (health.expired_locks, health.expired_locks_of_active_batches) == (2, 0)
    html = response.content.decode()
    assert "idle over 3h, video 8h" in html and "held over 3h, video 8h" in html
    assert "failed by the job once idle over video 2d, other types never" in html


@pytest.mark.django_db
def test_a_runs_page_shows_the_windows_it_used(settings, admin_client):
    report = services.cleanup(job=job(stuck_after=parse_windows("3h,video=8h,story=45m"),
                                      fail_stalled_after=parse_fail_stalled_windows("video=2d")))
    html = admin_client.get(reverse("admin:generation_cleanuprun_change", args=[report.run_id])).content.decode()
    fields = dict(re.findall(r'<div class="flex-container">\s*<label>(.*?):</label>\s*<div class="readonly">(.*?)</div>',
                             html, re.S))
    assert (fields["Stuck after"], fields["Lock TTL"], fields["Fail stalled after"]) == (
        "3h, story 45m, video 8h", "3h", "video 2d, other types never")


# --- The metrics -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_metrics_give_each_content_type_its_own_window_and_count_by_it(settings):
    settings.GENERATION_STUCK_AFTER = "3h,video=8h,podcast=1d"
    settings.GENERATION_LOCK_TTL = "3h,story=45m"
    edge_batches()
    make_lock(account_id=1, content_type="story", held_for=H)  # expired by story's 45m
    make_lock(account_id=2, content_type="video", held_for=H)
    state = metrics.read_state()
    assert sum(n for (rule, _), n in state.stuck.items() if rule == "no_active_tasks") == 4
    assert state.expired_locks == {"story": 1}
    families = {family.name: family for family in metrics.state_families(state)}
    windows = {(family, s.labels["content_type"]): s.value
               for family in ("butter_generation_stuck_after_seconds", "butter_generation_lock_ttl_seconds")
               for s in families[family].samples}
    assert windows == {
        ("butter_generation_stuck_after_seconds", "video"): 8 * 3600,
        ("butter_generation_stuck_after_seconds", "story"): 3 * 3600,
        ("butter_generation_stuck_after_seconds", "slideshow"): 3 * 3600,
        ("butter_generation_stuck_after_seconds", "podcast"): 24 * 3600,  # a type only a window names: a series too
        ("butter_generation_lock_ttl_seconds", "video"): 3 * 3600,
        ("butter_generation_lock_ttl_seconds", "story"): 45 * 60,
        ("butter_generation_lock_ttl_seconds", "slideshow"): 3 * 3600,
        ("butter_generation_lock_ttl_seconds", "podcast"): 3 * 3600,
    }


def test_the_operations_guides_example_is_what_it_says(tmp_path):
    """docs/operations.md, "Windows per content type": its dotenv block, as a .env file, passes the checks and
    gives the windows its comments describe."""
    from .helpers import ROOT

    docs = (ROOT / "docs" / "operations.md").read_text()
    section = docs.split("### Windows per content type", 1)[1]
    [block] = re.findall(r"^```dotenv\n(.*?)^```", section.split("\n### ", 1)[0], re.M | re.S)
    (tmp_path / ".env").write_text(block)
    env = {"ENV_FILE": str(tmp_path / ".env")}
    assert manage("check", env=env).returncode == 0
    shown = manage("shell", "-c", "from generation.conf import job_settings as s; from generation.report import "
                   "format_windows as f; j = s(); print(f(j.stuck_after), f(j.lock_ttl), f(j.fail_stalled_after), "
                   "sep=' | ')", env=env)
    assert shown.stdout.strip().splitlines()[-1] == "3h, story 45m, video 8h | 3h, video 8h | video 2d, other types never"
