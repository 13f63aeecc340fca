"""The sandbox's rules by name, and the error and event a refusal becomes.

Every refusal names the rule that made it, in the message ("sandbox rule 'private-address':
127.0.0.2 is a loopback address") and as `SandboxViolation.rule`, so a model, a user and a
circuit breaker can each tell a policy decision from a failure, and which policy it was.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from llmspell.tools.errors import SandboxViolation

__all__ = ["REFUSED_TOPIC", "Publisher", "Rule", "publish_refusal", "refuse", "rule_of"]

REFUSED_TOPIC = "sandbox.refused"


class Rule(StrEnum):
    # filesystem
    no_filesystem = "no-filesystem"  # the policy has no root: no file may be touched
    read_only = "read-only"  # the root may be read, not written
    path_escape = "path-escape"  # `..` or an absolute path leaves the root
    symlink_escape = "symlink-escape"  # a symbolic link inside the root points outside it
    protected_root = "protected-root"  # the root itself cannot be deleted or moved
    # network
    scheme = "scheme"  # only http and https
    no_network = "no-network"  # the policy allows no network at all
    host_not_allowed = "host-not-allowed"  # an allowed_hosts list is set and the host is not on it
    private_address = "private-address"  # loopback, private, link-local, reserved, multicast
    metadata_address = "metadata-address"  # cloud instance metadata (credentials live there)
    # processes and environment
    exec_disabled = "exec-disabled"  # no command is allow-listed: process execution is off
    command_not_allowed = "command-not-allowed"  # this command is not on the allow-list
    env_not_allowed = "env-not-allowed"  # this environment variable is not on the allow-list


class Publisher(Protocol):
    """What a refusal is reported through: a ToolContext (its `publish`)."""

    def publish(self, topic: str, payload: dict[str, Any] | None = None) -> None: ...


def refuse(tool: str, rule: Rule, message: str, subject: str = "") -> SandboxViolation:
    """The error for a refused action. `subject` is what was refused (a path, URL, command)."""
    error = SandboxViolation(tool, f"sandbox rule '{rule}': {message}")
    # Plain attributes: they travel with the error across processes (pickled, or packed by a
    # tool pool's error_to_wire) without a constructor of their own.
    error.__dict__.update(rule=str(rule), subject=subject, reason=message)
    return error


def rule_of(error: BaseException) -> str | None:
    """The rule a SandboxViolation names (None for other errors, or one raised without a rule)."""
    if not isinstance(error, SandboxViolation):
        return None
    rule = error.__dict__.get("rule")
    return str(rule) if rule else None


def publish_refusal(ctx: Publisher, error: SandboxViolation) -> None:
    ctx.publish(REFUSED_TOPIC, {
        "tool": error.tool, "rule": rule_of(error) or "unknown",
        "subject": str(error.__dict__.get("subject", "")), "message": error.detail,
    })
