"""The live view of a running job, built from its events only.

`JobView` is plain state (what each agent is doing, the pools' replicas, tokens and cost so
far) updated by `apply(event)`, so a test can feed it events; `render()` draws it with rich:
the actor tree (supervisor, hosts, agents; pools and replicas) and a line per agent with its
current step. `follow()` subscribes to the job's events and keeps a rich Live display fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from llmspell.jobs.submit import EVENT_PREFIX
from llmspell.runtime.events import Event

if TYPE_CHECKING:
    from llmspell.runtime.runtime import Runtime

__all__ = ["JobView", "follow", "print_event_line"]



@dataclass
class AgentRow:
    host: str
    status: str = "ready"
    step: str = ""
    tokens: int = 0
    cost_usd: float = 0.0
    runs: int = 0


@dataclass
class JobView:
    job_id: str
    hosts: dict[str, list[str]] = field(default_factory=dict)  # host -> agents
    pools: dict[str, int] = field(default_factory=dict)  # pool -> replicas
    agents: dict[str, AgentRow] = field(default_factory=dict)
    tokens: int = 0
    cost_usd: float = 0.0
    status: str = "starting"
    current: str = ""  # the latest workflow step or pattern event, in words
    restarts: int = 0

    def add_host(self, host: str, agents: list[str]) -> None:
        self.hosts[host] = agents
        for name in agents:
            self.agents.setdefault(name, AgentRow(host=host))

    def apply(self, event: Event) -> None:
        topic, p = event.topic, event.payload if isinstance(event.payload, dict) else {}
        name = str(p.get("agent", ""))
        agent = self.agents.get(name)
        if agent is None and name and topic.startswith("agent.") and event.sender:
            # an agent the view was not told about (a spell's): placed under its host
            host = str(event.sender).rsplit("/", 1)[-1]
            self.add_host(host, [*self.hosts.get(host, []), name])
            agent = self.agents[name]
        if topic == "agent.llm.response":
            usage = p.get("usage") or {}
            tokens = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
            self.tokens += tokens
            self.cost_usd += float(p.get("cost_usd") or 0.0)
            if agent is not None:
                agent.tokens += tokens
                agent.cost_usd += float(p.get("cost_usd") or 0.0)
        elif agent is not None:
            self._agent(agent, topic, p)
        if topic == "pool.scaled":
            self.pools[str(p.get("pool", "")).rsplit("/", 1)[-1]] = int(p.get("to", 0))
        elif topic == "workflow.step.started":
            self.current = f"{p.get('workflow')}: step {p.get('step')}"
        elif topic.endswith(".started") and topic.split(".")[0] in _PATTERNS:
            self.current = f"{topic.split('.')[0]} {p.get('name', '')}"
        elif topic == "supervisor.restarted":
            self.restarts += 1
        elif topic == "workflow.hosted.lost":
            self.current = f"{p.get('workflow')}: its host died, waiting for the restart"
        elif topic == "workflow.hosted.resumed":
            self.current = f"{p.get('workflow')}: resumed in the restarted host"
        elif topic.startswith("job."):
            self.status = topic.split(".", 1)[1]

    @staticmethod
    def _agent(agent: AgentRow, topic: str, p: dict[str, Any]) -> None:
        if topic == "agent.run.started":
            agent.status, agent.step, agent.runs = "running", "thinking", agent.runs + 1
        elif topic == "agent.turn":
            agent.step = f"turn {p.get('turn')}: calling the model"
        elif topic == "agent.tool.call":
            agent.status, agent.step = "waiting", f"tool {p.get('tool')}"
        elif topic == "agent.tool.result":
            agent.status, agent.step = "running", f"read {p.get('tool')}'s result"
        elif topic == "agent.handoff":
            agent.step = f"handing off to {p.get('target')}"
        elif topic == "agent.delegate":
            agent.step = f"delegating to {p.get('specialist', p.get('target', ''))}"
        elif topic == "agent.run.finished":
            agent.status, agent.step = str(p.get("status", "done")), ""

    def render(self) -> Group:
        tree = Tree(Text(f"job {self.job_id}  [{self.status}]", style="bold"))
        n = self.restarts
        sup = tree.add("supervisor" + (f"  ({n} restart{'s' if n != 1 else ''})" if n else ""))
        for host, names in self.hosts.items():
            branch = sup.add(Text(host, style="cyan"))
            for name in names:
                row = self.agents[name]
                style = {"running": "yellow", "waiting": "magenta", "completed": "green",
                         "failed": "red", "cancelled": "red"}.get(row.status, "")
                branch.add(Text.assemble((f"{name:<16}", "bold"), (f"{row.status:<10}", style),
                                         (row.step, "dim")))
        for pool, replicas in self.pools.items():
            tree.add(Text(f"pool {pool}: {replicas} replica{'s' if replicas != 1 else ''}",
                          style="blue"))
        footer = Text(f"tokens {self.tokens:,}   cost ${self.cost_usd:.4f}"
                      + (f"   now: {self.current}" if self.current else ""), style="dim")
        return Group(tree, footer)

    def usage_table(self) -> Table:
        table = Table(title="usage", show_edge=False)
        for column in ("agent", "runs", "tokens", "cost (USD)"):
            table.add_column(column, justify="left" if column == "agent" else "right")
        for name, row in self.agents.items():
            table.add_row(name, str(row.runs), f"{row.tokens:,}", f"{row.cost_usd:.4f}")
        table.add_row("total", "", f"{self.tokens:,}", f"{self.cost_usd:.4f}", style="bold")
        return table


_PATTERNS = {"sequential", "parallel", "conditional", "loop", "map_reduce", "mapreduce",
             "pipeline", "delegation", "swarm", "consensus", "saga", "worker_swarm"}


def print_event_line(event: Event, out: TextIO = sys.stdout) -> None:
    """One event as a JSON line a submitted job's log carries, for `llmspell jobs events`."""
    out.write(EVENT_PREFIX + json.dumps({"seq": event.seq, "topic": event.topic,
                                         "sender": event.sender, "payload": event.payload},
                                        default=str) + "\n")
    out.flush()


async def follow(runtime: Runtime, view: JobView, *, live: bool, console: Console,
                 events_out: TextIO | None = None) -> None:
    """Apply the job's events to `view` until cancelled, redrawing it when `live`."""
    sub = await runtime.subscribe("**", job_id=view.job_id)
    display = Live(view.render(), console=console, refresh_per_second=8,
                   transient=False) if live else None
    try:
        with display if display is not None else contextlib.nullcontext():
            while True:
                for event in await sub.get_batch(256, 0.2):
                    view.apply(event)
                    if events_out is not None:
                        print_event_line(event, events_out)
                if display is not None:
                    display.update(view.render())
    except asyncio.CancelledError:
        if display is not None:
            display.update(view.render())
        raise
    finally:
        with contextlib.suppress(Exception):
            await sub.close()
