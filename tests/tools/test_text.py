"""Text tools: text_transform, regex (a catastrophic pattern is stopped), template_render (the
sandbox refuses escapes), text_diff, text_stats, chunk_text."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from llmspell.llm.tokens import count_text, is_exact
from llmspell.tools import ToolArgumentError, ToolError
from llmspell.tools.builtin.text import (
    chunk_text,
    regex_tool,
    template_render,
    text_diff,
    text_stats,
    text_transform,
)
from tests.tools.helpers_data import call, context

# -- text_transform ------------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "expected"), [
    ("snake_case", "get_http_response_2"), ("kebab_case", "get-http-response-2"),
    ("camel_case", "getHttpResponse2"), ("pascal_case", "GetHttpResponse2"),
    ("upper", "GETHTTPRESPONSE2"), ("reverse", "2esnopseRPTTHteg"),
])
async def test_text_transform_cases(tmp_path: Path, operation: str, expected: str) -> None:
    assert await call(text_transform, context(tmp_path), operation=operation,
                      text="getHTTPResponse2") == expected


async def test_text_transform_split_join_replace_trim_truncate(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    assert await call(text_transform, ctx, operation="split", text="a, b, c",
                      separator=", ") == ["a", "b", "c"]
    assert await call(text_transform, ctx, operation="split", text=" a  b\tc ") == ["a", "b", "c"]
    assert await call(text_transform, ctx, operation="join", items=["x", "y"],
                      separator="/") == "x/y"
    assert await call(text_transform, ctx, operation="replace", text="aXbXc", old="X", new="-",
                      count=1) == "a-bXc"
    assert await call(text_transform, ctx, operation="trim", text="--x--", chars="-") == "x"
    assert await call(text_transform, ctx, operation="normalize_whitespace",
                      text=" a \n\n b ") == "a b"
    assert await call(text_transform, ctx, operation="slugify",
                      text="Héllo, World! 2024") == "héllo-world-2024"
    assert await call(text_transform, ctx, operation="truncate", text="abcdefghij",
                      length=6) == "abc..."
    assert await call(text_transform, ctx, operation="split_lines",
                      text="a\r\nb\nc") == ["a", "b", "c"]


async def test_text_transform_bad_inputs(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"join needs 'items'"):
        await call(text_transform, ctx, operation="join")
    with pytest.raises(ToolError, match=r"replace needs a non-empty 'old'"):
        await call(text_transform, ctx, operation="replace", text="abc")
    with pytest.raises(ToolArgumentError, match=r"operation"):
        await call(text_transform, ctx, operation="rot13", text="abc")
    with pytest.raises(ToolError, match=r"over the output limit of 1000"):
        await call(text_transform, context(tmp_path, max_output_bytes=1000),
                   operation="replace", text="a" * 500, old="a", new="bbb")


# -- regex ---------------------------------------------------------------------------------------


async def test_regex_operations(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    text = "Ada: 1815-12-10, Alan: 1912-06-23"
    found = await call(regex_tool, ctx, pattern=r"(?P<name>\w+): (\d{4})", text=text)
    assert found["count"] == 2
    assert found["matches"][1] == {"text": "Alan: 1912", "start": 17, "end": 27,
                                   "groups": ["Alan", "1912"],
                                   "named": {"name": "Alan"}}
    sub = await call(regex_tool, ctx, pattern=r"(\d{4})-(\d{2})-(\d{2})", text=text,
                     operation="sub", replacement=r"\3/\2/\1")
    assert sub == {"result": "Ada: 10/12/1815, Alan: 23/06/1912", "replacements": 2}
    assert (await call(regex_tool, ctx, pattern="alan", text=text, operation="search",
                       flags=["ignorecase"]))["match"]["start"] == 17
    assert (await call(regex_tool, ctx, pattern="Alan", text=text, operation="match")
            )["matched"] is False
    assert (await call(regex_tool, ctx, pattern=r"[\w:, -]+", text=text,
                       operation="fullmatch"))["matched"] is True
    assert (await call(regex_tool, ctx, pattern=r",\s*", text=text, operation="split")
            )["parts"] == ["Ada: 1815-12-10", "Alan: 1912-06-23"]
    assert (await call(regex_tool, ctx, pattern=r"\p{Lu}", text="aBcÉ"))["count"] == 2
    capped = await call(regex_tool, ctx, pattern=r"\d", text="123456", max_matches=4)
    assert capped["count"] == 4 and capped["truncated"] is True


async def test_regex_nested_quantifier_is_fast_and_a_catastrophic_one_times_out(
        tmp_path: Path) -> None:
    ctx = context(tmp_path)
    evil_text = "a" * 40 + "!"
    start = time.monotonic()
    # The regex module's matcher does not backtrack exponentially on (a+)+$ ...
    assert (await call(regex_tool, ctx, pattern=r"(a+)+$", text=evil_text,
                       operation="search"))["matched"] is False
    # ... but on an alternation it would run for ages: the timeout stops it inside the match.
    with pytest.raises(ToolError, match=r"took longer than 0.5s and was stopped: the pattern "
                                        r"backtracks catastrophically"):
        await call(regex_tool, ctx, pattern=r"(a|aa)+$", text=evil_text, operation="search",
                   timeout=0.5)
    with pytest.raises(ToolError, match=r"took longer than 0.5s"):
        await call(regex_tool, ctx, pattern=r"(a|aa)+$", text=evil_text, timeout=0.5)
    assert time.monotonic() - start < 3


async def test_regex_bad_inputs(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"invalid pattern '\(ab': missing \)"):
        await call(regex_tool, ctx, pattern="(ab", text="x")
    with pytest.raises(ToolError, match=r"invalid replacement '\\\\5'"):
        await call(regex_tool, ctx, pattern="(a)", text="a", operation="sub",
                   replacement=r"\5")
    with pytest.raises(ToolArgumentError, match=r"timeout"):
        await call(regex_tool, ctx, pattern="a", text="a", timeout=3600)


# -- template_render -----------------------------------------------------------------------------


async def test_template_render(tmp_path: Path) -> None:
    out = await call(template_render, context(tmp_path),
                     template="Dear {{ name | title }},\n{% for i in items %}- {{ i.n }}: "
                              "{{ '%.2f' | format(i.p) }}\n{% endfor %}"
                              "Total: {{ items | sum(attribute='p') }}\n",
                     variables={"name": "ada lovelace",
                                "items": [{"n": "pen", "p": 1.5}, {"n": "ink", "p": 2}]})
    assert out == "Dear Ada Lovelace,\n- pen: 1.50\n- ink: 2.00\nTotal: 3.5\n"


@pytest.mark.parametrize("escape", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ x.append(1) }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
])
async def test_template_sandbox_refuses_escapes(tmp_path: Path, escape: str) -> None:
    with pytest.raises(ToolError, match=r"refused by the template sandbox"):
        await call(template_render, context(tmp_path), template=escape, variables={"x": []})


async def test_template_limits_size_and_time(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"refused by the template sandbox: repeating"):
        await call(template_render, ctx, template="{{ 'a' * 1000000000 }}")
    with pytest.raises(ToolError, match=r"too large"):
        await call(template_render, ctx, template="{{ 9 ** 999999999 }}")
    with pytest.raises(ToolError, match=r"output exceeds the limit"):
        await call(template_render, ctx,
                   template="{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}")
    start = time.monotonic()
    nested = ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
              "{% endfor %}")
    with pytest.raises(ToolError, match=r"rendering took longer than 0.3s and was stopped"):
        await call(template_render, ctx, template=nested, time_limit=0.3)
    assert time.monotonic() - start < 3


async def test_template_bad_inputs(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"template syntax error on line 2"):
        await call(template_render, ctx, template="ok\n{% for x in %}")
    with pytest.raises(ToolError, match=r"undefined value: 'who' is undefined"):
        await call(template_render, ctx, template="hi {{ who }}", strict=True)
    assert await call(template_render, ctx, template="hi {{ who }}!") == "hi !"
    for tag in ("{% include '/etc/passwd' %}", "{% extends 'base.html' %}",
                "{% import 'macros' as m %}"):
        with pytest.raises(ToolError, match=r"template error: .* other templates is not "
                                            r"allowed"):
            await call(template_render, ctx, template=tag)
    with pytest.raises(ToolError, match=r"rendering failed: ZeroDivisionError"):
        await call(template_render, ctx, template="{{ 1 / 0 }}")


# -- text_diff -----------------------------------------------------------------------------------


async def test_text_diff_inline_and_files(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    old = "one\ntwo\nthree\n"
    new = "one\n2\nthree\nfour\n"
    out = await call(text_diff, ctx, a=old, b=new)
    assert out["identical"] is False
    assert out["added_lines"] == 2 and out["removed_lines"] == 1
    assert "-two\n+2" in out["diff"] and out["diff"].startswith("--- a\n+++ b")
    assert 0.7 < out["similarity"] < 1
    (tmp_path / "x.txt").write_text(old)
    same = await call(text_diff, ctx, a_path="x.txt", b="one\ntwo  \nthree\n",
                      ignore_whitespace=True)
    assert same["identical"] is True and same["similarity"] == 1.0


async def test_text_diff_of_large_texts_compares_lines(tmp_path: Path) -> None:
    old = "\n".join(f"line {i}" for i in range(20000))
    new = old.replace("line 500\n", "changed\n")
    out = await call(text_diff, context(tmp_path), a=old, b=new)
    assert out["similarity_basis"] == "lines" and out["similarity"] > 0.99
    assert out["added_lines"] == 1


async def test_text_diff_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"exactly one of 'text'"):
        await call(text_diff, context(tmp_path), a="x")
    with pytest.raises(ToolError, match=r"'missing.txt': no such file"):
        await call(text_diff, context(tmp_path), a="x", b_path="missing.txt")


# -- text_stats ----------------------------------------------------------------------------------


async def test_text_stats_counts_and_readability(tmp_path: Path) -> None:
    text = ("The cat sat on the mat. The dog ran to the park!\n\n"
            "Comprehensive institutional considerations necessitate extraordinary "
            "documentation.")
    out = await call(text_stats, context(tmp_path), text=text)
    assert out["words"] == 18 and out["sentences"] == 3 and out["paragraphs"] == 2
    assert out["lines"] == 3 and out["characters"] == len(text)
    simple = await call(text_stats, context(tmp_path), text="The cat sat on the mat. It ran.")
    assert simple["flesch_reading_ease"] > 90 > out["flesch_reading_ease"]
    assert out["flesch_kincaid_grade"] > simple["flesch_kincaid_grade"]
    assert out["top_words"][0] == ["park", 1]  # 4+ letters; ties in order of appearance
    assert ["comprehensive", 1] in out["top_words"]


async def test_text_stats_bad_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"exactly one of 'text'"):
        await call(text_stats, context(tmp_path))
    empty = await call(text_stats, context(tmp_path), text="")
    assert empty["words"] == 0 and "flesch_reading_ease" not in empty


# -- chunk_text ----------------------------------------------------------------------------------

DOC = " ".join(f"Sentence number {i} says something über interesting." for i in range(300))


async def test_chunk_text_by_tokens_with_overlap(tmp_path: Path) -> None:
    out = await call(chunk_text, context(tmp_path), text=DOC, size=100, overlap=20)
    assert out["exact"] is is_exact("gpt-4o")
    chunks = out["chunks"]
    assert out["chunk_count"] == len(chunks) > 5
    for chunk in chunks:
        assert DOC[chunk["start"]:chunk["end"]] == chunk["text"]
        assert chunk["tokens"] <= 101 if out["exact"] else True
    for prev, nxt in itertools.pairwise(chunks):
        assert prev["start"] < nxt["start"] < prev["end"]  # they overlap
    assert chunks[0]["start"] == 0 and chunks[-1]["end"] == len(DOC)
    if out["exact"]:
        overlap = DOC[chunks[1]["start"]:chunks[0]["end"]]
        assert 18 <= count_text(overlap, "gpt-4o") <= 22


async def test_chunk_text_by_characters_breaks_at_whitespace_and_pages(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    (tmp_path / "doc.txt").write_text(DOC)
    out = await call(chunk_text, ctx, path="doc.txt", unit="characters", size=200,
                     overlap=0, max_chunks=10)
    chunks = out["chunks"]
    assert len(chunks) == 10 and out["next_chunk"] == 10
    assert all(len(c["text"]) <= 200 and c["text"].endswith(" ") for c in chunks)
    assert "".join(c["text"] for c in chunks) == DOC[:chunks[-1]["end"]]
    rest = await call(chunk_text, ctx, path="doc.txt", unit="characters", size=200,
                      overlap=0, start_chunk=out["next_chunk"], max_chunks=10_000)
    assert rest["chunks"][0]["start"] == chunks[-1]["end"] and "next_chunk" not in rest
    assert rest["chunks"][-1]["end"] == len(DOC)


async def test_chunk_text_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"overlap \(100\) must be less than size \(100\)"):
        await call(chunk_text, context(tmp_path), text="abc", size=100, overlap=100)
    with pytest.raises(ToolArgumentError, match=r"size"):
        await call(chunk_text, context(tmp_path), text="abc", size=0)
