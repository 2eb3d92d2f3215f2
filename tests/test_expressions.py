"""expressions.py is rules.py in SQL: the verdict, every rule's writes (as the select computes them and as the
UPDATE writes them), the snapshots and the batch that refers to a lock. Exhaustively over small counters (NULL
and negatives included), and by property tests up to +-2^63; each row judged by the windows of its own content
type (a type the windows do not name gets the default; the fail-stalled window may have none); on SQLite and
on PostgreSQL."""

import itertools
import json
import logging
from datetime import datetime, timedelta

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation import expressions as ex
from generation import rules
from generation.conf import Windows, parse_fail_stalled_windows, parse_windows
from generation.db import database_now
from generation.models import GenerationLock, GenerationStatus
from generation.rules import COUNTER_FIELDS, Counters, Rule

pytestmark = pytest.mark.django_db

WINDOW = timedelta(hours=3)
STUCK, FRESH = WINDOW + timedelta(minutes=1), WINDOW - timedelta(minutes=1)
FAIL_WINDOW = timedelta(hours=5)
BIGINT_MAX, BIGINT_MIN = 2**63 - 1, -(2**63)
MINUTE = timedelta(minutes=1)
WINDOWS, FAIL_WINDOWS = Windows(WINDOW), Windows(FAIL_WINDOW)  # one window for every content type

# updated_at's ages (None for NULL): a minute either side of the stuck window, past the fail-stalled one
AGES = (STUCK, FRESH, FAIL_WINDOW + MINUTE, None)
# the rows' content types: the contract's three, and one no window below names
CONTENT_TYPES = ("video", "story", "slideshow", "podcast")


def insert(batches):
    """batches: [(Counters, status, age[, content type: video])]; returns the database clock and the rows' ids."""
    GenerationStatus.objects.all().delete()
    now = database_now()
    rows = GenerationStatus.objects.bulk_create([
        GenerationStatus(account_id=n, content_type=content_type, status=status, lock_id=f"lock-{n}",
                         updated_at=None if age is None else now - age, **counters.as_dict())
        for n, (counters, status, age, content_type) in enumerate(map(typed, batches))], batch_size=2_000)
    return now, [row.pk for row in rows]


def typed(batch):
    return batch if len(batch) == 4 else (*batch, "video")


def idle_past(age, window) -> bool | None:
    """rules' "stuck": idle longer than the window (None: the age is unknown). updated_at < now - window."""
    return None if age is None else age > window


def judged(judgement, now, columns=()):
    """{id: (verdict, *after-values)} for every row, as the database computes them."""
    annotations = {"verdict": judgement.verdict(), **{f"after_{name}": judgement.after(name) for name in columns}}
    return {row[0]: row[1:] for row in GenerationStatus.objects.annotate(**annotations)
            .values_list("id", *annotations)}


def expected_verdict(counters, status, age, content_type, *, stuck_after, fail_stalled):
    """rules.diagnose() of a row `age` old, by the windows of its content type: stuck_after Windows or None (no
    window: the admin's force); fail_stalled None (never), Windows (a type without one: never) or True (always)."""
    stuck = True if stuck_after is None else idle_past(age, stuck_after.for_type(content_type))
    fail_window = fail_stalled.for_type(content_type) if isinstance(fail_stalled, Windows) else None
    fail = fail_stalled is True or (fail_window is not None and bool(idle_past(age, fail_window)))
    return rules.diagnose(counters, status, stuck=stuck, fail_stalled=fail)


