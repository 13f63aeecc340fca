"""Built-in tools: the system, as far as the job's sandbox lets a model see and touch it.

env_get (only the variables the policy allow-lists), process_run (only allow-listed programs,
an argument list and never a shell, a timeout, capped output) and system_info (CPU, memory,
disk, platform: read through psutil).
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import Field

from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError
from llmspell.tools.sandbox import Sandbox
from llmspell.tools.sandbox.exec import run_process
from llmspell.tools.sandbox.tool import SandboxedTool, StrictArgs

__all__ = ["TOOLS", "EnvGet", "ProcessRun", "SystemInfo"]

CATEGORY = "system"
MAX_PROCESS_TIMEOUT_S = 600.0
_SECTIONS = Literal["cpu", "memory", "disk", "platform"]
_ALL_SECTIONS: tuple[_SECTIONS, ...] = ("cpu", "memory", "disk", "platform")


class EnvGet(SandboxedTool):
    name = "env_get"
    category = CATEGORY
    description = (
        "Read environment variables. Only names the sandbox allow-lists can be read; asking "
        "for any other is refused. A variable that is allowed but not set comes back as null.")

    class Args(StrictArgs):
        names: list[str] = Field(min_length=1, max_length=50,
                                 description="variable names to read, e.g. ['LANG']")

    async def call(self, args: EnvGet.Args, ctx: ToolContext) -> dict[str, Any]:
        for name in args.names:
            if not name or "=" in name or "\x00" in name:
                raise ToolError(self.name, f"{name!r} is not a valid variable name")
            ctx.sandbox.check_env(self.name, name)
        values = {name: os.environ.get(name) for name in args.names}
        return {"values": values, "missing": [n for n, v in values.items() if v is None]}


class ProcessRun(SandboxedTool):
    name = "process_run"
    category = CATEGORY
    side_effects = SideEffects.external  # a program can do anything its user can
    idempotent = False
    timeout = MAX_PROCESS_TIMEOUT_S + 30.0  # the process's own timeout comes first
    description = (
        "Run a program that the sandbox allow-lists, with an argument list (no shell: no "
        "pipes, globs or variable expansion), in a directory inside the sandbox. Returns the "
        "exit code and stdout and stderr (each capped); a program still running at timeout_s "
        "is killed with everything it started, and 'timed_out' is true.")

    class Args(StrictArgs):
        command: list[str] = Field(min_length=1, description="the program and its arguments, "
                                   "e.g. ['git', 'status', '--short']")
        cwd: str = Field(default=".", description="working directory, relative to the sandbox "
                         "root")
        stdin: str | None = Field(default=None, description="text given on standard input")
        timeout_s: float | None = Field(default=None, gt=0, le=MAX_PROCESS_TIMEOUT_S,
                                        description="kill it after this long (default: the "
                                                    "sandbox's)")
        max_output_bytes: int | None = Field(default=None, ge=1, description="cap per stream "
                                             "(also capped by the sandbox's max_output_bytes)")

    async def call(self, args: ProcessRun.Args, ctx: ToolContext) -> dict[str, Any]:
        sandbox = ctx.sandbox
        if not args.command[0]:
            raise ToolError(self.name, "command[0] (the program) is empty")
        sandbox.check_command(self.name, args.command[0])  # refused before any path is touched
        cwd = self._cwd(sandbox, args.cwd)
        limit = min(args.max_output_bytes or sandbox.max_output_bytes, sandbox.max_output_bytes)
        result = await run_process(
            sandbox, self.name, args.command, cwd=cwd,
            stdin=args.stdin.encode() if args.stdin is not None else None,
            timeout_s=args.timeout_s or sandbox.process_timeout_s, max_output_bytes=limit)
        return {**result.__dict__, "cwd": args.cwd}

    def _cwd(self, sandbox: Sandbox, cwd: str) -> Path:
        if sandbox.root is None:
            raise ToolError(self.name, "process_run needs a sandbox with a filesystem root to "
                                       "run in")
        directory = sandbox.path(self.name, cwd)
        if not directory.is_dir():
            raise ToolError(self.name, f"cwd {cwd!r} is not a directory in the sandbox")
        return directory


class SystemInfo(SandboxedTool):
    name = "system_info"
    category = CATEGORY
    description = (
        "Describe the machine the tool runs on: CPU (cores, load, use), memory and swap, disk "
        "space of the sandbox's filesystem, and the platform (OS, architecture, Python).")

    class Args(StrictArgs):
        sections: list[_SECTIONS] = Field(
            default_factory=lambda: list(_ALL_SECTIONS),
            min_length=1, description="which parts to report")

    async def call(self, args: SystemInfo.Args, ctx: ToolContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._collect, args, ctx.sandbox)

    def _collect(self, args: SystemInfo.Args, sandbox: Sandbox) -> dict[str, Any]:
        readers: dict[str, Callable[[], dict[str, Any]]] = {
            "cpu": _cpu, "memory": _memory, "platform": _platform,
            "disk": lambda: _disk(sandbox)}
        return {section: readers[section]() for section in dict.fromkeys(args.sections)}


def _cpu() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    frequency = psutil.cpu_freq()
    return {
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "percent": psutil.cpu_percent(interval=0.1),  # a first reading needs an interval
        "load_average": list(load) if load is not None else None,
        "frequency_mhz": round(frequency.current) if frequency else None,
    }


def _memory() -> dict[str, Any]:
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    return {"total_bytes": memory.total, "available_bytes": memory.available,
            "used_bytes": memory.used, "percent": memory.percent,
            "swap_total_bytes": swap.total, "swap_used_bytes": swap.used}


def _disk(sandbox: Sandbox) -> dict[str, Any]:
    # The filesystem the sandbox writes to; without a root, the one the runtime runs from.
    where = sandbox.root if sandbox.root is not None else os.getcwd()
    usage = psutil.disk_usage(where)
    return {"path": "sandbox root" if sandbox.root is not None else "working directory",
            "total_bytes": usage.total, "used_bytes": usage.used, "free_bytes": usage.free,
            "percent": usage.percent}


def _platform() -> dict[str, Any]:
    return {"system": platform.system(), "release": platform.release(),
            "machine": platform.machine(), "python": sys.version.split()[0],
            "hostname": platform.node(), "boot_time": psutil.boot_time(),
            "uptime_s": round(time.time() - psutil.boot_time())}


TOOLS: list[Tool] = [EnvGet(), ProcessRun(), SystemInfo()]
