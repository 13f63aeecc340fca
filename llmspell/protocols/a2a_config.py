"""RemoteAgentConfig: a remote A2A agent as a job spec declares it (`remote_agents:`).

Plain pydantic, without the A2A SDK, so that loading a job spec stays cheap; the agent itself
is llmspell.protocols.a2a_client.A2AAgent.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["RemoteAgentConfig"]

_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")


class RemoteAgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the agent's name in this job (its tool is named after it)")
    url: str = Field(description="the agent's base URL (its card is at "
                                 "<url>/.well-known/agent-card.json) or its card's URL")
    description: str | None = Field(None, description="what the job's agents read about it; "
                                                      "default: the card's description")
    token_env: str | None = Field(None, description="the environment variable holding its "
                                                    "bearer token")
    timeout: float = Field(600.0, gt=0, description="seconds for one task, end to end")
    connect_timeout: float = Field(30.0, gt=0)
    streaming: bool = Field(True, description="stream the task's events (needed to cancel a "
                                              "task while it runs)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: use a letter, then up to 63 letters, digits, _ or -")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("token_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value
