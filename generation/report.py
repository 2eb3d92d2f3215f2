"""Human-readable lines for a CleanupReport: the command's output and the cron log use these."""

from datetime import timedelta

from . import rules
from .services import COUNTER_FIELDS, CleanupReport, LockDetail, StatusDetail


def format_duration(value) -> str:
    """3h, 1h30m, 45s, 2d4h: short and exact enough for an operator."""
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


def _counters(snapshot) -> str:
    return "/".join("NULL" if snapshot[name] is None else str(snapshot[name]) for name in COUNTER_FIELDS)


def format_status_line(detail: StatusDetail) -> str:
    b, a = detail.before, detail.after
    idle = f"idle {format_duration(detail.idle_s)}" if detail.idle_s is not None else "never updated"
    head = f"#{detail.id} account {detail.account_id} {detail.content_type} {b['status']} T/Q/P/C/F {_counters(b)} {idle}"
    if detail.rule in rules.REPAIRS:
        verb = "repaired" if detail.applied else "would repair"
        return f"  {verb} {head}: {detail.rule} -> {a['status']} {_counters(a)}"
    if detail.rule == rules.Rule.STALLED:
        return f"  stalled {head}: work in flight but no progress; reported, not changed"
    if detail.rule == rules.Rule.CORRUPT:
        return f"  CORRUPT {head}: negative or NULL counter; not changed, fix by hand"
    return f"  left alone {head}: {detail.rule.replace('_', ' ')}"


def format_lock_line(detail: LockDetail) -> str:
    verb = "removed" if detail.applied else "would remove"
    line = (f"  {verb} lock #{detail.id} {detail.lock_id} account {detail.account_id} {detail.content_type}, "
            f"held {format_duration(detail.age_s)}")
    if detail.batch_id is None:
        return line + "; no batch refers to it"
    moved = f"last moved {format_duration(detail.batch_idle_s)} ago" if detail.batch_idle_s is not None else "never moved"
    return line + f"; batch #{detail.batch_id} {detail.batch_status}, {moved}"


def format_summary(report: CleanupReport, *, verbosity: int = 1) -> list[str]:
    s, locks = report.statuses, report.locks
    if report.outcome == "skipped":
        return [f"Skipped: {report.skipped_reason}."]
    would = "would repair" if report.dry_run else "repaired"
    by_rule = ", ".join(f"{rule.value} {s.by_rule[rule]}" for rule in rules.REPAIRS)
    lock_verb = "would remove" if report.dry_run else "removed"
    release_verb = "would release" if report.dry_run else "released"
    totals = (
        f"{'DRY RUN: ' if report.dry_run else ''}{s.examined} stuck batches examined, {would} {s.repaired} "
        f"({by_rule}), stalled {s.stalled}, corrupt {s.corrupt}, skipped busy {s.skipped_busy + locks.skipped_busy}; "
        f"{locks.expired} expired locks, {lock_verb} {locks.expired if report.dry_run else locks.removed}; "
        f"{release_verb} {s.locks_released} locks of finished batches; "
        f"{report.duration_s:.2f}s, outcome {report.outcome}"
        + (f", run #{report.run_id}" if report.run_id else "")
    )
    if verbosity == 0:
        return [totals]
    lines = [totals]
    if s.moved_on:
        lines.append(f"{s.moved_on} batches moved on before they could be repaired (a worker got there first).")
    if s.details_truncated or locks.details_truncated:
        lines.append(f"(details of the first {len(s.details)} batches and {len(locks.details)} locks kept in the report)")
    for error in report.errors:
        lines.append(f"ERROR: {error}")
    return lines
