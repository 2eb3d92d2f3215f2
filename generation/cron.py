"""The scheduled entry point: cron runs `manage.py crontab run HASH`, which calls `run_cleanup`.

django-crontab's runner catches every exception from the job and exits 0, and
cron itself tells no one, so a failed run must leave its trace where an
operator looks: the CleanupRun row (outcome `errors` with the error text,
written by services whenever the database still takes writes) and the log file
(CLEANUP_LOG_FILE), which gets the summary of every run and the error line of a
failed one, even when the database is unreachable.
"""

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import InterfaceError, OperationalError

from . import monitoring, services
from .conf import job_settings
from .db import ConnectionLost, database_name, one_line
from .models import Trigger
from .report import format_summary, format_totals

logger = logging.getLogger(__name__)

# The database unreachable or lost mid-run: operational, not a bug.
EXPECTED_FAILURES = (OperationalError, InterfaceError, ConnectionLost)


def run_cleanup():
    """One scheduled run: the same service as the command, with trigger `cron`."""
    with monitoring.job_run() as run:  # heartbeat, textfile, Pushgateway: each if configured
        try:
            job = job_settings()
            report = services.cleanup(job=job, trigger=Trigger.CRON)
        except Exception as exc:
            error = f"cleanup failed on {database_name()}: {type(exc).__name__}: {one_line(exc)}"
            run.failed(error)
            logger.error("cron_failed", extra={"fields": {"error": error}})
            # the raw setting, not job_settings(): a bad setting must not hide its own error
            _append(Path(settings.CLEANUP_LOG_FILE), [f"ERROR: {error}"])
            if isinstance(exc, EXPECTED_FAILURES):
                return None  # the line says it all; a traceback every 30 minutes of an outage would bury it
            raise  # a bug: the runner prints the traceback on stderr, which the crontab line appends to the log
        run.finished(report)
    lines = format_summary(report)
    level = logging.WARNING if report.errors else logging.INFO
    logger.log(level, "cron_summary", extra={"fields": {"run_id": report.run_id, "summary": format_totals(report)}})
    _append(job.log_file, lines)
    return report


def _append(log_file: Path, lines):
    # the logger's lines (stdout) go to the same file through the crontab redirect: flush them
    # first, so the file reads in order
    sys.stdout.flush()
    sys.stderr.flush()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a", encoding="utf-8") as out:
            out.writelines(f"{stamp} cron {line}\n" for line in lines)
    except OSError as exc:
        # stderr still reaches cron's redirect or mail; the system check generation.W002 warns of this
        print(f"cannot write {log_file}: {exc}; the lines were: {lines}", file=sys.stderr)




