"""RunSignals: what a hosted run is told reaches its handler even when told before the handler
was set (a resumed run's earlier signals, or one that overtook the run's start)."""

from __future__ import annotations

from typing import Any

from llmspell.actors.host import RunSignals


def test_signals_told_before_their_handler_wait_for_it_in_order() -> None:
    got: list[tuple[str, Any]] = []
    signals = RunSignals([("slots", 1)])
    assert signals.deliver("slots", 2) is False  # not heard yet: kept
    assert signals.deliver("other", "x") is False
    signals.on("slots", lambda n: got.append(("slots", n)))
    assert got == [("slots", 1), ("slots", 2)]
    assert signals.deliver("slots", 3) is True
    signals.on("other", lambda v: got.append(("other", v)))
    assert got[-2:] == [("slots", 3), ("other", "x")]


def test_signals_nobody_listens_to_are_kept_only_up_to_a_bound() -> None:
    signals = RunSignals()
    for i in range(RunSignals.max_waiting + 50):
        signals.deliver("slots", i)
    got: list[int] = []
    signals.on("slots", got.append)
    assert len(got) == RunSignals.max_waiting and got[-1] == RunSignals.max_waiting + 49
