"""Fixtures of the conformance suite: a history file per test, and a poll for invariants that
settle (an actor's death reaching Ray's state API, a restart finishing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.history import init


@pytest.fixture
def history(tmp_path: Path) -> str:
    return init(str(tmp_path / "history.db"))


