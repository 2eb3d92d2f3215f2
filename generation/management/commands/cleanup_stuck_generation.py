import argparse
import sys

from django.core.management.base import CommandError
from django.db import InterfaceError, OperationalError

from generation import monitoring, services
from generation.checks import JOB_CHECKS
from generation.conf import job_settings, parse_fail_stalled_windows, parse_positive_int, parse_windows
from generation.db import ConnectionLost, database_name
from generation.logging import command_event_log
from generation.management.base import OperatorCommand, unreachable, write_json
from generation.models import ContentType, Outcome, Trigger
from generation.report import (
    format_event_log,
    format_lock_line,
    format_status_line,
    format_summary,
    format_windows,
)

PROGRESS_BAR_MIN_PAGES = 3


def _argument(parse):
    """An argparse type from one of conf's parsers, so options and settings accept the same values."""

    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def _account(text):
    # account_id is a bigint: a larger number matches nothing, and SQLite cannot even bind it (OverflowError)
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an account id (a whole number)") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not an account id (out of the bigint range)")
    return value


def _content_type(text):
    if text not in ContentType.values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a content type (choose from {', '.join(ContentType.values)})")
    return text




class Command(OperatorCommand):
    help = (
        "Repair generation batches stuck in queuing/processing (all tasks accounted for, no active tasks, "
        "counters over the total) and delete expired generation locks; stalled and corrupt batches are reported. "
        "Meant to run from cron every 30 minutes; exits 1 when the run found errors (or cannot reach the "
        "database), 2 on bad usage. "
        "stdout carries the report, ending with the totals line; -v 0: the totals line only; 1 (default): also "
        "a line per batch and lock; 2: also a line per page; 3: also the event log on stderr at a terminal. "
        "The event log (one line per event) goes to stderr, except at a terminal, where it is appended to "
        "CLEANUP_LOG_FILE unless -v 3 shows it."
    )
    # The checks of the job's own configuration (its settings, windows, log folder), which can change between
    # two runs. The code's (models, admin, URLs, templates) are `manage.py check`'s, at deploy and in CI: a cron
    # run every few minutes need not import the whole admin to check it again, and a mistake in the web side
    # must not stop the job that keeps generation unblocked.
    requires_system_checks = [JOB_CHECKS]

    def add_arguments(self, parser):
        # each window is a duration, or a default and each content type's own: 3h,video=8h (replacing the setting)
        parser.add_argument("--stuck-after", type=_argument(parse_windows), metavar="WINDOW",
                            help="A queuing/processing batch idle this long is stuck; per content type e.g. "
                                 "3h,video=8h (default GENERATION_STUCK_AFTER).")
        parser.add_argument("--lock-ttl", type=_argument(parse_windows), metavar="WINDOW",
                            help="Delete locks held longer than this; per content type e.g. 3h,video=8h "
                                 "(default GENERATION_LOCK_TTL).")
        parser.add_argument("--fail-stalled-after", type=_argument(parse_fail_stalled_windows), metavar="WINDOW",
                            help="Fail stalled batches idle this long; per content type e.g. 1d or video=2d "
                                 "(default GENERATION_FAIL_STALLED_AFTER: never).")
        parser.add_argument("--batch-size", type=_argument(parse_positive_int), metavar="N",
                            help="Rows per transaction (default CLEANUP_BATCH_SIZE).")
        parser.add_argument("--dry-run", action="store_true", help="Report what would be done; write nothing.")
        parser.add_argument("--account", type=_account, action="append", dest="accounts", metavar="ID",
                            help="Only this account (repeatable).")
        parser.add_argument("--content-type", type=_content_type, action="append", dest="content_types",
                            metavar="TYPE", help=f"Only this content type (repeatable): {', '.join(ContentType.values)}.")
        parser.add_argument("--only", choices=["statuses", "locks"], help="Only repair statuses, or only expire locks.")
        parser.add_argument("--json", action="store_true",
                            help="Print one JSON object on stdout and nothing else (the event log goes where -v says).")

    def handle(self, *args, **options):
        job = job_settings().overridden(
            stuck_after=options["stuck_after"], lock_ttl=options["lock_ttl"],
            fail_stalled_after=options["fail_stalled_after"], batch_size=options["batch_size"])
        scope = {"accounts": options["accounts"], "content_types": options["content_types"], "only": options["only"]}
        as_json, verbosity, dry_run = options["json"], options["verbosity"], options["dry_run"]
        # A person at a terminal reads the report on stdout; the event log would say it all again beside it,
        # so it goes to the log file (on stderr with -v 3). Cron, Kubernetes, a pipe: on stderr, as ever.
        at_terminal = self.stdout.isatty() and sys.stderr.isatty()
        with command_event_log(at_terminal=at_terminal, shown=verbosity >= 3, log_file=job.log_file) as event_log:
            if not as_json and verbosity >= 1:
                self.stdout.write(_start_line(job, scope, dry_run=dry_run))
                if note := format_event_log(event_log):
                    self.stdout.write(note)
            printer = None if as_json else PagePrinter(self.stdout, verbosity)
            report = self._run(job, scope, dry_run=dry_run, printer=printer, progress=at_terminal and not as_json)

        if as_json:
            write_json(self.stdout, report.as_dict())
        else:
            for line in format_summary(report, verbosity=verbosity):
                self.stdout.write(line)
        if report.outcome == Outcome.ERRORS:
            # like the original job: "cleanup completed with errors"; cron and Kubernetes see exit 1 and the
            # first error; a person at a terminal has just read them all, above the totals
            if at_terminal and not as_json and verbosity >= 1:
                raise CommandError(f"cleanup completed with errors ({len(report.errors)} listed above)", returncode=1)
            raise CommandError(f"cleanup completed with errors: {report.errors[0]}"
                               + (f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""),
                               returncode=1)

    def _run(self, job, scope, *, dry_run, printer, progress):
        # heartbeat, textfile, Pushgateway (each if configured); a dry run is not the job running
        with monitoring.job_run(enabled=not dry_run) as run:
            try:
                # inside the try: counting the backlog for the bar is the first query of the run
                if progress and scope["only"] != "locks":
                    printer.progress_bar(services.count_stuck(job=job, accounts=scope["accounts"],
                                                              content_types=scope["content_types"]),
                                         page_size=job.batch_size)
                report = services.cleanup(job=job, dry_run=dry_run, trigger=Trigger.COMMAND, on_page=printer,
                                          **scope)
            except ConnectionLost as exc:
                raise CommandError(f"cleanup aborted: {exc}", returncode=1) from None
            except (OperationalError, InterfaceError) as exc:
                raise unreachable(exc, database_name()) from None
            finally:
                if printer:
                    printer.close()
            run.finished(report)
        return report


