"""Utility tools: uuid, hash, encode, random, json_schema_from_example; and the hard deadline
the other categories share."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from pathlib import Path

import jsonschema
import pytest

from llmspell.tools import Sandbox, SandboxViolation, ToolArgumentError, ToolContext, ToolError
from llmspell.tools.builtin import builtin_tools
from llmspell.tools.builtin.utility import (
    encode_text,
    hash_digest,
    json_schema_from_example,
    random_values,
    run_with_deadline,
    uuid_generate,
)
from tests.tools.helpers_data import ESCAPE, call, context

MINE = {"json_query", "json_validate", "csv_analyze", "data_convert", "xml_query",
        "sqlite_query", "text_transform", "regex", "template_render", "text_diff", "text_stats",
        "chunk_text", "calculator", "unit_convert", "datetime", "cron_next", "uuid", "hash",
        "encode", "random", "json_schema_from_example", "archive", "image_info", "pdf_text"}


def test_every_tool_is_registered_with_a_described_schema() -> None:
    by_name = {t.name: t for t in builtin_tools()}
    assert set(by_name) >= MINE
    for name in MINE:
        spec = by_name[name].describe()
        assert spec["description"] and spec["category"] != "general", name
        for prop, schema in spec["parameters"]["properties"].items():
            assert schema.get("description"), f"{name}.{prop} has no description"


async def test_uuid_v4_and_v7(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    v4 = await call(uuid_generate, ctx, count=3)
    assert len(set(v4)) == 3 and all(uuid.UUID(u).version == 4 for u in v4)
    v7 = await call(uuid_generate, ctx, version=7, count=50)
    assert all(uuid.UUID(u).version == 7 for u in v7)
    assert v7 == sorted(v7)  # time-ordered


async def test_uuid_refuses_an_unknown_version(tmp_path: Path) -> None:
    with pytest.raises(ToolArgumentError, match=r"version"):
        await call(uuid_generate, context(tmp_path), version=5)


async def test_hash_of_text_and_of_a_file(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    (tmp_path / "f.bin").write_bytes(b"\x00\x01" * 1_000_000)
    text = await call(hash_digest, ctx, text="héllo", algorithm="sha256")
    assert text["digest"] == hashlib.sha256("héllo".encode()).hexdigest()
    for algorithm in ("md5", "sha1", "sha512", "blake2b"):
        out = await call(hash_digest, ctx, path="f.bin", algorithm=algorithm)
        assert out["digest"] == hashlib.new(algorithm, b"\x00\x01" * 1_000_000).hexdigest()
        assert out["bytes"] == 2_000_000
    b64 = await call(hash_digest, ctx, text="x", output="base64")
    assert b64["digest"].endswith("=")


async def test_hash_bad_inputs_name_what_is_wrong(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"exactly one of 'text' or 'path'"):
        await call(hash_digest, ctx)
    with pytest.raises(ToolError, match=r"no such file"):
        await call(hash_digest, ctx, path="missing.txt")
    with pytest.raises(SandboxViolation, match=ESCAPE):
        await call(hash_digest, ctx, path="../../etc/passwd")
    with pytest.raises(ToolArgumentError, match=r"algorithm"):
        await call(hash_digest, ctx, text="x", algorithm="crc32")


async def test_a_sandbox_refusal_is_also_an_event(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    ctx = ToolContext(sandbox=Sandbox(root=str(tmp_path)),
                      emit=lambda topic, payload: events.append((topic, payload)))
    with pytest.raises(SandboxViolation):
        await call(hash_digest, ctx, path="../outside.txt")
    assert [(t, p["tool"], p["rule"]) for t, p in events] == [
        ("sandbox.refused", "hash", "path-escape")]


@pytest.mark.parametrize("scheme", ["base64", "base64url", "hex", "url"])
async def test_encode_round_trips(tmp_path: Path, scheme: str) -> None:
    ctx = context(tmp_path)
    original = "héllo wörld/?&=+ ~ 😀"
    encoded = await call(encode_text, ctx, text=original, scheme=scheme)
    assert encoded != original
    assert await call(encode_text, ctx, text=encoded, scheme=scheme,
                      direction="decode") == original


async def test_encode_known_values_and_unpadded_base64url(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    assert await call(encode_text, ctx, text="a b&c", scheme="url") == "a%20b%26c"
    assert await call(encode_text, ctx, text="hi", scheme="hex") == "6869"
    assert await call(encode_text, ctx, text="eyJhIjoxfQ", scheme="base64url",
                      direction="decode") == '{"a":1}'


async def test_decode_errors_say_what_is_wrong(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"not valid base64"):
        await call(encode_text, ctx, text="@@@", scheme="base64", direction="decode")
    with pytest.raises(ToolError, match=r"not valid hex"):
        await call(encode_text, ctx, text="zz", scheme="hex", direction="decode")
    with pytest.raises(ToolError, match=r"not UTF-8 text"):
        await call(encode_text, ctx, text="/w==", scheme="base64", direction="decode")


async def test_random_is_reproducible_with_its_seed(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    first = await call(random_values, ctx, operation="integer", minimum=1, maximum=6, count=20)
    assert all(1 <= n <= 6 for n in first["result"])
    again = await call(random_values, ctx, operation="integer", minimum=1, maximum=6, count=20,
                       seed=first["seed"])
    assert again["result"] == first["result"]
    items = list(range(10))
    shuffled = await call(random_values, ctx, operation="shuffle", items=items, seed=7)
    assert sorted(shuffled["result"]) == items
    sample = await call(random_values, ctx, operation="sample", items=items, count=4, seed=7)
    assert len(set(sample["result"])) == 4
    floats = await call(random_values, ctx, operation="float", minimum=0.5, maximum=0.6)
    assert 0.5 <= floats["result"][0] <= 0.6
    choice = await call(random_values, ctx, operation="choice", items=["a", "b"], count=5)
    assert set(choice["result"]) <= {"a", "b"}


async def test_random_bad_inputs(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"minimum .* is greater than maximum"):
        await call(random_values, ctx, operation="integer", minimum=5, maximum=1)
    with pytest.raises(ToolError, match=r"non-empty 'items'"):
        await call(random_values, ctx, operation="choice")
    with pytest.raises(ToolError, match=r"cannot sample 5 distinct items from 2"):
        await call(random_values, ctx, operation="sample", items=[1, 2], count=5)
    with pytest.raises(ToolArgumentError, match=r"count"):
        await call(random_values, ctx, operation="integer", count=10**6)


async def test_schema_from_example_validates_the_example(tmp_path: Path) -> None:
    example = {"id": "4b6f1c1e-8a5c-4f0e-9a51-3c1f6f2b7d10", "name": "Ada", "age": 36,
               "score": 9.5, "email": "ada@example.org", "site": "https://example.org",
               "born": "1815-12-10", "seen": "2024-05-01T10:00:00Z", "tags": ["x", "y"],
               "pets": [{"kind": "cat", "age": 2}, {"kind": "dog", "age": 3.5, "big": True}],
               "mixed": [1, "a", None], "nothing": None}
    schema = await call(json_schema_from_example, context(tmp_path), example=example)
    jsonschema.validate(example, schema)
    props = schema["properties"]
    assert props["id"]["format"] == "uuid" and props["email"]["format"] == "email"
    assert props["site"]["format"] == "uri" and props["born"]["format"] == "date"
    assert props["seen"]["format"] == "date-time" and props["age"]["type"] == "integer"
    pets = props["pets"]["items"]
    assert pets["properties"]["age"] == {"type": "number"}
    assert pets["required"] == ["kind", "age"] and "big" in pets["properties"]
    assert len(props["mixed"]["items"]["anyOf"]) == 3
    assert set(schema["required"]) == set(example)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "age": "old"}, schema)


async def test_schema_from_example_refuses_absurd_nesting(tmp_path: Path) -> None:
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ToolError, match=r"nests deeper than 64"):
        await call(json_schema_from_example, context(tmp_path), example=deep)


def test_run_with_deadline_stops_pure_python_work_in_its_thread() -> None:
    def spin() -> None:
        while True:
            pass

    start = time.monotonic()
    with pytest.raises(ToolError, match=r"took longer than 0.2s and was stopped"):
        run_with_deadline("t", 0.2, spin, "spinning")
    assert time.monotonic() - start < 2
    assert run_with_deadline("t", 5, lambda: 42, "answering") == 42
    time.sleep(0.05)  # a cancelled watchdog fires nothing afterwards
    assert threading.active_count() >= 1
