"""All the wording: the command's lines, the cron log's, the undo command's, and the admin's messages.

Plain functions from results (results.py, undo.UndoReport) to text; nothing here queries or decides.
"""

from collections import Counter
from datetime import timedelta

from django.contrib import messages
from django.utils.translation import ngettext

from . import rules
from .logging import EventLog
from .models import RecordKind, RecordRule
from .results import CleanupReport, LockDetail, StatusDetail
from .rules import COUNTERS_LABEL, counters_text


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


def format_windows(windows) -> str:
    """A window with each content type's own (conf.Windows), short: `3h`, `3h, story 45m, video 8h`; without a
    default (the fail-stalled window) `video 1d, other types never`."""
    parts = [f"{name} {format_duration(window)}" for name, window in windows.by_type]
    if windows.default is None:
        return ", ".join([*parts, "other types never"])
    return ", ".join([format_duration(windows.default), *parts])


def format_status_line(detail: StatusDetail) -> str:
    b, a = detail.before, detail.after
    idle = f"idle {format_duration(detail.idle_s)}" if detail.idle_s is not None else "never updated"
    head = f"#{detail.id} account {detail.account_id} {detail.content_type} {b['status']} {COUNTERS_LABEL} {counters_text(b)} {idle}"
    if detail.rule in rules.REPAIRS:
        verb = "repaired" if detail.applied else "would repair"
        return f"  {verb} {head}: {detail.rule} -> {a['status']} {counters_text(a)}"
    if detail.rule == rules.Rule.STALLED:
        return f"  stalled {head}: work in flight but no progress; reported, not changed"
    if detail.rule == rules.Rule.CORRUPT:
        return f"  CORRUPT {head}: negative or NULL counter; not changed, fix by hand"
    return f"  left alone {head}: {detail.rule.replace('_', ' ')}"


def format_lock_line(detail: LockDetail) -> str:
    """An expired lock removed, or a lock released with its batch, and the batch that refers to it."""
    if detail.rule == RecordRule.RELEASED_WITH_BATCH:
        verb = "released" if detail.applied else "would release"
    else:
        verb = "removed" if detail.applied else "would remove"
    line = (f"  {verb} lock #{detail.id} {detail.lock_id} account {detail.account_id} {detail.content_type}, "
            f"held {format_duration(detail.age_s)}")
    if detail.batch_id is None:
        return line + "; no batch refers to it"
    if detail.batch_repaired:
        # its status and age are what the repair just wrote ("processing, last moved 0s ago"): say why
        repaired = "repaired" if detail.applied else "would be repaired"
        return line + f"; batch #{detail.batch_id} {repaired} by this run ({detail.batch_repaired})"
    moved = f"last moved {format_duration(detail.batch_idle_s)} ago" if detail.batch_idle_s is not None else "never moved"
    return line + f"; batch #{detail.batch_id} {detail.batch_status}, {moved}"


def format_event_log(where: EventLog) -> str | None:
    """The command's line saying where the event log went, when not on stderr (at a terminal)."""
    if where.path:
        return f"Event log: appended to {where.path} (-v 3 shows it here instead)"
    if where.error:
        return f"Event log: not kept, {where.error} (-v 3 shows it here instead)"
    return None


def format_totals(report: CleanupReport) -> str:
    """One line: what the run examined and did, its duration, outcome and run id."""
    s, locks = report.statuses, report.locks
    if report.outcome == "skipped":
        return f"Skipped: {report.skipped_reason}."
    would = "would repair" if report.dry_run else "repaired"
    by_rule = ", ".join(f"{rule.value} {s.by_rule[rule]}" for rule in rules.REPAIRS)
    lock_verb = "would remove" if report.dry_run else "removed"
    release_verb = "would release" if report.dry_run else "released"
    return (
        f"{'DRY RUN: ' if report.dry_run else ''}{s.examined} stuck batches examined, {would} {s.repaired} "
        f"({by_rule}), stalled {s.stalled}, corrupt {s.corrupt}, skipped busy {s.skipped_busy + locks.skipped_busy}; "
        f"{locks.expired} expired locks, {lock_verb} {locks.expired if report.dry_run else locks.removed}; "
        f"{release_verb} {s.locks_released} locks of finished batches; "
        f"{report.duration_s:.2f}s, outcome {report.outcome}"
        + (f", run #{report.run_id}" if report.run_id else "")
    )


