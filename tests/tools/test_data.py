"""Data tools on real files: json_query, json_validate, csv_analyze, data_convert, xml_query,
sqlite_query (a real database made here)."""

from __future__ import annotations

import json
import sqlite3
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from llmspell.tools import SandboxViolation, ToolArgumentError, ToolError
from llmspell.tools.builtin.data import (
    csv_analyze,
    data_convert,
    json_query,
    json_validate,
    sqlite_query,
    xml_query,
)
from tests.tools.helpers_data import ESCAPE, call, context

PEOPLE = {"people": [{"name": "Ada", "age": 36, "city": "London"},
                     {"name": "Alan", "age": 41, "city": "Wilmslow"},
                     {"name": "Grace", "age": 85, "city": "New York"}]}

CSV = """name,age,score,joined,active
Ada,36,9.5,2024-01-05,yes
Alan,41,7.25,2023-11-30,no
Grace,85,,2022-02-01,yes
Linus,,8,2021-06-15,NA
"""

XML_BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<foo>&xxe;</foo>"""

BOOKS = """<?xml version="1.0" encoding="UTF-8"?>
<library>
  <book id="b1" lang="en"><title>Dune</title><price>9.99</price></book>
  <book id="b2" lang="fr"><title>L'Étranger</title><price>35.50</price></book>
  <book id="b3" lang="en"><title>Emma</title><price>42</price></book>
