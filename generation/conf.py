"""The cleanup job's settings, parsed and validated in one place.

settings.py keeps what the operator wrote (strings from the environment);
`job_settings()` turns them into typed values or raises ImproperlyConfigured
with one line naming the variable and the bad value. The system checks call
it, so `manage.py check` and every command refuse bad values at start-up.

Each entry point (the command, cron, an admin request) reads them once and
passes the one JobSettings value down; the parse is cached, and the cache is
dropped when a test changes Django's settings.
"""

import functools
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cronsim import CronSim, CronSimError
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from pytimeparse2 import parse as parse_timespan

DURATION_HINT = "use e.g. 90m, 3h, 1h30m, 45s or plain seconds"
# Upper bounds, so that a typo cannot crash a run: now() minus thousands of years is not a date
# (OverflowError), and a LIMIT beyond bigint is a database error. Ten years is "never" for these windows.
MAX_DURATION = timedelta(days=3650)
MAX_WHOLE_NUMBER = 100_000  # the largest page: one transaction, its ids in one statement


def parse_duration(text: str) -> timedelta:
    """A positive duration from `90m`, `3h`, `1h30m`, `45s` or plain seconds.

    Raises ValueError (message without the value; callers name the source).
    """
    seconds = parse_timespan(str(text).strip()) if str(text).strip() else None
    if seconds is None:
        raise ValueError(f"is not a duration ({DURATION_HINT})")
    if seconds <= 0:
        raise ValueError("must be a positive duration")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def parse_positive_int(text: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError("is not a whole number") from None
    if value <= 0:
        raise ValueError("must be a positive whole number")
    if value > MAX_WHOLE_NUMBER:
        raise ValueError(f"must be at most {MAX_WHOLE_NUMBER}")
    return value


def parse_schedule(text: str) -> str:
    expression = " ".join(str(text).split())
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f'is not a cron schedule ({exc}; e.g. "*/30 * * * *")') from None
    if len(expression.split()) != 5:
        raise ValueError('is not a 5-field cron schedule (e.g. "*/30 * * * *")')
    return expression


@dataclass(frozen=True)
class JobSettings:
    stuck_after: timedelta
    lock_ttl: timedelta
    fail_stalled_after: timedelta | None
    batch_size: int
    lock_timeout: timedelta
    statement_timeout: timedelta
    schedule: str
    log_file: Path

    def overridden(self, **values) -> "JobSettings":
        """These settings with some replaced (the command's options); a None value leaves a setting as it is."""
        return replace(self, **{name: value for name, value in values.items() if value is not None})


# (setting name, JobSettings field, parser, may be empty)
_SETTINGS = [
    ("GENERATION_STUCK_AFTER", "stuck_after", parse_duration, False),
    ("GENERATION_LOCK_TTL", "lock_ttl", parse_duration, False),
    ("GENERATION_FAIL_STALLED_AFTER", "fail_stalled_after", parse_duration, True),
    ("CLEANUP_BATCH_SIZE", "batch_size", parse_positive_int, False),
    ("CLEANUP_LOCK_TIMEOUT", "lock_timeout", parse_duration, False),
    ("CLEANUP_STATEMENT_TIMEOUT", "statement_timeout", parse_duration, False),
    ("CLEANUP_SCHEDULE", "schedule", parse_schedule, False),
]


def _parsed(name, parse, optional):
    raw = getattr(settings, name)
    if optional and (raw is None or str(raw).strip() == ""):
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} {exc}") from None


@functools.cache
def job_settings() -> JobSettings:
    """The parsed settings; ImproperlyConfigured (one line) on the first bad one."""
    values = {field: _parsed(name, parse, optional) for name, field, parse, optional in _SETTINGS}
    return JobSettings(**values, log_file=Path(settings.CLEANUP_LOG_FILE))


@receiver(setting_changed)
def _settings_changed(**kwargs):
    job_settings.cache_clear()


def settings_errors() -> list[str]:
    """Every bad job setting, one line each (job_settings() stops at the first)."""
    errors = []
    for name, _field, parse, optional in _SETTINGS:
        try:
            _parsed(name, parse, optional)
        except ImproperlyConfigured as exc:
            errors.append(str(exc))
    if settings.LOG_FORMAT not in ("text", "json"):
        errors.append(f"LOG_FORMAT={settings.LOG_FORMAT!r} must be 'text' or 'json'")
    return errors
