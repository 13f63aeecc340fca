"""Our agents and workflows as A2A agents, on the official a2a-sdk.

    app = a2a_app({"researcher": researcher, "brief": pipeline}, token="s3cret")
    async with HTTPServer(app, port=8766, token="s3cret"):
        ...   # http://127.0.0.1:8766/researcher/.well-known/agent-card.json

Each Step (anything with a name and `run(input, ctx=)`: an Agent, an AgentHandle, a workflow,
a pattern) is one A2A agent at `/<name>`: its card (one skill, from its description) at
`/<name>/.well-known/agent-card.json` and its JSON-RPC endpoint (message/send, message/stream,
tasks/get, tasks/cancel) at `/<name>`. The server's root card is the `default` step's.

A task runs the step once on the text of the user's message: `working` with a status message,
then the answer as an artifact (its text, and its data when the output is structured) and
`completed`; or `failed` with the run's status and reason; or `canceled`. A client's cancel
reaches the running agent: an agent in an actor is told to cancel its run, an agent or pattern
in this process sees its cancel token (see llmspell.supervisors.base.run_watched).

Cards are public (they say how to authenticate); everything else needs the bearer token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from a2a.helpers import new_data_part, new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    Part,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, PROTOCOL_VERSION_CURRENT
from a2a.utils.errors import TaskNotCancelableError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from llmspell.agents.result import RunResult, RunStatus
from llmspell.protocols.auth import BearerAuth, check_bind
from llmspell.runtime.cancel import CancelToken
from llmspell.runtime.logs import get_logger
from llmspell.supervisors.base import Step, as_step, run_watched
from llmspell.tools.context import ToolContext

__all__ = ["StepExecutor", "a2a_app", "agent_card"]

log = get_logger(component="a2a.server")

ContextFactory = Callable[[Step], ToolContext]
"""The context a task runs in (the job, its state and events, its hooks)."""

CANCELLED_BY_CLIENT = "cancelled by the A2A client"


class StepExecutor(AgentExecutor):
    """Runs one step per A2A task; holds each running task's cancel token."""

    def __init__(self, step: Step, *, context: ContextFactory | None = None,
                 grace: float = 2.0) -> None:
        self.step = step
        self.context = context
        self.grace = grace
        self.running: dict[str, CancelToken] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None  # the SDK calls execute only for a message
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work(updater.new_agent_message(
            [new_text_part(f"{self.step.name} is working on it")]))
        token = self.running[task.id] = CancelToken()
        base = self.context(self.step) if self.context else ToolContext()
        log.info("a2a task started", agent=self.step.name, task=task.id)
        try:
            result = await run_watched(self.step, context.get_user_input(),
                                       replace(base, cancel=token), grace=self.grace)
        finally:
            self.running.pop(task.id, None)
        log.info("a2a task finished", agent=self.step.name, task=task.id,
                 status=str(result.status))
        if token.cancelled:
            return  # `cancel` published the canceled status
        if result.ok:
            await updater.add_artifact(_answer_parts(result), name="answer", last_chunk=True)
            await updater.complete()
        elif result.status == RunStatus.cancelled:
            await updater.cancel(updater.new_agent_message([new_text_part(
                f"cancelled: {result.reason or 'no reason given'}")]))
        else:
            await updater.failed(updater.new_agent_message([new_text_part(
                f"{self.step.name} ended with status {result.status}: "
                f"{result.reason or 'no reason given'}")]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        token = self.running.get(context.task_id or "")
        if token is None:
            raise TaskNotCancelableError(message=f"task {context.task_id!r} is not running here")
        token.cancel(CANCELLED_BY_CLIENT)
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel(updater.new_agent_message([new_text_part(CANCELLED_BY_CLIENT)]))


def _answer_parts(result: RunResult) -> list[Part]:
    parts = [new_text_part(result.text, media_type="text/plain")]
    if isinstance(result.output, dict | list):
        parts.append(new_data_part(result.output, media_type="application/json"))
    return parts


def agent_card(step: Step, url: str, *, secured: bool, version: str = "0.1.0") -> AgentCard:
    """The card of one step served at `url`: one skill, from the step's description."""
    inner = getattr(step, "target", step)  # as_step wraps agents and handles
    description = str(getattr(step, "description", "") or getattr(inner, "description", "")
                      or f"The llmspell agent {step.name!r}: send it a task in plain text.")
    card = AgentCard(
        name=step.name, description=description, version=version,
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC",
                                             protocol_version=PROTOCOL_VERSION_CURRENT)],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain", "application/json"],
        skills=[AgentSkill(id=step.name, name=step.name, description=description,
                           tags=["llmspell", str(getattr(inner, "kind", "agent"))])])
    if secured:
        card.security_schemes["bearer"].CopyFrom(SecurityScheme(
            http_auth_security_scheme=HTTPAuthSecurityScheme(
                scheme="bearer", description="the token given to `llmspell serve a2a`")))
        card.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList()}))
    return card


def a2a_app(steps: Mapping[str, Any] | Sequence[Any], *, token: str | None = None,
            host: str = "127.0.0.1", default: str | None = None,
            context: ContextFactory | None = None, public_url: str | None = None) -> Any:
    """An ASGI app publishing each step as an A2A agent at `/<name>` (see the module doc).

    `public_url` is the base URL the cards advertise; by default each card names the URL it
    was fetched from, so a server on port 0 or behind a proxy describes itself correctly.
    Raises ValueError for no steps, a duplicate name or an unknown `default`."""
    check_bind(host, token)
    named = _named(steps)
    if default is not None and default not in named:
        raise ValueError(f"default agent {default!r} is not one of {sorted(named)}")
    routes: list[BaseRoute] = []
    for name, step in named.items():
        template = agent_card(step, f"{public_url or ''}/{name}", secured=bool(token))
        handler = DefaultRequestHandler(StepExecutor(step, context=context),
                                        InMemoryTaskStore(), template)
        card_route = Route(f"/{name}{AGENT_CARD_WELL_KNOWN_PATH}",
                           _card_endpoint(template, name, public_url), methods=["GET"])
        routes += [card_route, *create_jsonrpc_routes(handler, rpc_url=f"/{name}")]
        if name == (default or next(iter(named))):
            routes.append(Route(AGENT_CARD_WELL_KNOWN_PATH,
                                _card_endpoint(template, name, public_url), methods=["GET"]))
    app = Starlette(routes=routes)
    return BearerAuth(app, token, public=(AGENT_CARD_WELL_KNOWN_PATH,),
                      realm="llmspell-a2a") if token else app


def _named(steps: Mapping[str, Any] | Sequence[Any]) -> dict[str, Step]:
    items = list(steps.items()) if isinstance(steps, Mapping) else [(s.name, s) for s in steps]
    if not items:
        raise ValueError("nothing to publish: give at least one agent, workflow or pattern")
    named: dict[str, Step] = {}
    for name, step in items:
        if name in named:
            raise ValueError(f"two steps are named {name!r}")
        named[str(name)] = as_step(step)
    return named


def _card_endpoint(template: AgentCard, name: str, public_url: str | None
                   ) -> Callable[[Request], Any]:
    async def card(request: Request) -> JSONResponse:
        served = AgentCard()
        served.CopyFrom(template)
        base = public_url or str(request.base_url).rstrip("/")
        served.supported_interfaces[0].url = f"{base}/{name}"
        return JSONResponse(agent_card_to_dict(served))

    return card
