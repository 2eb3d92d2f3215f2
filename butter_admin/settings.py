"""Settings for butter_admin, all from the environment (django-environ).

An optional `.env` at the project root is read by absolute path, so a cron job
(nearly empty environment, working directory $HOME) sees the same
configuration as an interactive shell. Real environment variables win over it.
Every variable is listed, with its default, in README.md ("Configuration").
"""

import logging
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from generation.conf import parse_duration, parse_positive_int  # plain parsers: no model, no settings read

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def _read_env_file(path):
    """Read .env (real environment variables win), then tidy what django-environ leaves of an
    inline comment: it keeps the blanks before `# ...` and the quotes of `"*/30 * * * *"  # ...`."""
    environ.Env.read_env(path, parse_comments=True)
    try:
        text = Path(path).read_text()
    except OSError:
        return  # no .env: the environment alone
    for name in re.findall(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", text, re.MULTILINE):
        value = os.environ.get(name)
        if value is None:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ[name] = value


# ENV_FILE points elsewhere (tests, several deployments on one host).
_read_env_file(env.str("ENV_FILE", default=str(BASE_DIR / ".env")))

DEBUG = env.bool("DEBUG", default=False)

if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-local-development-only")
else:
    SECRET_KEY = env.str("SECRET_KEY", default="")
    if not SECRET_KEY:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set: set it in the environment or .env (required when DEBUG is false)"
        )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_crontab",
    "axes",  # login lockout (the block "Login lockout" below)
    "generation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files without DEBUG (the block "Static files" below)
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # turns a refused login into the lockout page; last, as axes asks
]

ROOT_URLCONF = "butter_admin.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "butter_admin.wsgi.application"


def _database_from_env():
    default = f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # django-environ's warning about a URL it cannot read prints the password
            database = env.db_url_config(env.str("DATABASE_URL", default="") or default)
    except ValueError:  # e.g. a port that is not a number
        database = {}
    if database.get("ENGINE") not in ("django.db.backends.sqlite3", "django.db.backends.postgresql"):
        # Never the URL itself in the message: it carries the password (which may be what broke the parse).
        raise ImproperlyConfigured(
            "DATABASE_URL is not a database URL: use postgres://USER:PASSWORD@HOST:PORT/NAME "
            "(percent-encode / @ : in the password) or sqlite:///PATH"
        )
    if database["ENGINE"] == "django.db.backends.sqlite3":
        # A relative sqlite path would resolve against the working directory,
        # which is $HOME under cron: anchor it to the project root instead.
        name = Path(database["NAME"])
        if str(name) != ":memory:" and not name.is_absolute():
            database["NAME"] = str(BASE_DIR / name)
    elif database["ENGINE"] == "django.db.backends.postgresql":
        # Fail fast with a clear error instead of hanging when the server is
        # unreachable; name the connection so DBAs can spot it in pg_stat_activity.
        database.setdefault("OPTIONS", {})
        try:
            connect_timeout = env.int("DATABASE_CONNECT_TIMEOUT", default=5)
        except ValueError:
            raise ImproperlyConfigured(
                f"DATABASE_CONNECT_TIMEOUT={env.str('DATABASE_CONNECT_TIMEOUT')!r} is not a whole number of seconds"
            ) from None
        database["OPTIONS"].setdefault("connect_timeout", connect_timeout)
        database["OPTIONS"].setdefault("application_name", "butter_admin")
        # Django binds parameters client side, so psycopg never prepares a statement; left on, it would still
        # keep the text of the last 100 statements to count them (a page's, with its ids inlined, is ~20 KB)
        database["OPTIONS"].setdefault("prepare_threshold", None)
    return database


DATABASES = {"default": _database_from_env()}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# One date-time format in the admin, with the time zone: butter_admin/formats/en/formats.py
FORMAT_MODULE_PATH = ["butter_admin.formats"]
USE_I18N = True
USE_TZ = True

# --- Static files (README "Running in production") --------------------------------------------------
# `collectstatic` (run when the image is built) copies them into STATIC_ROOT under content-hashed names
# with gzip copies beside them; WhiteNoise serves them from the WSGI process with DEBUG off, the hashed
# names cached for a year (a new release has new names), so no separate web server is needed.
STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}