def check_verdicts_and_writes(batches, *, stuck_after=WINDOWS, fail_stalled_after=FAIL_WINDOWS):
    """Every judgement a pass can make (the stuck windows or none, fail-stalled never/after its windows/always),
    with the cutoffs taken at the clock the rows were aged by: the SQL verdict is rules.diagnose() with each
    row's own windows; for each repaired row, the after-values are rules.decide()'s; then the UPDATE of each
    rule, WHERE the verdict is that rule, leaves each row as rules.decide() says."""
    now, ids = insert(batches)
    batches = [typed(batch) for batch in batches]
    checked = {"verdicts": 0, "writes": 0}
    for stuck_after_, fail_stalled in ((stuck_after, None), (stuck_after, fail_stalled_after), (None, None),
                                       (None, True)):
        judgement = ex.Judgement(
            cutoffs=stuck_after_.cutoffs(now) if stuck_after_ else None,
            fail_stalled=fail_stalled.cutoffs(now) if isinstance(fail_stalled, Windows) else fail_stalled)
        computed = judged(judgement, now, columns=ex.WRITTEN)
        for pk, (counters, status, age, content_type) in zip(ids, batches, strict=True):
            verdict, *after = computed[pk]
            expect = expected_verdict(counters, status, age, content_type, stuck_after=stuck_after_,
                                      fail_stalled=fail_stalled)
            assert verdict == expect, (counters, status, age, content_type, stuck_after_, fail_stalled)
            checked["verdicts"] += 1
            if verdict in rules.REPAIRS:
                decision = rules.decide(counters, status, fail_stalled=verdict == Rule.STALLED_FAILED)
                assert decision.rule == verdict
                assert after == [decision.after.total_queued, decision.after.total_processing,
                                 decision.after.total_failed, decision.status], (counters, status, verdict)
                checked["writes"] += 1
            else:
                assert after == [counters.total_queued, counters.total_processing, counters.total_failed, status]
    # the UPDATEs themselves (the fail-stalled pass, so every repair rule has rows)
    judgement = ex.Judgement(cutoffs=stuck_after.cutoffs(now), fail_stalled=True)
    verdicts = {pk: verdict for pk, (verdict,) in judged(judgement, now).items()}
    for rule in rules.REPAIRS:
        rule_ids = [pk for pk, verdict in verdicts.items() if verdict == rule]
        written = GenerationStatus.objects.filter(ex.any_of("id", rule_ids)).filter(judgement.of(rule)).update(
            **ex.WRITES[rule])
        assert written == len(rule_ids)
    stored = {row.pk: row for row in GenerationStatus.objects.all()}
    for pk, (counters, status, *_) in zip(ids, batches, strict=True):
        row, verdict = stored[pk], verdicts[pk]
        if verdict in rules.REPAIRS:
            decision = rules.decide(counters, status, fail_stalled=True)
            assert (Counters.of(row), row.status) == (decision.after, decision.status), (counters, status)
        else:
            assert (Counters.of(row), row.status) == (counters, status)
    return checked


# --- Exhaustively, over small counters -----------------------------------------------------------

SMALL = (None, -1, 0, 1, 2, 3)


def test_every_small_combination_is_judged_and_written_as_rules_say(monkeypatch):
    """T in -1..3 (it is NOT NULL), Q, P, C and F in NULL, -1..3, both in-progress statuses: 12,960 rows, every
    boundary between the rules, judged four ways."""
    batches = [(Counters(t, q, p, c, f), status, STUCK)
               for t in SMALL[1:] for q, p, c, f in itertools.product(SMALL, repeat=4)
               for status in rules.IN_PROGRESS]
    checked = check_verdicts_and_writes(batches)
    assert checked["verdicts"] == 4 * len(batches) and len(batches) == 12_960
    assert checked["writes"] > 5_000


def test_every_status_and_age_gets_its_verdict():
    """The branches before the rules: unknown statuses, finished rows, a NULL updated_at, the window's edge
    (a minute either side), and the fail-stalled window's."""
    shapes = [(10, 0, 2, 7, 3), (10, 0, 0, 6, 1), (10, 2, 5, 6, 0), (10, 1, 1, 3, 2), (3, 0, -1, 2, 0),
              (3, None, 0, 2, 0)]
    statuses = [*rules.KNOWN_STATUSES, "paused", "PROCESSING", "processing "]
    batches = [(Counters(*shape), status, age) for shape in shapes for status in statuses for age in AGES]
    check_verdicts_and_writes(batches)
    now, _ = insert(batches)
    verdicts = {verdict for (verdict,) in judged(ex.Judgement(cutoffs=Windows(WINDOW).cutoffs(now)), now).values()}
    assert verdicts == {*rules.Verdict, *rules.STUCK_RULES}, "every verdict was produced at least once"


# --- By property, up to the bigint limits ------------------------------------------------------------

counter = st.one_of(st.none(), st.integers(BIGINT_MIN, BIGINT_MAX), st.integers(-2, 12),
                    st.integers(BIGINT_MAX - 12, BIGINT_MAX), st.sampled_from([0, 1, BIGINT_MAX, BIGINT_MIN]))
