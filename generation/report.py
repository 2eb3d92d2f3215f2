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


NAMED_IN_MESSAGE = 10  # ids named in a message; the rest are counted
REFUSALS_NAMED = 10  # refused records named in an undo's message; the run's page keeps them all


def named(ids, total: int | None = None, *, prefix: str = "#") -> str:
    """The first NAMED_IN_MESSAGE ids, then how many more: "#1, #2, #3" or "#1, …, #10 and 5 more". `total`:
    how many there are in all, when `ids` is only the first of them."""
    ids = list(ids)
    total = len(ids) if total is None else max(total, len(ids))
    shown = ", ".join(f"{prefix}{i}" for i in ids[:NAMED_IN_MESSAGE])
    more = total - min(len(ids), NAMED_IN_MESSAGE)
    if not shown:
        return f"{total}"
    return shown + (f" and {more} more" if more > 0 else "")


def result_links(run_id: int) -> tuple[str, str]:
    """The words of the links under an action's message: its run, and the repair records it wrote."""
    return f"Run #{run_id}", "its repair records"


def vanished(noun: str) -> str:
    return f"None of the selected {noun} is there any more."


def selection_refused(count: int, limit: int, noun: str) -> str:
    return (f"Tick at most {limit} {noun} for this action ({count} ticked); to act on more, tick the box at the top "
            "of the list, then click “Select all …” above it: every row the list's filters match.")


def _stalled_part(s, listed: dict | None, *, windowed: bool) -> str:
    """The stalled batches a repair leaves alone. Without an age window (force) the engine calls every batch with
    work in flight stalled; `listed` (batch id -> the list's diagnosis) says which of them the list calls
    healthy."""
    if windowed:
        return f"{s.stalled} stalled (work in flight, no progress), not changed"
    if not listed:
        return f"{s.stalled} with work in flight (stalled or running), not changed"
    words = Counter(listed.get(d.id, "stalled") for d in s.details if d.rule == rules.Rule.STALLED and not d.left_alone)
    words["stalled"] += s.stalled - sum(words.values())  # details are capped; the total is not
    return ", ".join(f"{n} {word}" for word, n in sorted(words.items()) if n) + " (work in flight), not changed"


def repair_message(report: CleanupReport, *, listed: dict | None = None) -> tuple[int, str]:
    """(level, text) for a repair action, e.g. "3 generations repaired (#4, #7, #9): 2 all_accounted,
    1 no_active_tasks; 1 healthy, left alone (#12)". A row left alone is called what the list's diagnosis calls
    it: `listed` maps batch ids to it where the action judged them without the age window (force, fail stalled),
    so that a batch still moving is "healthy" there too. A dry run (the confirmation page) says "to repair"."""
    s = report.statuses
    done = "to repair" if report.dry_run else "repaired"
    if s.repaired:
        changed = [detail.id for detail in s.details if detail.rule in rules.REPAIRS and not detail.left_alone]
        head = ngettext("%(count)d generation %(done)s", "%(count)d generations %(done)s", s.repaired) % {
            "count": s.repaired, "done": done}
        head += f" ({named(changed, s.repaired)}): "
        head += ", ".join(f"{s.by_rule[rule]} {rule}" for rule in rules.REPAIRS if s.by_rule[rule])
    else:
        head = f"No generation {done}"
    parts = [head]
    if s.locks_released:
        released = "to release" if report.dry_run else "released"
        parts.append(ngettext("%(count)d lock %(done)s with its batch", "%(count)d locks %(done)s with their batches",
                              s.locks_released) % {"count": s.locks_released, "done": released})
    if s.stalled:
        parts.append(_stalled_part(s, listed, windowed=bool(report.cutoffs)))
    if s.corrupt:
        parts.append(f"{s.corrupt} corrupt (negative or NULL counters), not changed: fix by hand")
    left_alone = [detail for detail in s.details if detail.left_alone]
    words = {detail.id: (listed or {}).get(detail.id, detail.rule) for detail in left_alone}
    reasons = Counter(words.values())
    for reason, count in reasons.items():
        parts.append(f"{count} {reason}, left alone ({named(d.id for d in left_alone if words[d.id] == reason)})")
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
    """(level, text) for the release action, e.g. "2 locks released (#3, #8)"."""
    locks = report.locks
    if locks.removed:
        released = [detail.id for detail in locks.details if detail.applied]
        parts = [ngettext("%(count)d lock released", "%(count)d locks released", locks.removed) % {
            "count": locks.removed} + f" ({named(released, locks.removed)})"]
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


