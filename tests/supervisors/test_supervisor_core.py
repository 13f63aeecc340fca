"""Restart strategies and intensity, with a fake clock."""

from __future__ import annotations

import pytest

from llmspell.supervisors.supervisor import SupervisorCore, SupervisorSpec


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def core(strategy: str, *, max_restarts: int = 3, within_s: float = 10.0,
         clock: Clock | None = None, **child: object) -> SupervisorCore:
    spec = SupervisorSpec.model_validate({
        "name": "sup", "strategy": strategy,
        "intensity": {"max_restarts": max_restarts, "within_s": within_s},
        "children": [{"name": n, **child} for n in ("a", "b", "c")]})
    return SupervisorCore(spec, clock or Clock())


@pytest.mark.parametrize(("strategy", "failed", "restarted"), [
    ("one_for_one", "b", ["b"]),
    ("one_for_all", "b", ["a", "b", "c"]),
    ("rest_for_one", "b", ["b", "c"]),
    ("rest_for_one", "a", ["a", "b", "c"]),
    ("rest_for_one", "c", ["c"]),
])
def test_each_strategy_restarts_its_set(strategy: str, failed: str, restarted: list[str]
                                        ) -> None:
    decision = core(strategy).on_failure(failed, "ActorDiedError")
    assert decision.action == "restart" and decision.restart == restarted


def test_intensity_exceeded_escalates_with_the_chain_of_causes() -> None:
    clock = Clock()
    c = core("one_for_one", max_restarts=2, within_s=10, clock=clock)
    assert c.on_failure("a", "boom 1").action == "restart"
    clock.now = 1
    assert c.on_failure("b", "boom 2").action == "restart"
    clock.now = 2
    escalate = c.on_failure("a", "boom 3")
    assert escalate.action == "escalate" and "more than 2 restarts within 10s" in escalate.reason
    assert escalate.causes == ["sup/a: boom 1", "sup/b: boom 2", "sup/a: boom 3"]
    assert c.on_failure("c", "later").action == "ignore"  # a failed supervisor decides no more


def test_restarts_outside_the_window_do_not_count() -> None:
    clock = Clock()
    c = core("one_for_one", max_restarts=1, within_s=5, clock=clock)
    assert c.on_failure("a", "x").action == "restart"
    clock.now = 6
    assert c.on_failure("a", "y").action == "restart"
    clock.now = 7
    assert c.on_failure("a", "z").action == "escalate"


def test_temporary_and_transient_children() -> None:
    assert core("one_for_all", restart="temporary").on_failure("a", "x").action == "ignore"
    transient = core("one_for_one", restart="transient")
    assert transient.on_failure("a", "stopped", crashed=False).action == "ignore"
    assert transient.on_failure("a", "crashed").action == "restart"


def test_bad_specs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="children named twice: a"):
        SupervisorSpec.model_validate({"name": "s", "children": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="strategy"):
        SupervisorSpec.model_validate({"name": "s", "strategy": "one_for_some"})
    with pytest.raises(KeyError, match="no child 'z'"):
        core("one_for_one").on_failure("z", "x")
