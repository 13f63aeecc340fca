"""Built-in tools: utility (uuid, hash, encode, random, json_schema_from_example).

This module also holds the small helpers the other built-in categories share (reading an input
from the sandbox or inline, writing a file atomically, capping output, a hard deadline for
pure-Python work), so that every tool applies the same limits in the same words.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import os
import random as _random
import re
import tempfile
import threading
import uuid as _uuid
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote, unquote

import uuid_utils
from pydantic import Field

from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.decorator import FunctionTool, tool
from llmspell.tools.errors import ToolError
from llmspell.tools.sandbox.tool import SandboxedTool

__all__ = [
    "MAX_INPUT_BYTES", "TOOLS", "BuiltinFunctionTool", "builtin_tool", "cap_text", "read_bytes",
    "read_text", "run_with_deadline", "source_text", "write_atomic",
]

T = TypeVar("T")

MAX_INPUT_BYTES = 20_000_000  # a file a tool reads whole; bigger inputs are refused, not truncated


# -- helpers shared by the built-in tools ------------------------------------------------------


class BuiltinFunctionTool(FunctionTool, SandboxedTool):
    """A built-in tool made from a function: it runs like any `@tool` (with SandboxedTool's
    untitled schema), and too deeply nested input is a clear tool error."""

    async def run(self, args: Any, ctx: ToolContext) -> Any:
        return await SandboxedTool.run(self, args, ctx)

    async def call(self, args: Any, ctx: ToolContext) -> Any:
        try:
            return await FunctionTool.run(self, args, ctx)
        except RecursionError:  # parsers and walkers of JSON, XML and YAML recurse per level
            raise ToolError(self.name, "the input nests too deeply to process") from None


def builtin_tool(*, category: str, name: str | None = None,
                 side_effects: SideEffects = SideEffects.none, idempotent: bool = True,
                 timeout: float | None = 60.0) -> Callable[[Callable[..., Any]], FunctionTool]:
    """`@tool` for the built-in tools, made into a BuiltinFunctionTool."""
    def build(fn: Callable[..., Any]) -> FunctionTool:
        made = tool(name=name, category=category, side_effects=side_effects,
                    idempotent=idempotent, timeout=timeout)(fn)
        return BuiltinFunctionTool(
            fn, name=made.name, description=made.description, args=made.Args,
            context_param=made.context_param, category=category, side_effects=side_effects,
            idempotent=idempotent, timeout=timeout, requires_approval=False)
    return build


def read_bytes(ctx: ToolContext, tool_name: str, path: str,
               limit: int = MAX_INPUT_BYTES) -> bytes:
    """A whole file from the sandbox, refused (not truncated) above `limit` bytes."""
    target = ctx.sandbox.path(tool_name, path)
    if not target.is_file():
        raise ToolError(tool_name, f"{path!r}: no such file in the sandbox")
    size = target.stat().st_size
    if size > limit:
        raise ToolError(tool_name, f"{path!r} is {size} bytes; the limit is {limit}")
    return target.read_bytes()


def read_text(ctx: ToolContext, tool_name: str, path: str, limit: int = MAX_INPUT_BYTES) -> str:
    raw = read_bytes(ctx, tool_name, path, limit)
    try:
        return raw.decode("utf-8-sig")  # a BOM from a spreadsheet export is not content
    except UnicodeDecodeError as exc:
        raise ToolError(tool_name, f"{path!r} is not UTF-8 text (byte {exc.start})") from None


def source_text(ctx: ToolContext, tool_name: str, text: str | None, path: str | None,
                limit: int = MAX_INPUT_BYTES) -> str:
    """The input of a tool that takes either inline `text` or a file `path`: exactly one."""
    if (text is None) == (path is None):
        raise ToolError(tool_name, "give exactly one of 'text' (inline) or 'path' (a file)")
    if path is not None:
        return read_text(ctx, tool_name, path, limit)
    assert text is not None
    if len(text) > limit:
        raise ToolError(tool_name, f"'text' is {len(text)} characters; the limit is {limit}")
    return text


def write_atomic(ctx: ToolContext, tool_name: str, path: str, data: bytes,
                 *, overwrite: bool = True) -> Path:
    """Write a file inside the sandbox so that a reader never sees half of it."""
    target = ctx.sandbox.path(tool_name, path, write=True)
    if target.exists() and not overwrite:
        raise ToolError(tool_name, f"{path!r} already exists (set overwrite to replace it)")
    if target.is_dir():
        raise ToolError(tool_name, f"{path!r} is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def cap_text(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to `limit` UTF-8 bytes (never inside a character), and whether it was cut."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text, False
    return encoded[:limit].decode("utf-8", errors="ignore"), True


class _Deadline(BaseException):
    """Raised inside a worker thread when its work runs past the deadline. A BaseException so
    that library code catching Exception does not swallow it."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None)