total = st.one_of(st.integers(BIGINT_MIN, BIGINT_MAX), st.integers(-1, 12), st.integers(BIGINT_MAX - 12, BIGINT_MAX))
near_boundaries = st.builds(Counters, st.integers(0, 8), st.integers(0, 4), st.integers(0, 4), st.integers(0, 8),
                            st.integers(0, 8))
huge = st.builds(Counters, st.integers(BIGINT_MAX - 30, BIGINT_MAX), st.integers(0, BIGINT_MAX),
                 st.integers(0, BIGINT_MAX), st.integers(0, BIGINT_MAX), st.integers(0, BIGINT_MAX))
batch = st.tuples(st.one_of(st.builds(Counters, total, counter, counter, counter, counter), near_boundaries, huge),
                  st.sampled_from(rules.IN_PROGRESS), st.sampled_from(AGES))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(batches=st.lists(batch, min_size=1, max_size=60))
def test_any_counters_up_to_the_bigint_limits_are_judged_and_written_as_rules_say(batches):
    """No sum of counters is ever computed in SQL, so nothing overflows: a failed statement would fail the test."""
    check_verdicts_and_writes(batches)


def test_counters_at_the_bigint_limit_are_judged_and_written_without_overflow():
    """Sums of these would pass 2^63 - 1 and fail the statement: the expressions never add counters up."""
    big = BIGINT_MAX
    shapes = [(5, big, big, 0, 0), (big, 0, 0, big, big), (big, 1, 0, big - 2, 0), (3, 0, big, 0, 0),
              (big, big, 0, 0, 0), (big, big, big, 1, 1)]
    checked = check_verdicts_and_writes([(Counters(*shape), "processing", STUCK) for shape in shapes])
    assert checked["verdicts"] == 4 * len(shapes) and checked["writes"] >= len(shapes)


# --- Each row by the windows of its own content type ----------------------------------------------------

SHAPES = [(10, 0, 2, 7, 3), (10, 0, 0, 6, 1), (10, 2, 5, 6, 0), (10, 1, 1, 3, 2), (3, 0, -1, 2, 0)]


def test_each_content_type_is_judged_by_its_own_window_a_minute_either_side_of_each():
    """GENERATION_STUCK_AFTER=3h,video=8h,story=45m and a fail-stalled window for two types only: for every
    content type (podcast: named by none), rows a minute either side of every window, judged as rules say."""
    stuck_after = parse_windows("3h,video=8h,story=45m")
    fail_stalled_after = parse_fail_stalled_windows("video=10h,slideshow=5h")
    windows = {*stuck_after.values(), *fail_stalled_after.values()}
    ages = sorted({window + delta for window in windows for delta in (-MINUTE, timedelta(0), MINUTE)}) + [None]
    batches = [(Counters(*shape), status, age, content_type) for shape in SHAPES for status in rules.IN_PROGRESS
               for age in ages for content_type in CONTENT_TYPES]
    checked = check_verdicts_and_writes(batches, stuck_after=stuck_after, fail_stalled_after=fail_stalled_after)
    assert checked["verdicts"] == 4 * len(batches)
    now, _ = insert(batches)
    verdicts = judged(ex.Judgement(cutoffs=stuck_after.cutoffs(now), fail_stalled=fail_stalled_after.cutoffs(now)),
                      now)
    assert {verdict for (verdict,) in verdicts.values()} >= {rules.Verdict.HEALTHY, Rule.STALLED_FAILED, Rule.STALLED}


minutes = st.integers(1, 12 * 60).map(lambda n: timedelta(minutes=n))
# windows may name a type no row has (audio); rows may be of a type no window names (podcast)
named = st.dictionaries(st.sampled_from(["video", "story", "slideshow", "audio"]), minutes, max_size=3).map(
    lambda by_type: tuple(by_type.items()))
stuck_windows = st.builds(Windows, minutes, named)
fail_windows = st.one_of(st.none(), st.builds(Windows, minutes, named),
                         st.builds(Windows, st.none(), named.filter(bool)))
typed_batch = st.tuples(st.one_of(near_boundaries, st.builds(Counters, total, counter, counter, counter, counter)),
                        st.sampled_from(rules.IN_PROGRESS), st.one_of(st.none(), minutes),
                        st.sampled_from(CONTENT_TYPES))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(batches=st.lists(typed_batch, min_size=1, max_size=40), stuck_after=stuck_windows,
       fail_stalled_after=fail_windows)
