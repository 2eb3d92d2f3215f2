from django.conf import settings
from django.core.management.base import CommandError

from generation.conf import job_settings
from generation.db import database_name
from generation.demo import MIX, CannotRecord, NotDemoData, clear_demo_data, seed_demo_data
from generation.management.base import OperatorCommand


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


class Command(OperatorCommand):
    help = (
        "Fill the mirrored tables with a demo mix: healthy and finished batches, stuck batches for every rule "
        f"({', '.join(MIX)}), fresh and expired locks. For development and demos only."
    )

    def add_arguments(self, parser):
        parser.add_argument("--count", type=_non_negative_int, default=200, help="Batches to create (default 200).")
        parser.add_argument("--seed", type=int, default=None, help="Random seed, for a repeatable mix.")
        parser.add_argument(
            "--clear", action="store_true",
            help="Delete the rows an earlier seed inserted first; refuses (deleting nothing) when the tables "
                 "hold any row it did not insert, as a real backend's do.",
        )
        parser.add_argument(
            "--force", action="store_true",
            help="Run even though DEBUG is off (the tables may be a real backend's: think twice).",
        )

    def handle(self, *args, count, seed, clear, force, **options):
        if not settings.DEBUG and not force:
            raise CommandError("refusing to write demo data with DEBUG off; pass --force if this is not production")
        try:
            if clear:
                statuses, locks = clear_demo_data()
                self.stdout.write(f"Cleared {statuses} generation statuses and {locks} locks seeded earlier.")
            report = seed_demo_data(count=count, seed=seed, lock_ttl=job_settings().lock_ttl)
        except NotDemoData as exc:
            raise CommandError(
                f"refusing to clear the {database_name()}: it holds {exc} that seed_demo_generation did not insert; "
                "--clear deletes only demo data (nothing was deleted)"
            ) from None
        except CannotRecord as exc:
            raise CommandError(f"cannot seed the {database_name()}: {exc}") from None
        self.stdout.write(f"Created {sum(report.statuses.values())} generation statuses in the {database_name()}:")
        for category in MIX:
            self.stdout.write(f"  {category:<18} {report.statuses[category]}")
        self.stdout.write(f"Created {sum(report.locks.values())} generation locks:")
        for kind, n in sorted(report.locks.items()):
            self.stdout.write(f"  {kind:<18} {n}")
