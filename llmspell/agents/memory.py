"""What part of a conversation a turn sends to the model.

`window` sends the last `max_messages`. `summarize` keeps the history whole until its tokens
pass `token_budget`, then replaces everything but the last `keep_recent` messages with a
summary the model writes (the summary stays in the history, so it is written once). Both cut
only at a user message, so a tool result is never sent without the call that asked for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from llmspell.agents.spec import MemoryPolicy
from llmspell.llm.tokens import count_tokens
from llmspell.llm.types import Message

__all__ = ["SUMMARY_PREFIX", "Summarize", "apply_memory", "window"]

SUMMARY_PREFIX = "Summary of the earlier conversation:"
Summarize = Callable[[list[Message]], Awaitable[str]]


def window(history: list[Message], max_messages: int) -> list[Message]:
    """The last `max_messages`, starting at a user message."""
    if len(history) <= max_messages:
        return history
    return history[_user_boundary(history, len(history) - max_messages):]


def _user_boundary(history: list[Message], start: int) -> int:
    """The first index >= start that holds a user message (len(history) if none)."""
    for i in range(max(0, start), len(history)):
        if history[i].role == "user":
            return i
    return len(history)


async def apply_memory(history: list[Message], policy: MemoryPolicy, model: str,
                       summarize: Summarize) -> tuple[list[Message], bool]:
    """The history to keep (maybe with a new summary) and whether a summary was written."""
    if policy.kind == "window":
        return window(history, policy.max_messages), False
    if count_tokens(history, model) <= policy.token_budget:
        return history, False
    cut = _user_boundary(history, len(history) - policy.keep_recent)
    if cut >= len(history):  # no user message in the recent part: keep the last run whole
        cut = max((i for i, m in enumerate(history) if m.role == "user"), default=0)
    if cut == 0:
        return history, False
    summary = await summarize(history[:cut])
    return [Message.user(f"{SUMMARY_PREFIX}\n{summary}"),
            Message.assistant("Understood."), *history[cut:]], True


def transcript(messages: list[Message]) -> str:
    """A conversation as plain text, for the summariser."""
    lines = []
    for m in messages:
        text = m.text
        for call in m.tool_calls:
            text += f" [called {call.name}({call.arguments})]"
        for part in m.parts:
            if getattr(part, "kind", "") == "tool_result":
                text += f" [tool result: {getattr(part, 'content', '')[:500]}]"
        lines.append(f"{m.role}: {text.strip()}")
    return "\n".join(lines)