def test_any_windows_by_content_type_judge_each_row_as_rules_say(batches, stuck_after, fail_stalled_after):
    """Random windows per type (ages in whole minutes, so a row may sit exactly on its cutoff: not stuck)."""
    check_verdicts_and_writes(batches, stuck_after=stuck_after, fail_stalled_after=fail_stalled_after)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(batches=st.lists(typed_batch, min_size=1, max_size=40), stuck_after=stuck_windows,
       held=st.lists(st.tuples(minutes, st.sampled_from(CONTENT_TYPES)), max_size=20), lock_ttl=stuck_windows)
def test_the_stuck_moving_and_expired_predicates_use_each_rows_own_window(batches, stuck_after, held, lock_ttl):
    """stuck() (the candidate scan), moving() (the health page's locks of moving batches) and expired() /
    still_expired() (the lock scan, re-checked on the locked row) against each row's own window."""
    now, ids = insert(batches)
    cutoffs = stuck_after.cutoffs(now)
    stuck = set(GenerationStatus.objects.filter(ex.stuck(cutoffs)).values_list("id", flat=True))
    moving = set(GenerationStatus.objects.filter(ex.moving(cutoffs)).values_list("id", flat=True))
    for pk, (_counters, status, age, content_type) in zip(ids, batches, strict=True):
        past = idle_past(age, stuck_after.for_type(content_type))
        assert (pk in stuck) == bool(status in rules.IN_PROGRESS and past), (age, content_type, stuck_after)
        assert (pk in moving) == (status in rules.IN_PROGRESS and past is False), (age, content_type, stuck_after)
    GenerationLock.objects.all().delete()
    locks = GenerationLock.objects.bulk_create([
        GenerationLock(account_id=n, content_type=content_type, locked_at=now - age, lock_id=f"held-{n}")
        for n, (age, content_type) in enumerate(held)])
    lock_cutoffs = lock_ttl.cutoffs(now)
    expired = set(GenerationLock.objects.filter(ex.expired(lock_cutoffs)).values_list("id", flat=True))
    column = dict(GenerationLock.objects.annotate(e=ex.still_expired(lock_cutoffs)).values_list("id", "e"))
    for lock, (age, content_type) in zip(locks, held, strict=True):
        assert (lock.pk in expired) == column[lock.pk] == (age > lock_ttl.for_type(content_type))


def test_one_window_for_every_type_is_the_plain_comparison_and_per_type_windows_share_one_bound():
    """A bare duration asks what it always asked (updated_at < %s, nothing else); windows per type add one
    branch per named type and one for the others, under the bound of the shortest window."""
    now = database_now()
    plain = str(GenerationStatus.objects.filter(ex.stuck(Windows(WINDOW).cutoffs(now))).values("id").query)
    assert plain.count("updated_at") == 1 and "content_type" not in plain
    per_type = str(GenerationStatus.objects.filter(ex.stuck(parse_windows("3h,video=8h").cutoffs(now))).values("id")
                   .query)
    assert per_type.count("updated_at") == 3 and per_type.count("content_type") == 2
    assert "NOT" in per_type  # the default's branch: the types not named
    without_default = str(GenerationStatus.objects.filter(
        ex.idle_since_before(parse_fail_stalled_windows("video=1d").cutoffs(now))).values("id").query)
    assert without_default.count("content_type") == 1 and "NOT" not in without_default


# --- Snapshots -----------------------------------------------------------------------------------


def test_the_snapshots_the_database_builds_are_the_rows_values():
    now, (pk,) = insert([(Counters(BIGINT_MAX, 0, 2, 7, None), "processing", STUCK)])
    GenerationStatus.objects.filter(pk=pk).update(completed_at=now - timedelta(hours=1))
    row = GenerationStatus.objects.get(pk=pk)
    snapshot = json.loads(GenerationStatus.objects.filter(pk=pk).values_list(ex.status_snapshot(), flat=True).get())
    # ISO 8601 with the offset; PostgreSQL drops trailing zeros of the microseconds, so compare the instants
    times = {name: datetime.fromisoformat(snapshot.pop(name)) for name in ("completed_at", "updated_at")}
    assert times == {"completed_at": row.completed_at, "updated_at": row.updated_at}
    assert snapshot == {**Counters.of(row).as_dict(), "status": "processing"}
    lock = GenerationLock.objects.create(account_id=1, content_type="story", locked_at=now, lock_id="L1")
    snapshot = json.loads(GenerationLock.objects.filter(pk=lock.pk).values_list(ex.lock_snapshot(), flat=True).get())
    assert datetime.fromisoformat(snapshot.pop("locked_at")) == now
    assert snapshot == {"lock_id": "L1", "account_id": 1, "content_type": "story", "created_at": None}