def _parsed(name, default, parse):
    """A setting through one of generation.conf's parsers; a bad value stops start-up with one line."""
    value = env.str(name, default=default)
    try:
        return parse(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} {exc}") from None


# --- HTTPS and cookies (README "Running in production"; `manage.py check --deploy` is clean with it) ---
# Each is on unless DEBUG and can be changed from the environment. Behind a TLS-terminating proxy set
# BEHIND_TLS_PROXY=true: the proxy's X-Forwarded-Proto then tells Django the request came over HTTPS
# (the proxy must overwrite that header, never pass on the client's).
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# the probes come from the kubelet over plain HTTP straight to the pod: answered, never redirected
SECURE_REDIRECT_EXEMPT = [r"^health/"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 3600)
# Off unless set: both commit more than this host to HTTPS (every subdomain; browsers' preload lists).
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("BEHIND_TLS_PROXY", default=False) else None
# e.g. security.W005,security.W021 where the HSTS settings above cannot be on (the README says when)
SILENCED_SYSTEM_CHECKS = env.list("SILENCED_SYSTEM_CHECKS", default=[])
# An admin session ends after this long without a request; every request starts the time again.
SESSION_COOKIE_AGE = int(_parsed("SESSION_IDLE_TIMEOUT", "8h", parse_duration).total_seconds())
SESSION_SAVE_EVERY_REQUEST = True

# --- Login lockout (django-axes; README "Admin") -------------------------------------------------------
# LOGIN_FAILURE_LIMIT failed logins for one username from one address lock that pair out for
# LOGIN_COOLOFF, counted from the last failure, even with the right password; attempts during the
# lockout do not extend it. Unlock early: `python manage.py axes_reset_username NAME`.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses a locked-out login before the password is checked
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = _parsed("LOGIN_FAILURE_LIMIT", "5", parse_positive_int)
AXES_COOLOFF_TIME = _parsed("LOGIN_COOLOFF", "15m", parse_duration)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_ENABLE_ACCESS_FAILURE_LOG = True  # every failure, with whether it was refused by a lockout, in the admin
AXES_LOCKOUT_TEMPLATE = "admin/locked_out.html"
# The address counted: the TCP peer, or behind a reverse proxy only the header it writes
# (butter_admin/client_ip.py); never a header the client could set.
AXES_CLIENT_IP_CALLABLE = "butter_admin.client_ip.client_ip"
CLIENT_IP_HEADER = env.str("CLIENT_IP_HEADER", default="")
CLIENT_IP_PROXY_COUNT = _parsed("CLIENT_IP_PROXY_COUNT", "1", parse_positive_int)

# --- The cleanup job ------------------------------------------------------
# Durations are kept as the strings the operator wrote; generation.conf parses
# them (90m, 3h, 1h30m, 45s, plain seconds) and the system checks refuse bad
# values with one line naming the variable.
GENERATION_STUCK_AFTER = env.str("GENERATION_STUCK_AFTER", default="3h")
GENERATION_LOCK_TTL = env.str("GENERATION_LOCK_TTL", default="3h")
GENERATION_FAIL_STALLED_AFTER = env.str("GENERATION_FAIL_STALLED_AFTER", default="")  # empty = never
CLEANUP_BATCH_SIZE = env.str("CLEANUP_BATCH_SIZE", default="1500")
CLEANUP_LOCK_TIMEOUT = env.str("CLEANUP_LOCK_TIMEOUT", default="5s")
CLEANUP_STATEMENT_TIMEOUT = env.str("CLEANUP_STATEMENT_TIMEOUT", default="60s")
CLEANUP_SCHEDULE = env.str("CLEANUP_SCHEDULE", default="*/30 * * * *")
# A relative path would resolve against the working directory ($HOME under cron): anchor it to
# the project root (an absolute path stays as it is).
CLEANUP_LOG_FILE = str(BASE_DIR / env.str("CLEANUP_LOG_FILE", default="logs/cleanup.log"))

