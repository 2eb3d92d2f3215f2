"""What each run of the job reports about itself (the command, cron, a CronJob), each part optional:

- CLEANUP_HEARTBEAT_URL, a dead-man's switch in healthchecks.io's convention: `<url>/start` when a run
  starts, `<url>` when it ends well (outcome ok, or skipped because another run holds the lock),
  `<url>/fail` when it ends with errors or cannot reach the database; the summary line is the body.
- CLEANUP_METRICS_TEXTFILE, the run's metrics for the node exporter's textfile collector: written to a
  temporary file beside it and renamed, so the exporter never reads half a file.
- CLEANUP_PUSHGATEWAY_URL, the same metrics pushed to a Pushgateway, grouped by job and instance.
  The run's metrics and both sinks are export.py's.

Both metric sinks keep what a run has no figures for (POST semantics): the last success's timestamp
survives a failed run, and a run that could not reach the database leaves the figures of the last run
that did. A notification that fails is a warning in the event log, bounded by
CLEANUP_MONITORING_TIMEOUT; it never fails the run. The entry points wrap the service call:

    with monitoring.job_run() as run:
        run.finished(services.cleanup(...))
"""

import logging
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

from .conf import MonitoringSettings, monitoring_settings
from .db import one_line
from .models import FAILED, Outcome
from .report import format_totals
from .results import CleanupReport

logger = logging.getLogger(__name__)

HEALTHY = (Outcome.OK, Outcome.SKIPPED)  # the heartbeat's "ends well"


class JobRun:
    """One run as the entry point saw it: the report it got back, or the line saying why there is none."""

    def __init__(self):
        self.started_at = datetime.now(UTC)
        self.ended_at = None
        self.report: CleanupReport | None = None
        self.failure: str | None = None

    def finished(self, report: CleanupReport):
        self.report = report

    def failed(self, line: str):
        self.failure = line

    @property
    def outcome(self) -> str:
        return self.report.outcome if self.report is not None else FAILED

    @property
    def summary(self) -> str:
        return format_totals(self.report) if self.report is not None else self.failure or ""


@contextmanager
def job_run(*, enabled: bool = True):
    """Report the run that happens inside the block (a dry run passes enabled=False: it is not the job).
    An exception leaving the block is a failed run, described by the line given to run.failed() or by the
    exception itself; it is re-raised untouched."""
    conf = _settings() if enabled else None
    run = JobRun()
    if conf is None or not conf.reports_runs:
        yield run
        return
    if conf.heartbeat_url:
        _heartbeat(conf, "start", "")
    try:
        yield run
    except BaseException as exc:
        if run.report is None and run.failure is None:
            run.failed(one_line(exc))
        raise
    finally:
        run.ended_at = datetime.now(UTC)
        _deliver(conf, run)


def _settings() -> MonitoringSettings | None:
    try:
        return monitoring_settings()
    except ImproperlyConfigured as exc:  # the system check says so too; the run itself goes on
        logger.warning("monitoring_disabled", extra={"fields": {"error": str(exc)}})
        return None


def _deliver(conf: MonitoringSettings, run: JobRun):
    if conf.heartbeat_url:
        _heartbeat(conf, "success" if run.outcome in HEALTHY else "fail", run.summary)
    if conf.textfile or conf.pushgateway_url:
        # imported here: only a run that exports loads prometheus_client (~10 ms of every quiet cron run)
        from . import export

        families = export.run_families(run)
        if conf.textfile:
            _attempt("metrics_textfile_failed", {"path": str(conf.textfile)},
                     lambda: export.write_textfile(conf.textfile, families))
        if conf.pushgateway_url:
            _attempt("metrics_push_failed", {"host": urlsplit(conf.pushgateway_url).netloc},
                     lambda: export.push(conf, families))


def _attempt(event, fields, action):
    try:
        action()
    except Exception as exc:  # whatever went wrong, the run's own result stands
        logger.warning(event, extra={"fields": {**fields, "error": one_line(exc)}})


# --- The heartbeat -------------------------------------------------------------------------------


def ping_url(base: str, kind: str) -> str:
    """`<base>/start`, `<base>` or `<base>/fail`, keeping a query string where it belongs."""
    if kind == "success":
        return base
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{kind}"))


def _heartbeat(conf: MonitoringSettings, kind: str, body: str):
    # POST, so the body (the summary line) shows in the monitor's log; the URL's path is a secret of sorts
    # (anyone who has it can ping), so only its host goes into the event log.
    # S310: the scheme is http(s), checked by conf.parse_http_url.
    request = urllib.request.Request(  # noqa: S310
        ping_url(conf.heartbeat_url, kind), data=body.encode(), method="POST",
        headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": "butter_admin cleanup"})

    def send():
        with urllib.request.urlopen(request, timeout=conf.timeout.total_seconds()) as response:  # noqa: S310
            response.read()

    _attempt("heartbeat_failed", {"ping": kind, "host": urlsplit(conf.heartbeat_url).netloc}, send)
