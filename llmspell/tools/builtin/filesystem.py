"""Built-in tools: the filesystem, inside the job's sandbox root.

read_file, write_file (atomic), append_file, list_dir, file_search (regex, with a time limit),
file_info, copy_move, delete, watch_changes. Every path is relative to the sandbox root (an
absolute path must lie below it); `..` and symbolic links that lead outside are refused with
the rule's name; paths in results are shown relative to the root. Blocking work runs in a
worker thread, so a tool never stalls an actor's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import errno
import io
import json
import mimetypes
import os
import re
import shutil
import stat
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import regex
from pydantic import Field

from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError
from llmspell.tools.sandbox import Rule, Sandbox, refuse
from llmspell.tools.sandbox import fs as sfs
from llmspell.tools.sandbox.tool import SandboxedTool, StrictArgs

__all__ = [
    "TOOLS", "AppendFile", "CopyMove", "Delete", "FileInfo", "FileSearch", "ListDir", "ReadFile",
    "WatchChanges", "WriteFile",
]

CATEGORY = "filesystem"
BINARY_PROBE = 8192  # a NUL byte in the first 8 KiB: treated as a binary file (as git does)
MAX_TREE_ENTRIES = 10_000  # copy_move and delete refuse larger trees in one call


# -- shared helpers ---------------------------------------------------------------------------


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "file" if stat.S_ISREG(mode) else "other"


def _check_encoding(tool: str, encoding: str) -> None:
    if encoding == "base64":
        return
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ToolError(tool, f"unknown encoding {encoding!r} (e.g. 'utf-8', 'latin-1', or "
                              "'base64' for raw bytes)") from None


def _encode(tool: str, content: str, encoding: str) -> bytes:
    _check_encoding(tool, encoding)
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ToolError(tool, "'content' is not valid base64") from None
    try:
        return content.encode(encoding)
    except UnicodeEncodeError as exc:
        raise ToolError(tool, f"'content' cannot be encoded as {encoding}: {exc.reason} at "
                              f"character {exc.start}") from None


def _existing(tool: str, target: Path, shown: str) -> os.stat_result:
    try:
        return target.lstat()
    except FileNotFoundError:
        raise ToolError(tool, f"{shown!r}: no such file or directory in the sandbox") from None


def _compile_glob(pattern: str) -> re.Pattern[str]:
    """A glob as a regex: `*` and `?` stay within one path segment, `**` crosses them,
    `[abc]` and `[!abc]` are classes."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] in "*?":
            out.append("[^/]*" if pattern[i] == "*" else "[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


class _Glob:
    """Matches a path below the listed directory: a pattern with a '/' against the whole
    relative path, one without against the name alone (as .gitignore reads them)."""

    def __init__(self, pattern: str | None) -> None:
        self.pattern = pattern
        self._regex = _compile_glob(pattern) if pattern else None
        self._whole = bool(pattern and "/" in pattern)

    def __call__(self, relative: str) -> bool:
        if self._regex is None:
            return True
        return bool(self._regex.match(relative if self._whole else relative.rpartition("/")[2]))


@dataclass
class _Entry:
    relative: str  # to the directory walked
    path: Path
    info: os.stat_result
    depth: int


def _walk(top: Path, *, recursive: bool, max_depth: int, hidden: bool) -> Iterator[_Entry]:
    """Entries below `top` in sorted order, never following a symbolic link (a link to a
    directory is listed, not entered: it may point outside the root)."""
    stack: list[tuple[Path, str, int]] = [(top, "", 1)]
    while stack:
        directory, prefix, depth = stack.pop()
        try:
            with os.scandir(directory) as scan:
                items = sorted(scan, key=lambda e: e.name)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            continue
        subdirs: list[tuple[Path, str, int]] = []
        for item in items:
            if not hidden and item.name.startswith("."):
                continue
            relative = f"{prefix}{item.name}"
            try:
                info = item.stat(follow_symlinks=False)
            except OSError:
                continue
            yield _Entry(relative, Path(item.path), info, depth)
            if recursive and depth < max_depth and stat.S_ISDIR(info.st_mode):
                subdirs.append((Path(item.path), f"{relative}/", depth + 1))
        stack.extend(reversed(subdirs))


def _directory(tool: str, sandbox: Sandbox, path: str) -> tuple[Path, Path]:
    root = sandbox.root_path(tool)
    top = sandbox.path(tool, path)
    if not top.exists():
        raise ToolError(tool, f"{path!r}: no such directory in the sandbox")
    if not top.is_dir():
        raise ToolError(tool, f"{path!r} is a file, not a directory")
    return root, top


# -- read_file ------------------------------------------------------------------------------


class ReadFile(SandboxedTool):
    name = "read_file"
    category = CATEGORY
    description = (
        "Read a file in the sandbox as text (or as base64 for binary files). Reads a window of "
        "lines (start_line, max_lines) up to max_bytes; when the file has more, 'truncated' is "
        "true and 'next_line' says where to continue.")
    timeout = 60.0

    class Args(StrictArgs):
        path: str = Field(description="file path relative to the sandbox root")
        encoding: str = Field(default="utf-8", description="text encoding (utf-8, latin-1, "
                              "utf-16, ...) or 'base64' to get the raw bytes base64-encoded")
        start_line: int = Field(default=1, ge=1, description="first line to return (1-based; "
                                "ignored for base64)")
        max_lines: int | None = Field(default=None, ge=1, le=100_000,
                                      description="most lines to return (default: all)")
        max_bytes: int = Field(default=200_000, ge=1, description="most bytes of content to "
                               "return (also capped by the sandbox's max_output_bytes)")

    async def call(self, args: ReadFile.Args, ctx: ToolContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._read, args, ctx.sandbox)

    def _read(self, args: ReadFile.Args, sandbox: Sandbox) -> dict[str, Any]:
        _check_encoding(self.name, args.encoding)
        root, target = sandbox.root_path(self.name), sandbox.path(self.name, args.path)
        info = _existing(self.name, target, args.path)
        if stat.S_ISDIR(info.st_mode):
            raise ToolError(self.name, f"{args.path!r} is a directory (use list_dir)")
        limit = min(args.max_bytes, sandbox.max_output_bytes)
        fd = sfs.open_file(self.name, root, target, os.O_RDONLY)
        with os.fdopen(fd, "rb") as handle:
            if args.encoding == "base64":
                data = handle.read(limit + 1)
                out = {"content": base64.b64encode(data[:limit]).decode("ascii"),
                       "truncated": len(data) > limit}
            else:
                out = self._lines(handle, args, limit)
        return {"path": sfs.display(root, target), "size": info.st_size,
                "encoding": args.encoding, **out}

    def _lines(self, handle: Any, args: ReadFile.Args, limit: int) -> dict[str, Any]:
        if args.encoding.replace("-", "").lower() in ("utf8", "ascii") and (
                b"\x00" in handle.peek(BINARY_PROBE)[:BINARY_PROBE]):
            raise ToolError(self.name, f"{args.path!r} looks like a binary file; read it with "
                                       "encoding 'base64'")
        # newline="": lines end at \n, \r\n or \r and keep their ending, as on disk.
        text = io.TextIOWrapper(handle, encoding=args.encoding, errors="strict", newline="")
        lines: list[str] = []
        used, number, truncated = 0, 0, False
        try:
            for number, line in enumerate(text, start=1):
                if number < args.start_line:
                    continue
                if args.max_lines is not None and len(lines) >= args.max_lines:
                    truncated = True
                    break
                size = len(line.encode("utf-8"))
                if used + size > limit:
                    lines.append(line.encode("utf-8")[:limit - used].decode("utf-8", "ignore"))
                    truncated = True
                    break
                lines.append(line)
                used += size
        except UnicodeDecodeError as exc:
            raise ToolError(self.name, f"{args.path!r} is not valid {args.encoding} text "
                                       f"({exc.reason}); try another encoding or 'base64'"
                            ) from None
        return {"content": "".join(lines), "start_line": args.start_line,
                "lines": len(lines), "truncated": truncated,
                "next_line": number if truncated else None}


# -- write_file and append_file ---------------------------------------------------------------


class WriteFile(SandboxedTool):
    name = "write_file"
    category = CATEGORY
    side_effects = SideEffects.local
    description = (
        "Write a file in the sandbox, atomically: the new content replaces the old in one step "
        "(a reader never sees half a file). Parent directories are created unless "
        "create_dirs is false.")

    class Args(StrictArgs):
        path: str = Field(description="file path relative to the sandbox root")
        content: str = Field(description="the whole new content of the file")
        encoding: str = Field(default="utf-8", description="text encoding to write, or "
                              "'base64' when content is base64-encoded bytes")
        overwrite: bool = Field(default=True, description="replace an existing file; false "
                                "makes an existing file an error")
        create_dirs: bool = Field(default=True, description="create missing parent directories")

    async def call(self, args: WriteFile.Args, ctx: ToolContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._write, args, ctx.sandbox)

    def _write(self, args: WriteFile.Args, sandbox: Sandbox) -> dict[str, Any]:
        data = _encode(self.name, args.content, args.encoding)
        root, target = sandbox.root_path(self.name), sandbox.path(self.name, args.path,
                                                                   write=True)
        if target == root or target.is_dir():
            raise ToolError(self.name, f"{args.path!r} is a directory")
        existed = target.exists()
        if existed and not args.overwrite:
            raise ToolError(self.name, f"{args.path!r} already exists (set overwrite to true "
                                       "to replace it)")
        _parent(self.name, root, target, args.path, args.create_dirs)
        sfs.write_atomic(self.name, root, target, data)
        return {"path": sfs.display(root, target), "bytes_written": len(data),
                "created": not existed}


def _parent(tool: str, root: Path, target: Path, shown: str, create: bool) -> None:
    if target.parent.is_dir():
        return
    if not create:
        raise ToolError(tool, f"{shown!r}: the parent directory does not exist (set "
                              "create_dirs to true to create it)")
    if target.parent.exists() and not target.parent.is_dir():  # not a concurrent mkdir
        raise ToolError(tool, f"{shown!r}: a parent of it is a file")
    sfs.ensure_dirs(tool, root, target.parent)


class AppendFile(SandboxedTool):
    name = "append_file"
    category = CATEGORY
    side_effects = SideEffects.local
    idempotent = False  # appending twice leaves the text twice
    description = (
        "Append text to the end of a file in the sandbox (created if missing, unless create "
        "is false). Concurrent appends never overwrite each other.")

    class Args(StrictArgs):
        path: str = Field(description="file path relative to the sandbox root")
        content: str = Field(description="text to add at the end of the file")
        encoding: str = Field(default="utf-8", description="text encoding, or 'base64' when "
                              "content is base64-encoded bytes")
        create: bool = Field(default=True, description="create the file (and its parent "
                             "directories) when it does not exist")

    async def call(self, args: AppendFile.Args, ctx: ToolContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._append, args, ctx.sandbox)

    def _append(self, args: AppendFile.Args, sandbox: Sandbox) -> dict[str, Any]:
        data = _encode(self.name, args.content, args.encoding)
        root, target = sandbox.root_path(self.name), sandbox.path(self.name, args.path,
                                                                   write=True)
        if target.is_dir():
            raise ToolError(self.name, f"{args.path!r} is a directory")
        if not target.exists() and not args.create:
            raise ToolError(self.name, f"{args.path!r}: no such file (set create to true)")
        _parent(self.name, root, target, args.path, args.create)
        size = sfs.append_bytes(self.name, root, target, data, create=args.create)
        return {"path": sfs.display(root, target), "bytes_appended": len(data), "size": size}


# -- list_dir ---------------------------------------------------------------------------------


class ListDir(SandboxedTool):
    name = "list_dir"
    category = CATEGORY
    description = (
        "List a directory in the sandbox: each entry's path (relative to the root), type "
        "(file, directory, symlink), size and modification time. Optionally recursive and "
        "filtered by a glob ('*.py', 'src/**/*.md'); symbolic links are listed, never entered.")

    class Args(StrictArgs):
        path: str = Field(default=".", description="directory relative to the sandbox root")
        pattern: str | None = Field(default=None, description="glob the entries must match: "
                                    "without '/' it matches the name ('*.txt'), with '/' the "
                                    "path below 'path' ('docs/**/*.md')")
        recursive: bool = Field(default=False, description="descend into subdirectories")
        max_depth: int = Field(default=10, ge=1, le=64, description="deepest level when "
                               "recursive (1 = only the directory itself)")
        include_hidden: bool = Field(default=False, description="include names starting "
                                     "with '.'")
        type: Literal["any", "file", "directory", "symlink"] = Field(
            default="any", description="only entries of this type")
        max_entries: int = Field(default=500, ge=1, le=10_000,
                                 description="most entries to return")

    async def call(self, args: ListDir.Args, ctx: ToolContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._list, args, ctx.sandbox)

    def _list(self, args: ListDir.Args, sandbox: Sandbox) -> dict[str, Any]:
        root, top = _directory(self.name, sandbox, args.path)
        glob = _Glob(args.pattern)
        entries: list[dict[str, Any]] = []
        truncated = False
        for entry in _walk(top, recursive=args.recursive, max_depth=args.max_depth,
                           hidden=args.include_hidden):
            kind = _kind(entry.info.st_mode)
            if not glob(entry.relative) or args.type not in ("any", kind):
                continue
            if len(entries) >= args.max_entries:
                truncated = True
                break
            entries.append({"path": sfs.display(root, entry.path), "type": kind,
                            "size": entry.info.st_size, "modified": _iso(entry.info.st_mtime)})
        return {"path": sfs.display(root, top), "entries": entries, "count": len(entries),
                "truncated": truncated}


# -- file_search ----------------------------------------------------------------------------


class FileSearch(SandboxedTool):
    name = "file_search"
    category = CATEGORY
    description = (
        "Search file contents in the sandbox with a regular expression (or a plain string with "
        "literal=true), like grep -rn: returns each match's file, line number, column and line. "
        "Binary and oversized files are skipped; a pattern that runs too long (catastrophic "
        "backtracking) is stopped at timeout_s.")
    timeout = 120.0

    class Args(StrictArgs):
        pattern: str = Field(min_length=1, description="regular expression (Python syntax) "
                             "or, with literal=true, a plain string")
        path: str = Field(default=".", description="file or directory to search, relative to "
                          "the sandbox root")
        glob: str | None = Field(default=None, description="only files matching this glob, "
                                 "e.g. '*.py' or 'src/**/*.ts'")
        literal: bool = Field(default=False, description="treat pattern as a plain string")
        ignore_case: bool = Field(default=False, description="case-insensitive matching")
        include_hidden: bool = Field(default=False, description="also search names starting "
                                     "with '.'")
        context_lines: int = Field(default=0, ge=0, le=10, description="lines of context "
                                   "before and after each match")
        max_matches: int = Field(default=100, ge=1, le=5_000, description="stop after this "
                                 "many matches")
        max_file_bytes: int = Field(default=5_000_000, ge=1, le=100_000_000,
                                    description="skip files larger than this")
        timeout_s: float = Field(default=10.0, gt=0, le=60, description="time limit for the "
                                 "whole search")

    async def call(self, args: FileSearch.Args, ctx: ToolContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._search, args, ctx.sandbox)

    def _compile(self, args: FileSearch.Args) -> Any:
        flags = regex.MULTILINE | (regex.IGNORECASE if args.ignore_case else 0)
        source = regex.escape(args.pattern) if args.literal else args.pattern
        try:
            return regex.compile(source, flags | regex.VERSION0)
        except regex.error as exc:
            raise ToolError(self.name, f"invalid regular expression {args.pattern!r}: {exc}"
                            ) from None

    def _search(self, args: FileSearch.Args, sandbox: Sandbox) -> dict[str, Any]:
        pattern = self._compile(args)
        root, top = sandbox.root_path(self.name), sandbox.path(self.name, args.path)
        _existing(self.name, top, args.path)
        search = _Search(self.name, root, pattern, args)
        for path in self._files(top, args):
            if search.full or not search.file(path):
                break
        return search.result()

    def _files(self, top: Path, args: FileSearch.Args) -> Iterator[Path]:
        if not top.is_dir():
            yield top
            return
        glob = _Glob(args.glob)
        for entry in _walk(top, recursive=True, max_depth=64, hidden=args.include_hidden):
            if stat.S_ISREG(entry.info.st_mode) and glob(entry.relative):
                yield entry.path


class _Search:
    """One file_search run: its deadline, its matches and its counts."""

    def __init__(self, tool: str, root: Path, pattern: Any, args: FileSearch.Args) -> None:
        self.tool, self.root, self.pattern, self.args = tool, root, pattern, args
        self.deadline = time.monotonic() + args.timeout_s
        self.matches: list[dict[str, Any]] = []
        self.searched = self.skipped = 0

    @property
    def full(self) -> bool:
        return len(self.matches) >= self.args.max_matches

    def file(self, path: Path) -> bool:
        """Search one file; False when the time is up."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return False
        text = self._text(path)
        if text is None:
            self.skipped += 1
            return True
        self.searched += 1
        try:
            found = list(self._matches(path, text, remaining))
        except TimeoutError:
            raise ToolError(self.tool, f"the pattern {self.args.pattern!r} ran longer than "
                            f"{self.args.timeout_s:g}s (in {sfs.display(self.root, path)!r}); "
                            "it may backtrack catastrophically: simplify it") from None
        self.matches.extend(found[: self.args.max_matches - len(self.matches)])
        return True

    def _text(self, path: Path) -> str | None:
        try:
            fd = sfs.open_file(self.tool, self.root, path, os.O_RDONLY)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > self.args.max_file_bytes:
                return None
            data = handle.read()
        if b"\x00" in data[:BINARY_PROBE]:
            return None
        return data.decode("utf-8", errors="replace")

    def _matches(self, path: Path, text: str, remaining: float) -> Iterator[dict[str, Any]]:
        starts = [0] + [m.end() for m in re.finditer("\n", text)]
        lines = text.split("\n")
        seen: set[int] = set()
        for match in self.pattern.finditer(text, timeout=remaining, concurrent=True):
            number = _line_of(starts, match.start())
            if number in seen:
                continue  # one result per line, as grep prints it
            seen.add(number)
            yield self._match(path, lines, number, match.start() - starts[number - 1])
            if len(seen) >= self.args.max_matches:
                return

    def _match(self, path: Path, lines: list[str], number: int, column: int) -> dict[str, Any]:
        found: dict[str, Any] = {"path": sfs.display(self.root, path), "line": number,
                                 "column": column + 1, "text": lines[number - 1][:500]}
        if self.args.context_lines:
            n = self.args.context_lines
            found["before"] = lines[max(0, number - 1 - n): number - 1]
            found["after"] = lines[number: number + n]
        return found

    def result(self) -> dict[str, Any]:
        return {"matches": self.matches, "count": len(self.matches),
                "files_searched": self.searched, "files_skipped": self.skipped,
                "truncated": self.full}


def _line_of(starts: list[int], offset: int) -> int:
    low, high = 0, len(starts)
    while low + 1 < high:
        mid = (low + high) // 2
        low, high = (mid, high) if starts[mid] <= offset else (low, mid)
    return low + 1


# -- file_info ------------------------------------------------------------------------------


class FileInfo(SandboxedTool):
    name = "file_info"
    category = CATEGORY
    description = (
        "Describe a file, directory or symbolic link in the sandbox without reading it: type, "
        "size, permissions, times, MIME type guessed from the name, and a link's target.")

    class Args(StrictArgs):
        path: str = Field(description="path relative to the sandbox root")

    async def call(self, args: FileInfo.Args, ctx: ToolContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._info, args, ctx.sandbox)

    def _info(self, args: FileInfo.Args, sandbox: Sandbox) -> dict[str, Any]:
        root, target = sandbox.root_path(self.name), sandbox.entry(self.name, args.path)
        info = _existing(self.name, target, args.path)
        out: dict[str, Any] = {
            "path": sfs.display(root, target), "type": _kind(info.st_mode), "size": info.st_size,
            "mode": oct(stat.S_IMODE(info.st_mode)), "permissions": stat.filemode(info.st_mode),
            "modified": _iso(info.st_mtime), "accessed": _iso(info.st_atime),
            "changed": _iso(info.st_ctime),
        }
        if stat.S_ISREG(info.st_mode):
            out["mime_type"] = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if stat.S_ISDIR(info.st_mode):
            with os.scandir(target) as scan:
                out["entries"] = sum(1 for _ in scan)
        if stat.S_ISLNK(info.st_mode):
            out["link_target"] = os.readlink(target)
            real = Path(os.path.realpath(target))
            out["target_inside_root"] = sfs.within(real, root)
            out["target_exists"] = real.exists()
        return out


# -- copy_move and delete ---------------------------------------------------------------------


def _tree_size(tool: str, path: Path) -> int:
    count = 0
    for _, dirs, files in os.walk(path):
        count += len(dirs) + len(files)
        if count > MAX_TREE_ENTRIES:
            raise ToolError(tool, f"more than {MAX_TREE_ENTRIES} entries below it: do this "
                                  "in smaller steps")
    return count


def _replace_link(target: Path, link: str) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink()
    target.symlink_to(link)


class CopyMove(SandboxedTool):
    name = "copy_move"
    category = CATEGORY
    side_effects = SideEffects.local
    idempotent = False  # a move cannot run twice
    description = (
        "Copy or move a file or directory within the sandbox. When destination is an existing "
        "directory the source goes inside it. Symbolic links are copied as links.")
    timeout = 300.0

    class Args(StrictArgs):
        operation: Literal["copy", "move"] = Field(description="copy keeps the source; move "
                                                   "removes it")
        source: str = Field(description="path relative to the sandbox root")
        destination: str = Field(description="new path, or an existing directory to put it in")
        overwrite: bool = Field(default=False, description="replace an existing destination "
                                "file (a directory is never replaced)")

    async def call(self, args: CopyMove.Args, ctx: ToolContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._run, args, ctx.sandbox)

    def _run(self, args: CopyMove.Args, sandbox: Sandbox) -> dict[str, Any]:
        root = sandbox.root_path(self.name)
        source = sandbox.entry(self.name, args.source, write=args.operation == "move")
        info = _existing(self.name, source, args.source)
        if source == root:
            raise refuse(self.name, Rule.protected_root, f"the sandbox root itself cannot be "
                         f"{'moved' if args.operation == 'move' else 'copied'}", args.source)
        target = self._target(sandbox, root, source, args)
        if stat.S_ISDIR(info.st_mode):
            if sfs.within(target, source):
                raise ToolError(self.name, f"cannot {args.operation} {args.source!r} into "
                                           "itself")
            _tree_size(self.name, source)
        sfs.ensure_dirs(self.name, root, target.parent)
        if args.operation == "move":
            shutil.move(source, target)
        elif stat.S_ISDIR(info.st_mode):
            shutil.copytree(source, target, symlinks=True)
        elif stat.S_ISLNK(info.st_mode):
            _replace_link(target, os.readlink(source))
        else:
            # Through checked descriptors into a temp file renamed over the target: an
            # existing destination that is a link is replaced, never written through.
            sfs.copy_file(self.name, root, source, target)
        return {"operation": args.operation, "source": sfs.display(root, source),
                "destination": sfs.display(root, target), "type": _kind(info.st_mode)}

    def _target(self, sandbox: Sandbox, root: Path, source: Path, args: CopyMove.Args) -> Path:
        target = sandbox.entry(self.name, args.destination, write=True)
        if target.is_dir() and not target.is_symlink():
            target = sandbox.entry(self.name, str(target / source.name), write=True)
        if target == source:
            raise ToolError(self.name, "source and destination are the same")
        if target.is_dir() and not target.is_symlink():
            raise ToolError(self.name, f"{sfs.display(root, target)!r} is an existing "
                                       "directory; it is never replaced")
        if (target.exists() or target.is_symlink()) and not args.overwrite:
            raise ToolError(self.name, f"{sfs.display(root, target)!r} already exists (set "
                                       "overwrite to true to replace it)")
        return target


class Delete(SandboxedTool):
    name = "delete"
    category = CATEGORY
    side_effects = SideEffects.local
    description = (
        "Delete a file, a symbolic link (the link, not its target) or a directory in the "
        "sandbox. A non-empty directory needs recursive=true. The sandbox root itself is never "
        "deleted.")

    class Args(StrictArgs):
        path: str = Field(description="path relative to the sandbox root")
        recursive: bool = Field(default=False, description="delete a directory and everything "
                                "in it")
        missing_ok: bool = Field(default=False, description="succeed when the path does not "
                                 "exist")

    async def call(self, args: Delete.Args, ctx: ToolContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._delete, args, ctx.sandbox)

    def _delete(self, args: Delete.Args, sandbox: Sandbox) -> dict[str, Any]:
        root, target = sandbox.root_path(self.name), sandbox.entry(self.name, args.path,
                                                                   write=True)
        if target == root:
            raise refuse(self.name, Rule.protected_root, "the sandbox root itself cannot be "
                                                         "deleted", args.path)
        if args.missing_ok and not (target.exists() or target.is_symlink()):
            return {"path": sfs.display(root, target), "deleted": False, "entries": 0}
        info = _existing(self.name, target, args.path)
        removed = 1
        if stat.S_ISDIR(info.st_mode) and args.recursive:
            removed += _tree_size(self.name, target)
        try:
            sfs.remove(self.name, root, target, tree=args.recursive)
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            raise ToolError(self.name, f"{args.path!r} is a directory that is not empty (set "
                                       "recursive to true)") from None
        return {"path": sfs.display(root, target), "deleted": True,
                "type": _kind(info.st_mode), "entries": removed}


# -- watch_changes ----------------------------------------------------------------------------

_TOKEN_PREFIX = "w1."


class WatchChanges(SandboxedTool):
    name = "watch_changes"
    category = CATEGORY
    description = (
        "Report what changed in a directory since an earlier call: files added, modified "
        "(size or modification time) and removed. Call it first without a token to get one; "
        "pass the returned token next time. wait_s > 0 waits (polling) until something "
        "changes or the time is up.")
    timeout = 120.0

    class Args(StrictArgs):
        path: str = Field(default=".", description="directory relative to the sandbox root")
        token: str | None = Field(default=None, description="the token an earlier call "
                                  "returned; none starts watching")
        recursive: bool = Field(default=True, description="include subdirectories")
        pattern: str | None = Field(default=None, description="only paths matching this glob")
        include_hidden: bool = Field(default=False, description="include names starting "
                                     "with '.'")
        wait_s: float = Field(default=0.0, ge=0, le=60, description="wait up to this long "
                              "for a change (0: answer at once)")
        max_entries: int = Field(default=5_000, ge=1, le=20_000, description="most entries "
                                 "tracked")

    poll_interval_s: ClassVar[float] = 0.25

    async def call(self, args: WatchChanges.Args, ctx: ToolContext) -> dict[str, Any]:
        sandbox = ctx.sandbox
        before = self._decode(args, sandbox) if args.token else None
        deadline = time.monotonic() + args.wait_s
        while True:
            snapshot, truncated = await asyncio.to_thread(self._snapshot, args, sandbox)
            changes = _diff(before, snapshot)
            if before is None or any(changes.values()) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(self.poll_interval_s)
        return {"token": self._encode(args, sandbox, snapshot), "initial": before is None,
                "changed": any(changes.values()), **changes, "entries": len(snapshot),
                "truncated": truncated}

    def _snapshot(self, args: WatchChanges.Args, sandbox: Sandbox
                  ) -> tuple[dict[str, list[int]], bool]:
        root, top = _directory(self.name, sandbox, args.path)
        glob = _Glob(args.pattern)
        snapshot: dict[str, list[int]] = {}
        for entry in _walk(top, recursive=args.recursive, max_depth=64,
                           hidden=args.include_hidden):
            if stat.S_ISDIR(entry.info.st_mode) or not glob(entry.relative):
                continue
            if len(snapshot) >= args.max_entries:
                return snapshot, True
            snapshot[sfs.display(root, entry.path)] = [entry.info.st_mtime_ns,
                                                       entry.info.st_size]
        return snapshot, False

    def _scope(self, args: WatchChanges.Args, sandbox: Sandbox) -> list[Any]:
        top = sandbox.path(self.name, args.path)
        return [sfs.display(sandbox.root_path(self.name), top), args.recursive, args.pattern,
                args.include_hidden]

    def _encode(self, args: WatchChanges.Args, sandbox: Sandbox,
                snapshot: dict[str, list[int]]) -> str:
        """The token carries the snapshot itself (compressed), so no state is kept anywhere
        and any replica of a tool pool can answer the next call."""
        raw = json.dumps({"scope": self._scope(args, sandbox), "files": snapshot},
                         separators=(",", ":")).encode()
        return _TOKEN_PREFIX + base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode("ascii")

    def _decode(self, args: WatchChanges.Args, sandbox: Sandbox) -> dict[str, list[int]]:
        token = args.token or ""
        try:
            if not token.startswith(_TOKEN_PREFIX):
                raise ValueError("no prefix")
            raw = zlib.decompressobj().decompress(
                base64.urlsafe_b64decode(token[len(_TOKEN_PREFIX):]), 50_000_000)
            data = json.loads(raw)
            scope, files = data["scope"], data["files"]
        except (ValueError, KeyError, TypeError, zlib.error, binascii.Error):
            raise ToolError(self.name, "'token' is not a token this tool returned (start again "
                                       "without one)") from None
        if scope != self._scope(args, sandbox):
            raise ToolError(self.name, "'token' was made for another directory or other "
                                       "options (path, recursive, pattern, include_hidden)")
        return {str(k): list(v) for k, v in files.items()}


def _diff(before: dict[str, list[int]] | None, after: dict[str, list[int]]
          ) -> dict[str, list[str]]:
    if before is None:
        return {"added": [], "modified": [], "removed": []}
    return {
        "added": sorted(set(after) - set(before)),
        "modified": sorted(p for p in set(after) & set(before) if after[p] != before[p]),
        "removed": sorted(set(before) - set(after)),
    }


TOOLS: list[Tool] = [
    ReadFile(), WriteFile(), AppendFile(), ListDir(), FileSearch(), FileInfo(), CopyMove(),
    Delete(), WatchChanges(),
]