</library>"""


# -- json_query ----------------------------------------------------------------------------------


async def test_json_query_inline_and_from_a_file(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    names = await call(json_query, ctx, data=PEOPLE, query="people[?age > `40`].name")
    assert names == ["Alan", "Grace"]
    (tmp_path / "people.json").write_text(json.dumps(PEOPLE))
    oldest = await call(json_query, ctx, path="people.json",
                        query="max_by(people, &age).{who: name, where: city}")
    assert oldest == {"who": "Grace", "where": "New York"}
    assert await call(json_query, ctx, data=PEOPLE, query="length(people)") == 3
    assert await call(json_query, ctx, data=PEOPLE, query="nobody") is None


async def test_json_query_bad_inputs(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"invalid JMESPath expression 'people\['"):
        await call(json_query, ctx, data=PEOPLE, query="people[")
    with pytest.raises(ToolError, match=r"the query failed: .*abs"):
        await call(json_query, ctx, data={"a": "x"}, query="abs(a)")
    (tmp_path / "bad.json").write_text('{"a": 1,}')
    with pytest.raises(ToolError, match=r"not valid JSON: .* line 1 column 9"):
        await call(json_query, ctx, path="bad.json", query="a")
    with pytest.raises(ToolError, match=r"give 'data'"):
        await call(json_query, ctx, query="a")


async def test_json_query_result_over_the_output_cap_is_refused(tmp_path: Path) -> None:
    ctx = context(tmp_path, max_output_bytes=1000)
    with pytest.raises(ToolError, match=r"over the output limit of 1000; narrow the query"):
        await call(json_query, ctx, data={"x": ["y" * 100] * 50}, query="x")


# -- json_validate -------------------------------------------------------------------------------

SCHEMA = {"type": "object", "required": ["people"], "properties": {"people": {
    "type": "array", "items": {"type": "object", "required": ["name", "age"], "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"}}}}}}


async def test_json_validate_valid_and_every_error_with_its_path(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    assert (await call(json_validate, ctx, json_schema=SCHEMA, data=PEOPLE))["valid"] is True
    bad = {"people": [{"name": "Ada", "age": -1}, {"age": "x", "email": "nope"}]}
    out = await call(json_validate, ctx, json_schema=SCHEMA, data=bad)
    assert out["valid"] is False and out["error_count"] == 4
    where = {(e["path"], e["keyword"]) for e in out["errors"]}
    assert where == {("$.people[0].age", "minimum"), ("$.people[1]", "required"),
                     ("$.people[1].age", "type"), ("$.people[1].email", "format")}


async def test_json_validate_refuses_an_invalid_schema(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"the schema itself is invalid at \$.type"):
        await call(json_validate, context(tmp_path), json_schema={"type": "strnig"}, data=1)
    with pytest.raises(ToolArgumentError, match="json_schema"):
        await call(json_validate, context(tmp_path), data=1)
    with pytest.raises(ToolError, match=r"cannot resolve a \$ref .*example.com/s.json"):
        await call(json_validate, context(tmp_path),
                   json_schema={"$ref": "https://example.com/s.json"}, data=1)


# -- csv_analyze ---------------------------------------------------------------------------------


async def test_csv_analyze_types_statistics_filter_and_sort(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text(CSV)
    out = await call(csv_analyze, context(tmp_path), path="people.csv",
                     filters=[{"column": "active", "op": "eq", "value": True}],
                     sort_by="age", descending=True, columns=["name", "age"])
    cols = {c["name"]: c for c in out["columns"]}
    assert {n: c["type"] for n, c in cols.items()} == {
        "name": "string", "age": "integer", "score": "number", "joined": "datetime",
        "active": "boolean"}
    assert out["row_count"] == 4 and out["matched_rows"] == 2
    assert out["rows"] == [{"name": "Grace", "age": 85}, {"name": "Ada", "age": 36}]
    assert cols["age"]["mean"] == 60.5 and cols["age"]["max"] == 85
    assert cols["score"]["missing"] == 1


async def test_csv_analyze_statistics_of_every_row(tmp_path: Path) -> None:
    out = await call(csv_analyze, context(tmp_path), text=CSV, sort_by="age")
    cols = {c["name"]: c for c in out["columns"]}
    assert cols["age"]["count"] == 3 and cols["age"]["missing"] == 1
    assert cols["age"]["median"] == 41 and cols["age"]["min"] == 36
    assert cols["score"]["sum"] == 24.75
    assert cols["joined"]["min"] == "2021-06-15T00:00:00"
    assert cols["active"]["true"] == 2 and cols["active"]["false"] == 1
    assert cols["name"]["top"][0] == ["Ada", 1]
    assert [r["name"] for r in out["rows"]] == ["Ada", "Alan", "Grace", "Linus"]  # missing last
    assert out["rows"][0]["joined"] == "2024-01-05T00:00:00"


async def test_csv_analyze_semicolons_no_header_and_row_cap(tmp_path: Path) -> None:
    text = "\n".join(f"{i};{i * 2}" for i in range(50))
    out = await call(csv_analyze, context(tmp_path), text=text, header=False, max_rows=10,
                     filters=[{"column": "column_2", "op": "ge", "value": "10"}])
    assert out["delimiter"] == ";" and out["truncated_input"] is True
    assert out["row_count"] == 10 and out["matched_rows"] == 5


async def test_csv_analyze_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"no column 'agee'; the columns are name, age"):
        await call(csv_analyze, ctx, text=CSV, sort_by="agee")
    with pytest.raises(ToolError, match=r"filter value 'old' is not a integer"):
        await call(csv_analyze, ctx, text=CSV,
                   filters=[{"column": "age", "op": "gt", "value": "old"}])
    with pytest.raises(ToolError, match=r"exactly one of 'text'"):
        await call(csv_analyze, ctx)
    with pytest.raises(ToolArgumentError, match=r"filters\[0\].op"):
        await call(csv_analyze, ctx, text=CSV, filters=[{"column": "age", "op": "like"}])


# -- data_convert --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "toml", "xml", "json"])
async def test_data_convert_round_trips_through_each_format(tmp_path: Path, fmt: str) -> None:
    ctx = context(tmp_path)
    doc = {"service": {"name": "api", "port": 8080, "debug": True,
                       "hosts": ["a.example", "b.example"]}}
    there = await call(data_convert, ctx, from_format="json", to_format=fmt,
                       text=json.dumps(doc))
    back = await call(data_convert, ctx, from_format=fmt, to_format="json", text=there["text"])
    value = json.loads(back["text"])
    if fmt == "xml":  # XML has only text: numbers and booleans come back as strings
        assert value == {"service": {"name": "api", "port": "8080", "debug": "true",
                                     "hosts": ["a.example", "b.example"]}}
    else:
        assert value == doc


async def test_data_convert_csv_both_ways_and_to_a_file(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    (tmp_path / "people.csv").write_text(CSV)
    out = await call(data_convert, ctx, from_format="csv", to_format="json", path="people.csv")
    rows = json.loads(out["text"])
    assert rows[0] == {"name": "Ada", "age": 36, "score": 9.5, "joined": "2024-01-05T00:00:00",
                       "active": True}
    assert rows[3]["age"] is None
    written = await call(data_convert, ctx, from_format="json", to_format="csv",
                         text=json.dumps(PEOPLE), output_path="out/people.csv")
    assert written["bytes"] > 0
    assert (tmp_path / "out/people.csv").read_text().splitlines()[:2] == [
        "name,age,city", "Ada,36,London"]
    yaml_text = (await call(data_convert, ctx, from_format="csv", to_format="yaml",
                            path="people.csv", infer_types=False))["text"]
    assert yaml.safe_load(yaml_text)[0]["age"] == "36"
    toml_text = (await call(data_convert, ctx, from_format="json", to_format="toml",
                            text=json.dumps([{"a": 1}]), root="rows"))["text"]
    assert tomllib.loads(toml_text) == {"rows": [{"a": 1}]}


async def test_data_convert_xml_attributes_and_repeats(tmp_path: Path) -> None:
    out = await call(data_convert, context(tmp_path), from_format="xml", to_format="json",
                     text=BOOKS)
    books = json.loads(out["text"])["library"]["book"]
    assert books[1] == {"@id": "b2", "@lang": "fr", "title": "L'Étranger", "price": "35.50"}


async def test_data_convert_refuses_an_xml_bomb_and_xxe(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    start = time.monotonic()
    with pytest.raises(ToolError, match=r"refused unsafe XML \(EntitiesForbidden"):
        await call(data_convert, ctx, from_format="xml", to_format="json", text=XML_BOMB)
    with pytest.raises(ToolError, match=r"XML bomb / XXE"):
        await call(data_convert, ctx, from_format="xml", to_format="json", text=XXE)
    assert time.monotonic() - start < 2


async def test_data_convert_refuses_a_yaml_alias_bomb(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    with pytest.raises(ToolError, match=r"expands to more than 1000000 values"):
        await call(data_convert, context(tmp_path), from_format="yaml", to_format="json",
                   text="\n".join(lines))


async def test_data_convert_bad_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"not valid YAML"):
        await call(data_convert, ctx, from_format="yaml", to_format="json", text="a: [1,")
    with pytest.raises(ToolError, match=r"not valid TOML"):
        await call(data_convert, ctx, from_format="toml", to_format="json", text="a = ")
    with pytest.raises(ToolError, match=r"not well-formed XML"):
        await call(data_convert, ctx, from_format="xml", to_format="json", text="<a><b></a>")
    with pytest.raises(ToolError, match=r"TOML has no null: the value at \$.b\[1\] is null"):
        await call(data_convert, ctx, from_format="json", to_format="toml",
                   text='{"a": 1, "b": [1, null]}')
    with pytest.raises(ToolError, match=r"CSV needs a list of objects"):
        await call(data_convert, ctx, from_format="json", to_format="csv", text="42")
    with pytest.raises(ToolArgumentError, match=r"to_format"):
        await call(data_convert, ctx, from_format="json", to_format="ini", text="{}")


async def test_data_convert_refuses_absurd_nesting(tmp_path: Path) -> None:
    deep = "<a>" * 5000 + "</a>" * 5000
    with pytest.raises(ToolError, match="nests too deeply"):
        await call(data_convert, context(tmp_path), from_format="xml", to_format="json",
                   text=deep)


async def test_data_convert_writes_only_inside_a_writable_sandbox(tmp_path: Path) -> None:
    with pytest.raises(SandboxViolation, match=ESCAPE):
        await call(data_convert, context(tmp_path), from_format="json", to_format="yaml",
                   text="{}", output_path="../escape.yaml")
    with pytest.raises(SandboxViolation, match=r"read-only"):
        await call(data_convert, context(tmp_path, read_only=True), from_format="json",
                   to_format="yaml", text="{}", output_path="x.yaml")


# -- xml_query -----------------------------------------------------------------------------------


async def test_xml_query_elements_attributes_and_numbers(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    (tmp_path / "books.xml").write_text(BOOKS, encoding="utf-8")
    pricey = await call(xml_query, ctx, path="books.xml", xpath="//book[price > 30]")
    assert pricey["count"] == 2
    assert pricey["results"][0]["attributes"] == {"id": "b2", "lang": "fr"}
    assert pricey["results"][0]["tag"] == "book" and "L'Étranger" in pricey["results"][0]["text"]
    ids = await call(xml_query, ctx, text=BOOKS, xpath="//book[@lang='en']/@id")
    assert ids["results"] == ["b1", "b3"]
    assert (await call(xml_query, ctx, text=BOOKS, xpath="count(//book)"))["results"] == [3.0]
    capped = await call(xml_query, ctx, text=BOOKS, xpath="//title/text()", max_results=2)
    assert capped["results"] == ["Dune", "L'Étranger"] and capped["truncated"] is True


async def test_xml_query_namespaces_with_a_hint_when_missing(tmp_path: Path) -> None:
    atom = ('<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>One</title></entry>'
            '</feed>')
    ctx = context(tmp_path)
    missed = await call(xml_query, ctx, text=atom, xpath="//entry")
    assert missed["count"] == 0 and "default namespace" in missed["hint"]
    found = await call(xml_query, ctx, text=atom, xpath="//a:entry/a:title/text()",
                       namespaces={"a": "http://www.w3.org/2005/Atom"})
    assert found["results"] == ["One"]


async def test_xml_query_refuses_bombs_and_bad_xpath(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"refused unsafe XML"):
        await call(xml_query, ctx, text=XML_BOMB, xpath="//lolz")
    with pytest.raises(ToolError, match=r"refused unsafe XML"):
        await call(xml_query, ctx, text=XXE, xpath="//foo")
    with pytest.raises(ToolError, match=r"invalid XPath '//book\['"):
        await call(xml_query, ctx, text=BOOKS, xpath="//book[")
    with pytest.raises(ToolError, match=r"invalid XPath .*[Uu]ndefined namespace prefix"):
        await call(xml_query, ctx, text=BOOKS, xpath="//x:book")


# -- sqlite_query --------------------------------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    db = tmp_path / "shop.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, photo BLOB);
        INSERT INTO items (name, price, photo) VALUES ('pen', 1.5, x'89504e47'),
            ('book', 12.0, NULL), ('lamp', 30.0, NULL);
    """)
    conn.commit()
    conn.close()
    return db


