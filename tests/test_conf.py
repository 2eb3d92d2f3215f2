from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured

from generation.conf import (
    Windows,
    job_settings,
    parse_duration,
    parse_fail_stalled_windows,
    parse_windows,
    settings_errors,
)

from .factories import job

H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90m", timedelta(minutes=90)), ("3h", timedelta(hours=3)), ("1h30m", timedelta(minutes=90)),
     ("45s", timedelta(seconds=45)), ("3600", timedelta(hours=1)), (" 2h ", timedelta(hours=2))],
)
def test_parse_duration_accepts(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "0", "-5m", "", "3 parsecs", "0s"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults():
    job = job_settings()
    assert job.stuck_after == Windows(timedelta(hours=3))
    assert job.lock_ttl == Windows(timedelta(hours=3))
    assert job.fail_stalled_after is None
    assert job.batch_size == 1500
    assert job.schedule == "*/30 * * * *"
    assert job.log_file.is_absolute()


def test_bad_setting_is_one_line_naming_variable_and_value(settings):
    settings.GENERATION_STUCK_AFTER = "soon"
    settings.CLEANUP_BATCH_SIZE = "0"
    with pytest.raises(ImproperlyConfigured, match=r"^GENERATION_STUCK_AFTER='soon' is not a duration"):
        job_settings()
    assert settings_errors() == [
        "GENERATION_STUCK_AFTER='soon' is not a duration (use e.g. 90m, 3h, 1h30m, 45s or plain seconds) nor "
        "durations by content type (e.g. 3h,video=8h,story=45m)",
        "CLEANUP_BATCH_SIZE='0' must be a positive whole number",
    ]


def test_empty_fail_stalled_means_never_and_a_value_parses(settings):
    settings.GENERATION_FAIL_STALLED_AFTER = "  "
    assert job_settings().fail_stalled_after is None
    settings.GENERATION_FAIL_STALLED_AFTER = "1d"
    assert job_settings().fail_stalled_after == Windows(timedelta(days=1))


@pytest.mark.parametrize(("schedule", "message"), [
    ("61 * * * *", "CLEANUP_SCHEDULE='61 * * * *' is not a cron schedule (Bad minute;"),
    ("* * *", "CLEANUP_SCHEDULE='* * *' is not a cron schedule (Wrong number of fields;"),
])
def test_schedule_is_validated_as_cron_would(settings, schedule, message):
    settings.CLEANUP_SCHEDULE = schedule
    [error] = settings_errors()
    assert error.startswith(message)


def test_schedule_is_normalised(settings):
    settings.CLEANUP_SCHEDULE = " */15   * * * * "
    assert job_settings().schedule == "*/15 * * * *"


# --- Windows: a default and each content type's own ------------------------------------------------


@pytest.mark.parametrize(("text", "default", "by_type"), [
    ("3h", 3 * H, ()),
    (" 2h ", 2 * H, ()),
    ("1h 30m", 1.5 * H, ()),
    ("3h,video=8h,story=45m", 3 * H, (("video", 8 * H), ("story", 0.75 * H))),
    (" 3h , video = 8h ", 3 * H, (("video", 8 * H),)),
    ("video=8h,3h", 3 * H, (("video", 8 * H),)),  # the default need not come first
    ("3h,podcast=1d", 3 * H, (("podcast", 24 * H),)),  # a type the contract does not name: allowed (checks warn)
])
def test_windows_accept_a_bare_duration_or_a_default_with_each_types_own(text, default, by_type):
    assert parse_windows(text) == Windows(default, by_type)


@pytest.mark.parametrize(("text", "message"), [
    ("x", "is not a duration (use e.g. 90m, 3h, 1h30m, 45s or plain seconds) nor durations by content type "
          "(e.g. 3h,video=8h,story=45m)"),
    ("video:8h", "is not a duration (use e.g. 90m, 3h, 1h30m, 45s or plain seconds) nor durations by content type "
                 "(e.g. 3h,video=8h,story=45m)"),
    ("=8h", "has a bad part '=8h': not a duration or TYPE=DURATION (e.g. 3h,video=8h,story=45m; a type is letters, "
            "digits, _ . -)"),
    ("3h,video:8h", "has a bad part 'video:8h': not a duration or TYPE=DURATION (e.g. 3h,video=8h,story=45m)"),
    ("3h,vid eo=8h", "has a bad part 'vid eo=8h': not a duration or TYPE=DURATION (e.g. 3h,video=8h,story=45m; a "
                     "type is letters, digits, _ . -)"),
    ("3h,", "has a bad part '': not a duration or TYPE=DURATION (e.g. 3h,video=8h,story=45m)"),
    ("video=0", "has a bad part 'video=0': '0' must be a positive duration"),
    ("3h,video=-5m", "has a bad part 'video=-5m': '-5m' must be a positive duration"),
    ("0,video=8h", "has a bad part '0': '0' must be a positive duration"),
    ("3h,video=soon", "has a bad part 'video=soon': 'soon' is not a duration (use e.g. 90m, 3h, 1h30m, 45s or plain "
                      "seconds)"),
    ("3h,video=5000d", "has a bad part 'video=5000d': '5000d' is longer than 3650 days"),
    ("video=8h,video=9h", "names video twice"),
    ("3h,4h", "has two defaults ('3h' and '4h'): give the type of one of them (e.g. 3h,video=8h,story=45m)"),
    ("video=8h", "has no default for the other content types (start with a bare duration, e.g. 3h,video=8h,story=45m)"),
    ("0", "must be a positive duration"),  # a bare duration's messages are parse_duration's, as before
])
def test_windows_refuse_a_bad_value_naming_the_bad_part(text, message):
    with pytest.raises(ValueError) as refused:
        parse_windows(text)
    assert str(refused.value) == message


def test_the_fail_stalled_window_may_leave_out_the_default_meaning_never_for_the_others():
    windows = parse_fail_stalled_windows("video=2d")
    assert (windows.default, windows.types) == (None, ("video",))
    assert (windows.for_type("video"), windows.for_type("story"), windows.for_type("podcast")) == (48 * H, None, None)
    for bad in ("video=0", "video=1d,video=2d", "video:2d"):
        with pytest.raises(ValueError):
            parse_fail_stalled_windows(bad)


def test_each_content_type_gets_its_own_window_and_cutoff_the_others_the_default():
    windows = parse_windows("3h,video=8h,story=45m")
    assert windows.types == ("story", "video")  # in name order, however written
    assert [windows.for_type(t) for t in ("video", "story", "slideshow", "podcast")] == [8 * H, 0.75 * H, 3 * H, 3 * H]
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    cutoffs = windows.cutoffs(now)
    assert (cutoffs.default, cutoffs.for_type("video"), cutoffs.for_type("podcast")) == (now - 3 * H, now - 8 * H,
                                                                                         now - 3 * H)
    assert (cutoffs.latest, cutoffs.earliest) == (now - 0.75 * H, now - 8 * H)
    assert windows.by_type_seconds() == {"video": 28800.0, "story": 2700.0}
    assert Windows.recorded(3 * H, {"video": 28800.0, "story": 2700.0}) == windows
    assert Windows.recorded(None, {}) is None and Windows.recorded(3 * H, {}) == Windows(3 * H)


def test_the_settings_hold_windows_and_a_bare_timedelta_stands_for_every_type(settings):
    settings.GENERATION_STUCK_AFTER = "3h,video=8h"
    settings.GENERATION_LOCK_TTL = "2h,story=30m"
    settings.GENERATION_FAIL_STALLED_AFTER = "video=2d"
    loaded = job_settings()
    assert loaded.stuck_after == Windows(3 * H, (("video", 8 * H),))
    assert loaded.lock_ttl == Windows(2 * H, (("story", 0.5 * H),))
    assert loaded.fail_stalled_after == Windows(None, (("video", 48 * H),))
    assert job(stuck_after=5 * H, fail_stalled_after=None).stuck_after == Windows(5 * H)  # what tests pass
    assert loaded.overridden(stuck_after=None, lock_ttl=Windows(H)).lock_ttl == Windows(H)


def test_bad_windows_settings_are_one_line_each_naming_the_variable_and_the_bad_part(settings):
    settings.GENERATION_STUCK_AFTER = "3h,video=0"
    settings.GENERATION_LOCK_TTL = "video=8h,video=9h"
    settings.GENERATION_FAIL_STALLED_AFTER = "1d,video:2d"
    assert settings_errors() == [
        "GENERATION_STUCK_AFTER='3h,video=0' has a bad part 'video=0': '0' must be a positive duration",
        "GENERATION_LOCK_TTL='video=8h,video=9h' names video twice",
        "GENERATION_FAIL_STALLED_AFTER='1d,video:2d' has a bad part 'video:2d': not a duration or TYPE=DURATION "
        "(e.g. 3h,video=8h,story=45m)",
    ]
    with pytest.raises(ImproperlyConfigured, match=r"^GENERATION_STUCK_AFTER='3h,video=0' has a bad part 'video=0'"):
        job_settings()
