"""Agent templates: ready instructions and default tools for common roles.

`from_template("research", name="scout", model="openai:gpt-4.1")` returns an AgentSpec; any
field given overrides the template's, and `extra_tools` adds to its default tools. The default
tools are built-in tools (llmspell.tools.builtin); an agent made from a template fails at
creation, naming the tool, if the job's registry lacks one.
"""

from __future__ import annotations

from typing import Any

from llmspell.agents.spec import AgentSpec, SpecError

__all__ = ["TEMPLATES", "from_template"]

_PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "goal": {"type": "string"},
        "steps": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "task": {"type": "string"},
                           "depends_on": {"type": "array", "items": {"type": "integer"}}},
            "required": ["id", "task"]}},
    },
    "required": ["goal", "steps"],
}

TEMPLATES: dict[str, dict[str, Any]] = {
    "chat": {
        "description": "A helpful conversational assistant.",
        "instructions": "You are a helpful, concise assistant. Answer the user directly; say "
                        "so when you do not know.",
        "tools": [],
    },
    "research": {
        "description": "Finds, reads and cites sources to answer a question.",
        "instructions": "You are a careful researcher. Search for sources, read the most "
                        "relevant ones, and answer with the facts you found and the URL of each "
                        "source. Never invent a source; say what you could not verify.",
        "tools": ["web_search", "web_fetch", "url_analyze", "chunk_text"],
    },
    "code": {
        "description": "Reads, searches and edits files in the job's sandbox.",
        "instructions": "You are a precise software engineer. Read the relevant files before "
                        "changing anything, make the smallest change that works, and explain "
                        "what you changed and why.",
        "tools": ["read_file", "write_file", "list_dir", "file_search", "text_diff"],
    },
    "data": {
        "description": "Analyses tabular and structured data.",
        "instructions": "You are a data analyst. Inspect the data's shape first, compute with "
                        "tools rather than by hand, and report numbers with their units and "
                        "how you got them.",
        "tools": ["csv_analyze", "json_query", "data_convert", "calculator", "sqlite_query"],
    },
    "planner": {
        "description": "Breaks a goal into ordered, checkable steps.",
        "instructions": "You are a planner. Break the goal into the fewest concrete steps that "
                        "reach it; give each an id and the ids of the steps it depends on. "
                        "Reply with the plan as JSON only.",
        "tools": [],
        "output_schema": _PLAN_SCHEMA,
    },
    "orchestrator": {
        "description": "Delegates parts of a task to specialist agents and combines results.",
        "instructions": "You coordinate specialists, available to you as tools. Split the task, "
                        "delegate each part to the specialist best suited (several at once "
                        "when they are independent), check their answers, and combine them "
                        "into one result. Do the work yourself only when no specialist fits.",
        "tools": [],
    },
}


def from_template(template: str, *, extra_tools: list[str] | None = None,
                  **fields: Any) -> AgentSpec:
    base = TEMPLATES.get(template)
    if base is None:
        raise SpecError(f"unknown agent template {template!r} (templates: "
                        f"{', '.join(sorted(TEMPLATES))})")
    data = {**base, **fields, "template": template}
    data.setdefault("name", template)
    data["tools"] = [*data.get("tools", []),
                     *[t for t in extra_tools or [] if t not in data.get("tools", [])]]
    return AgentSpec.model_validate(data)
