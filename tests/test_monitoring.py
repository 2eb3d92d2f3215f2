"""generation.monitoring: what each job run reports about itself (heartbeat pings, a node exporter textfile,
a Pushgateway push) around the command's and cron's service call; a notifier that fails or hangs is a
warning, never a failed run. The real Prometheus, Pushgateway and servers: tests/test_monitoring_e2e.py."""

import logging
import os
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError

from generation import cron, monitoring, services
from generation.conf import monitoring_settings, settings_errors
from generation.db import database_name
from generation.models import CleanupRun

from .factories import make_batch
from .helpers import Recorder, free_port, manage
from .test_metrics import samples, value


class Events(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage(), getattr(record, "fields", {})))

    def named(self, event):
        return [fields for _, message, fields in self.records if message == event]


@pytest.fixture
def events():
    handler, logger = Events(), logging.getLogger("generation")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(autouse=True)
def quiet_settings(settings, tmp_path):
    settings.CLEANUP_LOG_FILE = str(tmp_path / "cleanup.log")
    settings.CLEANUP_METRICS_TEXTFILE = ""
    settings.CLEANUP_PUSHGATEWAY_URL = ""
    settings.CLEANUP_HEARTBEAT_URL = ""
    settings.CLEANUP_MONITORING_TIMEOUT = "2s"
    settings.CLEANUP_METRICS_INSTANCE = "test-host"


def command(*args):
    out = StringIO()
    call_command("cleanup_stuck_generation", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


# --- The heartbeat ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "kind", "url"), [
    ("https://hc.example/ping/abc", "start", "https://hc.example/ping/abc/start"),
    ("https://hc.example/ping/abc/", "fail", "https://hc.example/ping/abc/fail"),
    ("https://hc.example/ping/abc", "success", "https://hc.example/ping/abc"),
    ("https://hc.example/p/key/job?create=1", "start", "https://hc.example/p/key/job/start?create=1"),
])
def test_ping_urls_follow_the_healthchecks_convention(base, kind, url):
    assert monitoring.ping_url(base, kind) == url


@pytest.mark.django_db
def test_a_good_run_pings_start_then_success_with_the_summary_line(settings):
    make_batch((10, 0, 0, 6, 1))
    with Recorder() as monitor:
        settings.CLEANUP_HEARTBEAT_URL = f"{monitor.url}/ping/abc"
        out = command()
    start, end = monitor.requests
    assert start == ("POST", "/ping/abc/start", "")
    summary = out.splitlines()[-1]
    assert summary.startswith("1 stuck batches examined, repaired 1") and summary.endswith("outcome ok, run #"
                                                                                           f"{CleanupRun.objects.get().pk}")
    assert end == ("POST", "/ping/abc", summary)


@pytest.mark.django_db
def test_a_run_with_errors_pings_fail_and_still_exits_1(settings):
    make_batch((3, 0, -1, 2, 0))
    with Recorder() as monitor:
        settings.CLEANUP_HEARTBEAT_URL = f"{monitor.url}/ping/abc"
        with pytest.raises(CommandError, match="cleanup completed with errors: batch #"):
            command()
    (_, start, _), (method, path, body) = monitor.requests
    assert (start, method, path) == ("/ping/abc/start", "POST", "/ping/abc/fail")
    assert body.startswith("1 stuck batches examined, repaired 0") and ", outcome errors, run #" in body


@pytest.mark.django_db
def test_a_dry_run_is_not_the_job_and_reports_nothing(settings, tmp_path):
    settings.CLEANUP_METRICS_TEXTFILE = str(tmp_path / "cleanup.prom")
    with Recorder() as monitor:
        settings.CLEANUP_HEARTBEAT_URL = monitor.url
        command("--dry-run")
    assert monitor.requests == [] and not (tmp_path / "cleanup.prom").exists()


@pytest.mark.django_db
def test_the_database_unreachable_from_the_command_pings_fail_with_the_error_line(settings, monkeypatch):
    def unreachable(**kwargs):
        raise OperationalError("connection failed: connection refused")

    monkeypatch.setattr(services, "cleanup", unreachable)
    with Recorder() as monitor:
        settings.CLEANUP_HEARTBEAT_URL = monitor.url
        with pytest.raises(CommandError) as raised:
            command()
    assert monitor.requests[-1] == ("POST", "/fail", str(raised.value))
    assert str(raised.value) == f"cannot reach the {database_name()}: connection failed: connection refused"


# --- Cron: the same, and the textfile ---------------------------------------------------------------


