"""Shared fixtures. Integration tests share one real local Ray, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmspell.runtime.messages import new_id


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from llmspell import Runtime

    data = tmp_path_factory.mktemp("llmspell")
    rt = Runtime(
        job_id="tests",
        namespace=f"test-{new_id()[-12:]}",
        event_log_path=str(data / "events.db"),
        state_path=str(data / "state.db"),
        gap_timeout_s=2.0,  # the default: a loaded CI machine can delay one of two asks 1 s
    )
    rt.start()
    yield rt
    rt.shutdown()


@pytest.fixture
def job_id(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh job id per test, so tests never see each other's actors or events. Actors the
    test spawned for it are killed afterwards (each is a process)."""
    job = f"job-{new_id()[-12:]}"
    yield job
    if "runtime" in request.fixturenames:
        request.getfixturevalue("runtime").kill_job(job)
