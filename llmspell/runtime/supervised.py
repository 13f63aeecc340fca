"""Asks that ride out the restart of a supervised actor.

A supervisor (llmspell.supervisors.actor) replaces a dead child with a fresh actor under the
same name. `ask_supervised` sends an idempotent ask again once the child is back (restored from
its snapshot) and fails any other with ChildLost, because it may have run before the death and
must not run twice; `until_back` waits for the replacement to answer. Here, below the
supervisors, so that an agent's handle can ride out its host's restart too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from ray.exceptions import RayActorError

from llmspell.runtime.cancel import race
from llmspell.runtime.errors import ActorError, ActorNotFound, ActorUnavailable

__all__ = ["ChildGivenUp", "ChildLost", "PoisonMessage", "ask_supervised", "supervisor_gave_up",
           "until_back"]


class ChildLost(ActorError):
    """A supervised child died with this ask in flight, and the ask was not safe to resend."""


class ChildGivenUp(ActorUnavailable):
    """A child that will not come back: its supervisor has given up on its children."""


class PoisonMessage(ChildLost):
    """The ask crashed its child every time it was delivered: it is not sent again (it would
    only burn the supervisor's restart budget); it is a dead letter."""


async def ask_supervised(node: Any, address: str, type: str, payload: Any = None, *,
                         idempotent: bool, timeout: float = 60.0,
                         restart_wait: float = 30.0, max_deliveries: int = 2,
                         job_id: str | None = None, supervisor: str | None = None) -> Any:
    """Ask a supervised child, riding out its restart: an idempotent ask is sent again once the
    child is back (restored from its snapshot); any other fails with ChildLost, because it may
    have run before the death and must not run twice. An ask whose child died under it
    `max_deliveries` times (a new process each time) is a poison message: PoisonMessage.
    An address not found (between a death and the replacement) is waited for, up to
    `timeout + restart_wait` in all, then ActorNotFound. With the child's `supervisor`, a wait
    ends as soon as it has given up on its children (see `until_back`). Every ask given up on
    is recorded as a dead letter."""
    deadline = time.monotonic() + timeout + restart_wait
    deaths, last_pid = 0, None
    while True:
        try:
            return await node.ask(address, type, payload, job_id=job_id, dead_letter=False,
                                  timeout=max(0.1, min(timeout, deadline - time.monotonic())))
        except ActorNotFound as exc:
            # Not delivered: the supervisor is between stopping the child and starting its
            # replacement under the same name. Safe to send once it is back, idempotent or not.
            last_pid = await _back_or_given_up(node, address, type, exc, deadline,
                                               supervisor=supervisor, job_id=job_id)
        except ActorUnavailable as exc:
            if not idempotent:
                error: ChildLost = ChildLost(
                    f"{address!r} died while handling {type!r}; not resent because the ask "
                    f"is not idempotent ({exc.cause})", address=address)
                node.dead_letter(address, type, str(error), job_id=job_id)
                raise error from None
            pid = await _back_or_given_up(node, address, type, exc, deadline,
                                          supervisor=supervisor, job_id=job_id)
            # A failure the child came back from in a new process is a death under this ask;
            # one answered by the same process (a blip of the connection) is not.
            deaths += 1 if pid != last_pid else 0
            last_pid = pid
            if deaths >= max_deliveries:
                error = PoisonMessage(
                    f"{type!r} to {address!r} crashed it {deaths} times; not resent (a poison "
                    f"message) ({exc.cause})", address=address)
                node.dead_letter(address, type, str(error), job_id=job_id, poison=True)
                raise error from None


async def _back_or_given_up(node: Any, address: str, type: str, failure: ActorError,
                            deadline: float, *, supervisor: str | None, job_id: str | None
                            ) -> int:
    """`until_back`; or the ask is given up on: a dead letter, and `failure` raised, saying
    why the child will not come back when its supervisor has given up on it."""
    try:
        return await until_back(node, address, deadline, supervisor=supervisor)
    except ChildGivenUp as gone:
        error: ActorError = ChildGivenUp(address, f"{getattr(failure, 'cause', failure)}; "
                                                  f"{gone.cause}")
    except ActorUnavailable:
        error = failure
    node.dead_letter(address, type, str(error), job_id=job_id)
    raise error from None


async def until_back(node: Any, address: str, deadline: float, *,
                     supervisor: str | None = None) -> int:
    """The pid of the child once it answers again: a replacement its supervisor started under
    the same name, or the same actor restarted by Ray. ActorUnavailable when it has not answered
    by `deadline` or, given its `supervisor`, as soon as that supervisor has given up on its
    children: nothing will bring the child back, and the caller should not wait out its
    deadline to learn so."""
    if supervisor is None:
        return await _answers_again(node, address, deadline)
    back, gave_up = await race(_answers_again(node, address, deadline),
                               supervisor_gave_up(node, supervisor))
    if back.cancelled():
        raise ChildGivenUp(address, gave_up.result())
    pid: int = back.result()
    return pid


async def supervisor_gave_up(node: Any, supervisor: str, every_s: float = 0.5) -> str:
    """Returns (why) once `supervisor` has given up on its children: it will not bring them
    back. Asked every `every_s`; a supervisor busy restarting, or gone, is asked again."""
    while True:
        with contextlib.suppress(Exception):
            status = await node.ask(supervisor, "supervisor.status", timeout=5.0,
                                    dead_letter=False)
            if status["failed"]:
                last = status["causes"][-1] if status["causes"] else "no cause given"
                return f"its supervisor gave up on it ({last})"
        await asyncio.sleep(every_s)


async def _answers_again(node: Any, address: str, deadline: float) -> int:
    """Pings until the child answers (its pid) or `deadline` (ActorUnavailable). A restart
    takes a fraction of a second: poll often, so the first answer after it is not held back by
    a long backoff step."""
    delay = 0.02
    while True:
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                info = await node.handle(address).ping.remote()
            return int(info["pid"])
        except (RayActorError, TimeoutError, ActorNotFound) as exc:
            if isinstance(exc, RayActorError):
                node.unavailable(address, exc)  # a dead handle is dropped: look the name up
            if time.monotonic() + delay > deadline:
                raise node.unavailable(address, exc) from None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)
