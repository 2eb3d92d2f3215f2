"""generation.chart: the health page's chart as geometry."""

from datetime import date, datetime, timedelta

import pytest

from generation import chart, health
from generation.models import RecordRule


def build(days, counts):
    return chart.build_chart(days, counts, series=health.CHART_RULES, colours=health.CHART_COLOURS)


def test_nice_steps():
    assert [chart._nice_step(n) for n in (1, 5, 6, 10, 11, 24, 26, 99, 101, 240, 260)] == [
        1, 1, 2, 2, 5, 5, 10, 20, 50, 50, 100]


def test_chart_stacks_bars_per_day_in_proportion():
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]
    counts = {(days[0], RecordRule.ALL_ACCOUNTED): 6, (days[0], RecordRule.EXPIRED_LOCK): 2,
              (days[29], RecordRule.NO_ACTIVE_TASKS): 4}
    chart = build(days, counts)
    assert chart.total == 12 and chart.days == 30
    assert [t.value for t in chart.ticks] == [0, 2, 4, 6, 8]
    plot_height = chart.plot_bottom - chart.plot_top
    first, second, last = chart.bars
    assert (first.title, second.title, last.title) == (
        "2026-11-01: 6 all_accounted", "2026-11-01: 2 expired_lock", "2026-11-30: 4 no_active_tasks")
    assert first.height == pytest.approx(plot_height * 6 / 8) and second.height == pytest.approx(plot_height * 2 / 8)
    assert first.y + first.height == pytest.approx(chart.plot_bottom)  # the first series sits on the axis
    assert second.y + second.height == pytest.approx(first.y)  # the next one on top of it
    assert first.x == second.x < last.x <= chart.plot_right - last.width
    assert first.colour == health.CHART_COLOURS[RecordRule.ALL_ACCOUNTED]
    assert [label.text for label in chart.labels] == ["Nov 1", "Nov 6", "Nov 11", "Nov 16", "Nov 21", "Nov 26",
                                                      "Nov 30"]
    # the first and last labels keep inside the plot: from the first column's left edge, up to the last's right
    assert [label.anchor for label in chart.labels] == ["start", *["middle"] * 5, "end"]
    assert (chart.labels[0].x, chart.labels[-1].x) == (chart.plot_left, pytest.approx(chart.plot_right))
    assert {item.label: item.total for item in chart.legend}["all_accounted"] == 6
    assert chart.summary.startswith("Repairs per day by rule from 2026-11-01 to 2026-11-30: 12 in all")


def test_an_empty_chart_still_has_axes():
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]
    chart = build(days, {})
    assert chart.bars == [] and chart.total == 0
    assert [t.value for t in chart.ticks] == [0, 1]


def test_the_backlog_chart_stacks_each_runs_figures_and_keys_each_bar_by_its_run():
    start = datetime(2026, 11, 1, 0, 0)
    runs = [chart.RunColumn(100 + n, start + timedelta(minutes=30 * n), {"repaired": n, "stalled": 2})
            for n in range(25)]
    backlog = chart.build_run_chart(runs, series=health.BACKLOG_SERIES, colours=health.BACKLOG_COLOURS)
    assert backlog.days == 25
    first_stalled, = [bar for bar in backlog.bars if bar.key == 100]
    assert first_stalled.title == "run #100, 2026-11-01 00:00: 2 stalled"
    last = [bar for bar in backlog.bars if bar.key == 124]
    assert [bar.title for bar in last] == ["run #124, 2026-11-01 12:00: 24 repaired",
                                           "run #124, 2026-11-01 12:00: 2 stalled"]
    assert last[1].y + last[1].height == pytest.approx(last[0].y)  # stacked
    assert [label.text for label in backlog.labels] == ["Nov 1 00:00", "Nov 1 07:30"]  # the last would crowd 07:30
    assert [label.anchor for label in backlog.labels] == ["start", "middle"]
    assert {item.label: item.total for item in backlog.legend} == {
        "repaired": 24, "stalled": 2, "corrupt": 0, "busy or moved on": 0}
    assert backlog.summary.startswith("Stuck batches found by each of the last 25 runs of the job, from run #100 to "
                                      "run #124; the last one found 26")
    assert chart.build_run_chart([], series=health.BACKLOG_SERIES, colours=health.BACKLOG_COLOURS).bars == []
