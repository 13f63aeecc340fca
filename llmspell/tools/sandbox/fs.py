"""The filesystem half of the sandbox: every path a tool touches stays below one root.

A path is refused when it leaves the root lexically (`..`, an absolute path elsewhere: rule
'path-escape') or through a symbolic link on disk (rule 'symlink-escape'), including a link
inside the root that points outside it. Resolving first and acting later leaves a window in
which a directory could be swapped for a link, so the primitives here act through file
descriptors that are checked again after they are opened: the final component is opened with
O_NOFOLLOW, and the opened file's real location (/proc/self/fd on Linux; device and inode
elsewhere) must still be inside the root. Writes go through a verified directory descriptor, so
the temp file and the rename land in the directory that was checked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from llmspell.tools.errors import ToolError
from llmspell.tools.sandbox.rules import Rule, refuse

__all__ = [
    "append_bytes", "copy_file", "display", "ensure_dirs", "open_dir", "open_file", "real_root",
    "remove", "resolve", "within", "write_atomic",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_PROC_FD = Path("/proc/self/fd")

Writer = Callable[[BinaryIO], object]


def within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def real_root(tool: str, root: str | None) -> Path:
    if root is None:
        raise refuse(tool, Rule.no_filesystem, "this job's sandbox has no filesystem root, so "
                                               "no file may be read or written")
    real = Path(os.path.realpath(root))
    if not real.is_dir():
        raise ToolError(tool, f"the sandbox root {root!r} is not an existing directory")
    return real


def resolve(tool: str, root: str | None, path: str, *, follow: bool = True) -> Path:
    """The real path `path` names below the root. With follow=False a final symbolic link is
    not followed (delete, move and file_info act on the link itself)."""
    base = real_root(tool, root)
    if "\x00" in path:
        raise ToolError(tool, f"{path!r}: a path cannot contain a NUL character")
    given = Path(os.path.abspath(root or "."))
    candidate = Path(os.path.normpath(Path(path) if os.path.isabs(path) else base / path))
    if not within(candidate, base) and not within(candidate, given):
        raise refuse(tool, Rule.path_escape, f"{path!r} is outside the sandbox root", path)
    if follow or candidate in (base, given):
        real = Path(os.path.realpath(candidate))
    else:
        real = Path(os.path.realpath(candidate.parent)) / candidate.name
    if not within(real, base):
        raise refuse(tool, Rule.symlink_escape,
                     f"{path!r} leads outside the sandbox root through a symbolic link", path)
    return real


def display(root: Path, path: Path) -> str:
    """A path as tools show it: relative to the root ('.' for the root itself)."""
    try:
        shown = path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
    return shown or "."


def _fd_location(fd: int) -> Path | None:
    try:
        return Path(os.readlink(_PROC_FD / str(fd)))
    except OSError:
        return None


def _verify_fd(tool: str, fd: int, root: Path, path: Path) -> None:
    """Re-check, after opening, that the descriptor is inside the root (a swapped directory
    between resolve and open would otherwise go unnoticed)."""
    location = _fd_location(fd)
    if location is not None:
        ok = within(Path(str(location).removesuffix(" (deleted)")), root)
    else:  # no /proc: the file at the re-resolved path must be the one we opened
        real = Path(os.path.realpath(path))
        opened, now = os.fstat(fd), os.stat(real) if real.exists() else None
        ok = within(real, root) and now is not None and (
            (opened.st_dev, opened.st_ino) == (now.st_dev, now.st_ino))
    if not ok:
        os.close(fd)
        raise refuse(tool, Rule.symlink_escape,
                     f"{display(root, path)!r} moved outside the sandbox root while being opened",
                     str(path))


def open_file(tool: str, root: Path, path: Path, flags: int, mode: int = 0o666,
              *, dir_fd: int | None = None) -> int:
    """os.open that never follows a final symbolic link and is verified inside the root."""
    try:
        fd = os.open(path if dir_fd is None else path.name, flags | _NOFOLLOW | _CLOEXEC, mode,
                     dir_fd=dir_fd)
    except OSError as exc:
        # O_NOFOLLOW on a link: ELOOP, or ENOTDIR when a directory was asked for.
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and path.is_symlink()):
            raise refuse(tool, Rule.symlink_escape, f"{display(root, path)!r} is a symbolic "
                         "link (it changed after it was checked)", str(path)) from None
        raise
    _verify_fd(tool, fd, root, path)
    return fd


def open_dir(tool: str, root: Path, path: Path) -> int:
    return open_file(tool, root, path, os.O_RDONLY | _DIRECTORY)


def ensure_dirs(tool: str, root: Path, directory: Path) -> None:
    """Create `directory` and its missing parents, then check it is still inside the root."""
    directory.mkdir(parents=True, exist_ok=True)
    if not within(Path(os.path.realpath(directory)), root):
        raise refuse(tool, Rule.symlink_escape, f"{display(root, directory)!r} leads outside "
                     "the sandbox root through a symbolic link", str(directory))


@contextlib.contextmanager
def _directory(tool: str, root: Path, path: Path) -> Iterator[int]:
    fd = open_dir(tool, root, path.parent)
    try:
        yield fd
    finally:
        os.close(fd)


def write_atomic(tool: str, root: Path, path: Path, data: bytes | Writer,
                 *, mode: int | None = None) -> None:
    """Write the whole file or nothing: a temp file beside it, fsync, then rename over it.
    A reader sees the old content or the new, never half; a crash leaves at most a temp file.
    `data` is the bytes, or a function that writes them to the open temp file."""
    with _directory(tool, root, path) as dir_fd:
        mode = _existing_mode(path.name, dir_fd) if mode is None else mode
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = open_file(tool, root, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode,
                       dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    data(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp.name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp.name, dir_fd=dir_fd)
            raise


def remove(tool: str, root: Path, path: Path, *, tree: bool = False) -> None:
    """Remove a file, a link (not its target), an empty directory, or with tree=True a
    directory and everything below it; through a checked descriptor of its parent, so a parent
    swapped for a link after the check cannot redirect the removal outside the root."""
    with _directory(tool, root, path) as dir_fd:
        info = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(path.name, dir_fd=dir_fd)
        elif tree:
            shutil.rmtree(path.name, dir_fd=dir_fd)  # fd-based: never follows links inside
        else:
            os.rmdir(path.name, dir_fd=dir_fd)


def copy_file(tool: str, root: Path, source: Path, target: Path) -> None:
    """Copy a file's bytes and permissions (and times) through checked descriptors."""
    fd = open_file(tool, root, source, os.O_RDONLY)
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        write_atomic(tool, root, target, lambda out: shutil.copyfileobj(src, out, 1 << 20),
                     mode=stat.S_IMODE(info.st_mode))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _existing_mode(name: str, dir_fd: int) -> int:
    """Keep the permissions of the file being replaced (a new file gets 0o666 less umask)."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666


def append_bytes(tool: str, root: Path, path: Path, data: bytes, *, create: bool) -> int:
    """Append to a file (O_APPEND: concurrent appenders never overwrite each other); returns
    the file's new size."""
    flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0)
    with _directory(tool, root, path) as dir_fd:
        fd = open_file(tool, root, path, flags, dir_fd=dir_fd)
    with os.fdopen(fd, "ab") as out:
        out.write(data)
        out.flush()
        return os.fstat(out.fileno()).st_size
