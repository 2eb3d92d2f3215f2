import os
import sys
from getpass import getpass

from django.core.management.base import CommandError
from django.db import InterfaceError, OperationalError

from generation import roles
from generation.management.base import OperatorCommand, unreachable

PASSWORD_VARIABLE = "ADMIN_USER_PASSWORD"  # noqa: S105 - the name of the variable, not a password


def describe_group(change: roles.GroupChange) -> str:
    if change.created:
        return f"group {change.name}: created with {change.total} permissions"
    if not (change.added or change.removed):
        return f"group {change.name}: up to date ({change.total} permissions)"
    parts = [f"added {', '.join(change.added)}" if change.added else "",
             f"removed {', '.join(change.removed)}" if change.removed else ""]
    return f"group {change.name}: {'; '.join(filter(None, parts))} (now {change.total} permissions)"


def describe_user(change: roles.UserChange) -> str:
    if change.created:
        return f"user {change.username}: created as staff in group {change.role}"
    was = f" (was {', '.join(change.left_roles)})" if change.left_roles else ""
    return f"user {change.username}: staff in group {change.role}{was}; password unchanged"


class Command(OperatorCommand):
    help = (
        "Create the admin's role groups, viewer (sees everything, changes nothing) and repairer (also repairs, "
        "fails stalled, undoes, releases locks), with exactly their permissions: safe to run on every deploy. "
        f"With --user NAME --role ROLE, put that user in one of them; a new user is created as staff, its password "
        f"read from {PASSWORD_VARIABLE} or asked at the terminal, never from the command line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", metavar="USERNAME", help="The user to put in the role (created if new).")
        parser.add_argument("--role", choices=list(roles.ROLES), help="The role for --user.")

    def handle(self, *args, **options):
        username, role = options["user"], options["role"]
        if bool(username) != bool(role):
            raise CommandError("--user and --role go together", returncode=2)
        try:
            for change in roles.sync_roles():
                self.stdout.write(describe_group(change))
            if username:
                password = None if roles.user_exists(username) else self.new_password(username)
                self.stdout.write(describe_user(roles.assign_role(username=username, role=role, password=password)))
        except roles.RoleError as exc:
            raise CommandError(str(exc)) from None
        except (OperationalError, InterfaceError) as exc:
            raise unreachable(exc) from None

    def new_password(self, username):
        if os.environ.get(PASSWORD_VARIABLE):
            return os.environ[PASSWORD_VARIABLE]
        if not sys.stdin.isatty():
            raise CommandError(f"user {username!r} is new and needs a password: set {PASSWORD_VARIABLE} "
                               "or run this at a terminal to be asked")
        password = getpass(f"Password for {username}: ")
        if password != getpass("The same password again: "):
            raise CommandError("the two passwords differ; nothing was changed")
        return password