def format_summary(report: CleanupReport, *, verbosity: int = 1) -> list[str]:
    """The report's closing lines: notes and errors first, the totals line last, where the eye lands at a
    terminal and what `tail -n 1` of the cron log shows. -v 0: the totals line only."""
    s, locks = report.statuses, report.locks
    lines = []
    if verbosity >= 1 and report.outcome != "skipped":
        if s.moved_on:
            lines.append(f"{s.moved_on} batches moved on before they could be repaired (a worker got there first).")
        if s.details_truncated or locks.details_truncated:
            lines.append(f"(details of the first {len(s.details)} batches and {len(locks.details)} locks kept in "
                         "the report)")
        lines += [f"ERROR: {error}" for error in report.errors]
    return [*lines, format_totals(report)]


# --- Undo -------------------------------------------------------------------------------------


def record_subject(outcome) -> str:
    """A repair record as undo lines and messages name it: "record #7 (counter_overflow of batch #3)"."""
    if outcome.kind == RecordKind.STATUS:
        return f"record #{outcome.record_id} ({outcome.rule} of batch #{outcome.target_id})"
    if outcome.kind == RecordKind.LOCK:
        return (f"record #{outcome.record_id} ({outcome.rule} of lock #{outcome.target_id}, account "
                f"{outcome.account_id} {outcome.content_type})")
    return f"record #{outcome.record_id}"


def format_undo_outcome(outcome, *, dry_run: bool = False) -> str:
    head = record_subject(outcome)
    if outcome.refused:
        return f"  REFUSED {head}: {outcome.reason}"
    verb = "would undo" if dry_run else "undone"
    tail = f"; recorded as #{outcome.undo_record_id}" if outcome.undo_record_id else ""
    if outcome.kind == RecordKind.STATUS:
        before, after = outcome.current, outcome.restored
        return (f"  {verb} {head}: {COUNTERS_LABEL} {counters_text(before)} {before['status']} -> "
                f"{counters_text(after)} {after['status']}{tail}")
    return f"  {verb} {head}: lock {outcome.restored['lock_id']} taken again, locked at " \
           f"{outcome.restored['locked_at']}{tail}"


def format_undo_summary(report) -> str:
    undone, refused, total = len(report.undone), len(report.refused), len(report.outcomes)
    if report.dry_run:
        return f"DRY RUN: would undo {undone}, would refuse {refused} of {total} records"
    run = f", run #{report.run_id}" if report.run_id else ""
    return f"Undo: {undone} undone, {refused} refused of {total} records{run}"


# --- The admin's messages ------------------------------------------------------------------------


NAMED_IN_MESSAGE = 10  # left-alone batches named by id in a message; the rest are counted
REFUSALS_NAMED = 10  # refused records named in an undo's message; the run's page keeps them all


