"""The process half of the sandbox: allow-listed executables only, never a shell, always a
timeout and an output cap.

An allow-list entry is a bare name (found on PATH, e.g. "git") or an absolute path. A command
given as a bare name must be listed by that name; one given as a path must be listed by that
path (after symlinks are resolved), so a script the model wrote into the sandbox and named
`ls` does not pass as the allowed `ls`. The child gets a small environment (PATH, locale, time
zone, HOME, TMPDIR) plus the variables the policy allows, never the runtime's secrets, and runs
in its own process group so a timeout kills everything it started.

This is an allow-list, not a jail: an allowed program runs with the runtime's user rights.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmspell.tools.errors import ToolError
from llmspell.tools.sandbox.rules import Rule, refuse

if TYPE_CHECKING:
    from llmspell.tools.sandbox.policy import Sandbox

__all__ = ["BASE_ENV", "ProcessResult", "child_env", "resolve_command", "run_process"]

BASE_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR", "SYSTEMROOT")
_READ_CHUNK = 65_536


@dataclass
class ProcessResult:
    argv: list[str]
    exit_code: int | None  # None when it was killed at the timeout
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_ms: float


def resolve_command(policy: Sandbox, tool: str, command: str) -> str:
    """The executable to run for `command`, or a refusal naming the rule."""
    allowed = policy.allowed_commands
    if not allowed:
        raise refuse(tool, Rule.exec_disabled, f"running {command!r} is refused: process "
                     "execution is off (the sandbox allow-lists no command)", command)
    if os.sep in command or (os.altsep and os.altsep in command):
        real = os.path.realpath(command)
        if real in {os.path.realpath(a) for a in allowed if os.path.isabs(a)}:
            return real
    elif command in allowed:
        found = shutil.which(command)
        if found is None:
            raise ToolError(tool, f"{command!r} is allowed but not found on PATH")
        return found
    else:
        for entry in allowed:  # an absolute entry also allows its bare name
            if os.path.isabs(entry) and Path(entry).name == command:
                return entry
    raise refuse(tool, Rule.command_not_allowed, f"running {command!r} is not allowed (allowed "
                 f"commands: {', '.join(allowed)})", command)


def child_env(policy: Sandbox) -> dict[str, str]:
    names = {*BASE_ENV, *(n for n in os.environ if policy.env_allowed(n))}
    return {n: os.environ[n] for n in names if n in os.environ}


class _Capped:
    """Keeps the first `limit` bytes of a stream and drains the rest, so a chatty child never
    blocks on a full pipe and never fills our memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_READ_CHUNK):
            room = self.limit - len(self.data)
            if len(chunk) > room:
                self.truncated = True
            self.data += chunk[:max(room, 0)]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


async def run_process(policy: Sandbox, tool: str, argv: Sequence[str], *, cwd: Path,
                      stdin: bytes | None, timeout_s: float, max_output_bytes: int
                      ) -> ProcessResult:
    executable = resolve_command(policy, tool, argv[0])
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            executable, *argv[1:], cwd=cwd, env=child_env(policy),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)  # its own process group: the timeout kills its children too
    except OSError as exc:
        raise ToolError(tool, f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    out, err = _Capped(max_output_bytes), _Capped(max_output_bytes)
    timed_out = False
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(_feed(proc, stdin), out.drain(proc.stdout),
                                 err.drain(proc.stderr), proc.wait())
    except TimeoutError:
        timed_out = True
    finally:
        # Also on cancellation. After a timeout the leader may have exited while a child it
        # left behind still holds the pipes: the whole group goes.
        await _reap(proc, force=timed_out)
    return ProcessResult(
        argv=list(argv), exit_code=None if timed_out else proc.returncode, stdout=out.text(),
        stderr=err.text(), stdout_truncated=out.truncated, stderr_truncated=err.truncated,
        timed_out=timed_out, duration_ms=round((time.monotonic() - started) * 1000, 1))


async def _feed(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
    if proc.stdin is None or data is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    proc.stdin.close()


async def _reap(proc: asyncio.subprocess.Process, *, force: bool) -> None:
    if force or proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await asyncio.shield(proc.wait())
