"""What each run of the job reports about itself (the command, cron, a CronJob), each part optional:

- CLEANUP_HEARTBEAT_URL, a dead-man's switch in healthchecks.io's convention: `<url>/start` when a run
  starts, `<url>` when it ends well (outcome ok, or skipped because another run holds the lock),
  `<url>/fail` when it ends with errors or cannot reach the database; the summary line is the body.
- CLEANUP_METRICS_TEXTFILE, the run's metrics for the node exporter's textfile collector: written to a
  temporary file beside it and renamed, so the exporter never reads half a file.
- CLEANUP_PUSHGATEWAY_URL, the same metrics pushed to a Pushgateway, grouped by job and instance.

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
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import pushadd_to_gateway, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from .conf import MonitoringSettings, job_settings, monitoring_settings
from .db import one_line
from .metrics import FAILED, PREFIX, RunTimes, gauge, registry_of, run_history_families, schedule_interval
from .models import Outcome
from .report import format_totals
from .results import CleanupReport

logger = logging.getLogger(__name__)

JOB = "butter_cleanup"  # the Pushgateway's job label
COMPLETED = (Outcome.OK, Outcome.ERRORS)  # ran to the end: the schedule is alive
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
        families = run_families(run)
        if conf.textfile:
            _attempt("metrics_textfile_failed", {"path": str(conf.textfile)},
                     lambda: write_textfile(conf.textfile, families))
        if conf.pushgateway_url:
            _attempt("metrics_push_failed", {"host": urlsplit(conf.pushgateway_url).netloc},
                     lambda: pushadd_to_gateway(conf.pushgateway_url, job=JOB, registry=registry_of(families),
                                                grouping_key={"instance": conf.instance},
                                                timeout=conf.timeout.total_seconds()))


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


# --- The run's metrics ---------------------------------------------------------------------------


def run_families(run: JobRun):
    """The run's metrics: its times and outcome under the names /metrics uses for the job's history, and,
    for a run that went through (ok or errors), its figures from the report."""
    completed = run.outcome in COMPLETED
    try:
        interval = schedule_interval(job_settings().schedule, hour=run.started_at.replace(minute=0, second=0,
                                                                                          microsecond=0))
    except ImproperlyConfigured:
        interval = None  # the system check reports it
    families = run_history_families(
        last_run=RunTimes(run.started_at, run.ended_at, run.outcome), schedule_interval=interval,
        last_completed_at=run.ended_at if completed else None,
        last_success_at=run.ended_at if run.outcome == Outcome.OK else None)
    if completed:
        families += report_families(run.report.as_dict())
    return families


def report_families(report: dict):
    """A completed run's figures, from CleanupReport.as_dict()."""
    s, locks = report["statuses"], report["locks"]
    examined = gauge("cleanup_job_last_run_examined_batches", "Stuck batches the job's last run examined.")
    examined.add_metric([], s["examined"])
    repaired = gauge("cleanup_job_last_run_repaired_batches", "Batches the job's last run repaired, by rule.",
                      ["rule"])
    for rule, n in s["by_rule"].items():
        repaired.add_metric([rule], n)
    reported = gauge("cleanup_job_last_run_reported_batches",
                      "Batches the job's last run reported and left alone, by reason.", ["reason"])
    for reason in ("stalled", "corrupt", "unknown_status", "never_updated"):
        reported.add_metric([reason], s[reason])
    removed = gauge("cleanup_job_last_run_removed_locks", "Locks the job's last run removed, by rule.", ["rule"])
    removed.add_metric(["expired_lock"], locks["removed"])
    removed.add_metric(["released_with_batch"], s["locks_released"])
    errors = gauge("cleanup_job_last_run_errors", "Errors the job's last run reported (corrupt batches, pages "
                    "rolled back...; at most 100 are kept).")
    errors.add_metric([], len(report["errors"]))
    return [examined, repaired, reported, removed, errors]


def write_textfile(path: Path, families):
    """Write the families, keeping the file's other families of ours; atomically (a temporary file in the
    same folder, then rename), so the node exporter never reads half a file."""
    names = {family.name for family in families}
    try:
        previous = list(text_string_to_metric_families(path.read_text()))
    except FileNotFoundError:
        previous = []
    except (OSError, ValueError) as exc:
        logger.warning("metrics_textfile_unreadable", extra={"fields": {"path": str(path), "error": one_line(exc)}})
        previous = []
    kept = [family for family in previous if family.name.startswith(f"{PREFIX}_") and family.name not in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry_of([*families, *kept]))
