"""The overview's chart: the last 24 hours by status, as stacked bars in plain SVG.

Pure (counts in, rectangles out) so it is tested without a browser, and the page needs
no charting library.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# Bottom to top; the colours are the CSS classes of ui.css.
SERIES = ("DELIVERED", "SENT", "QUEUED", "PENDING", "FAILED", "CANCELLED")
WIDTH, HEIGHT, GAP = 720, 160, 4


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    status: str
    count: int
    hour: str  # "YYYY-MM-DDTHH" (UTC)


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    peak: int
    hours: list[str]
    width: int = WIDTH
    height: int = HEIGHT


def last_day(by_hour: dict[str, dict[str, int]], now: datetime) -> Chart:
    """24 hourly columns ending with the current hour; each stacks its statuses."""
    top = now.replace(minute=0, second=0, microsecond=0)
    hours = [(top - timedelta(hours=23 - i)).strftime("%Y-%m-%dT%H") for i in range(24)]
    totals = [sum(by_hour.get(h, {}).values()) for h in hours]
    peak = max(totals, default=0)
    column = WIDTH / 24
    bars: list[Bar] = []
    for i, hour in enumerate(hours):
        counts = by_hour.get(hour, {})
        y = float(HEIGHT)
        for status in SERIES:
            n = counts.get(status, 0)
            if n and peak:
                h = HEIGHT * n / peak
                y -= h
                bars.append(Bar(i * column + GAP / 2, y, column - GAP, h, status, n, hour))
    return Chart(bars, peak, hours)
