"""System checks: settings sane, mirrored tables present and of the right shape.

The schema check is tagged `database`, so it runs in `check --database` and
also inside `migrate`, before migrating. It must never block the migration
that creates the tables: while generation.0001 is not recorded as applied it
says nothing (migrate will create the tables) unless the backend's tables are
already there, when it warns that `migrate --fake-initial` adopts them; once
0001 is recorded (applied or faked), a missing table or column, or a
column of another kind, is an error.

Every check here is also tagged `generation` (JOB_CHECKS): the cleanup command runs those alone, not the
code's checks (models, admin, URLs), which `manage.py check` runs at deploy and in CI; `manage.py check --tag
generation` runs the same as the cleanup does.
"""

import os

from django.apps import apps
from django.core import checks
from django.db import DatabaseError, connections
from django.db.migrations.recorder import MigrationRecorder

from .conf import job_settings, settings_errors
from .models import ContentType

JOB_CHECKS = "generation"  # the tag of the job's own checks


class Messages:
    SETTINGS_ID = "generation.E002"
    SCHEMA_ID = "generation.E001"
    SCHEMA = "The mirrored tables do not match the models on database {alias!r}: {problems}."
    SCHEMA_HINT = (
        "generation.0001 is recorded as applied, so these tables should exist as the backend created them; "
        "see README.md, 'Attaching to an existing database'."
    )
    NOT_ADOPTED_ID = "generation.W001"
    NOT_ADOPTED = (
        "The mirrored tables exist on database {alias!r} but generation.0001 is not recorded as applied: "
        "a plain `migrate` would fail on them."
    )
    NOT_ADOPTED_HINT = "Adopt the backend's tables with `python manage.py migrate --fake-initial`."
    LOG_DIR_ID = "generation.W002"
    LOG_DIR = "CLEANUP_LOG_FILE={path!r}: its folder is not writable, so the cron job's output would be lost."
    LOG_DIR_HINT = "Create the folder or point CLEANUP_LOG_FILE at a writable path."
    UNKNOWN_CONTENT_TYPE_ID = "generation.W003"
    UNKNOWN_CONTENT_TYPE = (
        "{setting} gives a window to content type {content_type!r}, which the contract does not name ({known})."
    )
    UNKNOWN_CONTENT_TYPE_HINT = (
        "A window applies to the batches and locks whose content_type is exactly that. If the backend has such "
        "a type, this is fine; otherwise correct the name (a misspelt type's batches get the default window)."
    )


# Which introspected Django field types count as the same kind of column.
# Integers of any width are accepted (the backend's ORM chose bigint).
_KINDS = {
    "integer": {
        "AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
        "SmallIntegerField", "PositiveIntegerField", "PositiveBigIntegerField", "PositiveSmallIntegerField",
    },
    "text": {"CharField", "TextField"},
    "datetime": {"DateTimeField"},
}


def _kind(field_type):
    return next((kind for kind, types in _KINDS.items() if field_type in types), field_type)


@checks.register(JOB_CHECKS)
def check_settings(app_configs=None, **kwargs):
    return [checks.Error(message, id=Messages.SETTINGS_ID) for message in settings_errors()]


@checks.register(JOB_CHECKS)
def check_log_file(app_configs=None, **kwargs):
    if settings_errors():
        return []
    folder = job_settings().log_file.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder is created on first write
    # the nearest existing ancestor must be a folder we can create entries in (a regular file
    # on the path means the folder can never be created)
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return []
    return [checks.Warning(
        Messages.LOG_DIR.format(path=str(job_settings().log_file)), hint=Messages.LOG_DIR_HINT, id=Messages.LOG_DIR_ID,
    )]


# The settings that take a window per content type, and the JobSettings field each fills.
WINDOW_SETTINGS = (("GENERATION_STUCK_AFTER", "stuck_after"), ("GENERATION_LOCK_TTL", "lock_ttl"),
                   ("GENERATION_FAIL_STALLED_AFTER", "fail_stalled_after"))


@checks.register(JOB_CHECKS)
def check_window_content_types(app_configs=None, **kwargs):
    """A content type the contract does not name is allowed in a window (the backend may add one), but said."""
    if settings_errors():
        return []  # generation.E002 names the bad setting
    job, known = job_settings(), ContentType.values
    return [
        checks.Warning(Messages.UNKNOWN_CONTENT_TYPE.format(setting=setting, content_type=content_type,
                                                            known=", ".join(known)),
                       hint=Messages.UNKNOWN_CONTENT_TYPE_HINT, id=Messages.UNKNOWN_CONTENT_TYPE_ID)
        for setting, field in WINDOW_SETTINGS if getattr(job, field) is not None
        for content_type in getattr(job, field).types if content_type not in known
    ]


def _mirrored_models():
    config = apps.get_app_config("generation")
    return [config.get_model("GenerationStatus"), config.get_model("GenerationLock")]


def schema_problems(connection):
    """Missing tables, missing columns and columns of another kind, as short strings."""
    problems = []
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
        for model in _mirrored_models():
            table = model._meta.db_table
            if table not in tables:
                problems.append(f"table {table} is missing")
                continue
            columns = {
                column.name: _kind(connection.introspection.get_field_type(column.type_code, column))
                for column in connection.introspection.get_table_description(cursor, table)
            }
            for field in model._meta.concrete_fields:
                expected = _kind(field.get_internal_type())
                actual = columns.get(field.column)
                if actual is None:
                    problems.append(f"column {table}.{field.column} is missing")
                elif actual != expected:
                    problems.append(f"column {table}.{field.column} is {actual}, expected {expected}")
    return problems


def _mirrored_tables_present(connection):
    tables = set(connection.introspection.table_names())
    return any(model._meta.db_table in tables for model in _mirrored_models())


@checks.register(checks.Tags.database, JOB_CHECKS)
def check_mirrored_tables(app_configs=None, databases=None, **kwargs):
    messages = []
    for alias in databases or []:
        connection = connections[alias]
        try:
            if ("generation", "0001_initial") not in MigrationRecorder(connection).applied_migrations():
                # Not migrated yet: `migrate` creates the tables, unless the backend already did.
                if _mirrored_tables_present(connection):
                    messages.append(checks.Warning(
                        Messages.NOT_ADOPTED.format(alias=alias), hint=Messages.NOT_ADOPTED_HINT,
                        id=Messages.NOT_ADOPTED_ID,
                    ))
                continue
            problems = schema_problems(connection)
        except DatabaseError:
            continue  # an unreachable database is reported by whatever needed it, not here
        if problems:
            messages.append(checks.Error(
                Messages.SCHEMA.format(alias=alias, problems="; ".join(problems)),
                hint=Messages.SCHEMA_HINT, id=Messages.SCHEMA_ID,
            ))
    return messages
