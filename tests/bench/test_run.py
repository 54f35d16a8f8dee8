"""bench/run.py's bookkeeping: a run never overwrites the results of another."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import run
from bench.run import SCENARIOS, results_name


def test_results_are_named_for_what_ran_and_never_overwritten(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    every = set(SCENARIOS)
    first = results_name("2026-12-07", "abc1234", True, every, postgres=False)
    assert first == "2026-12-07-abc1234"
    (tmp_path / "2026-12-07-abc1234.json").write_text("{}")
    # The same commit again, or less of it, gets a name of its own.
    assert results_name("2026-12-07", "abc1234", True, every, postgres=False).endswith("-2")
    assert (
        results_name("2026-12-07", "abc1234", False, {"drain", "farm"}, postgres=False)
        == "2026-12-07-abc1234-quick-only-farm-drain"
    )
    assert (
        results_name("2026-12-07", "abc1234", True, {"dispatch"}, postgres=True)
        == "2026-12-07-abc1234-postgres"
    )