def run_with_deadline(tool_name: str, seconds: float, fn: Callable[[], T], what: str) -> T:
    """Run `fn` in this thread and stop it after `seconds`.

    A tool's own timeout stops waiting for a sync tool but cannot stop the worker thread, which
    would go on burning a core (a template with nested loops, a pathological PDF). A watchdog
    raises an exception inside this thread instead; it lands at the next Python bytecode, so
    pure-Python work stops promptly (C code finishes its current call first).
    """
    thread_id = threading.get_ident()
    lock = threading.Lock()
    done = False

    def fire() -> None:
        with lock:
            if not done:
                _raise_in(thread_id, _Deadline)

    watchdog = threading.Timer(seconds, fire)
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            return fn()
        finally:
            with lock:
                done = True
                _raise_in(thread_id, None)  # clear one that fired but has not landed yet
            watchdog.cancel()
    except _Deadline:
        raise ToolError(tool_name, f"{what} took longer than {seconds:g}s and was stopped"
                        ) from None


# -- uuid --------------------------------------------------------------------------------------


@builtin_tool(name="uuid", category="utility")
def uuid_generate(version: Literal[4, 7] = 4,
                  count: Annotated[int, Field(ge=1, le=1000)] = 1) -> list[str]:
    """Generate random UUIDs: version 4 (random) or version 7 (time-ordered: sorts by creation
    time, good for database keys). Returns a list of `count` UUID strings.

    Args:
        version: 4 for random UUIDs, 7 for time-ordered ones
        count: how many to generate (1-1000)
    """
    if version == 7:
        return [str(uuid_utils.uuid7()) for _ in range(count)]
    return [str(_uuid.uuid4()) for _ in range(count)]


# -- hash --------------------------------------------------------------------------------------

HashAlgorithm = Literal["md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256",
                        "sha3_512", "blake2b", "blake2s"]


@builtin_tool(name="hash", category="utility")
def hash_digest(ctx: ToolContext, algorithm: HashAlgorithm = "sha256", text: str | None = None,
                path: str | None = None, output: Literal["hex", "base64"] = "hex",
                ) -> dict[str, Any]:
    """Compute a cryptographic digest of a text (UTF-8) or of a file in the sandbox (streamed,
    any size). md5 and sha1 are for checksums only, not for security.

    Args:
        algorithm: the hash function
        text: the text to hash (give this or path)
        path: a file in the sandbox to hash (give this or text)
        output: the digest as hex or base64
    """
    if (text is None) == (path is None):
        raise ToolError("hash", "give exactly one of 'text' or 'path'")
    digest = hashlib.new(algorithm)
    if text is not None:
        data = text.encode("utf-8")
        digest.update(data)
        size = len(data)
    else:
        assert path is not None
        size = _hash_file(ctx, digest, path)
    value = (digest.hexdigest() if output == "hex"
             else base64.b64encode(digest.digest()).decode("ascii"))
    return {"algorithm": algorithm, "digest": value, "bytes": size}


def _hash_file(ctx: ToolContext, digest: Any, path: str) -> int:
    target = ctx.sandbox.path("hash", path)
    if not target.is_file():
        raise ToolError("hash", f"{path!r}: no such file in the sandbox")
    size = 0
    with target.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size


