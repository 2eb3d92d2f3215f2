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
import re
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

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


# --- Windows: a default and per-content-type overrides ---------------------------------------------

WINDOWS_EXAMPLE = "3h,video=8h,story=45m"
# what a content type may be called in a window (account_generation_status.content_type is a varchar(50))
CONTENT_TYPE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,50}")


@dataclass(frozen=True)
class ByType:
    """A default and overrides for some content types: `for_type(t)` is t's override, else the default.
    The default may be None (the fail-stalled window: never for the types not named). The types are kept
    in name order, however they were written: the same windows are one value (and one text, one record)."""

    default: object
    by_type: tuple = ()

    def __post_init__(self):
        if self.default is None and not self.by_type:
            raise ValueError("neither a default nor a content type")
        object.__setattr__(self, "by_type", tuple(sorted(self.by_type)))

    @property
    def types(self) -> tuple[str, ...]:
        """The content types named, in name order."""
        return tuple(name for name, _value in self.by_type)

    def for_type(self, content_type: str):
        return dict(self.by_type).get(content_type, self.default)

    def values(self) -> list:
        """Every value given: the default (if any), then each type's."""
        return ([] if self.default is None else [self.default]) + [value for _name, value in self.by_type]


@dataclass(frozen=True)
class Cutoffs(ByType):
    """Each content type's cutoff on the database clock (now minus its window): a row is past it when older."""

    default: datetime | None
    by_type: tuple[tuple[str, datetime], ...] = ()

    @property
    def latest(self) -> datetime:
        """The cutoff of the shortest window: whatever its type, a row past its cutoff is older than this."""
        return max(self.values())

    @property
    def earliest(self) -> datetime:
        return min(self.values())


@dataclass(frozen=True)
class Windows(ByType):
    """How long something may last, by content type: GENERATION_STUCK_AFTER=3h,video=8h is 3h for every type
    but video, 8h for video. A bare duration is a Windows with only a default."""

    default: timedelta | None
    by_type: tuple[tuple[str, timedelta], ...] = ()

    @classmethod
    def of(cls, value: "Windows | timedelta | None") -> "Windows | None":
        """A Windows from a Windows, a bare timedelta (the default for every type) or None."""
        return cls(value) if isinstance(value, timedelta) else value

    @classmethod
    def recorded(cls, default: timedelta | None, by_type_seconds: dict | None) -> "Windows | None":
        """The windows a run recorded (CleanupRun: the default as a duration, the overrides as seconds)."""
        by_type = tuple((name, timedelta(seconds=value)) for name, value in (by_type_seconds or {}).items())
        return cls(default, by_type) if default is not None or by_type else None

    def cutoffs(self, now: datetime) -> Cutoffs:
        """Each type's cutoff at `now` (the database clock, read once per run or request)."""
        return Cutoffs(None if self.default is None else now - self.default,
                       tuple((name, now - window) for name, window in self.by_type))

    def by_type_seconds(self) -> dict:
        """The overrides as {content type: seconds}, for JSON (the report, the run's record)."""
        return {name: window.total_seconds() for name, window in self.by_type}


def _duration_part(part: str, text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"has a bad part {part!r}: {text!r} {exc}") from None


def parse_windows(text: str, *, default_required: bool = True) -> Windows:
    """`3h` (every content type), or a default and per-type windows in one value: `3h,video=8h,story=45m`.

    A bare duration parses exactly as parse_duration. Raises ValueError naming the bad part (the message
    without the whole value; callers name the source): a part that is neither a duration nor TYPE=DURATION,
    a zero, negative or too long duration, a type named twice, two defaults, no default where one is
    required. Any content type is accepted (the backend may add one); checks.py warns of the unknown.
    """
    text = str(text).strip()
    if "," not in text and "=" not in text:
        if text and parse_timespan(text) is None:
            raise ValueError(f"is not a duration ({DURATION_HINT}) nor durations by content type "
                             f"(e.g. {WINDOWS_EXAMPLE})")
        return Windows(parse_duration(text))
    default, default_part, by_type = None, "", {}
    for part in (part.strip() for part in text.split(",")):
        name, is_typed, duration = (piece.strip() for piece in part.partition("="))
        if not is_typed:
            if parse_timespan(part) is None:
                raise ValueError(f"has a bad part {part!r}: not a duration or TYPE=DURATION (e.g. {WINDOWS_EXAMPLE})")
            if default is not None:
                raise ValueError(f"has two defaults ({default_part!r} and {part!r}): give the type of one of "
                                 f"them (e.g. {WINDOWS_EXAMPLE})")
            default, default_part = _duration_part(part, part), part
        elif not CONTENT_TYPE_NAME.fullmatch(name):
            raise ValueError(f"has a bad part {part!r}: not a duration or TYPE=DURATION (e.g. {WINDOWS_EXAMPLE}; "
                             "a type is letters, digits, _ . -)")
        elif name in by_type:
            raise ValueError(f"names {name} twice")
        else:
            by_type[name] = _duration_part(part, duration)
    if default is None and default_required:
        raise ValueError(f"has no default for the other content types (start with a bare duration, "
                         f"e.g. {WINDOWS_EXAMPLE})")
    return Windows(default, tuple(by_type.items()))


def parse_fail_stalled_windows(text: str) -> Windows:
    """parse_windows() where the default may be left out: then the types not named never fail stalled."""
    return parse_windows(text, default_required=False)


