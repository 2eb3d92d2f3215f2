"""The health page's charts as geometry: stacked bars per column (a day, or a run), ticks, labels, a legend.
Pure: no Django, no database; the template draws them as inline SVG.
"""

from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str
    key: object = None  # what the column stands for (a day, a run's id): the template may link it


@dataclass(frozen=True)
class Tick:
    value: int
    y: float


@dataclass(frozen=True)
class DayLabel:
    x: float
    text: str
    anchor: str = "middle"  # SVG text-anchor: the first and last labels keep inside the plot


@dataclass(frozen=True)
class LegendItem:
    colour: str
    label: str
    total: int  # repairs per day: over the days shown; the backlog per run: in the last run


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_left: int
    plot_top: int
    plot_right: int
    plot_bottom: int
    bars: list
    ticks: list
    labels: list
    legend: list
    total: int
    days: int  # columns: days, or runs
    summary: str  # for screen readers: what the picture shows

    @property
    def centre_x(self) -> float:
        return (self.plot_left + self.plot_right) / 2


@dataclass(frozen=True)
class RunColumn:
    """One run of the backlog chart: its id, when it started (in the site's time zone) and its figures by
    series."""

    key: int
    started_at: datetime
    values: dict


def _nice_step(peak: int, max_ticks: int = 5) -> int:
    """1, 2, 5, 10, 20, 50...: the smallest such step that draws at most `max_ticks` gridlines above zero."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if peak <= step * factor * max_ticks:
                return step * factor
        step *= 10


def _labelled(columns: int, every: int, *, last_after: float) -> list[int]:
    """The columns that get a label: every `every`th from the first, and the last one too if it is at least
    `last_after` columns from the one before (a label is wider than its column: it must not crowd the next)."""
    indices = list(range(0, columns, every))
    if columns and columns - 1 - indices[-1] >= last_after:
        indices.append(columns - 1)
    return indices


def _stacked(keys: list, counts: dict, *, series, colours: dict, titles, labels: dict, width: int,
             height: int) -> tuple:
    """Bars stacked per column in series order, the ticks, and the labels of the columns `labels` names
    (column index -> text). `counts` maps (key, series) to a number; `titles(key, n, series)` words a bar."""
    left, top, right, bottom = 44, 12, width - 10, height - 26
    per_column = [sum(counts.get((key, name), 0) for name in series) for key in keys]
    peak = max(per_column, default=0)
    step = _nice_step(max(peak, 1))
    ceiling = step * -(-max(peak, 1) // step)
    scale = (bottom - top) / ceiling
    slot = (right - left) / max(len(keys), 1)
    bar_width = round(slot * 0.72, 2)

    bars = []
    for index, key in enumerate(keys):
        x = round(left + index * slot + (slot - bar_width) / 2, 2)
        base = bottom
        for name in series:
            n = counts.get((key, name), 0)
            if not n:
                continue
            h = n * scale
            base -= h
            bars.append(Bar(x, round(base, 2), bar_width, round(h, 2), colours[name], titles(key, n, name), key))
    ticks = [Tick(value, round(bottom - value * scale, 2)) for value in range(0, ceiling + 1, step)]
    placed = []
    for index, text in sorted(labels.items()):
        if index == 0:  # from the first column's left edge
            placed.append(DayLabel(round(left + index * slot, 2), text, "start"))
        elif index == len(keys) - 1:  # up to the last column's right edge
            placed.append(DayLabel(round(left + (index + 1) * slot, 2), text, "end"))
        else:
            placed.append(DayLabel(round(left + index * slot + slot / 2, 2), text))
    return (left, top, right, bottom), bars, ticks, placed


def build_chart(days: list[date], counts: dict, *, series, colours: dict, width: int = 960,
                height: int = 280) -> Chart:
    """Stacked bars, one per day, one colour per series (in order). `counts` maps (day, series) to a number."""
    labels = {index: f"{days[index]:%b} {days[index].day}" for index in _labelled(len(days), 5, last_after=2.5)}
    plot, bars, ticks, placed = _stacked(
        days, counts, series=series, colours=colours, labels=labels, width=width, height=height,
        titles=lambda day, n, name: f"{day.isoformat()}: {n} {name}")
    totals = {name: sum(counts.get((day, name), 0) for day in days) for name in series}
    legend = [LegendItem(colours[name], str(name), totals[name]) for name in series]
    total = sum(totals.values())
    if days:
        summary = (f"Repairs per day by rule from {days[0].isoformat()} to {days[-1].isoformat()}: {total} in all"
                   + "".join(f", {item.label} {item.total}" for item in legend))
    else:
        summary = "No days to show"
    return Chart(width, height, *plot, bars, ticks, placed, legend, total, len(days), summary)


def build_run_chart(runs: list[RunColumn], *, series, colours: dict, width: int = 960, height: int = 280,
                    label_every: int = 15) -> Chart:
    """Stacked bars, one per run in the order given (oldest first): what each run found stuck, by series. The
    legend gives the last run's figures."""
    counts = {(run.key, name): run.values.get(name, 0) for run in runs for name in series}
    labels = {index: f"{runs[index].started_at:%b} {runs[index].started_at.day} {runs[index].started_at:%H:%M}"
              for index in _labelled(len(runs), label_every, last_after=label_every)}
    when = {run.key: run.started_at for run in runs}
    plot, bars, ticks, placed = _stacked(
        [run.key for run in runs], counts, series=series, colours=colours, labels=labels, width=width,
        height=height, titles=lambda key, n, name: f"run #{key}, {when[key]:%Y-%m-%d %H:%M}: {n} {name}")
    last = runs[-1].values if runs else {}
    legend = [LegendItem(colours[name], str(name), last.get(name, 0)) for name in series]
    total = sum(counts.values())
    if runs:
        summary = (f"Stuck batches found by each of the last {len(runs)} runs of the job, from run #{runs[0].key} "
                   f"to run #{runs[-1].key}; the last one found {sum(last.values())}"
                   + "".join(f", {item.label} {item.total}" for item in legend))
    else:
        summary = "No runs to show"
    return Chart(width, height, *plot, bars, ticks, placed, legend, total, len(runs), summary)