@pytest.mark.django_db
def test_cron_reports_a_good_run_then_a_failed_one_keeping_the_last_success(settings, tmp_path, monkeypatch):
    textfile = tmp_path / "textfile" / "butter_cleanup.prom"
    settings.CLEANUP_METRICS_TEXTFILE = str(textfile)
    make_batch((10, 0, 0, 6, 1))
    make_batch((10, 1, 1, 3, 2))  # stalled
    with Recorder() as monitor:
        settings.CLEANUP_HEARTBEAT_URL = monitor.url
        before = time.time()
        report = cron.run_cleanup()
        good = samples(textfile.read_text())
        assert [path for _, path, _ in monitor.requests] == ["/start", "/"]

        def unreachable(**kwargs):
            raise OperationalError("connection failed: connection refused")

        monkeypatch.setattr(services, "cleanup", unreachable)
        assert cron.run_cleanup() is None
        failed = samples(textfile.read_text())
    assert monitor.requests[-1] == ("POST", "/fail", f"cleanup failed on {database_name()}: "
                                                     "OperationalError: connection failed: connection refused")
    assert value(good, "butter_cleanup_job_last_run_outcome", outcome="ok") == 1
    assert value(good, "butter_cleanup_job_last_run_repaired_batches", rule="no_active_tasks") == 1
    assert value(good, "butter_cleanup_job_last_run_reported_batches", reason="stalled") == 1
    assert value(good, "butter_cleanup_job_last_run_examined_batches") == report.statuses.examined == 2
    assert value(good, "butter_cleanup_job_schedule_interval_seconds") == 1800
    success = value(good, "butter_cleanup_job_last_success_timestamp_seconds")
    assert before <= value(good, "butter_cleanup_job_last_run_start_timestamp_seconds") <= success <= time.time()
    # the failed run: its own outcome and times; the last success and the figures of the last run that
    # reached the database are kept
    assert value(failed, "butter_cleanup_job_last_run_outcome", outcome="failed") == 1
    assert value(failed, "butter_cleanup_job_last_run_outcome", outcome="ok") == 0
    assert value(failed, "butter_cleanup_job_last_success_timestamp_seconds") == success
    assert value(failed, "butter_cleanup_job_last_completed_timestamp_seconds") == success
    assert value(failed, "butter_cleanup_job_last_run_start_timestamp_seconds") > success
    assert value(failed, "butter_cleanup_job_last_run_repaired_batches", rule="no_active_tasks") == 1
    assert [name for name in os.listdir(textfile.parent)] == [textfile.name]  # no temporary file left


@pytest.mark.django_db
def test_the_textfile_is_replaced_by_rename_never_rewritten_in_place(settings, tmp_path):
    textfile = tmp_path / "butter_cleanup.prom"
    settings.CLEANUP_METRICS_TEXTFILE = str(textfile)
    cron.run_cleanup()
    reader = textfile.open()  # the node exporter in the middle of reading the first version
    first = os.stat(textfile).st_ino
    cron.run_cleanup()
    assert os.stat(textfile).st_ino != first  # a new file took the name at once
    assert "butter_cleanup_job_last_run_outcome" in reader.read()  # the old one is still whole
    reader.close()


# --- Pushgateway ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_run_is_pushed_grouped_by_job_and_instance_with_post(settings):
    make_batch((10, 0, 0, 6, 1))
    with Recorder() as gateway:
        settings.CLEANUP_PUSHGATEWAY_URL = gateway.url
        command()
    [(method, path, body)] = gateway.requests
    # POST replaces only the pushed names: the last success survives a failed run's push
    assert (method, path) == ("POST", "/metrics/job/butter_cleanup/instance/test-host")
    assert value(samples(body), "butter_cleanup_job_last_run_repaired_batches", rule="no_active_tasks") == 1


# --- A notifier that fails is a warning --------------------------------------------------------------


@pytest.mark.django_db
def test_unreachable_notifiers_are_warnings_and_the_run_stands(settings, tmp_path, events):
    closed = f"http://127.0.0.1:{free_port()}"
    settings.CLEANUP_HEARTBEAT_URL = f"{closed}/ping/secret-uuid"
    settings.CLEANUP_PUSHGATEWAY_URL = closed
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings.CLEANUP_METRICS_TEXTFILE = str(blocker / "cleanup.prom")  # its folder cannot exist
    make_batch((10, 0, 0, 6, 1))
    out = command()
    assert "outcome ok" in out and CleanupRun.objects.get().outcome == "ok"
    pings = events.named("heartbeat_failed")
    assert [ping["ping"] for ping in pings] == ["start", "success"]
    assert all(ping["host"] == closed.removeprefix("http://") and "Connection refused" in ping["error"]
               for ping in pings)
    assert "secret-uuid" not in repr(events.records)  # the ping URL's path is a capability
    [push] = events.named("metrics_push_failed")
    [textfile] = events.named("metrics_textfile_failed")
    assert textfile["path"] == str(blocker / "cleanup.prom")
    assert all(level == "WARNING" for level, message, _ in events.records if message.endswith("_failed"))
    assert push


