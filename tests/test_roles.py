"""The roles command (setup_roles): the viewer and repairer groups, idempotent; users put in one of them.
What each role can do in the admin is tested in tests/test_admin.py."""

from io import StringIO

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.core.management.base import CommandError

from generation import roles

from .helpers import manage

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-enough-password-42"


def run(*args):
    out = StringIO()
    call_command("setup_roles", *args, stdout=out)
    return out.getvalue().splitlines()


def snapshot():
    """Every group with its permissions, and how many groups and group-permission links there are."""
    groups = {group.name: sorted(f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all())
              for group in Group.objects.prefetch_related("permissions__content_type")}
    return groups, Group.objects.count(), Group.permissions.through.objects.count()


def test_the_command_creates_the_two_groups_with_exactly_their_permissions():
    assert run() == ["group viewer: created with 4 permissions", "group repairer: created with 6 permissions"]
    groups, _, _ = snapshot()
    assert groups == {
        "viewer": ["generation.view_cleanuprun", "generation.view_generationlock", "generation.view_generationstatus",
                   "generation.view_repairrecord"],
        "repairer": ["generation.release_generationlock", "generation.repair_generationstatus",
                     "generation.view_cleanuprun", "generation.view_generationlock",
                     "generation.view_generationstatus", "generation.view_repairrecord"],
    }


def test_run_twice_it_leaves_the_same_groups_and_permissions():
    run()
    first = snapshot()
    assert run() == ["group viewer: up to date (4 permissions)", "group repairer: up to date (6 permissions)"]
    assert snapshot() == first


def test_it_puts_a_group_changed_by_hand_back_to_the_role():
    run()
    first = snapshot()
    viewer = Group.objects.get(name="viewer")
    viewer.permissions.add(Permission.objects.get(codename="repair_generationstatus"))
    viewer.permissions.remove(Permission.objects.get(codename="view_cleanuprun"))
    assert run()[0] == ("group viewer: added generation.view_cleanuprun; removed generation.repair_generationstatus "
                        "(now 4 permissions)")
    assert snapshot() == first


def test_a_new_user_gets_the_password_from_the_environment(monkeypatch, django_user_model):
    monkeypatch.setenv("ADMIN_USER_PASSWORD", PASSWORD)
    assert run("--user", "alice", "--role", "repairer")[-1] == "user alice: created as staff in group repairer"
    user = django_user_model.objects.get(username="alice")
    assert user.is_staff and not user.is_superuser and user.check_password(PASSWORD)
    assert [g.name for g in user.groups.all()] == ["repairer"]
    assert user.has_perms(["generation.repair_generationstatus", "generation.release_generationlock"])


def test_an_existing_user_changes_role_and_keeps_the_password(monkeypatch, django_user_model):
    monkeypatch.setenv("ADMIN_USER_PASSWORD", PASSWORD)
    run("--user", "alice", "--role", "repairer")
    monkeypatch.setenv("ADMIN_USER_PASSWORD", "another-password-entirely")
    assert run("--user", "alice", "--role", "viewer")[-1] == (
        "user alice: staff in group viewer (was repairer); password unchanged")
    user = django_user_model.objects.get(username="alice")
    assert [g.name for g in user.groups.all()] == ["viewer"] and user.check_password(PASSWORD)
    assert not user.has_perm("generation.repair_generationstatus")
    assert run("--user", "alice", "--role", "viewer")[-1] == "user alice: staff in group viewer; password unchanged"


def test_a_new_user_is_asked_for_the_password_twice_at_a_terminal(monkeypatch, django_user_model):
    from generation.management.commands import setup_roles

    monkeypatch.delenv("ADMIN_USER_PASSWORD", raising=False)
    monkeypatch.setattr(setup_roles.sys.stdin, "isatty", lambda: True, raising=False)
    answers = iter([PASSWORD, PASSWORD])
    monkeypatch.setattr(setup_roles, "getpass", lambda prompt: next(answers))
    run("--user", "bob", "--role", "viewer")
    assert django_user_model.objects.get(username="bob").check_password(PASSWORD)

    answers = iter([PASSWORD, "something else"])
    with pytest.raises(CommandError, match="the two passwords differ; nothing was changed"):
        run("--user", "carol", "--role", "viewer")
    assert not django_user_model.objects.filter(username="carol").exists()


def test_a_weak_password_is_refused_and_no_user_created(monkeypatch, django_user_model):
    monkeypatch.setenv("ADMIN_USER_PASSWORD", "password")
    with pytest.raises(CommandError, match="^password refused: This password is too common.$"):
        run("--user", "alice", "--role", "viewer")
    assert not django_user_model.objects.filter(username="alice").exists()


def test_user_and_role_go_together():
    with pytest.raises(CommandError, match="--user and --role go together"):
        run("--user", "alice")


def test_assign_role_refuses_an_unknown_role_and_missing_groups():
    with pytest.raises(roles.RoleError, match="run `python manage.py setup_roles` first"):
        roles.assign_role(username="alice", role="viewer", password=PASSWORD)
    with pytest.raises(roles.RoleError, match="unknown role 'admin': use one of viewer, repairer"):
        roles.assign_role(username="alice", role="admin", password=PASSWORD)


def test_missing_permissions_say_to_migrate_first():
    Permission.objects.filter(codename="release_generationlock").delete()
    with pytest.raises(CommandError, match=r"^permission generation.release_generationlock does not exist: run "
                                           r"`python manage.py migrate` first$"):
        run()


# --- As a process: exit codes, and never a password on the command line ---------------------------------


def test_as_a_process_without_a_password_or_a_terminal_it_exits_1_with_one_line(tmp_path):
    database = f"sqlite:///{tmp_path / 'roles.sqlite3'}"
    assert manage("migrate", "--verbosity", "0", env={"DATABASE_URL": database}).returncode == 0
    result = manage("setup_roles", "--user", "alice", "--role", "viewer", env={"DATABASE_URL": database,
                                                                               "ADMIN_USER_PASSWORD": ""})
    assert result.returncode == 1
    assert result.stderr == ("user 'alice' is new and needs a password: set ADMIN_USER_PASSWORD "
                             "or run this at a terminal to be asked\n")
    refused = manage("setup_roles", "--user", "alice", "--role", "viewer", "--password", PASSWORD,
                     env={"DATABASE_URL": database})
    assert refused.returncode == 2 and "unrecognized arguments: --password" in refused.stderr
    created = manage("setup_roles", "--user", "alice", "--role", "viewer",
                     env={"DATABASE_URL": database, "ADMIN_USER_PASSWORD": PASSWORD})
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[-1] == "user alice: created as staff in group viewer"
    assert PASSWORD not in created.stdout + created.stderr