# -- encode ------------------------------------------------------------------------------------


@builtin_tool(name="encode", category="utility")
def encode_text(text: str, scheme: Literal["base64", "base64url", "hex", "url"] = "base64",
                direction: Literal["encode", "decode"] = "encode") -> str:
    """Encode text to, or decode text from, base64, URL-safe base64, hex or URL percent-encoding.
    Text is UTF-8; decoding fails clearly when the input is malformed or the bytes are not
    UTF-8 text.

    Args:
        text: the text to encode, or the encoded text to decode
        scheme: base64 (standard alphabet), base64url (- and _; padding optional when
            decoding), hex, or url (percent-encoding; every reserved character is escaped)
        direction: encode or decode
    """
    if direction == "encode":
        return _encode(text.encode("utf-8"), scheme)
    raw = _decode(text.strip(), scheme)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError("encode", f"the decoded {len(raw)} bytes are not UTF-8 text "
                                  f"(as hex: {raw[:64].hex()}{'...' if len(raw) > 64 else ''})"
                        ) from None


def _encode(data: bytes, scheme: str) -> str:
    if scheme == "base64":
        return base64.b64encode(data).decode("ascii")
    if scheme == "base64url":
        return base64.urlsafe_b64encode(data).decode("ascii")
    if scheme == "hex":
        return data.hex()
    return quote(data, safe="")


def _decode(text: str, scheme: str) -> bytes:
    try:
        if scheme == "base64":
            return base64.b64decode(text, validate=True)
        if scheme == "base64url":
            padded = text + "=" * (-len(text) % 4)  # JWTs and friends drop the padding
            return base64.b64decode(padded, altchars=b"-_", validate=True)
        if scheme == "hex":
            return bytes.fromhex(text)
        return unquote(text, errors="strict").encode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise ToolError("encode", f"not valid {scheme}: {exc}") from None


# -- random ------------------------------------------------------------------------------------