def repair_message(report: CleanupReport) -> tuple[int, str]:
    """(level, text) for a repair action, e.g. "3 generations repaired: 2 all_accounted, 1 no_active_tasks;
    1 healthy, left alone (#12)". A row left alone is called what the list's diagnosis calls it. A dry run
    (the confirmation page) says "to repair"."""
    s = report.statuses
    done = "to repair" if report.dry_run else "repaired"
    if s.repaired:
        head = ngettext("%(count)d generation %(done)s", "%(count)d generations %(done)s", s.repaired) % {
            "count": s.repaired, "done": done}
        head += ": " + ", ".join(f"{s.by_rule[rule]} {rule}" for rule in rules.REPAIRS if s.by_rule[rule])
    else:
        head = f"No generation {done}"
    parts = [head]
    if s.locks_released:
        released = "to release" if report.dry_run else "released"
        parts.append(ngettext("%(count)d lock %(done)s with its batch", "%(count)d locks %(done)s with their batches",
                              s.locks_released) % {"count": s.locks_released, "done": released})
    if s.stalled:
        # without an age window (force) a batch with work in flight may just be running
        parts.append(f"{s.stalled} stalled (work in flight, no progress), not changed" if report.cutoffs else
                     f"{s.stalled} with work in flight (stalled or running), not changed")
    if s.corrupt:
        parts.append(f"{s.corrupt} corrupt (negative or NULL counters), not changed: fix by hand")
    left_alone = [detail for detail in s.details if detail.left_alone]
    reasons = Counter(detail.rule for detail in left_alone)
    for reason, count in reasons.items():
        ids = [f"#{detail.id}" for detail in left_alone if detail.rule == reason]
        named = ", ".join(ids[:NAMED_IN_MESSAGE]) + (", …" if len(ids) > NAMED_IN_MESSAGE else "")
        parts.append(f"{count} {reason}, left alone ({named})")
    unexplained = s.left_alone - sum(reasons.values())  # details are capped; the total is not
    if unexplained > 0:
        parts.append(f"{unexplained} more left alone")
    if s.skipped_busy:
        parts.append(ngettext("%(count)d busy or gone (a worker holds the row), skipped",
                              "%(count)d busy or gone (a worker holds the rows), skipped",
                              s.skipped_busy) % {"count": s.skipped_busy})
    if s.failed_batches:
        level = messages.ERROR
    elif not s.repaired or s.corrupt:
        level = messages.WARNING
    else:
        level = messages.SUCCESS
    return level, "; ".join(parts)


def release_message(report: CleanupReport) -> tuple[int, str]:
    locks = report.locks
    if locks.removed:
        parts = [ngettext("%(count)d lock released", "%(count)d locks released", locks.removed) % {
            "count": locks.removed}]
    else:
        parts = ["No lock released"]
    if locks.skipped_busy:
        parts.append(ngettext("%(count)d busy or already gone, skipped", "%(count)d busy or already gone, skipped",
                              locks.skipped_busy) % {"count": locks.skipped_busy})
    if locks.failed_batches:
        level = messages.ERROR
    else:
        level = messages.SUCCESS if locks.removed else messages.WARNING
    return level, "; ".join(parts)


def undo_message(report, *, selected) -> tuple[int, str]:
    """(level, text) for the undo action, e.g. "2 repairs undone (1 lock taken back with its batch); 1 refused:
    record #7 (counter_overflow of batch #3): the row changed since the repair: ...". A dry run (the confirmation
    page, which lists every refusal beside it) says "to undo" and only counts the refused."""
    done = "to undo" if report.dry_run else "undone"
    undone, refused = report.undone, report.refused
    if undone:
        head = ngettext("%(count)d repair %(done)s", "%(count)d repairs %(done)s", len(undone)) % {
            "count": len(undone), "done": done}
        # a batch's repair and the lock released with it come off together, selected or not
        carried = sum(1 for outcome in undone if outcome.record_id not in selected)
        if carried:
            head += " (" + ngettext("%(count)d lock taken back with its batch",
                                    "%(count)d locks taken back with their batches", carried) % {"count": carried} + ")"
    else:
        head = f"No repair {done}"
    parts = [head]
    if refused:
        count = ngettext("%(count)d refused", "%(count)d refused", len(refused)) % {"count": len(refused)}
        if report.dry_run:
            parts.append(count)
        else:
            named = " | ".join(f"{record_subject(o)}: {o.reason}" for o in refused[:REFUSALS_NAMED])
            more = len(refused) - REFUSALS_NAMED
            if more > 0:
                named += f" | and {more} more (all listed on cleanup run #{report.run_id})"
            parts.append(f"{count}: {named}")
    return (messages.WARNING if refused or not undone else messages.SUCCESS), "; ".join(parts)
