"""The rules of docs/contract.md, without a database: worked examples first, then properties."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.rules import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    PARTIAL,
    PROCESSING,
    QUEUING,
    Counters,
    Rule,
    decide,
    diagnose,
    finished_status,
)


def c(*values):
    return Counters(*values)


# --- The spec's worked examples, one test each -------------------------------------------------


def test_all_accounted_all_completed():
    d = decide(c(10, 0, 0, 10, 0), PROCESSING)
    assert (d.rule, d.after, d.status, d.finishes) == (Rule.ALL_ACCOUNTED, c(10, 0, 0, 10, 0), COMPLETED, True)


def test_all_accounted_with_processing_left_over():
    d = decide(c(10, 0, 2, 7, 3), PROCESSING)
    assert (d.rule, d.after, d.status) == (Rule.ALL_ACCOUNTED, c(10, 0, 0, 7, 3), PARTIAL)


def test_all_accounted_all_failed():
    d = decide(c(5, 0, 0, 0, 5), PROCESSING)
    assert (d.rule, d.after, d.status) == (Rule.ALL_ACCOUNTED, c(5, 0, 0, 0, 5), FAILED)


def test_all_accounted_more_outcomes_than_tasks():
    d = decide(c(10, 1, 0, 9, 3), PROCESSING)
    assert (d.rule, d.after, d.status) == (Rule.ALL_ACCOUNTED, c(10, 0, 0, 9, 3), PARTIAL)


def test_no_active_tasks_missing_tasks_count_as_failed():
    d = decide(c(10, 0, 0, 6, 1), PROCESSING)
    assert (d.rule, d.after, d.status, d.finishes) == (Rule.NO_ACTIVE_TASKS, c(10, 0, 0, 6, 4), PARTIAL, True)


def test_no_active_tasks_nothing_ever_ran():
    d = decide(c(4, 0, 0, 0, 0), QUEUING)
    assert (d.rule, d.after, d.status) == (Rule.NO_ACTIVE_TASKS, c(4, 0, 0, 0, 4), FAILED)


def test_counter_overflow_excess_dropped_from_processing():
    d = decide(c(10, 2, 5, 6, 0), PROCESSING)
    assert (d.rule, d.after, d.status, d.finishes) == (Rule.COUNTER_OVERFLOW, c(10, 2, 2, 6, 0), PROCESSING, False)


def test_counter_overflow_excess_from_processing_then_queued():
    d = decide(c(10, 4, 1, 6, 1), PROCESSING)
    assert (d.rule, d.after, d.status) == (Rule.COUNTER_OVERFLOW, c(10, 3, 0, 6, 1), PROCESSING)


def test_counter_overflow_excess_from_queued_only():
    d = decide(c(10, 3, 0, 7, 2), PROCESSING)
    assert (d.rule, d.after, d.status) == (Rule.COUNTER_OVERFLOW, c(10, 1, 0, 7, 2), PROCESSING)


# Edges of counter_overflow: an excess of exactly 1, and a single task in processing or completed, decide
# the in-progress status ("processing" if P > 0 or C > 0, "queuing" otherwise) on their own.


def test_counter_overflow_excess_of_one_leaves_a_single_task_processing():
    d = decide(c(2, 1, 2, 0, 0), PROCESSING)  # excess 1, dropped from P: P' = 1, C = 0
    assert (d.rule, d.after, d.status, d.finishes) == (Rule.COUNTER_OVERFLOW, c(2, 1, 1, 0, 0), PROCESSING, False)


def test_counter_overflow_excess_of_one_with_a_single_completed_task_is_processing():
    d = decide(c(3, 2, 0, 1, 1), QUEUING)  # excess 1, dropped from Q: P' = 0, C = 1
    assert (d.rule, d.after, d.status) == (Rule.COUNTER_OVERFLOW, c(3, 1, 0, 1, 1), PROCESSING)


def test_counter_overflow_excess_of_one_with_nothing_processing_or_completed_is_queuing():
    d = decide(c(2, 2, 0, 0, 1), PROCESSING)  # excess 1, dropped from Q: P' = 0, C = 0
    assert (d.rule, d.after, d.status) == (Rule.COUNTER_OVERFLOW, c(2, 1, 0, 0, 1), QUEUING)


def test_an_excess_of_one_is_not_stalled_even_when_failing_stalled_batches():
    d = decide(c(10, 1, 1, 6, 3), PROCESSING, fail_stalled=True)  # Q+P+C+F = 11 = T + 1
    assert (d.rule, d.after, d.status) == (Rule.COUNTER_OVERFLOW, c(10, 1, 0, 6, 3), PROCESSING)


def test_stalled_is_reported_and_unchanged():
    d = decide(c(10, 1, 1, 3, 2), PROCESSING)
    assert (d.rule, d.after, d.status, d.repairs) == (Rule.STALLED, c(10, 1, 1, 3, 2), PROCESSING, False)
    assert d.changes() == {}


def test_stalled_failed_when_the_window_has_passed():
    d = decide(c(10, 1, 1, 3, 2), PROCESSING, fail_stalled=True)
    assert (d.rule, d.after, d.status, d.finishes) == (Rule.STALLED_FAILED, c(10, 0, 0, 3, 7), PARTIAL, True)


def test_corrupt_is_never_changed():
    d = decide(c(3, 0, -1, 2, 0), PROCESSING)
    assert (d.rule, d.after, d.status, d.repairs) == (Rule.CORRUPT, c(3, 0, -1, 2, 0), PROCESSING, False)


# --- Differences from the original job and edges ---------------------------------------------


def test_status_with_completions_is_partial_even_when_failed_equals_total():
    # the original said `failed` here (difference 2)
    assert finished_status(c(10, 0, 0, 3, 10)) == PARTIAL


def test_status_without_completions_is_failed_even_when_failed_exceeds_total():
    # the original said `partial` here (difference 2)
    assert finished_status(c(10, 0, 0, 0, 12)) == FAILED


@pytest.mark.parametrize("counters", [c(None, 0, 0, 0, 0), c(5, None, 0, 0, 0), c(-1, 0, 0, 0, 0), c(5, 0, 0, 0, -2)])
def test_null_or_negative_is_corrupt(counters):
    assert decide(counters, QUEUING).rule == Rule.CORRUPT


def test_zero_total_is_finished_as_completed():
    d = decide(c(0, 0, 0, 0, 0), QUEUING)
    assert (d.rule, d.status) == (Rule.ALL_ACCOUNTED, COMPLETED)


def test_a_finished_or_unknown_status_is_not_a_candidate():
    for status in (COMPLETED, PARTIAL, FAILED, "exploded"):
        assert decide(c(10, 0, 0, 10, 0), status).rule is None


def test_changes_name_only_the_columns_the_rule_changes():
    assert decide(c(10, 0, 2, 7, 3), PROCESSING).changes() == {"total_processing": 0, "status": PARTIAL}
    assert decide(c(10, 0, 0, 6, 1), PROCESSING).changes() == {"total_failed": 4, "status": PARTIAL}
    assert decide(c(10, 2, 5, 6, 0), PROCESSING).changes() == {"total_processing": 2}


def test_diagnose():
    assert diagnose(c(10, 0, 0, 10, 0), COMPLETED, stuck=True) == "finished"
    assert diagnose(c(10, 1, 0, 2, 0), PROCESSING, stuck=False) == "healthy"
    assert diagnose(c(10, 0, 0, 6, 1), PROCESSING, stuck=True) == "no_active_tasks"
    assert diagnose(c(10, 1, 1, 3, 2), PROCESSING, stuck=True) == "stalled"
    for odd in ("paused", "PROCESSING", "processing ", ""):
        assert diagnose(c(10, 0, 0, 10, 0), odd, stuck=True) == "unknown_status"


# --- Properties over arbitrary counters --------------------------------------------------------

BIGINT = 2**63 - 1
counter = st.one_of(st.none(), st.integers(min_value=-5, max_value=60), st.integers(min_value=-BIGINT, max_value=BIGINT))
counters = st.builds(Counters, counter, counter, counter, counter, counter)
in_progress = st.sampled_from(IN_PROGRESS)


@settings(max_examples=3000, deadline=None)
@given(counters, in_progress, st.booleans())
def test_properties_of_every_decision(before, status, fail_stalled):
    d = decide(before, status, fail_stalled=fail_stalled)
    assert d.rule is not None  # every in-progress candidate gets a rule
    if d.rule == Rule.CORRUPT:
        assert (d.after, d.status) == (before, status)
        return
    after = d.after
    assert after.total_requested == before.total_requested
    assert after.total_completed == before.total_completed
    assert not after.is_corrupt
    if d.finishes:
        assert after.total_queued == after.total_processing == 0
        assert after.accounted >= after.total_requested
        assert d.status == finished_status(after)
    if d.rule == Rule.COUNTER_OVERFLOW:
        assert after.in_flight + after.accounted == after.total_requested
        assert d.status in IN_PROGRESS
    if d.rule in (Rule.STALLED, Rule.CORRUPT):
        assert d.changes() == {}
    if d.repairs:
        again = decide(after, d.status, fail_stalled=False)
        assert again.rule in (None, Rule.STALLED)


@settings(max_examples=1000, deadline=None)
@given(counters, in_progress)
def test_fail_stalled_only_changes_what_would_otherwise_be_stalled(before, status):
    plain, failing = decide(before, status), decide(before, status, fail_stalled=True)
    if plain.rule == Rule.STALLED:
        assert failing.rule == Rule.STALLED_FAILED
        assert failing.after.total_failed == before.total_requested - before.total_completed
    else:
        assert failing == plain


def in_progress_status(after):
    """The contract's in-progress status, spelt out here rather than taken from rules.py."""
    return PROCESSING if after.total_processing > 0 or after.total_completed > 0 else QUEUING


