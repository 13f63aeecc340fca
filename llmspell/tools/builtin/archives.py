"""Built-in tools: archives and media (archive, image_info, pdf_text).

Extraction is planned before anything is written: every entry's name, link target, type and
declared size is checked first (no absolute paths, no `..`, no link leaving the destination, no
device files; entry count, total size and compression ratio under their caps), and one bad
entry refuses the whole archive. Sizes come from the headers, so a zip bomb is refused without
inflating a byte; the bytes actually written are counted again while extracting, in case a
header lies, and a failed extraction removes what it wrote.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Annotated, Any, Literal

from PIL import ExifTags, Image, UnidentifiedImageError
from pydantic import Field
from pypdf import PdfReader
from pypdf.errors import DependencyError, PdfReadError

from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.builtin.utility import builtin_tool, cap_text, run_with_deadline
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError

__all__ = ["TOOLS"]

MAX_RATIO = 200  # uncompressed / compressed: text is ~10:1, a bomb is 1000:1 and more
RATIO_FLOOR = 1 << 20  # entries smaller than this may compress as well as they like
_LISTED = 1000  # entries shown by list
ArchiveFormat = Literal["zip", "tar", "tar.gz", "tar.bz2", "tar.xz"]
_TAR_MODES = {"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}


@dataclass
class Entry:
    name: str
    kind: str  # file, dir, symlink, hardlink, other
    size: int
    compressed: int | None = None
    link: str | None = None
    modified: str | None = None
    ref: Any = None  # the ZipInfo or TarInfo it was read from

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "ref"}


@dataclass
class Limits:
    max_bytes: int
    max_entries: int


def _fail(message: str) -> ToolError:
    return ToolError("archive", message)


# -- reading headers ---------------------------------------------------------------------------


def _zip_entries(zf: zipfile.ZipFile, limits: Limits) -> list[Entry]:
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise _fail(f"the archive has {len(infos)} entries; the limit is {limits.max_entries}")
    entries = []
    for info in infos:
        mode = info.external_attr >> 16
        kind = "dir" if info.is_dir() else "symlink" if stat.S_ISLNK(mode) else "file"
        link = _zip_link(zf, info) if kind == "symlink" else None
        entries.append(Entry(info.filename, kind, info.file_size, info.compress_size, link,
                             datetime(*info.date_time).isoformat(), info))
    return entries


def _zip_link(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """A zip symlink's target is its data: read only when it is as small as a path is."""
    if info.file_size > 4096:
        raise _fail(f"symlink entry {info.filename!r} claims {info.file_size} bytes of target")
    return zf.read(info).decode("utf-8", "replace")


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    return "file" if member.isfile() else "other"


def _tar_entries(tf: tarfile.TarFile, limits: Limits) -> list[Entry]:
    """Headers one at a time, stopping at the first cap passed: the data of a member whose
    header already breaks the size cap is never decompressed (reading a compressed tar's
    headers means inflating everything before them, so a listing stops there too)."""
    entries: list[Entry] = []
    total = 0
    for member in tf:
        if len(entries) >= limits.max_entries:
            raise _fail(f"the archive has more than {limits.max_entries} entries (the limit)")
        total += member.size
        if total > limits.max_bytes:
            raise _fail(f"the archive expands to more than {limits.max_bytes} bytes (the "
                        "limit, max_total_mb); refused before writing anything")
        link = member.linkname if member.issym() or member.islnk() else None
        entries.append(Entry(member.name, _tar_kind(member), member.size, None, link,
                             datetime.fromtimestamp(member.mtime).isoformat(), member))
    return entries


class Opened:
    """An archive open for reading, whichever its format."""

    def __init__(self, path: Path, shown: str) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.tar: tarfile.TarFile | None = None
        try:
            if zipfile.is_zipfile(path):
                self.zip = zipfile.ZipFile(path)
            elif tarfile.is_tarfile(path):
                self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by close())
            else:
                raise _fail(f"{shown!r} is not a zip or tar archive")
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise _fail(f"cannot read {shown!r}: {exc}") from None

    @property
    def format(self) -> str:
        return "zip" if self.zip is not None else "tar"

    def entries(self, limits: Limits) -> list[Entry]:
        try:
            if self.zip is not None:
                return _zip_entries(self.zip, limits)
            assert self.tar is not None
            return _tar_entries(self.tar, limits)
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise _fail(f"the archive is damaged: {exc}") from None

    def close(self) -> None:
        for handle in (self.zip, self.tar):
            if handle is not None:
                handle.close()