@builtin_tool(name="random", category="utility")
def random_values(operation: Literal["integer", "float", "choice", "shuffle", "sample"],
                  minimum: float = 0, maximum: float = 100,
                  count: Annotated[int, Field(ge=1, le=10_000)] = 1,
                  items: list[Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    """Random values, reproducible with a seed (the seed used is always returned, so a result
    can be produced again). Not for secrets: use the uuid tool for unguessable identifiers.

    Operations: integer (`count` integers in [minimum, maximum], both included), float (`count`
    floats in [minimum, maximum)), choice (`count` picks from `items`, with replacement),
    shuffle (`items` in random order), sample (`count` distinct items from `items`).

    Args:
        operation: integer, float, choice, shuffle or sample
        minimum: lower bound for integer and float
        maximum: upper bound for integer and float
        count: how many values (1-10000); for sample, how many distinct items
        items: the list to choose from, shuffle or sample
        seed: a seed for reproducible results; omitted, one is drawn and returned
    """
    if seed is None:
        seed = _random.SystemRandom().randrange(2**32)
    rng = _random.Random(seed)
    if operation in ("integer", "float"):
        result: Any = _numbers(rng, operation, minimum, maximum, count)
    else:
        result = _from_items(rng, operation, items, count)
    return {"result": result, "seed": seed}


def _numbers(rng: _random.Random, operation: str, low: float, high: float, count: int
             ) -> list[int] | list[float]:
    if low > high:
        raise ToolError("random", f"minimum ({low:g}) is greater than maximum ({high:g})")
    if operation == "float":
        return [rng.uniform(low, high) for _ in range(count)]
    if low != int(low) or high != int(high):
        raise ToolError("random", "integer needs whole-number minimum and maximum")
    return [rng.randint(int(low), int(high)) for _ in range(count)]


def _from_items(rng: _random.Random, operation: str, items: list[Any] | None, count: int
                ) -> Any:
    if not items:
        raise ToolError("random", f"{operation} needs a non-empty 'items' list")
    if operation == "choice":
        return [rng.choice(items) for _ in range(count)]
    if operation == "shuffle":
        shuffled = list(items)
        rng.shuffle(shuffled)
        return shuffled
    if count > len(items):
        raise ToolError("random", f"cannot sample {count} distinct items from {len(items)}")
    return rng.sample(items, count)


# -- json_schema_from_example ------------------------------------------------------------------

_FORMATS: list[tuple[str, re.Pattern[str]]] = [
    ("uuid", re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                        r"[0-9a-fA-F]{12}$")),
    ("email", re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")),
    ("uri", re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$")),
]
_MAX_DEPTH = 64


@builtin_tool(category="utility")
def json_schema_from_example(example: Any, all_required: bool = True,
                             detect_formats: bool = True) -> dict[str, Any]:
    """Infer a JSON Schema (draft 2020-12) from an example JSON value. Objects get their
    properties; arrays get one item schema merged from all their elements (mixed elements
    become anyOf); strings that look like date-time, date, email, uri or uuid get a format.

    Args:
        example: the example value (any JSON)
        all_required: mark every property seen as required (in arrays of objects: the
            properties present in every element)
        detect_formats: add `format` to strings that look like dates, emails, URIs or UUIDs
    """
    schema = _infer(example, all_required, detect_formats, 0)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _infer(value: Any, required: bool, formats: bool, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise ToolError("json_schema_from_example", f"the example nests deeper than {_MAX_DEPTH}")
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        fmt = _string_format(value) if formats else None
        return {"type": "string", "format": fmt} if fmt else {"type": "string"}
    if isinstance(value, dict):
        props = {str(k): _infer(v, required, formats, depth + 1) for k, v in value.items()}
        out: dict[str, Any] = {"type": "object", "properties": props}
        if required and props:
            out["required"] = list(props)
        return out
    if isinstance(value, list):
        if not value:
            return {"type": "array"}
        items = [_infer(v, required, formats, depth + 1) for v in value]
        return {"type": "array", "items": _merge_all(items, required)}
    raise ToolError("json_schema_from_example", f"not a JSON value: {type(value).__name__}")


def _string_format(value: str) -> str | None:
    if len(value) > 2048:
        return None  # no date, address or URI is this long; and the patterns stay linear
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            date.fromisoformat(value)
            return "date"
        except ValueError:
            return None
    if re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", value):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return "date-time"
        except ValueError:
            return None
    return next((name for name, rx in _FORMATS if rx.match(value)), None)


def _merge_all(schemas: list[dict[str, Any]], required: bool) -> dict[str, Any]:
    merged: list[dict[str, Any]] = []
    for schema in schemas:
        for i, seen in enumerate(merged):
            combined = _merge(seen, schema, required)
            if combined is not None:
                merged[i] = combined
                break
        else:
            merged.append(schema)
    return merged[0] if len(merged) == 1 else {"anyOf": merged}


def _merge(a: dict[str, Any], b: dict[str, Any], required: bool) -> dict[str, Any] | None:
    """One schema covering both, or None when they are of different kinds."""
    ta, tb = a.get("type"), b.get("type")
    if a == b:
        return a
    if {ta, tb} == {"integer", "number"}:
        return {"type": "number"}
    if ta != tb or ta is None:
        return None
    if ta == "string":
        return {"type": "string"}  # the formats differ: keep neither
    if ta == "object":
        return _merge_objects(a, b, required)
    if ta == "array":
        items = [s for s in (a.get("items"), b.get("items")) if s is not None]
        return {"type": "array", "items": _merge_all(items, required)} if items else a
    return a


def _merge_objects(a: dict[str, Any], b: dict[str, Any], required: bool) -> dict[str, Any]:
    props: dict[str, Any] = dict(a["properties"])
    for key, schema in b["properties"].items():
        props[key] = _merge_all([props[key], schema], required) if key in props else schema
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        common = [k for k in a.get("required", []) if k in b.get("required", [])]
        if common:
            out["required"] = common
    return out


TOOLS: list[Tool] = [uuid_generate, hash_digest, encode_text, random_values,
                     json_schema_from_example]
