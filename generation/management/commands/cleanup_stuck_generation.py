import argparse
import json
import logging
import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError, OperationalError

from generation import monitoring, services
from generation.conf import job_settings, parse_fail_stalled_windows, parse_positive_int, parse_windows
from generation.db import ConnectionLost, database_name
from generation.models import ContentType, Outcome, Trigger
from generation.report import format_lock_line, format_status_line, format_summary, format_windows

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




class Command(BaseCommand):
    help = (
        "Repair generation batches stuck in queuing/processing (all tasks accounted for, no active tasks, "
        "counters over the total) and delete expired generation locks; stalled and corrupt batches are reported. "
        "Meant to run from cron every 30 minutes; exits 1 when the run found errors."
    )

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
                            help="Print one JSON object on stdout and nothing else (logs go to stderr).")

    def handle(self, *args, **options):
        job = job_settings().overridden(
            stuck_after=options["stuck_after"], lock_ttl=options["lock_ttl"],
            fail_stalled_after=options["fail_stalled_after"], batch_size=options["batch_size"])
        scope = {"accounts": options["accounts"], "content_types": options["content_types"], "only": options["only"]}
        as_json, verbosity = options["json"], options["verbosity"]
        # stdout carries the report (human or JSON); the event log goes to stderr beside it
        _logs_to_stderr()
        if not as_json and verbosity >= 1:
            self.stdout.write(_start_line(job, scope, dry_run=options["dry_run"]))

        progress = None
        # heartbeat, textfile, Pushgateway (each if configured); a dry run is not the job running
        with monitoring.job_run(enabled=not options["dry_run"]) as run:
            try:
                # inside the try: counting the backlog for the bar is the first query of the run
                progress = None if as_json else self._progress_bar(job, scope)
                on_page = None if as_json else self._page_printer(verbosity, progress)
                report = services.cleanup(job=job, dry_run=options["dry_run"], trigger=Trigger.COMMAND,
                                          on_page=on_page, **scope)
            except ConnectionLost as exc:
                raise CommandError(f"cleanup aborted: {exc}", returncode=1) from None
            except (OperationalError, InterfaceError) as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CommandError(f"cannot reach the {database_name()}: {first_line}", returncode=1) from None
            finally:
                if progress is not None:
                    progress.close()
            run.finished(report)

        if as_json:
            self.stdout.write(json.dumps(report.as_dict(), default=str))
        else:
            for line in format_summary(report, verbosity=verbosity):
                self.stdout.write(line)
        if report.outcome == Outcome.ERRORS:
            # like the original job: "cleanup completed with errors"; cron and Kubernetes see exit 1
            raise CommandError(f"cleanup completed with errors: {report.errors[0]}"
                               + (f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""),
                               returncode=1)

    def _progress_bar(self, job, scope):
        """A progress bar on stderr, only for a person at a terminal facing a backlog of several pages."""
        if not (self.stdout.isatty() and sys.stderr.isatty()) or scope["only"] == "locks":
            return None
        backlog = services.count_stuck(job=job, accounts=scope["accounts"], content_types=scope["content_types"])
        if backlog <= PROGRESS_BAR_MIN_PAGES * job.batch_size:
            return None
        from tqdm import tqdm

        return tqdm(total=backlog, unit="batch", desc="stuck batches", file=sys.stderr, leave=False)

    def _page_printer(self, verbosity, progress):
        pages = {"statuses": 0, "locks": 0}

        def on_page(kind, details):
            pages[kind] += 1
            if progress is not None and kind == "statuses":
                progress.update(len(details))
            if verbosity >= 1:
                line = format_status_line if kind == "statuses" else format_lock_line
                for detail in details:
                    self.stdout.write(line(detail))
            if verbosity >= 2:
                self.stdout.write(f"  [{kind} page {pages[kind]}: {len(details)} rows]")

        return on_page


def _logs_to_stderr():
    for handler in logging.getLogger("generation").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


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
