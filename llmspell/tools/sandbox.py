"""The sandbox a job's tools run in: a filesystem root, a network policy, a process allow-list.

The policy is plain data (it travels with a call to a pool replica in another process); the
checks are small functions every built-in tool calls before it touches the world.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from llmspell.tools.errors import SandboxViolation

__all__ = ["Sandbox"]


class Sandbox(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str | None = Field(
        default=None,
        description="files are read and written only below this; None forbids the filesystem")
    read_only: bool = False
    allow_network: bool = True
    allow_private_network: bool = Field(
        default=False,
        description="allow loopback, private and link-local targets (SSRF guard off)")
    allowed_hosts: list[str] = Field(default_factory=list,
                                     description="when set, the only hosts a tool may reach")
    allowed_commands: list[str] = Field(default_factory=list,
                                        description="executables a tool may run (never a shell)")
    max_output_bytes: int = 1_000_000

    def path(self, tool: str, path: str, *, write: bool = False) -> Path:
        """Resolve `path` inside the root (symlinks followed); raise if it leaves it."""
        if self.root is None:
            raise SandboxViolation(tool, "this job's sandbox has no filesystem root")
        if write and self.read_only:
            raise SandboxViolation(tool, f"{path!r}: the sandbox is read-only")
        root = Path(self.root).resolve()
        target = (root / path).resolve() if not os.path.isabs(path) else Path(path).resolve()
        if target != root and root not in target.parents:
            raise SandboxViolation(tool, f"{path!r} is outside the sandbox root")
        return target

    def check_url(self, tool: str, url: str) -> None:
        """Refuse a URL the policy does not allow: scheme, host list, private addresses."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise SandboxViolation(tool, f"{url!r}: only http and https URLs are allowed")
        host = parts.hostname or ""
        if not self.allow_network:
            raise SandboxViolation(tool, f"{url!r}: this job's sandbox allows no network")
        if self.allowed_hosts and host not in self.allowed_hosts:
            raise SandboxViolation(tool, f"{url!r}: host {host!r} is not in the allowed hosts")
        if not self.allow_private_network:
            for address in _addresses(host):
                if _private(address):
                    raise SandboxViolation(
                        tool, f"{url!r}: {host!r} resolves to a private address ({address})")

    def check_command(self, tool: str, command: str) -> None:
        if Path(command).name not in self.allowed_commands and command not in self.allowed_commands:
            raise SandboxViolation(tool, f"running {command!r} is not allowed by the sandbox")


def _addresses(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return []  # unresolvable: the request itself will fail with a clear error
    return sorted({str(info[4][0]) for info in infos})


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
            or ip.is_multicast or ip.is_unspecified)