class PagePrinter:
    """The report's lines as the pages come (services.cleanup's on_page), under a progress bar on stderr for
    a person at a terminal facing a backlog of several pages. While the bar is up every line goes through
    tqdm: the bar is cleared, the lines are written where it was, and it is drawn again below them."""

    def __init__(self, stdout, verbosity):
        self.stdout, self.verbosity = stdout, verbosity
        self.pages = {"statuses": 0, "locks": 0}
        self.progress = None

    def progress_bar(self, backlog: int, *, page_size: int):
        if backlog > PROGRESS_BAR_MIN_PAGES * page_size:
            from tqdm import tqdm

            self.progress = tqdm(total=backlog, unit="batch", desc="stuck batches", file=sys.stderr, leave=False)

    def close(self):
        if self.progress is not None:
            self.progress.close()  # leave=False: the bar is erased, the report goes on below the lines

    def __call__(self, kind, details):
        if kind == "released":  # the locks a page of batches released with them, after that page's lines
            self.write([format_lock_line(detail) for detail in details] if self.verbosity >= 1 else [])
            return
        self.pages[kind] += 1
        lines = [f"  [{kind} page {self.pages[kind]}: {len(details)} rows]"] if self.verbosity >= 2 else []
        if self.verbosity >= 1:
            line = format_status_line if kind == "statuses" else format_lock_line
            lines += [line(detail) for detail in details]
        if self.progress is not None and kind == "statuses":
            self.progress.update(len(details))
        self.write(lines)  # the bar, drawn again below the page's lines, counts the page

    def write(self, lines):
        if not lines:
            return
        if self.progress is None:
            for line in lines:
                self.stdout.write(line)
            return
        with self.progress.external_write_mode(file=sys.stdout):
            for line in lines:
                self.stdout.write(line)
            self.stdout.flush()


def _start_line(job, scope, *, dry_run):
    parts = [
        f"stuck after {format_windows(job.stuck_after)}",
        f"lock TTL {format_windows(job.lock_ttl)}",
        "fail stalled " + (f"after {format_windows(job.fail_stalled_after)}" if job.fail_stalled_after else "never"),
        f"batch size {job.batch_size}",
    ]
    if scope["accounts"]:
        parts.append(f"accounts {', '.join(map(str, scope['accounts']))}")
    if scope["content_types"]:
        parts.append(f"content types {', '.join(scope['content_types'])}")
    if scope["only"]:
        parts.append(f"only {scope['only']}")
    prefix = "Cleanup (DRY RUN: nothing will be written)" if dry_run else "Cleanup"
    return f"{prefix}: {'; '.join(parts)}"
