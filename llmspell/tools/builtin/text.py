"""Built-in tools: text (text_transform, regex, template_render, text_diff, text_stats,
chunk_text).

Work that can blow up is bounded where it runs: regular expressions use the `regex` module's
own timeout (it stops a catastrophic backtrack inside the match), templates render in Jinja2's
immutable sandbox under a hard deadline and an output cap, and diffs of large texts compare
lines rather than characters.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Literal

import regex as _regex
from jinja2 import BaseLoader, Environment, StrictUndefined, Undefined
from jinja2.exceptions import (
    SecurityError,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import Field

from llmspell.llm.tokens import count_text, encoding_for, estimate, is_exact
from llmspell.tools.base import Tool
from llmspell.tools.builtin.utility import builtin_tool, cap_text, run_with_deadline, source_text
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError

__all__ = ["TOOLS"]


def _fit(ctx: ToolContext, tool_name: str, text: str) -> str:
    """Refuse a result over the output limit: a silently cut string reads as the whole one."""
    size = len(text.encode("utf-8"))
    if size > ctx.sandbox.max_output_bytes:
        raise ToolError(tool_name, f"the result is {size} bytes, over the output limit of "
                                   f"{ctx.sandbox.max_output_bytes}")
    return text


# -- text_transform ----------------------------------------------------------------------------

Operation = Literal[
    "upper", "lower", "title", "capitalize", "swapcase", "snake_case", "camel_case",
    "pascal_case", "kebab_case", "slugify", "trim", "trim_start", "trim_end",
    "normalize_whitespace", "split", "split_lines", "join", "replace", "reverse", "truncate",
]
# Words inside identifiers and prose: "getHTTPResponse2" -> get, HTTP, Response, 2.
_WORD = _regex.compile(r"\p{Lu}+(?!\p{Ll})|\p{Lu}?\p{Ll}+|\p{N}+|\p{L}+")


def _words(text: str) -> list[str]:
    return [str(w) for w in _WORD.findall(text)]


_CASES: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "lower": str.lower,
    "title": str.title,
    "capitalize": str.capitalize,
    "swapcase": str.swapcase,
    "snake_case": lambda s: "_".join(w.lower() for w in _words(s)),
    "kebab_case": lambda s: "-".join(w.lower() for w in _words(s)),
    "camel_case": lambda s: "".join(w.lower() if i == 0 else w.capitalize()
                                    for i, w in enumerate(_words(s))),
    "pascal_case": lambda s: "".join(w.capitalize() for w in _words(s)),
    "slugify": lambda s: "-".join(w.lower() for w in _words(s)),
    "normalize_whitespace": lambda s: " ".join(s.split()),
    "reverse": lambda s: s[::-1],
    "split_lines": lambda s: s,  # handled below: returns a list
}


@builtin_tool(category="text")
def text_transform(ctx: ToolContext, operation: Operation, text: str = "",
                   items: list[str] | None = None, separator: str | None = None,
                   old: str | None = None, new: str = "", count: int = -1,
                   chars: str | None = None, length: Annotated[int, Field(ge=0)] = 100,
                   ) -> str | list[str]:
    """Transform text: change case (upper, lower, title, capitalize, swapcase, snake_case,
    camel_case, pascal_case, kebab_case, slugify), trim (trim, trim_start, trim_end,
    normalize_whitespace), split (by `separator`, or on whitespace) and split_lines (both
    return a list), join (`items` with `separator`), replace (`old` with `new`), reverse, and
    truncate (to `length` characters, ending in "...").

    Args:
        operation: what to do
        text: the input text (not used by join)
        items: the strings to join
        separator: for split, the delimiter (whitespace when omitted); for join, the glue
            ("" when omitted)
        old: for replace, the text to find
        new: for replace, the replacement
        count: for replace, the most replacements (-1: all); for split, the most splits
        chars: for trim operations, the characters to strip (whitespace when omitted)
        length: for truncate, the maximum length
    """
    result = _transform(operation, text, items, separator, old, new, count, chars, length)
    if isinstance(result, list):
        _fit(ctx, "text_transform", "\n".join(result))
        return result
    return _fit(ctx, "text_transform", result)


def _transform(op: str, text: str, items: list[str] | None, separator: str | None,
               old: str | None, new: str, count: int, chars: str | None, length: int,
               ) -> str | list[str]:
    if op == "split":
        if separator == "":
            raise ToolError("text_transform", "split needs a non-empty separator (or none, "
                                              "to split on whitespace)")
        return text.split(separator, count)
    if op == "split_lines":
        return text.splitlines()
    if op == "join":
        if items is None:
            raise ToolError("text_transform", "join needs 'items' (a list of strings)")
        return (separator or "").join(items)
    if op == "replace":
        if not old:
            raise ToolError("text_transform", "replace needs a non-empty 'old'")
        return text.replace(old, new, count)
    if op in ("trim", "trim_start", "trim_end"):
        return {"trim": text.strip, "trim_start": text.lstrip,
                "trim_end": text.rstrip}[op](chars)
    if op == "truncate":
        return text if len(text) <= length else text[: max(0, length - 3)].rstrip() + "..."
    return _CASES[op](text)


# -- regex -------------------------------------------------------------------------------------

_FLAGS = {"ignorecase": _regex.IGNORECASE, "multiline": _regex.MULTILINE,
          "dotall": _regex.DOTALL, "verbose": _regex.VERBOSE}
Flag = Literal["ignorecase", "multiline", "dotall", "verbose"]


@builtin_tool(name="regex", category="text")
def regex_tool(ctx: ToolContext, pattern: str, text: str,
               operation: Literal["search", "match", "fullmatch", "findall", "sub",
                                  "split"] = "findall",
               replacement: str = "", flags: list[Flag] | None = None,
               count: Annotated[int, Field(ge=0)] = 0,
               max_matches: Annotated[int, Field(ge=1, le=10_000)] = 1000,
               timeout: Annotated[float, Field(gt=0, le=10)] = 2.0) -> dict[str, Any]:
    """Regular expressions (Python syntax, plus Unicode classes like \\p{L}): search (first
    match anywhere), match (at the start), fullmatch (the whole text), findall (every match,
    with groups and positions), sub (replace matches with `replacement`, which may use \\1 or
    \\g<name>) and split. A pattern that backtracks catastrophically is stopped at `timeout`.

    Args:
        pattern: the regular expression
        text: the text to search
        operation: search, match, fullmatch, findall, sub or split
        replacement: for sub, the replacement template
        flags: ignorecase, multiline (^ and $ at line ends), dotall (. matches newlines),
            verbose (whitespace and # comments in the pattern)
        count: for sub and split, the most replacements or splits (0: all)
        max_matches: for findall, return at most this many matches
        timeout: seconds the matching may take before it is stopped
    """
    compiled = _compile(pattern, flags or [])
    try:
        if operation in ("search", "match", "fullmatch"):
            found = getattr(compiled, operation)(text, timeout=timeout)
            return {"matched": found is not None,
                    "match": _match(found) if found is not None else None}
        if operation == "findall":
            return _findall(compiled, text, max_matches, timeout)
        if operation == "sub":
            result, n = compiled.subn(replacement, text, count=count, timeout=timeout)
            return {"result": _fit(ctx, "regex", result), "replacements": n}
        parts = compiled.split(text, maxsplit=count, timeout=timeout)
        return {"parts": parts, "count": len(parts)}
    except TimeoutError:
        raise ToolError("regex", f"matching took longer than {timeout:g}s and was stopped: "
                                 "the pattern backtracks catastrophically on this text (nested "
                                 "quantifiers like (a|aa)+ are the usual cause)") from None
    except (_regex.error, IndexError) as exc:  # a bad group reference in the replacement
        raise ToolError("regex", f"invalid replacement {replacement!r}: {exc}") from None


def _compile(pattern: str, flags: Sequence[str]) -> Any:
    value = 0
    for flag in flags:
        value |= _FLAGS[flag]
    try:
        return _regex.compile(pattern, value)
    except _regex.error as exc:
        raise ToolError("regex", f"invalid pattern {pattern!r}: {exc}") from None


def _match(m: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"text": m.group(0), "start": m.start(), "end": m.end()}
    if m.re.groups:
        out["groups"] = list(m.groups())
    if m.re.groupindex:
        out["named"] = m.groupdict()
    return out


def _findall(compiled: Any, text: str, max_matches: int, timeout: float) -> dict[str, Any]:
    matches: list[dict[str, Any]] = []
    truncated = False
    for m in compiled.finditer(text, timeout=timeout):
        if len(matches) == max_matches:
            truncated = True
            break
        matches.append(_match(m))
    return {"count": len(matches), "matches": matches, "truncated": truncated}


# -- template_render ---------------------------------------------------------------------------


class _NoIncludes(BaseLoader):
    """Templates are self-contained: include, import and extends name no other template."""

    def get_source(self, environment: Environment, template: str
                   ) -> tuple[str, str | None, Callable[[], bool] | None]:
        raise TemplateNotFound(template, f"{template!r}: including, importing or extending "
                                         "other templates is not allowed")


class _TemplateEnv(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, stricter: touching an unsafe attribute is an error (the
    stock sandbox renders it as an empty string, which hides the attempt), and `*` and `**`
    refuse results that would not fit the output."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *, strict: bool, max_size: int) -> None:
        super().__init__(autoescape=False, keep_trailing_newline=True, loader=_NoIncludes(),
                         undefined=StrictUndefined if strict else Undefined)
        self.max_size = max_size

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of a "
                            f"{type(obj).__name__!r} object is not allowed")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _too_big_power(left, right):
            raise SecurityError(f"{left!r} ** {right!r} is too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) \
                        and len(seq) * n > self.max_size:
                    raise SecurityError(f"repeating a sequence {n} times exceeds the output "
                                        "limit")
        return super().call_binop(context, operator, left, right)


def _too_big_power(base: Any, exponent: Any) -> bool:
    if not isinstance(base, int) or not isinstance(exponent, int):
        return False
    return abs(base) > 1 and exponent * max(abs(base), 2).bit_length() > 100_000


@builtin_tool(category="text")
def template_render(ctx: ToolContext, template: str, variables: dict[str, Any] | None = None,
                    strict: bool = False,
                    time_limit: Annotated[float, Field(gt=0, le=30)] = 5.0) -> str:
    """Render a Jinja2 template with variables, in a sandbox: `{{ name }}`, `{% for x in items
    %}...{% endfor %}`, `{% if %}`, filters like `| upper`, `| join(", ")`, `| default("-")`.
    No access to Python internals, files or other templates; output and time are capped.

    Args:
        template: the Jinja2 template text
        variables: the values the template can use
        strict: fail on an undefined variable (otherwise it renders as empty)
        time_limit: seconds the rendering may take
    """
    limit = ctx.sandbox.max_output_bytes
    env = _TemplateEnv(strict=strict, max_size=limit)
    try:
        compiled = env.from_string(template)
    except TemplateSyntaxError as exc:
        raise ToolError("template_render", f"template syntax error on line {exc.lineno}: "
                                           f"{exc.message}") from None
    chunks = compiled.generate(**(variables or {}))
    try:
        return run_with_deadline("template_render", time_limit,
                                 lambda: _collect(chunks, limit), "rendering")
    except SecurityError as exc:
        raise ToolError("template_render", f"refused by the template sandbox: {exc}") from None
    except UndefinedError as exc:
        raise ToolError("template_render", f"undefined value: {exc.message}") from None
    except TemplateError as exc:
        raise ToolError("template_render", f"template error: {exc}") from None
    except (ArithmeticError, TypeError, ValueError, LookupError) as exc:
        raise ToolError("template_render", f"rendering failed: {type(exc).__name__}: "
                                           f"{exc}") from None


def _collect(chunks: Iterator[str], limit: int) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ToolError("template_render", f"the output exceeds the limit of {limit} "
                                               "characters")
        out.append(chunk)
    return "".join(out)


# -- text_diff ---------------------------------------------------------------------------------

_CHAR_RATIO_LIMIT = 20_000  # above this, the similarity is computed on lines (quadratic cost)


@builtin_tool(category="text")
def text_diff(ctx: ToolContext, a: str | None = None, b: str | None = None,
              a_path: str | None = None, b_path: str | None = None,
              context_lines: Annotated[int, Field(ge=0, le=100)] = 3,
              ignore_whitespace: bool = False) -> dict[str, Any]:
    """Compare two texts (inline or files in the sandbox): a unified diff, the counts of added
    and removed lines, and a similarity ratio from 0 (nothing shared) to 1 (identical).

    Args:
        a: the original text (give this or a_path)
        b: the changed text (give this or b_path)
        a_path: a file in the sandbox holding the original
        b_path: a file in the sandbox holding the changed text
        context_lines: unchanged lines shown around each change
        ignore_whitespace: compare lines with runs of whitespace collapsed and ends trimmed
    """
    old = source_text(ctx, "text_diff", a, a_path)
    new = source_text(ctx, "text_diff", b, b_path)
    return run_with_deadline("text_diff", 20.0, lambda: _diff(
        ctx, old, new, a_path or "a", b_path or "b", context_lines, ignore_whitespace),
        "the diff")


def _diff(ctx: ToolContext, old: str, new: str, old_name: str, new_name: str, context: int,
          ignore_whitespace: bool) -> dict[str, Any]:
    norm: Callable[[str], str] = (lambda s: " ".join(s.split())) if ignore_whitespace \
        else (lambda s: s)
    old_lines = [norm(line) for line in old.splitlines()]
    new_lines = [norm(line) for line in new.splitlines()]
    diff = list(difflib.unified_diff(old_lines, new_lines, old_name, new_name, n=context,
                                     lineterm=""))
    added = sum(1 for d in diff if d.startswith("+") and not d.startswith("+++"))
    removed = sum(1 for d in diff if d.startswith("-") and not d.startswith("---"))
    if max(len(old), len(new)) <= _CHAR_RATIO_LIMIT:
        basis, ratio = "characters", _ratio(norm(old), norm(new))
    else:
        basis, ratio = "lines", difflib.SequenceMatcher(None, old_lines, new_lines).ratio()
    text, cut = cap_text("\n".join(diff), ctx.sandbox.max_output_bytes // 2)
    return {"identical": not diff, "similarity": round(ratio, 4), "similarity_basis": basis,
            "added_lines": added, "removed_lines": removed, "diff": text, "truncated": cut}


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


# -- text_stats --------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")  # don't, it's, well-known
# A run of punctuation matches once, from its start (not again from each of its characters).
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]++(?=\s|$)|\n\s*\n")


def _syllables(word: str) -> int:
    """English syllables, by the usual vowel-group heuristic (good to about one in ten)."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 1  # a number or a non-Latin word: count it as one
    if len(w) <= 3:
        return 1
    w = re.sub(r"(?:[^laeiouy]es|[^laeiouy]ed|[^laeiouy]e)$", "", w)
    w = re.sub(r"^y", "", w)
    return max(1, len(re.findall(r"[aeiouy]{1,2}", w)))


@builtin_tool(category="text")
def text_stats(ctx: ToolContext, text: str | None = None, path: str | None = None,
               top_words: Annotated[int, Field(ge=0, le=100)] = 10) -> dict[str, Any]:
    """Statistics of a text (inline or a file in the sandbox): characters, words, unique
    words, sentences, lines, paragraphs, average word and sentence lengths, reading time, the
    most frequent words, and readability: Flesch reading ease (0-100, higher is easier; 60-70
    is plain English) and the Flesch-Kincaid grade level (English heuristics).

    Args:
        text: the text (give this or path)
        path: a text file in the sandbox (give this or text)
        top_words: how many of the most frequent words (of 4+ letters) to list
    """
    body = source_text(ctx, "text_stats", text, path)
    words = _TOKEN.findall(body)
    sentences = max(1, len([s for s in _SENTENCE_END.split(body) if _TOKEN.search(s)])) \
        if words else 0
    out: dict[str, Any] = {
        "characters": len(body),
        "characters_no_whitespace": sum(1 for c in body if not c.isspace()),
        "words": len(words),
        "unique_words": len({w.lower() for w in words}),
        "sentences": sentences,
        "lines": len(body.splitlines()),
        "paragraphs": len([p for p in re.split(r"\n\s*\n", body) if p.strip()]),
        "reading_time_seconds": round(len(words) / 200 * 60),  # 200 words a minute
    }
    if words:
        out.update(_readability(words, sentences))
        frequent = Counter(w.lower() for w in words if len(w) >= 4).most_common(top_words)
        out["top_words"] = [[w, n] for w, n in frequent]
    return out


def _readability(words: list[str], sentences: int) -> dict[str, float]:
    syllables = sum(_syllables(w) for w in words)
    per_sentence = len(words) / sentences
    per_word = syllables / len(words)
    return {
        "average_word_length": round(sum(len(w) for w in words) / len(words), 2),
        "average_sentence_words": round(per_sentence, 2),
        "syllables": syllables,
        "flesch_reading_ease": round(206.835 - 1.015 * per_sentence - 84.6 * per_word, 2),
        "flesch_kincaid_grade": round(0.39 * per_sentence + 11.8 * per_word - 15.59, 2),
    }


# -- chunk_text --------------------------------------------------------------------------------

Span = tuple[int, int]


@builtin_tool(category="text")
def chunk_text(ctx: ToolContext, text: str | None = None, path: str | None = None,
               size: Annotated[int, Field(ge=1, le=200_000)] = 500,
               overlap: Annotated[int, Field(ge=0)] = 50,
               unit: Literal["tokens", "characters"] = "tokens", model: str = "gpt-4o",
               start_chunk: Annotated[int, Field(ge=0)] = 0,
               max_chunks: Annotated[int, Field(ge=1, le=10_000)] = 100) -> dict[str, Any]:
    """Split a text (inline or a file in the sandbox) into overlapping chunks for embedding or
    summarising, by tokens (the model's tokenizer when available offline, otherwise an estimate
    of four characters a token; `exact` says which) or by characters (breaking at whitespace
    where possible). Each chunk has its character offsets in the text. Long results come in
    pages: pass `next_chunk` back as `start_chunk` for the rest.

    Args:
        text: the text (give this or path)
        path: a text file in the sandbox (give this or text)
        size: the chunk size in `unit`s
        overlap: how many units each chunk repeats from the end of the previous one (less
            than size)
        unit: tokens or characters
        model: the model whose tokenizer counts tokens, e.g. gpt-4o
        start_chunk: the first chunk to return (to page through a long text)
        max_chunks: return at most this many chunks
    """
    if overlap >= size:
        raise ToolError("chunk_text", f"overlap ({overlap}) must be less than size ({size})")
    body = source_text(ctx, "chunk_text", text, path)
    encoding = encoding_for(model) if unit == "tokens" else None
    exact = encoding is not None and is_exact(model)
    if exact:
        assert encoding is not None
        spans = _token_spans(body, encoding, size, overlap)
    elif unit == "tokens":  # no tokenizer on this machine: about four characters a token
        spans = _char_spans(body, size * 4, overlap * 4)
    else:
        spans = _char_spans(body, size, overlap)
    return _chunk_page(ctx, body, spans, unit, exact, model, start_chunk, max_chunks)


def _token_spans(text: str, encoding: str, size: int, overlap: int) -> list[Span]:
    """Windows of `size` tokens, as character offsets (a window edge inside a multi-byte
    character moves to the character's end, so no character is ever split)."""
    import tiktoken

    enc = tiktoken.get_encoding(encoding)  # is_exact() checked the file is local
    ids = enc.encode(text, disallowed_special=())
    ends: list[int] = []
    total = 0
    for token in ids:
        total += len(enc.decode_single_token_bytes(token))
        ends.append(total)
    starts = [0, *ends[:-1]]
    data = text.encode("utf-8")
    start_char, end_char = _ByteToChar(data), _ByteToChar(data)
    spans: list[Span] = []
    step = size - overlap
    for i in range(0, len(ids), step):
        j = min(i + size, len(ids))
        spans.append((start_char(starts[i]), end_char(ends[j - 1])))
        if j == len(ids):
            break
    return spans


class _ByteToChar:
    """Byte offsets to character offsets for a UTF-8 text. Offsets asked in increasing order
    cost only the bytes between them (one instance per sequence of window edges)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.byte = 0
        self.char = 0

    def __call__(self, offset: int) -> int:
        while offset < len(self.data) and self.data[offset] & 0xC0 == 0x80:
            offset += 1  # a continuation byte: move to the next character's first byte
        if offset < self.byte:
            self.byte = self.char = 0
        self.char += len(self.data[self.byte:offset].decode("utf-8"))
        self.byte = offset
        return self.char


def _char_spans(text: str, size: int, overlap: int) -> list[Span]:
    spans: list[Span] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = _whitespace_before(text, start + size - size // 5, end)
            end = cut if cut > start + overlap else end
        spans.append((start, end))
        if end == len(text):
            break
        start = max(end - overlap, start + 1)
    return spans


def _whitespace_before(text: str, low: int, end: int) -> int:
    """The last whitespace position in text[low:end] (a clean break), or -1."""
    for i in range(end, max(low, 0), -1):
        if text[i - 1].isspace():
            return i
    return -1


def _chunk_page(ctx: ToolContext, text: str, spans: list[Span], unit: str, exact: bool,
                model: str, first: int, max_chunks: int) -> dict[str, Any]:
    budget = ctx.sandbox.max_output_bytes - 1000
    chunks: list[dict[str, Any]] = []
    index = first
    for start, end in spans[first:first + max_chunks]:
        piece = text[start:end]
        budget -= len(piece.encode("utf-8")) + 100
        if budget < 0 and chunks:
            break  # the rest comes in the next page
        chunks.append({"index": index, "start": start, "end": end, "text": piece,
                       "tokens": _count(piece, unit, exact, model)})
        index += 1
    out: dict[str, Any] = {"unit": unit, "exact": exact if unit == "tokens" else True,
                           "chunk_count": len(spans), "chunks": chunks}
    if index < len(spans):
        out["next_chunk"] = index
    return out


def _count(piece: str, unit: str, exact: bool, model: str) -> int:
    if unit == "tokens" and exact:
        return count_text(piece, model)
    return estimate(piece) if unit == "tokens" else len(piece)


TOOLS: list[Tool] = [text_transform, regex_tool, template_render, text_diff, text_stats,
                     chunk_text]