async def test_sqlite_select_with_parameters_and_row_cap(tmp_path: Path, shop: Path) -> None:
    ctx = context(tmp_path)
    out = await call(sqlite_query, ctx, path="shop.db",
                     sql="SELECT name, price FROM items WHERE price > ? ORDER BY price",
                     params=[1])
    assert out["columns"] == ["name", "price"]
    assert out["rows"] == [["pen", 1.5], ["book", 12.0], ["lamp", 30.0]]
    named = await call(sqlite_query, ctx, path="shop.db",
                       sql="SELECT photo FROM items WHERE name = :n", params={"n": "pen"})
    assert named["rows"] == [[{"blob_hex": "89504e47", "bytes": 4}]]
    capped = await call(sqlite_query, ctx, path="shop.db", sql="SELECT id FROM items",
                        max_rows=2)
    assert capped["row_count"] == 2 and capped["truncated"] is True
    info = await call(sqlite_query, ctx, path="shop.db", sql="PRAGMA table_info(items)")
    assert [r[1] for r in info["rows"]] == ["id", "name", "price", "photo"]


async def test_sqlite_is_read_only_by_default(tmp_path: Path, shop: Path) -> None:
    ctx = context(tmp_path)
    for sql in ("DELETE FROM items", "INSERT INTO items (name) VALUES ('x')",
                "DROP TABLE items", "PRAGMA journal_mode=delete"):
        with pytest.raises(ToolError, match=r"refused: the database is opened read-only; set "
                                            r"allow_write"):
            await call(sqlite_query, ctx, path="shop.db", sql=sql)
    count = await call(sqlite_query, ctx, path="shop.db", sql="SELECT count(*) FROM items")
    assert count["rows"] == [[3]]