def undo_message(report) -> tuple[int, str]:
    """(level, text) for the undo action, e.g. "2 repairs undone (batch #3, lock #9; 1 lock taken back with its
    batch); 1 refused: record #7 (counter_overflow of batch #3): the row changed since the repair: ...". A dry run
    (the confirmation page, which lists every refusal beside it) says "to undo" and only counts the refused."""
    done = "to undo" if report.dry_run else "undone"
    count, refused = report.undone_total, report.refused_total
    if count:
        head = ngettext("%(count)d repair %(done)s", "%(count)d repairs %(done)s", count) % {
            "count": count, "done": done}
        rows = [f"{'batch' if o.kind == RecordKind.STATUS else 'lock'} #{o.target_id}" for o in report.undone]
        head += f" ({named(rows, count, prefix='')}"
        # a batch's repair and the lock released with it come off together, selected or not
        if report.with_batch_total:
            head += "; " + ngettext("%(count)d lock taken back with its batch",
                                    "%(count)d locks taken back with their batches",
                                    report.with_batch_total) % {"count": report.with_batch_total}
        head += ")"
    else:
        head = f"No repair {done}"
    parts = [head]
    if refused:
        counted = ngettext("%(count)d refused", "%(count)d refused", refused) % {"count": refused}
        if report.dry_run:
            parts.append(counted)
        else:
            listed = " | ".join(f"{record_subject(o)}: {o.reason}" for o in report.refused[:REFUSALS_NAMED])
            more = refused - min(len(report.refused), REFUSALS_NAMED)
            if more > 0:
                listed += f" | and {more} more (all listed on cleanup run #{report.run_id})"
            parts.append(f"{counted}: {listed}")
    return (messages.WARNING if refused or not count else messages.SUCCESS), "; ".join(parts)


# --- The admin's select-across confirmations: totals instead of every row ----------------------------


def selection_effect(verdict: str, *, applies, reports: bool) -> str:
    """What a repair action does to a batch its judgement gives this verdict."""
    if verdict in applies:
        return "to fail" if verdict == rules.Rule.STALLED_FAILED else "to repair"
    if reports and verdict == rules.Rule.CORRUPT:
        return "not changed: fix by hand"
    if reports and verdict == rules.Rule.STALLED:
        return "not changed: work in flight"
    return "left alone"


def selection_summary(rows: list[dict]) -> str:
    """The totals of a select-across repair in one line: "1,234 batches selected: 1,200 to repair; 34 left alone".
    `rows`: {"count", "effect"} per verdict."""
    effects = Counter()
    for row in rows:
        effects[row["effect"]] += row["count"]
    total = sum(effects.values())
    return f"{total:,} batches selected: " + "; ".join(f"{n:,} {effect}" for effect, n in effects.items())


def lock_totals_summary(totals: dict) -> str:
    """A select-across release in one line, from selectors.lock_totals()."""
    count, expired, moving = totals["count"], totals["expired"], totals["of_moving_batches"]
    text = f"{count:,} locks selected, to be deleted whatever their age: {expired:,} expired, " \
           f"{count - expired:,} not expired yet"
    if moving:
        text += f"; {moving:,} belong to batches still moving: releasing them lets second batches run beside them"
    return text


def record_totals_summary(totals: dict) -> str:
    """A select-across undo in one line, from selectors.record_totals()."""
    text = f"{totals['count']:,} repair records selected: " + ", ".join(
        f"{n:,} {rule}" for rule, n in sorted(totals["by_rule"].items()))
    refused = [f"{totals['undos']:,} are undos themselves"] if totals["undos"] else []
    if totals["undone_already"]:
        refused.append(f"{totals['undone_already']:,} were undone already")
    if refused:
        text += f"; {' and '.join(refused)}: those are refused"
    return text


# --- The admin's pages: a batch explained ----------------------------------------------------------


