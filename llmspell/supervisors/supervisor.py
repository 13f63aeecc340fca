"""Supervision logic: which children to restart when one fails, and when to give up.

Plain Python (the Ray shell is SupervisorActor in supervisors/actor.py). As in Erlang/OTP:

- one_for_one: only the failed child restarts;
- one_for_all: every child restarts (they depend on each other);
- rest_for_one: the failed child and the children started after it restart.

Restart intensity: more than `max_restarts` restarts within `within_s` seconds means restarting
does not help. The supervisor then stops its children and escalates to its parent with the
chain of causes; at the top, the job fails with that chain.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ChildSpec", "Decision", "Intensity", "Restart", "Strategy", "SupervisorCore",
           "SupervisorSpec"]


class Strategy(StrEnum):
    one_for_one = "one_for_one"
    one_for_all = "one_for_all"
    rest_for_one = "rest_for_one"


class Restart(StrEnum):
    permanent = "permanent"  # always restarted
    transient = "transient"  # restarted after a crash, not after a normal stop
    temporary = "temporary"  # never restarted; its failure is only reported


class Intensity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_restarts: int = Field(default=3, ge=0)
    within_s: float = Field(default=60.0, gt=0)


class ChildSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    restart: Restart = Restart.permanent
    deadline_s: float | None = Field(
        default=None, gt=0, description="a child that does not answer a health check within "
                                        "this is hung: it is stopped and restarted")
    idempotent: bool = Field(
        default=False, description="asks in flight when it died are sent again after the "
                                   "restart; otherwise they fail with the cause")
    standby: bool = Field(
        default=False, description="keep a spare process started (code imported, set up, "
                                   "not started) that takes over when the child dies: a "
                                   "restart skips the process start; costs one idle process "
                                   "and its resources")


class SupervisorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    strategy: Strategy = Strategy.one_for_one
    intensity: Intensity = Field(default_factory=Intensity)
    children: list[ChildSpec] = Field(default_factory=list)
    health_interval_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _unique(self) -> SupervisorSpec:
        names = [c.name for c in self.children]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"children named twice: {', '.join(dup)}")
        return self


@dataclass
class Decision:
    """What to do about a failure. `restart` lists children in start order."""

    action: str  # "restart", "ignore" or "escalate"
    child: str
    cause: str
    restart: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)  # the chain, outermost last
    reason: str = ""


class SupervisorCore:
    def __init__(self, spec: SupervisorSpec, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.spec = spec
        self.clock = clock
        self.order = [c.name for c in spec.children]
        self.children = {c.name: c for c in spec.children}
        self.restarts: deque[float] = deque()
        self.restart_counts = dict.fromkeys(self.order, 0)
        self.failed = False
        self.causes: list[str] = []

    def on_failure(self, child: str, cause: str, *, crashed: bool = True) -> Decision:
        """Decide about `child`'s failure (`crashed` False: it stopped normally)."""
        spec = self.children.get(child)
        if spec is None:
            raise KeyError(f"supervisor {self.spec.name!r} has no child {child!r}")
        entry = f"{self.spec.name}/{child}: {cause}"
        if self.failed:
            return Decision("ignore", child, cause, reason="the supervisor has already failed")
        if spec.restart == Restart.temporary or (spec.restart == Restart.transient
                                                 and not crashed):
            return Decision("ignore", child, cause, reason=f"{spec.restart} child")
        now = self.clock()
        window = self.spec.intensity.within_s
        while self.restarts and self.restarts[0] <= now - window:
            self.restarts.popleft()
        self.causes.append(entry)
        if len(self.restarts) >= self.spec.intensity.max_restarts:
            self.failed = True
            return Decision("escalate", child, cause, causes=list(self.causes[-10:]),
                            reason=f"more than {self.spec.intensity.max_restarts} restarts "
                                   f"within {window:g}s")
        self.restarts.append(now)
        affected = self.affected(child)
        for name in affected:
            self.restart_counts[name] += 1
        return Decision("restart", child, cause, restart=affected,
                        reason=f"{self.spec.strategy}: restart {', '.join(affected)}")

    def affected(self, child: str) -> list[str]:
        match self.spec.strategy:
            case Strategy.one_for_one:
                return [child]
            case Strategy.one_for_all:
                return list(self.order)
            case Strategy.rest_for_one:
                return self.order[self.order.index(child):]
        raise AssertionError(self.spec.strategy)

    def reset(self) -> None:
        """A parent restarted this subtree: a fresh restart budget."""
        self.restarts.clear()
        self.failed = False