async def test_sqlite_never_attaches_or_vacuums_into_another_file(tmp_path: Path,
                                                                  shop: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-stolen.db"
    for allow_write in (False, True):
        ctx = context(tmp_path)
        for sql in (f"ATTACH '{outside}' AS x", f"VACUUM INTO '{outside}'"):
            with pytest.raises(ToolError, match=r"refused"):
                await call(sqlite_query, ctx, path="shop.db", sql=sql, allow_write=allow_write)
    assert not outside.exists()


async def test_sqlite_writes_when_allowed(tmp_path: Path, shop: Path) -> None:
    ctx = context(tmp_path)
    out = await call(sqlite_query, ctx, path="shop.db", allow_write=True,
                     sql="UPDATE items SET price = price * 2 WHERE price < ?", params=[20])
    assert out["rows_changed"] == 2
    conn = sqlite3.connect(shop)
    assert conn.execute("SELECT sum(price) FROM items").fetchone() == (57.0,)
    conn.close()
    created = await call(sqlite_query, ctx, path="new/fresh.db", allow_write=True,
                         sql="CREATE TABLE t (x)")
    assert created["columns"] == [] and (tmp_path / "new/fresh.db").exists()


async def test_sqlite_write_refused_in_a_read_only_sandbox(tmp_path: Path, shop: Path) -> None:
    with pytest.raises(SandboxViolation, match=r"read-only"):
        await call(sqlite_query, context(tmp_path, read_only=True), path="shop.db",
                   sql="DELETE FROM items", allow_write=True)


async def test_sqlite_runaway_query_is_stopped_at_its_time_limit(tmp_path: Path,
                                                                 shop: Path) -> None:
    forever = ("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
               "SELECT count(*) FROM n")
    start = time.monotonic()
    with pytest.raises(ToolError, match=r"ran past 0.3s and was stopped"):
        await call(sqlite_query, context(tmp_path), path="shop.db", sql=forever,
                   time_limit=0.3)
    assert time.monotonic() - start < 3


async def test_sqlite_bad_inputs(tmp_path: Path, shop: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"no such database file"):
        await call(sqlite_query, ctx, path="nope.db", sql="SELECT 1")
    (tmp_path / "text.db").write_text("not a database at all, just some text " * 100)
    with pytest.raises(ToolError, match=r"is not an SQLite database"):
        await call(sqlite_query, ctx, path="text.db", sql="SELECT * FROM sqlite_master")
    with pytest.raises(ToolError, match=r"SQL error: no such table: nope"):
        await call(sqlite_query, ctx, path="shop.db", sql="SELECT * FROM nope")
    with pytest.raises(ToolError, match=r"one statement at a time"):
        await call(sqlite_query, ctx, path="shop.db", sql="SELECT 1; SELECT 2")
    with pytest.raises(ToolError, match=r"bindings"):
        await call(sqlite_query, ctx, path="shop.db", sql="SELECT ?", params=[])
    with pytest.raises(SandboxViolation, match=ESCAPE):
        await call(sqlite_query, ctx, path="/etc/passwd", sql="SELECT 1")
