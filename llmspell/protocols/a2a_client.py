"""A2AAgent: a remote A2A agent as a Step, so it works wherever a local agent does.

    researcher = A2AAgent(RemoteAgentConfig(name="researcher",
                          url="http://127.0.0.1:8766/researcher", token_env="RESEARCH_TOKEN"))
    result = await researcher.run("find facts on Ray")            # a RunResult
    team = Delegation("team", lead, [researcher, writer])         # a specialist like any other
    tools = [researcher.as_tool()]                                # or a tool of any agent

Declared in a job spec as `remote_agents: [{name, url, token_env, ...}]`.

`run` never raises for a remote failure: an unreachable server, a refused token, a task that
failed or was cancelled become a RunResult with that status and a reason naming the agent and
the URL. The caller's cancel token reaches the remote task (tasks/cancel), and so does the
caller's own cancellation (a pattern that gives up on its member).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import httpx
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.client import Client as A2AClient
from a2a.helpers import get_data_parts, get_text_parts
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)

from llmspell.agents.result import RunResult, RunStatus
from llmspell.protocols.a2a_config import RemoteAgentConfig
from llmspell.protocols.errors import A2AError
from llmspell.runtime.logs import get_logger
from llmspell.tools.agent_tool import AgentTool
from llmspell.tools.context import ToolContext

__all__ = ["A2AAgent", "RemoteAgentConfig"]

log = get_logger(component="a2a.client")

_CANCEL_TIMEOUT = 10.0


class _Exchange:
    """One run's view of its remote task (runs of one A2AAgent may overlap)."""

    task_id: str | None = None


