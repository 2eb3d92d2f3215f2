"""A job run's own metrics, for the node exporter's textfile collector and a Pushgateway (monitoring.py
decides whether a run exports; this module is imported only when it does, with prometheus_client).

The names are /metrics' own (metrics.py): the run's times and outcome as the job's history, and for a run
that went through, its figures from the report.
"""

import logging
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import pushadd_to_gateway, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from .conf import MonitoringSettings, job_settings
from .db import one_line
from .metrics import PREFIX, RunTimes, gauge, registry_of, run_history_families, schedule_interval
from .models import Outcome

logger = logging.getLogger("generation.monitoring")

JOB = "butter_cleanup"  # the Pushgateway's job label
COMPLETED = (Outcome.OK, Outcome.ERRORS)  # ran to the end: the schedule is alive


def run_families(run):  # a monitoring.JobRun
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


def push(conf: MonitoringSettings, families):
    """Add the families to the Pushgateway's group for this job and instance (POST: the group's other
    families, such as the last success's timestamp, stay)."""
    pushadd_to_gateway(conf.pushgateway_url, job=JOB, registry=registry_of(families),
                       grouping_key={"instance": conf.instance}, timeout=conf.timeout.total_seconds())
