"""Saga: a failing step undoes the completed ones in reverse, and nothing is hidden."""

from __future__ import annotations

import asyncio

from llmspell.agents import RunStatus
from llmspell.supervisors.saga import Saga, SagaResult, SagaStep
from tests.supervisors.pattern_helpers import Team


class Ledger:
    """Effects of the steps and their compensations, in the order they happened."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def do(self, name: str) -> object:
        def step(input: str) -> str:
            self.log.append(f"{name}({input})")
            return f"{name}-id"
        step.__name__ = name
        return step

    def undo(self, name: str, *, fails: bool = False) -> object:
        def compensate(input: str) -> str:
            self.log.append(f"undo {name}({input})")
            if fails:
                raise RuntimeError(f"{name} cannot be undone")
            return f"{name} undone"
        return compensate


def fail(input: str) -> str:
    raise ValueError("the card was declined")


async def test_a_third_step_failing_runs_the_compensations_in_reverse() -> None:
    team = Team()
    ledger = Ledger()
    booker = team.agent("booker", "flight-id")
    saga = Saga("trip", [
        SagaStep("flight", booker, compensate=ledger.undo("flight")),
        SagaStep("hotel", ledger.do("hotel"), compensate=ledger.undo("hotel")),
        ("charge", fail, ledger.undo("charge")),
        SagaStep("mail", ledger.do("mail")),
    ])
    result = await saga.run("Lisbon", ctx=team.ctx())

    assert isinstance(result, SagaResult) and result.status == RunStatus.failed
    assert ledger.log == ["hotel(flight-id)", "undo hotel(hotel-id)", "undo flight(flight-id)"]
    assert result.failed_step == "charge" and result.completed == ["flight", "hotel"]
    assert result.error == "step 'charge' ended with status failed: ValueError: the card was " \
                           "declined"
    assert [(c.step, c.outcome) for c in result.compensations] == [("hotel", "compensated"),
                                                                  ("flight", "compensated")]
    assert result.reason == (result.error + "; compensations, in reverse order: hotel "
                                            "compensated, flight compensated")
    saga_events = [(t, p.get("step"), p.get("outcome")) for t, p in team.events
                   if t.startswith(("saga.", "workflow.step."))]
    assert saga_events == [
        ("saga.started", None, None),
        ("workflow.step.started", "flight", None), ("workflow.step.finished", "flight", None),
        ("workflow.step.started", "hotel", None), ("workflow.step.finished", "hotel", None),
        ("workflow.step.started", "charge", None), ("workflow.step.finished", "charge", None),
        ("saga.compensate", "hotel", "compensated"),
        ("saga.compensate", "flight", "compensated"),
        ("saga.finished", None, None),
    ]


async def test_a_failing_compensation_is_reported_and_the_rest_still_run() -> None:
    team = Team()
    ledger = Ledger()
    saga = Saga("trip", [
        SagaStep("flight", ledger.do("flight"), compensate=ledger.undo("flight")),
        SagaStep("hotel", ledger.do("hotel"), compensate=ledger.undo("hotel", fails=True)),
        SagaStep("car", ledger.do("car")),  # nothing to undo
        SagaStep("charge", fail, compensate=ledger.undo("charge")),
    ])
    result = await saga.run("Lisbon", ctx=team.ctx())

    assert isinstance(result, SagaResult) and result.status == RunStatus.failed
    assert [(c.step, c.outcome) for c in result.compensations] == [
        ("car", "skipped"), ("hotel", "failed"), ("flight", "compensated")]
    assert result.compensations[1].reason == "failed: RuntimeError: hotel cannot be undone"
    assert "compensation FAILED for 'hotel' (failed: RuntimeError: hotel cannot be undone)" \
        in result.reason
    assert ledger.log[-2:] == ["undo hotel(hotel-id)", "undo flight(flight-id)"]
    outcomes = [(p["step"], p["outcome"], p["reason"]) for p in team.payloads("saga.compensate")]
    assert outcomes[1] == ("hotel", "failed", "failed: RuntimeError: hotel cannot be undone")


async def test_a_saga_that_succeeds_chains_its_outputs() -> None:
    ledger = Ledger()
    saga = Saga("trip", [SagaStep("flight", ledger.do("flight"), ledger.undo("flight")),
                         SagaStep("hotel", ledger.do("hotel"), ledger.undo("hotel"))])
    result = await saga.run("Lisbon")
    assert isinstance(result, SagaResult) and result.ok and result.output == "hotel-id"
    assert result.outputs == {"flight": "flight-id", "hotel": "hotel-id"}
    assert ledger.log == ["flight(Lisbon)", "hotel(flight-id)"] and result.compensations == []


async def test_a_cancelled_saga_still_compensates() -> None:
    team = Team()
    ledger = Ledger()
    started = asyncio.Event()

    async def slow(input: str) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    saga = Saga("trip", [SagaStep("flight", ledger.do("flight"), ledger.undo("flight")),
                         SagaStep("hotel", slow, ledger.undo("hotel"))])
    ctx = team.ctx()

    async def cancel_soon() -> None:
        await started.wait()
        ctx.cancel.cancel("the trip was called off")

    canceller = asyncio.create_task(cancel_soon())
    result = await asyncio.wait_for(saga.run("Lisbon", ctx=ctx), 5)
    await canceller
    assert isinstance(result, SagaResult) and result.status == RunStatus.cancelled
    assert result.failed_step == "hotel" and "the trip was called off" in result.error
    assert ledger.log == ["flight(Lisbon)", "undo flight(flight-id)"]