class A2AAgent:
    kind = "remote_agent"

    def __init__(self, config: RemoteAgentConfig | None = None, /, **fields: Any) -> None:
        self.config = config or RemoteAgentConfig.model_validate(fields)
        self.name = self.config.name
        self.description = self.config.description or ""
        self._card: AgentCard | None = None

    def __repr__(self) -> str:
        return f"<A2AAgent {self.name} {self.config.url}>"

    async def card(self) -> AgentCard:
        """The remote agent's card (fetched once); A2AError names what is wrong."""
        if self._card is None:
            async with self._http() as http:
                self._card = await self._fetch_card(http)
        return self._card

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> RunResult:
        ctx = ctx or ToolContext()
        exchange = _Exchange()
        work = asyncio.ensure_future(self._run(input, exchange))
        stop = asyncio.ensure_future(ctx.cancel.wait())
        try:
            async with asyncio.timeout(self.config.timeout):
                await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        except asyncio.CancelledError:  # our caller gave up on us: so does the remote task
            await asyncio.shield(self._stop(work, exchange))
            raise
        finally:
            stop.cancel()
        if not work.done():
            await self._stop(work, exchange)
            if ctx.cancel.cancelled:
                return self._result(RunStatus.cancelled, reason=ctx.cancel.reason or "")
            return self._result(RunStatus.failed, reason=self._where(
                f"no answer within {self.config.timeout:g}s (the remote task was cancelled)"))
        try:
            return work.result()
        except A2AError as exc:
            return self._result(RunStatus.failed, reason=str(exc))

    def as_tool(self, *, name: str | None = None, description: str | None = None) -> AgentTool:
        return AgentTool(self, name=name, description=description)

    # -- the exchange ---------------------------------------------------------------------------

    async def _run(self, input: str, exchange: _Exchange) -> RunResult:
        async with self._http() as http:
            card = self._card or await self._fetch_card(http)
            self._card = card
            client = ClientFactory(ClientConfig(streaming=self.config.streaming,
                                                httpx_client=http)).create(card)
            request = SendMessageRequest(message=Message(
                role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=input)]))
            task: Task | None = None
            answer: list[Part] = []
            try:
                async for event in client.send_message(request):
                    task, reply = self._follow(event, task, answer)
                    exchange.task_id = task.id if task is not None else None
                    if reply is not None:  # a direct message, no task: that is the answer
                        return self._answer(list(reply.parts), task_id="")
            except Exception as exc:
                raise A2AError(self._where(self._explain(exc))) from None
        if task is None:
            raise A2AError(self._where("the server ended the exchange without a task"))
        return self._finish(task, answer)

    def _follow(self, event: StreamResponse, task: Task | None, answer: list[Part]
                ) -> tuple[Task | None, Message | None]:
        if event.HasField("message"):
            return task, event.message
        if event.HasField("task"):
            task = Task()
            task.CopyFrom(event.task)
            answer[:] = [p for a in task.artifacts for p in a.parts]
        elif task is not None and event.HasField("status_update"):
            task.status.CopyFrom(event.status_update.status)
        elif task is not None and event.HasField("artifact_update"):
            update = event.artifact_update
            if not update.append:
                answer.clear()
            answer.extend(update.artifact.parts)
        return task, None

    def _finish(self, task: Task, answer: list[Part]) -> RunResult:
        state = task.status.state
        said = " ".join(get_text_parts(list(task.status.message.parts))) or ""
        if state == TaskState.TASK_STATE_COMPLETED:
            return self._answer(answer, task_id=task.id)
        if state == TaskState.TASK_STATE_CANCELED:
            return self._result(RunStatus.cancelled, reason=self._where(
                f"the remote task was cancelled: {said or 'no reason given'}"), run_id=task.id)
        name = TaskState.Name(state).removeprefix("TASK_STATE_").lower()
        if state in (TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED):
            said = f"{said} (a conversation with the remote agent is not supported)"
        raise A2AError(self._where(f"the remote task ended {name}: {said or 'no reason given'}"))

    def _answer(self, parts: list[Part], *, task_id: str) -> RunResult:
        text = "\n".join(get_text_parts(parts))
        data = get_data_parts(parts)
        output: Any = data[0] if len(data) == 1 and not text else text
        if data and text:
            output = data[0]
        return self._result(RunStatus.completed, output=output, text=text, run_id=task_id)

    async def _stop(self, work: asyncio.Future[RunResult], exchange: _Exchange) -> None:
        """Stop our side of the exchange, then cancel the remote task if it has begun."""
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        if exchange.task_id:
            await self._cancel_remote(exchange.task_id)

    async def _cancel_remote(self, task_id: str) -> None:
        try:
            async with self._http() as http, asyncio.timeout(_CANCEL_TIMEOUT):
                card = self._card or await self._fetch_card(http)
                client: A2AClient = ClientFactory(ClientConfig(httpx_client=http)).create(card)
                await client.cancel_task(CancelTaskRequest(id=task_id))
        except Exception as exc:  # it may have finished meanwhile; say so, never raise
            log.warning("a2a cancel not delivered", agent=self.name, task=task_id,
                        error=_reason(exc))

    # -- helpers --------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        headers: dict[str, str] = {}
        if self.config.token_env:
            token = os.environ.get(self.config.token_env)
            if not token:
                raise A2AError(self._where(f"the environment variable "
                                           f"{self.config.token_env} (its token) is not set"))
            headers["Authorization"] = f"Bearer {token}"
        return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(
            self.config.connect_timeout, read=self.config.timeout))

    async def _fetch_card(self, http: httpx.AsyncClient) -> AgentCard:
        url = self.config.url
        base, path = (url.rsplit("/", 1)[0], url.rsplit("/", 1)[1]) if url.endswith(".json") \
            else (url, None)
        try:
            card = await A2ACardResolver(http, base).get_agent_card(relative_card_path=path)
        except Exception as exc:
            raise A2AError(self._where(f"cannot read its agent card: {_reason(exc)}")) from None
        if not self.description:
            self.description = card.description
        return card

    def _explain(self, exc: BaseException) -> str:
        reason = _reason(exc).split("\n")[0]
        if "401" in reason:
            reason += (f" (the token in ${self.config.token_env} was refused)"
                       if self.config.token_env else
                       " (it needs a bearer token: set `token_env` to the variable holding it)")
        return reason

    def _result(self, status: RunStatus, *, output: Any = None, text: str = "",
                reason: str = "", run_id: str = "") -> RunResult:
        return RunResult(status=status, agent=self.name, output=output, text=text,
                         reason=reason, run_id=run_id)

    def _where(self, what: str) -> str:
        return f"remote agent {self.name!r} at {self.config.url}: {what}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

