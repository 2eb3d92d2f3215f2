"""The admin's roles as data: one group per role holding exactly its permissions (README "Admin").

`python manage.py setup_roles` calls sync_roles() (safe on every deploy: a second run changes nothing)
and, with --user, assign_role(). Permissions a role lacks are neither shown nor accepted by the admin
(generation/admin.py checks them on every action, also on a crafted POST).
"""

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

VIEW = (
    "generation.view_generationstatus",
    "generation.view_generationlock",
    "generation.view_cleanuprun",
    "generation.view_repairrecord",
)
ROLES = {
    # sees every list, record and the health page; changes nothing
    "viewer": VIEW,
    # also runs the repair actions (repair, force repair, fail stalled, undo) and releases locks
    "repairer": VIEW + ("generation.repair_generationstatus", "generation.release_generationlock"),
}


class RoleError(Exception):
    """A role or user that cannot be set up; the message is one line for the operator."""


@dataclass(frozen=True)
class GroupChange:
    name: str
    created: bool
    added: tuple[str, ...]
    removed: tuple[str, ...]
    total: int


@dataclass(frozen=True)
class UserChange:
    username: str
    role: str
    created: bool
    left_roles: tuple[str, ...]


def _label(permission):
    return f"{permission.content_type.app_label}.{permission.codename}"


def _permissions(names):
    wanted = {tuple(name.split(".", 1)) for name in names}
    found = {
        (p.content_type.app_label, p.codename): p
        for p in Permission.objects.select_related("content_type").filter(
            content_type__app_label__in={app for app, _ in wanted}, codename__in={code for _, code in wanted})
    }
    missing = sorted(".".join(key) for key in wanted - set(found))
    if missing:
        raise RoleError(f"permission {', '.join(missing)} does not exist: run `python manage.py migrate` first")
    return {found[key] for key in wanted}


@transaction.atomic
def sync_roles() -> list[GroupChange]:
    """Create each role's group and give it exactly the role's permissions: missing ones are added and
    any other permission is taken away (the role is what ROLES says, not what was clicked in since)."""
    changes = []
    for name, names in ROLES.items():
        wanted = _permissions(names)
        group, created = Group.objects.get_or_create(name=name)
        current = set(group.permissions.select_related("content_type"))
        group.permissions.add(*(wanted - current))
        group.permissions.remove(*(current - wanted))
        changes.append(GroupChange(
            name=name, created=created, added=tuple(sorted(map(_label, wanted - current))),
            removed=tuple(sorted(map(_label, current - wanted))), total=len(wanted),
        ))
    return changes


@transaction.atomic
def assign_role(*, username: str, role: str, password: str | None) -> UserChange:
    """Put the user in the role's group (and in no other role's), as staff so they can log in to the admin.
    A new user needs a password, checked by the password validators; an existing user's is left alone."""
    if role not in ROLES:
        raise RoleError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    groups = {group.name: group for group in Group.objects.filter(name__in=ROLES)}
    if set(groups) != set(ROLES):
        raise RoleError("the role groups do not exist yet: run `python manage.py setup_roles` first")
    User = get_user_model()
    user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
    created = user is None
    if created:
        user = User(**{User.USERNAME_FIELD: username})
        if not password:
            raise RoleError(f"user {username!r} does not exist and no password was given for it")
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise RoleError(f"password refused: {' '.join(exc.messages)}") from None
        user.set_password(password)
    user.is_staff = True
    user.save()
    left = tuple(sorted(name for name in user.groups.filter(name__in=ROLES).values_list("name", flat=True)
                        if name != role))
    user.groups.remove(*(groups[name] for name in left))
    user.groups.add(groups[role])
    return UserChange(username=username, role=role, created=created, left_roles=left)


def user_exists(username: str) -> bool:
    User = get_user_model()
    return User.objects.filter(**{User.USERNAME_FIELD: username}).exists()
