"""Module-scoped fixtures that several integration modules make the same way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.messages import new_id


def module_llm_server(scenario: dict[str, Any]) -> Any:
    """A fixture `server`: one local LLM server per module, answering by `scenario`."""

    @pytest.fixture(scope="module")
    def server() -> Iterator[LocalLLMServer]:
        with LocalLLMServer(scenario) as s:
            yield s

    return server


def module_job(prefix: str) -> Any:
    """A fixture `job`: one job id per module, its actors killed at the module's end."""

    @pytest.fixture(scope="module")
    def job(runtime: Runtime) -> Iterator[str]:
        job_id = f"{prefix}-{new_id()[-12:]}"
        yield job_id
        runtime.kill_job(job_id)

    return job