def test_a_repairs_after_snapshot_is_the_row_its_update_then_writes():
    now, ids = insert([(Counters(10, 0, 0, 6, 1), "processing", STUCK), (Counters(10, 2, 5, 6, 0), "processing", STUCK),
                       (Counters(10, 1, 1, 6, 4), "queuing", STUCK)])
    clock = ex.pass_clock(connection)  # one value for the whole test (its transaction, or the pass's start)
    repairs = dict(zip(ids, (Rule.NO_ACTIVE_TASKS, Rule.COUNTER_OVERFLOW, Rule.ALL_ACCOUNTED), strict=True))
    verdicts = ex.Judgement(cutoffs=WINDOWS.cutoffs(now)).verdict()
    assert dict(GenerationStatus.objects.filter(pk__in=ids).values_list("id", verdicts)) == repairs
    predicted = {pk: json.loads(GenerationStatus.objects.filter(pk=pk).values_list(
        ex.repair_snapshot(rule, clock), flat=True).get()) for pk, rule in repairs.items()}
    for pk, rule in repairs.items():
        GenerationStatus.objects.filter(pk=pk).update(**ex.repair_writes(rule, clock))
    written = dict(GenerationStatus.objects.filter(pk__in=ids).values_list("id", ex.status_snapshot()))
    assert predicted == {pk: json.loads(written[pk]) for pk in ids}
    emptied, overflowed, accounted = (predicted[pk] for pk in ids)
    assert emptied["completed_at"] == emptied["updated_at"] is not None  # finishing: both stamped
    assert (emptied["total_failed"], emptied["status"]) == (4, "partial")  # no_active_tasks: T - C failed
    assert (accounted["total_queued"], accounted["total_failed"], accounted["status"]) == (0, 4, "partial")
    assert overflowed["completed_at"] is None and overflowed["updated_at"] == emptied["updated_at"]
    assert (overflowed["total_queued"], overflowed["total_processing"], overflowed["status"]) == (2, 2, "processing")
    assert datetime.fromisoformat(emptied["updated_at"]) > now - STUCK


# --- The batch that refers to a lock: one ordering everywhere ----------------------------------------


def test_the_referring_batch_is_the_one_that_moved_last_and_never_a_never_updated_one():
    now = database_now()
    common = {"account_id": 1, "content_type": "video", "total_requested": 1, "lock_id": "shared"}
    older = GenerationStatus.objects.create(status="processing", updated_at=now - timedelta(hours=2), **common)
    newer = GenerationStatus.objects.create(status="processing", updated_at=now - timedelta(hours=1), **common)
    GenerationStatus.objects.create(status="processing", updated_at=None, **common)  # NULL: sorts last
    assert ex.referring_batch(GenerationStatus, "shared").first() == newer
    GenerationStatus.objects.filter(pk=newer.pk).delete()
    assert ex.referring_batch(GenerationStatus, "shared").first() == older


# --- The one-parameter id list ---------------------------------------------------------------------


def test_any_of_matches_exactly_the_listed_values_with_one_parameter():
    _, ids = insert([(Counters(1, 0, 0, 0, 0), "queuing", STUCK)] * 50)
    wanted = ids[::3] + [BIGINT_MAX]  # an id that matches nothing, at the bigint limit
    rows = GenerationStatus.objects.filter(ex.any_of("id", wanted)).values_list("id", flat=True)
    assert sorted(rows) == sorted(ids[::3])
    _sql, params = rows.query.get_compiler(using="default").as_sql()
    assert len(params) == 1, "one parameter for the whole list, not one per id"
    assert list(GenerationStatus.objects.filter(ex.any_of("id", []))) == []
    assert list(GenerationLock.objects.filter(ex.any_of("lock_id", ["a", "b"]))) == []


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setattr(logging.getLogger("generation"), "level", logging.WARNING)


def test_the_written_columns_are_the_only_ones_a_repair_may_change():
    assert set(ex.WRITTEN) == {name for writes in ex.WRITES.values() for name in writes}
    assert set(ex.WRITTEN) <= {*COUNTER_FIELDS, "status"}
