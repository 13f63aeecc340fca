"""SandboxedTool: the base of the built-in tools that touch files, the network or processes.

A subclass implements `call(args, ctx)`. A refusal it raises is also published as a
`sandbox.refused` event (tool, rule, subject, message), so a job's event log shows every
refused action, not only the model's view of it. Its `Args` derive from `StrictArgs`, so an
unknown argument is an error (and the schema says `additionalProperties: false`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from llmspell.llm.types import ToolSpec
from llmspell.tools.base import Tool
from llmspell.tools.context import ToolContext

__all__ = ["SandboxedTool", "StrictArgs"]


class StrictArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SandboxedTool(Tool):
    async def run(self, args: Any, ctx: ToolContext) -> Any:
        return await self.call(args, ctx)  # Tool.invoke publishes refusals as events

    async def call(self, args: Any, ctx: ToolContext) -> Any:
        raise NotImplementedError(f"tool {self.name!r} has no call()")

    def spec(self) -> ToolSpec:
        spec = super().spec()
        if self.__dict__.get("_untitled") is not spec:
            # pydantic titles every field ("Max Bytes"): noise in every request a model gets.
            _untitle(spec.parameters)
            self.__dict__["_untitled"] = spec
        return spec


def _untitle(schema: Any) -> None:
    if not isinstance(schema, dict):
        return
    schema.pop("title", None)
    for key in ("properties", "$defs", "patternProperties"):
        for sub in (schema.get(key) or {}).values():
            _untitle(sub)
    for key in ("items", "additionalProperties", "not"):
        _untitle(schema.get(key))
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for sub in schema.get(key) or ():
            _untitle(sub)
