"""What the job tests share: a two-step job (a drafter, then an editor) on the local LLM
server's `drafter` and `editor` models."""

from __future__ import annotations

from typing import Any

from llmspell.llm.server import LocalLLMServer


def two_steps(server: LocalLLMServer, **extra: Any) -> dict[str, Any]:
    """The job as spec data; `extra` adds or replaces sections."""
    return {"name": "two-steps",
            "models": {"providers": {"openai-chat": {"base_url": server.openai_base_url}}},
            "inputs": {"topic": {"required": True}},
            "input": "Write about {{ topic }}",
            "agents": [{"name": "drafter", "model": "openai-chat:drafter", "stream": False},
                       {"name": "editor", "model": "openai-chat:editor", "stream": False}],
            "pattern": {"kind": "sequential", "steps": [
                "drafter", {"agent": "editor", "input": "Edit: {{ previous }}"}]},
            **extra}