@pytest.mark.django_db
def test_a_monitor_that_hangs_costs_the_timeout_not_the_run(settings, events):
    settings.CLEANUP_MONITORING_TIMEOUT = "0.3s"
    with Recorder(delay=5) as slow:
        settings.CLEANUP_HEARTBEAT_URL = slow.url
        started = time.monotonic()
        command()
        elapsed = time.monotonic() - started
    assert elapsed < 2.5, elapsed  # two pings, 0.3 s each at most
    assert [ping["ping"] for ping in events.named("heartbeat_failed")] == ["start", "success"]
    assert "timed out" in events.named("heartbeat_failed")[0]["error"]


@pytest.mark.django_db
def test_a_bad_monitoring_setting_disables_reporting_not_the_run(settings, events):
    settings.CLEANUP_HEARTBEAT_URL = "ftp://hc.example/secret-uuid"
    out = command()
    assert "outcome ok" in out
    [disabled] = events.named("monitoring_disabled")
    assert disabled["error"] == "CLEANUP_HEARTBEAT_URL is not an http:// or https:// URL"


# --- The settings ---------------------------------------------------------------------------------


def test_defaults_report_nothing(settings):
    conf = monitoring_settings()
    assert not conf.reports_runs and conf.metrics_token is None  # /metrics: staff sessions only
    assert conf.timeout == timedelta(seconds=2) and conf.metrics_statement_timeout == timedelta(seconds=5)
    assert conf.instance == "test-host"
    settings.CLEANUP_METRICS_INSTANCE = ""
    assert monitoring_settings().instance  # the host name


def test_a_relative_textfile_is_taken_from_the_project_root(settings):
    settings.CLEANUP_METRICS_TEXTFILE = "metrics/cleanup.prom"
    assert monitoring_settings().textfile == settings.BASE_DIR / "metrics" / "cleanup.prom"


def test_bad_monitoring_settings_are_one_line_each_never_echoing_secrets(settings):
    settings.METRICS_TOKEN = "short-secret"
    settings.CLEANUP_PUSHGATEWAY_URL = "pushgateway:9091"
    settings.CLEANUP_HEARTBEAT_URL = "file:///etc/passwd"
    settings.CLEANUP_METRICS_TEXTFILE = "/var/lib/node_exporter/cleanup.txt"
    settings.CLEANUP_MONITORING_TIMEOUT = "5m"
    settings.METRICS_STATEMENT_TIMEOUT = "soon"
    errors = settings_errors()
    assert errors == [
        "METRICS_TOKEN is shorter than 16 characters (make one with: python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))')",
        "METRICS_STATEMENT_TIMEOUT='soon' is not a duration (use e.g. 90m, 3h, 1h30m, 45s or plain seconds)",
        "CLEANUP_METRICS_TEXTFILE='/var/lib/node_exporter/cleanup.txt' must end in .prom (the node exporter's "
        "textfile collector reads only those)",
        "CLEANUP_PUSHGATEWAY_URL is not an http:// or https:// URL",
        "CLEANUP_HEARTBEAT_URL is not an http:// or https:// URL",
        "CLEANUP_MONITORING_TIMEOUT='5m' is longer than 60s",
    ]
    assert "short-secret" not in " ".join(errors) and "passwd" not in " ".join(errors)
    with pytest.raises(ImproperlyConfigured, match="^METRICS_TOKEN is shorter"):
        monitoring_settings()


def test_only_a_run_that_exports_loads_prometheus_client(tmp_path):
    # the cron run of a quiet table is mostly start-up: loading prometheus_client for nothing cost ~10 ms of it
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    assert manage("migrate", "--verbosity", "0", env=env).returncode == 0
    probe = ("import sys; from django.core.management import call_command; call_command('check'); "
             "call_command('cleanup_stuck_generation', '-v', '0'); print('prometheus_client' in sys.modules)")
    quiet = manage("shell", "-c", probe, env=env)
    exporting = manage("shell", "-c", probe, env={**env, "CLEANUP_METRICS_TEXTFILE": str(tmp_path / "job.prom")})
    assert quiet.returncode == 0 and exporting.returncode == 0, quiet.stderr + exporting.stderr
    assert quiet.stdout.split()[-1] == "False"
    assert exporting.stdout.split()[-1] == "True" and (tmp_path / "job.prom").exists()
