from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured

from generation.conf import job_settings, parse_duration, settings_errors


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
    assert job.stuck_after == timedelta(hours=3)
    assert job.lock_ttl == timedelta(hours=3)
    assert job.fail_stalled_after is None
    assert job.batch_size == 500
    assert job.schedule == "*/30 * * * *"
    assert job.log_file.is_absolute()


def test_bad_setting_is_one_line_naming_variable_and_value(settings):
    settings.GENERATION_STUCK_AFTER = "soon"
    settings.CLEANUP_BATCH_SIZE = "0"
    with pytest.raises(ImproperlyConfigured, match=r"^GENERATION_STUCK_AFTER='soon' is not a duration"):
        job_settings()
    assert settings_errors() == [
        "GENERATION_STUCK_AFTER='soon' is not a duration (use e.g. 90m, 3h, 1h30m, 45s or plain seconds)",
        "CLEANUP_BATCH_SIZE='0' must be a positive whole number",
    ]


def test_empty_fail_stalled_means_never_and_a_value_parses(settings):
    settings.GENERATION_FAIL_STALLED_AFTER = "  "
    assert job_settings().fail_stalled_after is None
    settings.GENERATION_FAIL_STALLED_AFTER = "1d"
    assert job_settings().fail_stalled_after == timedelta(days=1)


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