# --- Monitoring (README "Monitoring"; generation.conf parses and checks these) ---
# /metrics: readable with `Authorization: Bearer $METRICS_TOKEN` (empty: staff sessions only).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_STATEMENT_TIMEOUT = env.str("METRICS_STATEMENT_TIMEOUT", default="5s")
# What each job run reports, each optional: a node exporter textfile, a Pushgateway, a heartbeat URL.
CLEANUP_METRICS_TEXTFILE = env.str("CLEANUP_METRICS_TEXTFILE", default="")
CLEANUP_PUSHGATEWAY_URL = env.str("CLEANUP_PUSHGATEWAY_URL", default="")
CLEANUP_HEARTBEAT_URL = env.str("CLEANUP_HEARTBEAT_URL", default="")
CLEANUP_MONITORING_TIMEOUT = env.str("CLEANUP_MONITORING_TIMEOUT", default="5s")
CLEANUP_METRICS_INSTANCE = env.str("CLEANUP_METRICS_INSTANCE", default="")  # empty: the host name

# --- The schedule (django-crontab; docs/operations.md, "Via cron") ---------
# `manage.py crontab add` (make cron-install) writes one line into the user's crontab:
#   SCHEDULE mkdir -p LOGDIR && [ENV_FILE=...] PYTHON MANAGE_PY crontab run HASH --settings=M >> LOG 2>&1 # COMMENT
# cron runs it with PATH=/usr/bin:/bin from $HOME, so every path in it is absolute, and the
# configuration comes from .env (read by absolute path) or the ENV_FILE named at install time.
# HASH is an md5 of the CRONJOBS entry, looked up again by the runner in the settings it reads
# under cron: install from the environment cron will have (make cron-install does, with env -i).
# The redirect catches what the job cannot log itself (start-up errors, the runner's tracebacks);
# mkdir -p first, because a missing log folder would stop the shell before the job even starts.
CRONJOBS = [
    (" ".join(CLEANUP_SCHEDULE.split()), "generation.cron.run_cleanup", f">> {shlex.quote(CLEANUP_LOG_FILE)} 2>&1"),
]
CRONTAB_LOCK_JOBS = True  # the runner flocks /tmp/django_crontab_HASH.lock: an overrunning job is not started twice
# Tags this project's lines, so `crontab add/remove` never touches other lines; the project path
# in it keeps two checkouts on one host apart.
CRONTAB_COMMENT = env.str("CRONTAB_COMMENT", default=f"butter_admin cleanup_stuck_generation {BASE_DIR}")
CRONTAB_DJANGO_SETTINGS_MODULE = os.environ.get("DJANGO_SETTINGS_MODULE", "butter_admin.settings")
CRONTAB_DJANGO_MANAGE_PATH = shlex.quote(str(BASE_DIR / "manage.py"))
# The interpreter that installs the schedule (the virtualenv's, by absolute path) also runs it.
CRONTAB_PYTHON_EXECUTABLE = shlex.quote(env.str("CRONTAB_PYTHON_EXECUTABLE", default=sys.executable))
CRONTAB_EXECUTABLE = env.str("CRONTAB_EXECUTABLE", default="/usr/bin/crontab")
_ENV_FILE = env.str("ENV_FILE", default="")
CRONTAB_COMMAND_PREFIX = f"mkdir -p {shlex.quote(str(Path(CLEANUP_LOG_FILE).parent))} &&" + (
    f" ENV_FILE={shlex.quote(os.path.abspath(_ENV_FILE))}" if _ENV_FILE else ""
)

# --- Logging --------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
if LOG_LEVEL not in logging.getLevelNamesMapping():
    # logging.config would stop start-up with a traceback; one line instead
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
LOG_FORMAT = env.str("LOG_FORMAT", default="text").lower()

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "event": {"()": "generation.logging.EventFormatter", "style": LOG_FORMAT},
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "event"},
    },
    "loggers": {
        "generation": {"handlers": ["stdout"], "level": LOG_LEVEL, "propagate": False},
    },
}
