"""Sandbox: the policy a job's tools run under (one per job, and per tool pool).

The policy is plain data, so it travels with a call to a pool replica in another process; the
checks are methods every built-in tool calls before it touches the world, and each refusal is a
SandboxViolation naming its rule (see sandbox/rules.py)::

    sandbox.path(tool, "notes/a.txt", write=True)   # a real path below the root, or refused
    sandbox.check_url(tool, "http://example.com/")  # the checked addresses to connect to
    sandbox.check_command(tool, "git")              # the executable to run, or refused
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from llmspell.tools.sandbox import exec as _exec
from llmspell.tools.sandbox import fs, net
from llmspell.tools.sandbox.rules import Rule, refuse

__all__ = ["Sandbox"]


class Sandbox(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- filesystem --
    root: str | None = Field(
        default=None,
        description="files are read and written only below this; None forbids the filesystem")
    read_only: bool = Field(default=False, description="files may be read, never written")
    # -- network --
    allow_network: bool = Field(default=True, description="False: no tool may use the network")
    allow_private_network: bool = Field(
        default=False,
        description="allow loopback, private and link-local targets (the SSRF guard off; cloud "
                    "metadata addresses stay refused unless listed in allowed_private_hosts)")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="when set, the only hosts a tool may reach: exact names, '*.example.com' "
                    "for subdomains, or IP addresses")
    allowed_private_hosts: list[str] = Field(
        default_factory=list,
        description="exact host names or IP addresses a tool may reach although they are "
                    "private, loopback or link-local, e.g. ['127.0.0.1'] for a local server")
    max_redirects: int = Field(default=5, ge=0, le=20,
                               description="redirects followed per request, each re-checked")
    network_timeout_s: float = Field(default=30.0, gt=0,
                                     description="default timeout of one network request")
    # -- processes and environment --
    allowed_commands: list[str] = Field(
        default_factory=list,
        description="executables a tool may run, by name (looked up on PATH) or absolute path; "
                    "empty turns process execution off; never a shell")
    allowed_env: list[str] = Field(
        default_factory=list,
        description="environment variables tools may read and child processes inherit: names "
                    "or shell patterns such as 'MYAPP_*'")
    process_timeout_s: float = Field(default=30.0, gt=0,
                                     description="default timeout of one child process")
    # -- everywhere --
    max_output_bytes: int = Field(default=1_000_000, gt=0,
                                  description="the most a tool returns from a file, a response "
                                              "or a process stream")

    # -- filesystem --------------------------------------------------------------------------

    def path(self, tool: str, path: str, *, write: bool = False) -> Path:
        """The real path `path` names below the root, symbolic links followed; refused when it
        leaves the root (by `..`, an absolute path, or a link) or writes a read-only root."""
        self._check_write(tool, path, write)
        return fs.resolve(tool, self.root, path)

    def entry(self, tool: str, path: str, *, write: bool = False) -> Path:
        """Like `path`, but a final symbolic link is the entry itself (delete, move, info act
        on the link, not on what it points to)."""
        self._check_write(tool, path, write)
        return fs.resolve(tool, self.root, path, follow=False)

    def root_path(self, tool: str) -> Path:
        return fs.real_root(tool, self.root)

    def _check_write(self, tool: str, path: str, write: bool) -> None:
        if write and self.read_only:
            raise refuse(tool, Rule.read_only, f"{path!r} cannot be written: the sandbox is "
                                               "read-only", path)

    # -- network -----------------------------------------------------------------------------

    def check_url(self, tool: str, url: str) -> net.Target:
        """Refuse a URL the policy does not allow (scheme, host list, metadata, and every
        address the host resolves to); return the checked addresses to connect to. Blocking:
        it resolves DNS. Async code uses `acheck_url`."""
        return net.check_host(self, tool, net.check_static(self, tool, url), url)

    async def acheck_url(self, tool: str, url: str) -> net.Target:
        return await net.acheck_host(self, tool, net.check_static(self, tool, url), url)

    # -- processes and environment -----------------------------------------------------------

    def check_command(self, tool: str, command: str) -> str:
        """The executable to run for `command` (a name on PATH or a path), or refused."""
        return _exec.resolve_command(self, tool, command)

    def env_allowed(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_env)

    def check_env(self, tool: str, name: str) -> None:
        if not self.env_allowed(name):
            shown = ", ".join(self.allowed_env) or "none"
            raise refuse(tool, Rule.env_not_allowed, f"reading the environment variable "
                         f"{name!r} is not allowed (allowed: {shown})", name)
