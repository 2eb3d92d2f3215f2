import argparse

from django.core.management.base import CommandError
from django.db import InterfaceError, OperationalError

from generation import undo
from generation.conf import job_settings
from generation.db import ConnectionLost
from generation.management.base import OperatorCommand, unreachable, write_json
from generation.models import CleanupRun, Trigger
from generation.report import format_undo_outcome, format_undo_summary


def _positive_id(what):
    def convert(text):
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} id (a positive whole number)")
        return value

    convert.__name__ = f"{what}_id"
    return convert


class Command(OperatorCommand):
    help = (
        "Undo repairs: put a batch back to the values its RepairRecord holds as before (only if the row still "
        "holds what the repair left), take a released or expired lock back (only if its account and content type "
        "hold no other lock). Each undo is recorded. Exits 1 if any record was refused, 2 on bad usage. "
        "-v 0: the totals line only; 1 (default): a line per record (refused ones say why), then the totals."
    )

    def add_arguments(self, parser):
        parser.add_argument("record_ids", nargs="*", type=_positive_id("record"), metavar="RECORD_ID",
                            help="RepairRecord ids to undo (the admin's repair history lists them).")
        parser.add_argument("--run", type=_positive_id("run"), metavar="RUN_ID", help="Undo every change this cleanup run made.")
        parser.add_argument("--dry-run", action="store_true", help="Say what would be undone or refused; write nothing.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout and nothing else.")

    def handle(self, *args, **options):
        record_ids, run, dry_run, as_json = options["record_ids"], options["run"], options["dry_run"], options["json"]
        if bool(record_ids) == bool(run):
            raise CommandError("give RECORD_ID ... or --run RUN_ID (one of them, not both)", returncode=2)
        job = job_settings()
        try:
            if run:
                report = undo.undo_run(job=job, run_id=run, trigger=Trigger.COMMAND, dry_run=dry_run)
            else:
                report = undo.undo_records(job=job, ids=record_ids, trigger=Trigger.COMMAND, dry_run=dry_run)
        except CleanupRun.DoesNotExist:
            raise CommandError(f"--run {run}: no such cleanup run", returncode=1) from None
        except ConnectionLost as exc:
            raise CommandError(f"undo aborted: {exc}", returncode=1) from None
        except (OperationalError, InterfaceError) as exc:
            raise unreachable(exc) from None

        if as_json:
            write_json(self.stdout, report.as_dict())
        else:
            if options["verbosity"] >= 1:
                for outcome in report.outcomes:
                    self.stdout.write(format_undo_outcome(outcome, dry_run=dry_run))
            self.stdout.write(format_undo_summary(report))
        if report.refused:
            raise CommandError(f"{len(report.refused)} of {len(report.outcomes)} records refused", returncode=1)
