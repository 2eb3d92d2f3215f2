"""What the project's commands share: an error ends the run with its message alone on stderr.

Django's run_from_argv prints a CommandError as "CommandError: cannot reach the database ...", which
reads like a crash to an operator. Here the message is the line, and the exit code is the error's
(1: the run failed or found errors; bad usage stays argparse's 2, naming the option). call_command
(tests, programs) still gets the CommandError with its returncode, and --traceback still shows it.
"""

import itertools
import json
import sys

from django.core.management.base import BaseCommand, CommandError, SystemCheckError


class OperatorCommand(BaseCommand):
    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except CommandError as exc:
            # SystemCheckError formats itself (run_from_argv prints it bare already)
            if not self._called_from_command_line or options.get("traceback") or isinstance(exc, SystemCheckError):
                raise
            self.stderr.write(str(exc))
            sys.exit(exc.returncode)


def unreachable(exc, what: str = "database") -> CommandError:
    """The error for a database that cannot be reached: the driver's first line (never the URL), exit 1."""
    text = str(exc).strip()
    return CommandError(f"cannot reach the {what}: {text.splitlines()[0] if text else type(exc).__name__}",
                        returncode=1)


def write_json(stdout, value):
    """`value` as one line of JSON, written a thousand pieces at a time: a backlog's report (a thousand batches'
    details) is never held as one string, and again with its newline, and again encoded."""
    pieces = json.JSONEncoder(default=str).iterencode(value)
    while part := "".join(itertools.islice(pieces, 1000)):
        stdout.write(part, ending="")
    stdout.write("")
