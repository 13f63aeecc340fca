"""Spells: Lua scripts that drive llmspell (on lupa), in a sandboxed Lua state.

    result = await run_spell("examples/spells/research.lua", inputs={"topic": "Ray"},
                             runtime=rt, job_id="job-1")

    runner.py    run_spell / exec_spell: a spell as a job, returning a JobResult
    sandbox.py   the Lua state: what is removed, the memory and instruction limits
    scheduler.py Lua coroutines driven from asyncio (calls that wait suspend Lua, not Python)
    prelude.py   the Lua side of the globals
    bridges/     the Python side of each global: Agent, Tool, Workflow and Pattern, Hook,
                 Event, State, JSON, Log, Spell
    hosts.py     the agent host actors a spell's agents run in
    relay.py     how Lua hooks and tools are reached from agent actors
    context.py   what one running spell owns

Where Lua hooks fire: at every point in the driver (the spell's tool calls and state writes,
workflow steps, delegations, handoffs) and, relayed, at the points inside agent actors
(agent_run, llm_call, tool_call, on_stream_delta, on_error, on_retry, state_write: a write an
agent makes from its actor with the state_write tool reaches a Lua before/after_state_write
hook, which may change or refuse it). Stream deltas reach a Lua hook in batches, all of a run's
before the run returns.
"""

from typing import TYPE_CHECKING

from llmspell._lazy import lazy_names
from llmspell.spells.errors import (
    SpellError,
    SpellLimitExceeded,
    SpellRunFailed,
    SpellRuntimeError,
    SpellSyntaxError,
)
from llmspell.spells.sandbox import SpellLimits

if TYPE_CHECKING:
    from llmspell.spells.context import SpellOptions
    from llmspell.spells.runner import exec_spell, run_source, run_spell

__all__ = ["SpellError", "SpellLimitExceeded", "SpellLimits", "SpellOptions",
           "SpellRunFailed", "SpellRuntimeError", "SpellSyntaxError", "exec_spell",
           "run_source", "run_spell"]

# What runs a spell needs Ray: loaded on first use, so that checking a spell's syntax (and the
# command line's --help) does not start with importing it.
__getattr__ = lazy_names(__name__, {
    "SpellOptions": "llmspell.spells.context", "exec_spell": "llmspell.spells.runner",
    "run_source": "llmspell.spells.runner", "run_spell": "llmspell.spells.runner"})
