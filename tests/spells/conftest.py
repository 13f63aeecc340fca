"""Spells against a real local Ray (the session's) and the local LLM server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.llm.server import LocalLLMServer
from llmspell.spells import SpellOptions, exec_spell

SCENARIO = Path(__file__).parent / "scenario.yaml"


@pytest.fixture(scope="session")
def llm() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as server:
        yield server


@pytest.fixture
def options(llm: LocalLLMServer) -> SpellOptions:
    return SpellOptions(providers={"local": {"base_url": llm.openai_base_url}},
                        default_model="local:echo")


class Printed(list[str]):
    """What a spell printed, line by line."""

    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture
def printed() -> Printed:
    return Printed()


async def run(runtime: Runtime, job_id: str, options: SpellOptions, code: str) -> Any:
    """Run a one-line spell (its prints dropped) that must complete; its output."""
    result = await exec_spell(code, inputs={}, runtime=runtime, job_id=job_id, options=options,
                              print_line=lambda line: None)
    assert result.ok, result.reason
    return result.output
