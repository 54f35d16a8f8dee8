"""The overview's chart without a browser: 24 columns ending with the current hour,
stacked by status, scaled to the busiest hour; and the per-phone rates of the grid."""

from __future__ import annotations

from datetime import UTC, datetime

from smsgw.ui.charts import HEIGHT, WIDTH, last_day
from smsgw.ui.pages import phone_rates

NOW = datetime(2026, 12, 8, 10, 42, tzinfo=UTC)


def test_columns_stack_and_scale_to_the_peak() -> None:
    chart = last_day(
        {
            "2026-12-08T10": {"DELIVERED": 3, "FAILED": 1},
            "2026-12-07T11": {"SENT": 2},  # the oldest hour shown
            "2026-12-07T10": {"SENT": 99},  # 24 hours ago: outside
        },
        NOW,
    )
    assert chart.hours[0] == "2026-12-07T11" and chart.hours[-1] == "2026-12-08T10"
    assert chart.peak == 4
    last = [b for b in chart.bars if b.hour == "2026-12-08T10"]
    assert [b.status for b in last] == ["DELIVERED", "FAILED"]  # delivered at the bottom
    delivered, failed = last
    assert delivered.height == HEIGHT * 3 / 4 and delivered.y + delivered.height == HEIGHT
    assert failed.y + failed.height == delivered.y and failed.y == 0
    first = next(b for b in chart.bars if b.hour == "2026-12-07T11")
    assert first.x < WIDTH / 24 and first.height == HEIGHT / 2
    assert all(b.x >= 0 and b.x + b.width <= WIDTH for b in chart.bars)


def test_an_empty_day_draws_nothing() -> None:
    chart = last_day({}, NOW)
    assert chart.bars == [] and chart.peak == 0 and len(chart.hours) == 24


def test_phone_rates() -> None:
    rates = phone_rates({"a": {"SENT": 1, "DELIVERED": 3, "FAILED": 4}, "b": {"QUEUED": 2}})
    assert rates["a"] == {
        "sent": 4,
        "delivered": 3,
        "failed": 4,
        "delivery_rate": 0.75,
        "success_rate": 0.5,
    }
    assert rates["b"]["delivery_rate"] is None and rates["b"]["success_rate"] is None