valid = st.integers(min_value=0, max_value=BIGINT)
small = st.integers(min_value=0, max_value=6)


@st.composite
def overflowing(draw, values):
    """Valid counters with an excess: C + F < T, Q + P > 0 and Q + P + C + F > T (an excess of 1 is common)."""
    t = draw(values.filter(lambda n: n > 0))
    completed = draw(st.integers(min_value=0, max_value=t - 1))
    failed = draw(st.integers(min_value=0, max_value=t - 1 - completed))
    room = t - completed - failed  # at least 1
    excess = draw(st.one_of(st.just(1), values.filter(lambda n: n > 0)))
    in_flight = room + excess  # Q + P, split so that each fits a bigint
    queued = draw(st.integers(min_value=max(0, in_flight - BIGINT), max_value=min(in_flight, BIGINT)))
    return Counters(t, queued, in_flight - queued, completed, failed)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(overflowing(small), overflowing(valid)), in_progress, st.booleans())
def test_an_excess_is_counter_overflow_and_the_status_after_is_the_in_progress_status(before, status, fail_stalled):
    assert before.in_flight + before.accounted > before.total_requested > before.accounted  # the rule's condition
    d = decide(before, status, fail_stalled=fail_stalled)
    assert d.rule == Rule.COUNTER_OVERFLOW
    assert d.status == in_progress_status(d.after)
    assert not d.finishes
    # the excess comes off P first, then off Q
    excess = before.in_flight + before.accounted - before.total_requested
    dropped_from_processing = before.total_processing - d.after.total_processing
    assert dropped_from_processing == min(excess, before.total_processing)
    assert before.total_queued - d.after.total_queued == excess - dropped_from_processing


def test_valid_small_counters_are_classified_as_the_contract_says():
    """Every rule's condition spelt out independently, in the contract's order, for all counters 0..4."""
    for t, q, p, completed, failed in itertools.product(range(5), repeat=5):
        before = Counters(t, q, p, completed, failed)
        if completed + failed >= t:
            expected = Rule.ALL_ACCOUNTED
        elif q + p == 0:
            expected = Rule.NO_ACTIVE_TASKS
        elif q + p + completed + failed > t:
            expected = Rule.COUNTER_OVERFLOW
        else:
            expected = None  # stalled, or stalled_failed when failing stalled batches
        for status, fail_stalled in itertools.product(IN_PROGRESS, (False, True)):
            d = decide(before, status, fail_stalled=fail_stalled)
            assert d.rule == (expected or (Rule.STALLED_FAILED if fail_stalled else Rule.STALLED)), (before, status)
            if expected == Rule.COUNTER_OVERFLOW:
                assert d.status == in_progress_status(d.after), before