# Why the list calls a batch what it does, and what happens to it next: {stuck} is "Stuck (idle 1d11h, over 3h)",
# {moved} how long ago it moved, {window} its type's stuck window, {status} its status.
DIAGNOSES = {
    rules.Verdict.HEALTHY: "Healthy: in progress, and it moved {moved} ago, within its stuck window ({window}); "
                           "nothing to do.",
    rules.Verdict.FINISHED: "Finished ({status}): nothing to do.",
    rules.Verdict.NEVER_UPDATED: "In progress but never updated (updated_at is NULL): its age is unknown, so no rule "
                                 "judges it; every run reports it. Ask the backend's team what happened to it.",
    rules.Verdict.UNKNOWN_STATUS: "Its status '{status}' is not one the contract names, so no rule judges it; every "
                                  "run reports it. Fix the status by hand.",
    rules.Rule.CORRUPT: "{stuck}, with a NULL or negative counter: the job never changes it and every run reports it. "
                        "Fix the counters by hand (highlighted below).",
    rules.Rule.ALL_ACCOUNTED: "{stuck}: every task has an outcome (C + F ≥ T) but the batch was never finished. The "
                              "next run finishes it and releases its lock.",
    rules.Rule.NO_ACTIVE_TASKS: "{stuck}: nothing is queued or processing, but outcomes are missing. The next run "
                                "counts the missing tasks as failed, finishes it and releases its lock.",
    rules.Rule.COUNTER_OVERFLOW: "{stuck}: its counters add up to more than T (a retry counted a task twice). The next "
                                 "run drops the excess, from processing first, then queued.",
    rules.Rule.STALLED: "{stuck}: work is claimed but nothing moved. Every run reports it and changes nothing{fail}.",
}


def diagnosis_text(verdict: str, *, status: str, idle, stuck_after, fail_stalled_after=None) -> str:
    """One line: why the list calls a batch what it does, and what happens to it next. `idle` (a timedelta, None
    when never updated) and the windows are the batch's own content type's."""
    window = format_duration(stuck_after)
    moved = format_duration(idle) if idle is not None else "never"
    fail = (f" until it has been idle over {format_duration(fail_stalled_after)}; then it fails the tasks still "
            "queued or processing") if fail_stalled_after else "; fail it by hand once its workers are known to be dead"
    return DIAGNOSES[verdict].format(stuck=f"Stuck (idle {moved}, over {window})" if idle is not None else "Stuck",
                                     moved=moved, window=window, status=status, fail=fail)


def bad_counter(value) -> str | None:
    """Why a counter's value is a problem (NULL, negative), or None."""
    if value is None:
        return "the backend never wrote it"
    if value < 0:
        return "a count of tasks cannot be below zero"
    return None


def corrupt_fix(batch_id: int, column: str) -> str:
    """What to do about a batch with a NULL or negative counter; `column` is the first such counter."""
    # an example for a person to read and adapt, never run by this project
    example = f"UPDATE account_generation_status SET {column} = <the right value> WHERE id = {batch_id}"  # noqa: S608
    return ("The job never changes a batch with a NULL or negative counter. Find the right values in the backend's "
            f"records of the batch's tasks and set them in the backend's database (for example {example}); the next "
            "run judges the batch again.")


def selection_text(filters: dict, *, undo: bool = False) -> str:
    """What a run was asked to work on (CleanupRun.filters), in words: "batches #1, #2 (force)", "all 1,234
    matching stuck=yes", "the whole table"."""
    mode = f" ({filters['mode']})" if filters.get("mode") else ""
    if "select_across" in filters:
        chosen = filters["select_across"]
        if "run" in chosen:
            return f"every record of run #{chosen['run']}"
        count = f"{chosen['count']:,} " if "count" in chosen else ""
        return f"all {count}that matched the list's filters: {chosen.get('list', '')}{mode}"
    for key, noun in (("ids", "batches"), ("lock_ids", "locks"), ("records", "records")):
        if key in filters:
            return f"{noun} {named(filters[key])}{mode}" if filters[key] else f"no {noun}{mode}"
    if undo:
        return "-"
    scope = [f"accounts {', '.join(map(str, filters['accounts']))}"] if filters.get("accounts") else []
    if filters.get("content_types"):
        scope.append(f"content types {', '.join(filters['content_types'])}")
    only = {"statuses": "; batches only", "locks": "; locks only"}.get(filters.get("only"), "")
    return (", ".join(scope) if scope else "the whole table") + only
