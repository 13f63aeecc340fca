"""Guardrails named in a job spec.

    hooks:
      - name: guardrails
        options:
          input: ["mycompany.checks:no_account_numbers"]   # InputGuardrail or function
          output: ["mycompany.checks.on_topic"]
          deny_input: ["ignore (all )?previous instructions"]
          max_input_chars: 20000
          agents: [support]

The concept and the hook live in `llmspell.agents.guardrails`; this module turns options into
guardrails: import paths (``module:attribute`` or ``module.attribute``) and the ready-made
checks, with an error naming the option that does not resolve.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import regex
from pydantic import Field, field_validator

from llmspell.agents.guardrails import (
    Guardrail,
    Guardrails,
    InputGuardrail,
    Kind,
    OutputGuardrail,
    deny_patterns,
    max_length,
)
from llmspell.agents.hooks._common import HookResources, OptionError, Options

__all__ = ["GuardrailOptions", "build", "resolve"]


class GuardrailOptions(Options):
    input: list[str] = Field(default_factory=list, description="import paths of input checks")
    output: list[str] = Field(default_factory=list, description="import paths of output checks")
    deny_input: list[str] = Field(default_factory=list, description="regexes the input must "
                                                                    "not match")
    deny_output: list[str] = Field(default_factory=list, description="regexes the output must "
                                                                     "not match")
    max_input_chars: int | None = Field(default=None, ge=1)
    max_output_chars: int | None = Field(default=None, ge=1)
    agents: list[str] | None = None
    """Check only runs of these agents (default: every agent)."""

    @field_validator("deny_input", "deny_output")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                regex.compile(pattern)
            except regex.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}"
                                 ) from None
        return patterns


def resolve(path: str, kind: Kind) -> Guardrail[Any]:
    """The guardrail at `path`: a Guardrail object, or a function made into one."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{path!r} is not an import path; write 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    found = getattr(module, attribute, None)
    if found is None:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}")
    if isinstance(found, Guardrail):
        if found.kind != kind:
            raise ValueError(f"{path!r} is an {found.kind} guardrail, listed under {kind}")
        return found
    if not callable(found):
        raise ValueError(f"{path!r} is a {type(found).__name__}, not a guardrail or function")
    maker: Callable[[Any], Guardrail[Any]] = InputGuardrail if kind == "input" \
        else OutputGuardrail
    return maker(found)


def _resolve_all(paths: list[str], kind: Kind) -> list[Guardrail[Any]]:
    out = []
    for index, path in enumerate(paths):
        try:
            out.append(resolve(path, kind))
        except ValueError as exc:
            raise OptionError(f"{kind}[{index}]", str(exc)) from None
    return out


def build(options: Mapping[str, Any], resources: HookResources) -> Guardrails:
    o = GuardrailOptions.model_validate(options)
    inputs = _resolve_all(o.input, "input")
    outputs = _resolve_all(o.output, "output")
    if o.deny_input:
        inputs.append(deny_patterns(o.deny_input, kind="input"))
    if o.deny_output:
        outputs.append(deny_patterns(o.deny_output, kind="output"))
    if o.max_input_chars is not None:
        inputs.append(max_length(o.max_input_chars, kind="input"))
    if o.max_output_chars is not None:
        outputs.append(max_length(o.max_output_chars, kind="output"))
    if not inputs and not outputs:
        raise OptionError("input", "no guardrail given: name at least one check")
    return Guardrails(input=inputs, output=outputs, agents=o.agents)
