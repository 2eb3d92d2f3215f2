"""The health page's chart as geometry: stacked bars per day, ticks, labels, a legend. Pure: no Django, no
database; the template draws it as inline SVG.
"""

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True)
class Tick:
    value: int
    y: float


@dataclass(frozen=True)
class DayLabel:
    x: float
    text: str


@dataclass(frozen=True)
class LegendItem:
    colour: str
    label: str
    total: int


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
    days: int
    summary: str  # for screen readers: what the picture shows

    @property
    def centre_x(self) -> float:
        return (self.plot_left + self.plot_right) / 2


def _nice_step(peak: int, max_ticks: int = 5) -> int:
    """1, 2, 5, 10, 20, 50...: the smallest such step that draws at most `max_ticks` gridlines above zero."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if peak <= step * factor * max_ticks:
                return step * factor
        step *= 10


def build_chart(days: list[date], counts: dict, *, series, colours: dict, width: int = 960,
                height: int = 280) -> Chart:
    """Stacked bars, one per day, one colour per series (in order). `counts` maps (day, series) to a number."""
    left, top, right, bottom = 44, 12, width - 10, height - 26
    per_day = [sum(counts.get((day, rule), 0) for rule in series) for day in days]
    peak = max(per_day, default=0)
    step = _nice_step(max(peak, 1))
    ceiling = step * -(-max(peak, 1) // step)
    scale = (bottom - top) / ceiling
    slot = (right - left) / max(len(days), 1)
    bar_width = round(slot * 0.72, 2)

    bars = []
    for index, day in enumerate(days):
        x = round(left + index * slot + (slot - bar_width) / 2, 2)
        base = bottom
        for rule in series:
            n = counts.get((day, rule), 0)
            if not n:
                continue
            h = n * scale
            base -= h
            bars.append(Bar(x, round(base, 2), bar_width, round(h, 2), colours[rule], f"{day.isoformat()}: {n} {rule}"))
    ticks = [Tick(value, round(bottom - value * scale, 2)) for value in range(0, ceiling + 1, step)]
    labels = [
        DayLabel(round(left + index * slot + slot / 2, 2), f"{day:%b} {day.day}")
        for index, day in enumerate(days) if index % 5 == 0 or index == len(days) - 1
    ]
    totals = {rule: sum(counts.get((day, rule), 0) for day in days) for rule in series}
    legend = [LegendItem(colours[rule], str(rule), totals[rule]) for rule in series]
    total = sum(totals.values())
    if days:
        summary = (f"Repairs per day by rule from {days[0].isoformat()} to {days[-1].isoformat()}: {total} in all"
                   + "".join(f", {item.label} {item.total}" for item in legend))
    else:
        summary = "No days to show"
    return Chart(width, height, left, top, right, bottom, bars, ticks, labels, legend, total, len(days), summary)