# -- the plan: every check before any write ----------------------------------------------------


_DRIVE = re.compile(r"^[A-Za-z]:")


def _inside(name: str) -> str:
    """The entry's path relative to the destination; refused if absolute or climbing out."""
    clean = name.replace("\\", "/")
    if "\x00" in clean or clean.startswith("/") or _DRIVE.match(clean):
        raise _fail(f"entry {name!r} has an absolute path; refused (zip-slip)")
    if ".." in PurePosixPath(clean).parts:
        raise _fail(f"entry {name!r} climbs out of the destination with '..'; refused "
                    "(zip-slip)")
    return clean.strip("/")


def _resolve(rel: str, links: dict[str, str], follow_last: bool) -> str | None:
    """Where `rel` lands inside the destination once the archive's own symlinks (`links`:
    location -> link text) exist, or None if it lands outside (or loops). Resolving against
    the archive's links, not just the names, is what catches `a -> .` followed by `a/../x`."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        here = "/".join([*resolved, part])
        if here in links and (parts or follow_last):
            hops += 1
            link = links[here].replace("\\", "/")
            if hops > 40 or link.startswith("/") or _DRIVE.match(link):
                return None
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue  # a link is relative to its own directory: `resolved` stays
        resolved.append(part)
    return "/".join(resolved)


def _check_link(entry: Entry, where: str, links: dict[str, str]) -> None:
    """A symlink's target (relative to its directory) or a tar hard link's (relative to the
    archive's top) must land inside the destination."""
    link = (entry.link or "").replace("\\", "/")
    base = posixpath.dirname(where) if entry.kind == "symlink" else ""
    if not link or link.startswith("/") or _DRIVE.match(link) \
            or _resolve(posixpath.join(base, link), links, True) is None:
        raise _fail(f"link {entry.name!r} -> {entry.link!r} points outside the destination; "
                    "refused")


def _check_bomb(entries: list[Entry], archive_size: int, limits: Limits) -> None:
    total = sum(e.size for e in entries)
    if total > limits.max_bytes:
        raise _fail(f"the archive expands to {total} bytes, over the limit of "
                    f"{limits.max_bytes}; refused before writing anything")
    for e in entries:
        if e.compressed is not None and e.size > RATIO_FLOOR \
                and e.size > MAX_RATIO * max(e.compressed, 1):
            raise _fail(f"entry {e.name!r} expands {e.size // max(e.compressed, 1)}:1 "
                        f"({e.compressed} to {e.size} bytes), over the {MAX_RATIO}:1 limit: "
                        "a zip bomb? refused before writing anything")
    if total > RATIO_FLOOR and total > MAX_RATIO * max(archive_size, 1):
        raise _fail(f"the archive expands {total // max(archive_size, 1)}:1, over the "
                    f"{MAX_RATIO}:1 limit: a compression bomb? refused")


def _plan(ctx: ToolContext, entries: list[Entry], dest: str, dest_path: Path,
          overwrite: bool) -> list[tuple[Entry, str]]:
    """Each entry with where it lands (relative to the destination), or the refusal."""
    plan = []
    links: dict[str, str] = {}
    for entry in entries:
        if entry.kind == "other":
            raise _fail(f"entry {entry.name!r} is a device, FIFO or other special file; "
                        "refused")
        where = _resolve(_inside(entry.name), links, False)
        if where is None:
            raise _fail(f"entry {entry.name!r} passes through a link leading outside the "
                        "destination; refused")
        if entry.kind in ("symlink", "hardlink"):
            _check_link(entry, where, links)
        if entry.kind == "symlink":
            links[where] = entry.link or ""
        _check_on_disk(ctx, entry, dest, where, dest_path, overwrite)
        plan.append((entry, where))
    for where, link in links.items():  # again, now that every link of the archive is known
        if _resolve(posixpath.join(posixpath.dirname(where), link), links, True) is None:
            raise _fail(f"link {where!r} -> {link!r} points outside the destination once the "
                        "archive's other links exist; refused")
    return plan


def _check_on_disk(ctx: ToolContext, entry: Entry, dest: str, where: str, dest_path: Path,
                   overwrite: bool) -> None:
    # The sandbox resolves links already on disk, so a symlink left in the destination cannot
    # carry a write outside the root (or outside the destination) either.
    shown = posixpath.join(dest, where) if where else dest
    target = ctx.sandbox.path("archive", shown, write=True)
    if target != dest_path and dest_path not in target.parents:
        raise _fail(f"entry {entry.name!r} resolves outside the destination; refused")
    if entry.kind != "dir" and not overwrite and (target.exists() or target.is_symlink()):
        raise _fail(f"{shown!r} already exists (set overwrite to replace it); nothing was "
                    "extracted")


# -- extraction --------------------------------------------------------------------------------


class _Writer:
    """Writes the planned entries, counting real bytes, and undoes its work on failure.
    Each write resolves its directory on disk again, a last guard behind the plan."""

    def __init__(self, dest: Path, limit: int) -> None:
        self.dest = dest
        self.limit = limit
        self.written = 0
        self.created: list[Path] = []

    def place(self, where: str) -> Path:
        """The real path for an entry: its directory resolved, its last part not followed."""
        path = self.dest / where if where else self.dest
        if path == self.dest:
            return path
        parent = Path(os.path.realpath(path.parent))
        if parent != self.dest and self.dest not in parent.parents:
            raise _fail(f"{where!r} would be written outside the destination; stopped")
        return parent / path.name

    def source(self, where: str) -> Path:
        """An already extracted file to copy for a hard link, all links followed: it must be
        inside the destination, not a file a link left on disk points to."""
        real = Path(os.path.realpath(self.dest / where))
        if self.dest not in real.parents:
            raise _fail(f"hard link target {where!r} is outside the destination; stopped")
        return real

    def mkdir(self, path: Path) -> None:
        missing = [p for p in [path, *path.parents] if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        self.created.extend(reversed(missing))

    def file(self, path: Path, source: IO[bytes]) -> None:
        self.mkdir(path.parent)
        if path.is_symlink():
            path.unlink()  # replace the link itself, never the file it points to
        self.created.append(path)
        with path.open("wb") as out:
            while chunk := source.read(1 << 16):
                self.written += len(chunk)
                if self.written > self.limit:
                    raise _fail(f"the archive wrote more than {self.limit} bytes although its "
                                "headers declared less; stopped and removed")
                out.write(chunk)

    def symlink(self, path: Path, link: str) -> None:
        self.mkdir(path.parent)
        if path.is_symlink() or path.exists():
            path.unlink()
        self.created.append(path)
        os.symlink(link, path)

    def undo(self) -> None:
        for path in reversed(self.created):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
            except OSError:
                pass  # a directory that now holds files we did not write: keep it


def _extract_zip(zf: zipfile.ZipFile, plan: list[tuple[Entry, str]], writer: _Writer) -> None:
    for entry, where in plan:
        target = writer.place(where)
        if entry.kind == "dir":
            writer.mkdir(target)
        elif entry.kind == "symlink":
            writer.symlink(target, entry.link or "")
        else:
            with zf.open(entry.ref) as source:
                writer.file(target, source)


def _extract_tar(tf: tarfile.TarFile, plan: list[tuple[Entry, str]], writer: _Writer) -> None:
    for entry, where in plan:
        target = writer.place(where)
        if entry.kind == "dir":
            writer.mkdir(target)
        elif entry.kind == "symlink":
            writer.symlink(target, entry.link or "")
        elif entry.kind == "hardlink":
            # A copy of the linked file's bytes: no hard link to anything outside can result.
            with writer.source(_inside(entry.link or "")).open("rb") as source:
                writer.file(target, source)
        else:
            source_file = tf.extractfile(entry.ref)
            if source_file is None:
                raise _fail(f"entry {entry.name!r} has no data")
            with source_file:
                writer.file(target, source_file)


def _extract(ctx: ToolContext, opened: Opened, shown: str, dest: str | None, overwrite: bool,
             limits: Limits) -> dict[str, Any]:
    destination = dest if dest is not None else _default_destination(shown)
    dest_path = ctx.sandbox.path("archive", destination, write=True)
    if dest_path.exists() and not dest_path.is_dir():
        raise _fail(f"the destination {destination!r} is a file, not a directory")
    entries = opened.entries(limits)
    _check_bomb(entries, opened.path.stat().st_size, limits)
    plan = _plan(ctx, entries, destination, dest_path, overwrite)
    writer = _Writer(dest_path, limits.max_bytes)
    try:
        writer.mkdir(dest_path)
        if opened.zip is not None:
            _extract_zip(opened.zip, plan, writer)
        else:
            assert opened.tar is not None
            _extract_tar(opened.tar, plan, writer)
    except BaseException as exc:
        writer.undo()
        # Damaged data, an encrypted zip entry (RuntimeError), an unknown compression method.
        if isinstance(exc, zipfile.BadZipFile | tarfile.TarError | OSError | EOFError
                      | RuntimeError | NotImplementedError):
            raise _fail(f"extraction failed, nothing kept: {exc}") from None
        raise
    files = sum(1 for e, _ in plan if e.kind != "dir")
    return {"operation": "extract", "destination": destination, "files": files,
            "entries": len(plan), "bytes": writer.written}


def _default_destination(shown: str) -> str:
    """`data/x.tar.gz` -> `data/x`, beside the archive."""
    stem = str(PurePosixPath(shown).with_suffix("")).removesuffix(".tar")
    return stem if stem != shown else f"{shown}_extracted"


# -- list and create ---------------------------------------------------------------------------


def _list(opened: Opened, limits: Limits) -> dict[str, Any]:
    entries = opened.entries(limits)
    return {"operation": "list", "format": opened.format, "entry_count": len(entries),
            "total_bytes": sum(e.size for e in entries),
            "entries": [e.public() for e in entries[:_LISTED]],
            "truncated": len(entries) > _LISTED}


def _format_of(path: str, given: str | None) -> str:
    if given is not None:
        return given
    lower = path.lower()
    for suffix, fmt in ((".zip", "zip"), (".tar.gz", "tar.gz"), (".tgz", "tar.gz"),
                        (".tar.bz2", "tar.bz2"), (".tar.xz", "tar.xz"), (".tar", "tar")):
        if lower.endswith(suffix):
            return fmt
    raise _fail(f"cannot tell the format from {path!r}: name it .zip, .tar, .tar.gz, .tar.bz2 "
                "or .tar.xz, or set 'format'")


def _walk(ctx: ToolContext, item: str) -> Iterator[Path]:
    """The files under `item`, each resolved through the sandbox (so a symlink pointing
    outside the root is refused, never followed)."""
    top = ctx.sandbox.path("archive", item)
    if top.is_file():
        yield top
        return
    if not top.is_dir():
        raise _fail(f"{item!r}: no such file or directory in the sandbox")
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            yield ctx.sandbox.path("archive", os.path.join(dirpath, name))


def _collect(ctx: ToolContext, files: list[str], base: Path, output: Path, limits: Limits
             ) -> list[tuple[Path, str]]:
    chosen: dict[str, Path] = {}
    total = 0
    for item in files:
        for path in _walk(ctx, item):
            if path == output:
                continue
            if base not in path.parents:
                raise _fail(f"{str(path)!r} is not under the base directory")
            arcname = path.relative_to(base).as_posix()
            if arcname not in chosen:
                total += path.stat().st_size
                chosen[arcname] = path
            if len(chosen) > limits.max_entries or total > limits.max_bytes:
                raise _fail(f"the files exceed the limits ({limits.max_entries} entries, "
                            f"{limits.max_bytes} bytes)")
    if not chosen:
        raise _fail("no files to put in the archive")
    return [(p, name) for name, p in chosen.items()]


def _create(ctx: ToolContext, shown: str, files: list[str] | None, fmt_given: str | None,
            base_dir: str | None, overwrite: bool, limits: Limits) -> dict[str, Any]:
    if not files:
        raise _fail("create needs 'files' (paths in the sandbox; directories are recursed)")
    fmt = _format_of(shown, fmt_given)
    output = ctx.sandbox.path("archive", shown, write=True)
    if output.exists() and not overwrite:
        raise _fail(f"{shown!r} already exists (set overwrite to replace it)")
    base = ctx.sandbox.path("archive", base_dir or ".")
    chosen = _collect(ctx, files, base, output, limits)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write_archive(Path(tmp), fmt, chosen)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"operation": "create", "path": shown, "format": fmt, "entries": len(chosen),
            "bytes_in": sum(p.stat().st_size for p, _ in chosen),
            "bytes": output.stat().st_size}


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""  # no user names from this machine in a shared archive
    return info


def _write_archive(tmp: Path, fmt: str, chosen: list[tuple[Path, str]]) -> None:
    if fmt == "zip":
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, name in chosen:
                zf.write(path, name)
        return
    mode: Any = _TAR_MODES[fmt]
    with tarfile.open(tmp, mode) as tf:
        for path, name in chosen:
            tf.add(path, name, recursive=False, filter=_anonymous)


@builtin_tool(category="archives", side_effects=SideEffects.local, timeout=300.0)
def archive(ctx: ToolContext, operation: Literal["list", "extract", "create"], path: str,
            destination: str | None = None, files: list[str] | None = None,
            format: ArchiveFormat | None = None, base_dir: str | None = None,
            overwrite: bool = False,
            max_total_mb: Annotated[int, Field(ge=1, le=4096)] = 500,
            max_entries: Annotated[int, Field(ge=1, le=100_000)] = 10_000) -> dict[str, Any]:
    """Zip and tar archives (tar may be .gz, .bz2 or .xz) in the sandbox: list the entries,
    extract into a directory, or create one from files and directories. Extraction refuses,
    before writing anything, archives with entries that escape the destination (absolute
    paths, '..', links pointing outside), special files, more than `max_entries` entries, more
    than `max_total_mb` uncompressed, or a bomb-like compression ratio; it never overwrites a
    file unless `overwrite` is set.

    Args:
        operation: list, extract or create
        path: the archive file in the sandbox (read by list and extract, written by create)
        destination: for extract, the directory to extract into (default: the archive's
            name without its extension, beside it)
        files: for create, the files and directories to add (directories recursively)
        format: for create, zip, tar, tar.gz, tar.bz2 or tar.xz (default: from the name)
        base_dir: for create, entry names are relative to this directory (default: the
            sandbox root)
        overwrite: replace existing files (extract) or an existing archive (create)
        max_total_mb: refuse archives that expand to more than this many megabytes
        max_entries: refuse archives with more entries than this
    """
    limits = Limits(max_total_mb * 1_000_000, max_entries)
    if operation == "create":
        return _create(ctx, path, files, format, base_dir, overwrite, limits)
    source = ctx.sandbox.path("archive", path)
    if not source.is_file():
        raise _fail(f"{path!r}: no such file in the sandbox")
    opened = Opened(source, path)
    try:
        if operation == "list":
            return _list(opened, limits)
        return _extract(ctx, opened, path, destination, overwrite, limits)
    finally:
        opened.close()


# -- image_info --------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """An EXIF value as JSON: rationals as floats, bytes as text when they are text."""
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00")
        if text.isascii() and all(32 <= c < 127 or c in (9, 10, 13) for c in text):
            return cap_text(text.decode("ascii"), 200)[0]
        return f"<{len(value)} bytes>"
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value[:32]]
    if isinstance(value, str):
        return cap_text(value.rstrip("\x00"), 200)[0]
    if isinstance(value, int | bool) or value is None:
        return value
    try:
        return round(float(value), 6)  # IFDRational and friends
    except (TypeError, ValueError, ZeroDivisionError):
        return str(value)[:200]