@dataclass(frozen=True)
class JobSettings:
    stuck_after: Windows
    lock_ttl: Windows
    fail_stalled_after: Windows | None  # None: never fail stalled batches
    batch_size: int
    lock_timeout: timedelta
    statement_timeout: timedelta
    schedule: str
    log_file: Path

    def __post_init__(self):
        # a bare timedelta (a test's, a caller's) is the default for every content type
        for name in ("stuck_after", "lock_ttl", "fail_stalled_after"):
            object.__setattr__(self, name, Windows.of(getattr(self, name)))

    def overridden(self, **values) -> "JobSettings":
        """These settings with some replaced (the command's options); a None value leaves a setting as it is."""
        return replace(self, **{name: value for name, value in values.items() if value is not None})


# (setting name, JobSettings field, parser, may be empty)
_SETTINGS = [
    ("GENERATION_STUCK_AFTER", "stuck_after", parse_windows, False),
    ("GENERATION_LOCK_TTL", "lock_ttl", parse_windows, False),
    ("GENERATION_FAIL_STALLED_AFTER", "fail_stalled_after", parse_fail_stalled_windows, True),
    ("CLEANUP_BATCH_SIZE", "batch_size", parse_positive_int, False),
    ("CLEANUP_LOCK_TIMEOUT", "lock_timeout", parse_duration, False),
    ("CLEANUP_STATEMENT_TIMEOUT", "statement_timeout", parse_duration, False),
    ("CLEANUP_SCHEDULE", "schedule", parse_schedule, False),
]


def _parsed(name, parse, optional, secret=False):
    raw = getattr(settings, name)
    if optional and (raw is None or str(raw).strip() == ""):
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        # a token or a URL with a capability or a password in it is never echoed
        raise ImproperlyConfigured(f"{name} {exc}" if secret else f"{name}={raw!r} {exc}") from None


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
    for name, _field, parse, optional, secret in _MONITORING_SETTINGS:
        try:
            _parsed(name, parse, optional, secret)
        except ImproperlyConfigured as exc:
            errors.append(str(exc))
    if settings.LOG_FORMAT not in ("text", "json"):
        errors.append(f"LOG_FORMAT={settings.LOG_FORMAT!r} must be 'text' or 'json'")
    return errors


# --- Monitoring: the /metrics endpoint, and what each job run reports (README, "Monitoring") ----

# A scrape or a notification that takes longer than this is not worth waiting for.
MAX_MONITORING_TIMEOUT = timedelta(seconds=60)
MIN_TOKEN_LENGTH = 16


def parse_short_duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value > MAX_MONITORING_TIMEOUT:
        raise ValueError(f"is longer than {int(MAX_MONITORING_TIMEOUT.total_seconds())}s")
    return value


def parse_http_url(text: str) -> str:
    url = str(text).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("is not an http:// or https:// URL")
    return url


def parse_token(text: str) -> str:
    token = str(text).strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"is shorter than {MIN_TOKEN_LENGTH} characters "
                         "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("must be printable ASCII without spaces (it is sent in an HTTP header)")
    return token


def parse_textfile(text: str) -> Path:
    path = Path(str(text).strip())
    if path.suffix != ".prom":
        raise ValueError("must end in .prom (the node exporter's textfile collector reads only those)")
    # like CLEANUP_LOG_FILE: a relative path is taken from the project root, not cron's $HOME
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path


def parse_label_value(text: str) -> str:
    value = str(text).strip()
    if not value.isprintable() or len(value) > 200:
        raise ValueError("must be printable and at most 200 characters")
    return value


@dataclass(frozen=True)
class MonitoringSettings:
    metrics_token: str | None  # None: only staff sessions may read /metrics
    metrics_statement_timeout: timedelta
    textfile: Path | None
    pushgateway_url: str | None
    heartbeat_url: str | None
    timeout: timedelta  # each push and each heartbeat ping
    instance: str  # the Pushgateway grouping key's `instance`

    @property
    def reports_runs(self) -> bool:
        """Whether a job run has anywhere to report to."""
        return bool(self.textfile or self.pushgateway_url or self.heartbeat_url)


# (setting name, MonitoringSettings field, parser, may be empty, never echo the value)
_MONITORING_SETTINGS = [
    ("METRICS_TOKEN", "metrics_token", parse_token, True, True),
    ("METRICS_STATEMENT_TIMEOUT", "metrics_statement_timeout", parse_short_duration, False, False),
    ("CLEANUP_METRICS_TEXTFILE", "textfile", parse_textfile, True, False),
    ("CLEANUP_PUSHGATEWAY_URL", "pushgateway_url", parse_http_url, True, True),
    ("CLEANUP_HEARTBEAT_URL", "heartbeat_url", parse_http_url, True, True),
    ("CLEANUP_MONITORING_TIMEOUT", "timeout", parse_short_duration, False, False),
    ("CLEANUP_METRICS_INSTANCE", "instance", parse_label_value, True, False),
]


def monitoring_settings() -> MonitoringSettings:
    """The parsed monitoring settings; ImproperlyConfigured (one line) on the first bad one."""
    values = {field: _parsed(name, parse, optional, secret)
              for name, field, parse, optional, secret in _MONITORING_SETTINGS}
    values["instance"] = values["instance"] or socket.gethostname()
    return MonitoringSettings(**values)