def _exif(image: Image.Image) -> dict[str, Any]:
    exif = image.getexif()
    out: dict[str, Any] = {}
    for tag, value in list(exif.items())[:200]:
        if tag in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo):
            continue  # pointers to the sub-directories read below
        out[ExifTags.TAGS.get(tag, f"tag_{tag}")] = _plain(value)
    for tag, value in list(exif.get_ifd(ExifTags.IFD.Exif).items())[:200]:
        out[ExifTags.TAGS.get(tag, f"tag_{tag}")] = _plain(value)
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    if gps:
        out["GPSInfo"] = {ExifTags.GPSTAGS.get(t, f"tag_{t}"): _plain(v)
                          for t, v in list(gps.items())[:50]}
    return out


@builtin_tool(category="media")
def image_info(ctx: ToolContext, path: str) -> dict[str, Any]:
    """Describe an image file in the sandbox without decoding its pixels: format (PNG, JPEG,
    GIF, WebP, TIFF, BMP, ...), width and height, color mode, frame count (animations), DPI
    and other header info, and EXIF metadata (camera, date taken, orientation, GPS).

    Args:
        path: the image file in the sandbox
    """
    target = ctx.sandbox.path("image_info", path)
    if not target.is_file():
        raise ToolError("image_info", f"{path!r}: no such file in the sandbox")
    try:
        with Image.open(target) as image:
            frames = int(getattr(image, "n_frames", 1))
            info = {k: _plain(v) for k, v in image.info.items()
                    if k not in ("exif", "icc_profile", "xmp") and not isinstance(v, dict)}
            return {"format": image.format, "width": image.width, "height": image.height,
                    "mode": image.mode, "frames": frames, "animated": frames > 1,
                    "bytes": target.stat().st_size, "info": info, "exif": _exif(image)}
    except Image.DecompressionBombError as exc:
        raise ToolError("image_info", f"refused: {exc}") from None
    except UnidentifiedImageError:
        raise ToolError("image_info", f"{path!r} is not an image format this tool can read"
                        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt headers
        raise ToolError("image_info", f"{path!r} is a damaged image: {exc}") from None


# -- pdf_text ----------------------------------------------------------------------------------

MAX_PDF_BYTES = 200_000_000


def page_numbers(spec: str | None, count: int) -> list[int]:
    """1-based page numbers from "1-3,5,10-" (an open range runs to the end), in the order
    given, each once; every page when there is no spec."""
    if not spec:
        return list(range(1, count + 1))
    pages: dict[int, None] = {}  # ordered, without repeats
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?", part)
        if m is None:
            raise ToolError("pdf_text", f"cannot read page range {part.strip()!r} (use forms "
                                        "like 1-3,5,10-)")
        first = int(m.group(1))
        last = (int(m.group(3)) if m.group(3) else count) if m.group(2) else first
        if first < 1 or first > count or last < first:
            raise ToolError("pdf_text", f"page range {part.strip()!r} is outside 1-{count}")
        pages.update(dict.fromkeys(range(first, min(last, count) + 1)))
    return list(pages)


def _metadata(reader: PdfReader) -> dict[str, str]:
    raw: Any = reader.metadata or {}
    return {str(k).lstrip("/"): cap_text(str(v), 500)[0] for k, v in list(raw.items())[:50]}


def _open_pdf(path: Path, shown: str, password: str | None) -> PdfReader:
    if path.stat().st_size > MAX_PDF_BYTES:
        raise ToolError("pdf_text", f"{shown!r} is larger than {MAX_PDF_BYTES} bytes")
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(password or ""):
            raise ToolError("pdf_text", f"{shown!r} is encrypted: give its 'password'")
    except (PdfReadError, ValueError, OSError) as exc:
        raise ToolError("pdf_text", f"{shown!r} is not a readable PDF: {exc}") from None
    except DependencyError as exc:
        raise ToolError("pdf_text", f"{shown!r} is encrypted with AES, which needs the "
                                    f"'cryptography' package: {exc}") from None
    return reader


@builtin_tool(category="media", timeout=150.0)  # past time_limit, so that one stops it
def pdf_text(ctx: ToolContext, path: str, pages: str | None = None,
             max_pages: Annotated[int, Field(ge=1, le=2000)] = 50,
             password: str | None = None,
             time_limit: Annotated[float, Field(gt=0, le=120)] = 30.0) -> dict[str, Any]:
    """Extract the text of a PDF in the sandbox, page by page, with its metadata (title,
    author, creator, producer, dates) and page count. Long documents: choose `pages` and read
    in parts; text over the output limit is cut and marked truncated. Scanned PDFs (images
    only) have no text to extract.

    Args:
        path: the PDF file in the sandbox
        pages: which pages, 1-based: "1-3,5,10-" (default: from the first)
        max_pages: extract at most this many pages
        password: the password of an encrypted PDF
        time_limit: seconds the extraction may take
    """
    target = ctx.sandbox.path("pdf_text", path)
    if not target.is_file():
        raise ToolError("pdf_text", f"{path!r}: no such file in the sandbox")
    return run_with_deadline("pdf_text", time_limit,
                             lambda: _pdf(ctx, target, path, pages, max_pages, password),
                             "text extraction")


def _pdf(ctx: ToolContext, target: Path, shown: str, spec: str | None, max_pages: int,
         password: str | None) -> dict[str, Any]:
    reader = _open_pdf(target, shown, password)
    count = len(reader.pages)
    wanted = page_numbers(spec, count)
    chosen = wanted[:max_pages]
    budget = ctx.sandbox.max_output_bytes - 2000
    out: list[dict[str, Any]] = []
    truncated = False
    for number in chosen:
        try:
            text = reader.pages[number - 1].extract_text() or ""
        except (PdfReadError, ValueError, KeyError, TypeError) as exc:
            out.append({"page": number, "text": "", "error": f"{type(exc).__name__}: {exc}"})
            continue
        text, cut = cap_text(text, max(budget, 0))
        budget -= len(text.encode("utf-8")) + 50
        out.append({"page": number, "text": text})
        if cut or budget <= 0:
            truncated = True
            break
    capped = len(wanted) > max_pages
    return {"page_count": count, "encrypted": reader.is_encrypted,
            "metadata": _metadata(reader), "pages": out, "truncated": truncated or capped}


TOOLS: list[Tool] = [archive, image_info, pdf_text]
