"""Built-in tools: data (json_query, json_validate, csv_analyze, data_convert, xml_query,
sqlite_query).

Every input comes inline or from a file in the sandbox, and is refused above a size cap rather
than read whole into memory. XML is always parsed by defusedxml first, so entity expansion
(billion laughs) and external entities (XXE) are refused before lxml ever sees the document.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import sqlite3
import statistics
import time
import tomllib
import xml.etree.ElementTree as StdET
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import date, datetime
from datetime import time as dtime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

import defusedxml.ElementTree as SafeET
import jmespath
import jmespath.exceptions
import tomli_w
import yaml
from defusedxml import DefusedXmlException
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field
from referencing.exceptions import Unresolvable

from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.builtin.utility import (
    MAX_INPUT_BYTES,
    builtin_tool,
    cap_text,
    read_bytes,
    source_text,
    write_atomic,
)
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError

__all__ = ["TOOLS"]

T = TypeVar("T")

MAX_NODES = 1_000_000  # values in one parsed document; YAML aliases can multiply them


# -- shared ------------------------------------------------------------------------------------


def _load_json(tool_name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolError(tool_name, f"not valid JSON: {exc.msg} at line {exc.lineno} "
                                   f"column {exc.colno}") from None


def _json_input(ctx: ToolContext, tool_name: str, data: Any, path: str | None) -> Any:
    """`data` given inline (any JSON value) or the JSON file at `path`."""
    if path is not None and data is not None:
        raise ToolError(tool_name, "give either 'data' or 'path', not both")
    if path is None:
        if data is None:
            raise ToolError(tool_name, "give 'data' (an inline JSON value) or 'path' (a file)")
        return data
    return _load_json(tool_name, source_text(ctx, tool_name, None, path))


def _fit_output(ctx: ToolContext, tool_name: str, value: T, hint: str) -> T:
    size = len(json.dumps(value, default=str, ensure_ascii=False).encode("utf-8"))
    limit = ctx.sandbox.max_output_bytes
    if size > limit:
        raise ToolError(tool_name, f"the result is {size} bytes, over the output limit of "
                                   f"{limit}; {hint}")
    return value


def _json_path(parts: Iterable[Any]) -> str:
    """A JSONPath-style location (`$.items[0].name`) for an error."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}"
        else:
            out += f"[{json.dumps(str(part))}]"
    return out


def _check_size(tool_name: str, value: Any, limit: int = MAX_NODES) -> None:
    """Refuse a document with more than `limit` values. Walks shared references again each
    time, which is the point: a YAML alias bomb is small in memory but huge once written."""
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            raise ToolError(tool_name, f"the document expands to more than {limit} values "
                                       "(an alias or entity bomb?); refused")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# -- json_query --------------------------------------------------------------------------------


@builtin_tool(category="data")
def json_query(ctx: ToolContext, query: str, data: Any = None,
               path: str | None = None) -> Any:
    """Query JSON with a JMESPath expression (jq-like): `people[?age > \\`30\\`].name`,
    `items[0]`, `length(items)`, `sort_by(items, &price)[-1]`, `{n: name, a: age}`. Returns
    the selected value (null when nothing matches).

    Args:
        query: the JMESPath expression
        data: the JSON value to query, inline (give this or path)
        path: a JSON file in the sandbox to query (give this or data)
    """
    doc = _json_input(ctx, "json_query", data, path)
    try:
        compiled = jmespath.compile(query)
    except jmespath.exceptions.ParseError as exc:
        raise ToolError("json_query", f"invalid JMESPath expression {query!r}: "
                                      f"{_first_line(exc)}") from None
    try:
        result = compiled.search(doc)
    except jmespath.exceptions.JMESPathError as exc:
        raise ToolError("json_query", f"the query failed: {exc}") from None
    return _fit_output(ctx, "json_query", result, "narrow the query (e.g. a slice `[:20]`)")


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return " ".join(lines[:1] + [f"({line.strip()})" for line in lines[1:2]])


# -- json_validate -----------------------------------------------------------------------------


@builtin_tool(category="data")
def json_validate(ctx: ToolContext, json_schema: dict[str, Any], data: Any = None,
                  path: str | None = None,
                  max_errors: Annotated[int, Field(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Validate JSON against a JSON Schema (draft 2020-12 unless the schema's `$schema` names
    another draft; formats such as email and date are checked). Returns `valid` and every error
    with its location (`$.items[2].price`), message and the schema keyword that failed.

    Args:
        json_schema: the JSON Schema to validate against
        data: the JSON value to validate, inline (give this or path)
        path: a JSON file in the sandbox to validate (give this or data)
        max_errors: report at most this many errors
    """
    doc = _json_input(ctx, "json_validate", data, path)
    cls = validator_for(json_schema, default=Draft202012Validator)
    try:
        cls.check_schema(json_schema)
    except SchemaError as exc:
        raise ToolError("json_validate", f"the schema itself is invalid at "
                                         f"{_json_path(exc.path)}: {exc.message}") from None
    validator = cls(json_schema, format_checker=cls.FORMAT_CHECKER)
    try:
        errors = sorted(validator.iter_errors(doc),
                        key=lambda e: [str(p) for p in e.absolute_path])
    except Unresolvable as exc:  # remote $refs are never fetched: no network from here
        raise ToolError("json_validate", f"cannot resolve a $ref in the schema: {exc} (only "
                                         "references inside the schema are followed)") from None
    shown = [{"path": _json_path(e.absolute_path), "message": e.message,
              "keyword": str(e.validator),
              "schema_path": "/".join(str(p) for p in e.absolute_schema_path)}
             for e in errors[:max_errors]]
    return {"valid": not errors, "error_count": len(errors), "errors": shown,
            "truncated": len(errors) > max_errors}


# -- csv ---------------------------------------------------------------------------------------

_MISSING = {"", "na", "n/a", "null", "none", "nan", "-"}
_INT = re.compile(r"^[+-]?\d+$")
# Unambiguous alternatives: a long digit run that fails at its end is not retried per split.
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_BOOLS = {"true": True, "false": False, "yes": True, "no": False}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")


def _is_missing(cell: str) -> bool:
    return cell.strip().lower() in _MISSING


def _to_datetime(cell: str) -> datetime | None:
    if not _DATE.match(cell):
        return None
    try:
        return datetime.fromisoformat(cell.replace("Z", "+00:00"))
    except ValueError:
        return None


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "integer": int,
    "number": float,
    "boolean": lambda s: _BOOLS[s.lower()],
    "datetime": lambda s: _to_datetime(s),
    "string": lambda s: s,
}
_CHECKS: list[tuple[str, Callable[[str], bool]]] = [
    ("integer", lambda s: bool(_INT.match(s))),
    ("number", lambda s: bool(_NUMBER.match(s))),
    ("boolean", lambda s: s.lower() in _BOOLS),
    ("datetime", lambda s: _to_datetime(s) is not None),
]


def infer_type(cells: Iterable[str]) -> str:
    """The narrowest type every present cell fits: integer, number, boolean, datetime, string
    (or empty when no cell has a value)."""
    present = [c.strip() for c in cells if not _is_missing(c)]
    if not present:
        return "empty"
    for name, check in _CHECKS:
        if all(check(c) for c in present):
            return name
    return "string"


def convert_cell(cell: str, kind: str) -> Any:
    if _is_missing(cell):
        return None
    if kind == "empty":
        return None
    return _CONVERTERS[kind](cell.strip() if kind != "string" else cell)


class CsvTable:
    """Rows of a CSV read with a cap, their header and each column's inferred type."""

    def __init__(self, tool_name: str, text: str, delimiter: str | None, header: bool,
                 max_rows: int) -> None:
        dialect_delimiter = delimiter or _sniff(text)
        raw = _read_rows(tool_name, text, dialect_delimiter, max_rows + (1 if header else 0))
        self.truncated = len(raw) > max_rows + (1 if header else 0)
        if self.truncated:
            raw.pop()
        width = max((len(r) for r in raw), default=0)
        names = raw.pop(0) if header and raw else [f"column_{i + 1}" for i in range(width)]
        self.delimiter = dialect_delimiter
        self.names = _unique_names(names, width)
        self.ragged = sum(1 for r in raw if len(r) != len(self.names))
        self.cells = [(r + [""] * len(self.names))[: len(self.names)] for r in raw]
        self.types = [infer_type(r[i] for r in self.cells) for i in range(len(self.names))]

    def records(self) -> list[dict[str, Any]]:
        return [{n: convert_cell(r[i], self.types[i]) for i, n in enumerate(self.names)}
                for r in self.cells]


def _read_rows(tool_name: str, text: str, delimiter: str, limit: int) -> list[list[str]]:
    """At most `limit` + 1 rows (the extra one tells that there were more)."""
    if len(delimiter) != 1:
        raise ToolError(tool_name, f"the delimiter must be one character, got {delimiter!r}")
    rows: list[list[str]] = []
    try:
        for row in csv.reader(io.StringIO(text), delimiter=delimiter):
            rows.append(row)
            if len(rows) > limit:
                break
    except csv.Error as exc:
        raise ToolError(tool_name, f"not valid CSV: {exc}") from None
    return rows


def _sniff(text: str) -> str:
    try:
        # The sniffer's own patterns are quadratic: a few lines are enough to tell.
        sample = text[:4096].rsplit("\n", 1)[0] if len(text) > 4096 else text
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","  # one column, or too little text to tell


def _unique_names(names: list[str], width: int) -> list[str]:
    names = [n.strip() or f"column_{i + 1}" for i, n in enumerate(names)]
    names += [f"column_{i + 1}" for i in range(len(names), width)]
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


class CsvFilter(BaseModel):
    """One condition on a column; a row is kept when every condition holds."""

    model_config = ConfigDict(extra="forbid")
    column: str = Field(description="the column name")
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "contains", "startswith", "endswith",
                "in", "empty", "not_empty"] = Field(
        description="eq/ne/lt/le/gt/ge compare as the column's type; contains/startswith/"
                    "endswith compare text (case-insensitive); in takes a list; empty and "
                    "not_empty take no value")
    value: Any = Field(default=None, description="the value to compare with")


@builtin_tool(category="data")
def csv_analyze(ctx: ToolContext, text: str | None = None, path: str | None = None,
                delimiter: str | None = None, header: bool = True,
                filters: list[CsvFilter] | None = None, sort_by: str | None = None,
                descending: bool = False, columns: list[str] | None = None,
                limit: Annotated[int, Field(ge=0, le=1000)] = 20,
                max_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 100_000,
                ) -> dict[str, Any]:
    """Analyze CSV data: the columns with their inferred types (integer, number, boolean,
    datetime, string) and summary statistics (count, missing, unique; min, max, mean, median,
    stdev and sum for numbers; the most common values for text), after optional filters.
    Returns the first `limit` matching rows, optionally sorted and restricted to some columns.

    Args:
        text: the CSV text, inline (give this or path)
        path: a CSV file in the sandbox (give this or text)
        delimiter: the field separator; detected (, ; tab |) when omitted
        header: whether the first row holds the column names
        filters: conditions every returned (and analyzed) row must meet
        sort_by: a column to sort the returned rows by (missing values last)
        descending: sort from largest to smallest
        columns: only these columns in the returned rows (all are analyzed)
        limit: how many rows to return (0 for statistics only)
        max_rows: read at most this many rows; the result says when there were more
    """
    source = source_text(ctx, "csv_analyze", text, path)
    table = CsvTable("csv_analyze", source, delimiter, header, max_rows)
    for name in [*(f.column for f in filters or []), *([sort_by] if sort_by else []),
                 *(columns or [])]:
        _check_column(table, name)
    records = table.records()
    matched = [r for r in records if all(_keep(r, f, table) for f in filters or [])]
    if sort_by:
        matched = _sorted(matched, sort_by, descending)
    rows = [{k: _plain(r[k]) for k in (columns or table.names)} for r in matched[:limit]]
    return _fit_output(ctx, "csv_analyze", {
        "delimiter": table.delimiter, "row_count": len(records), "matched_rows": len(matched),
        "truncated_input": table.truncated, "ragged_rows": table.ragged,
        "columns": [_column_summary(n, t, [r[n] for r in matched])
                    for n, t in zip(table.names, table.types, strict=True)],
        "rows": rows,
    }, "lower 'limit' or select fewer 'columns'")


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _check_column(table: CsvTable, name: str) -> None:
    if name not in table.names:
        raise ToolError("csv_analyze", f"no column {name!r}; the columns are "
                                       f"{', '.join(table.names)}")


def _keep(row: dict[str, Any], cond: CsvFilter, table: CsvTable) -> bool:
    cell = row[cond.column]
    if cond.op in ("empty", "not_empty"):
        return (cell is None) == (cond.op == "empty")
    if cell is None:
        return cond.op == "ne"
    if cond.op in ("contains", "startswith", "endswith"):
        text, needle = str(cell).lower(), str(cond.value).lower()
        return {"contains": needle in text, "startswith": text.startswith(needle),
                "endswith": text.endswith(needle)}[cond.op]
    kind = table.types[table.names.index(cond.column)]
    if cond.op == "in":
        values = cond.value if isinstance(cond.value, list) else [cond.value]
        return cell in [_coerce(v, kind, cond.column) for v in values]
    return _compare(cell, cond.op, _coerce(cond.value, kind, cond.column))


def _coerce(value: Any, kind: str, column: str) -> Any:
    """A filter value as the column's type, so that "10" > "9" compares as numbers."""
    if value is None:
        raise ToolError("csv_analyze", f"the filter on {column!r} needs a 'value'")
    if kind in ("integer", "number") and isinstance(value, int | float) \
            and not isinstance(value, bool):
        return value
    try:
        converted = convert_cell(str(value).lower() if isinstance(value, bool) else str(value),
                                 kind)
    except (ValueError, KeyError):
        converted = None
    if converted is None and kind not in ("string", "empty"):
        raise ToolError("csv_analyze", f"filter value {value!r} is not a {kind} "
                                       f"(the type of column {column!r})")
    return converted


def _compare(cell: Any, op: str, value: Any) -> bool:
    try:
        ops: dict[str, Callable[[Any, Any], bool]] = {
            "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
            "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}
        return ops[op](cell, value)
    except TypeError:  # naive and aware datetimes, say
        return False


def _sorted(rows: list[dict[str, Any]], column: str, descending: bool) -> list[dict[str, Any]]:
    present = [r for r in rows if r[column] is not None]
    missing = [r for r in rows if r[column] is None]
    try:
        present.sort(key=lambda r: r[column], reverse=descending)
    except TypeError:
        present.sort(key=lambda r: str(r[column]), reverse=descending)
    return present + missing


def _column_summary(name: str, kind: str, values: list[Any]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    out: dict[str, Any] = {"name": name, "type": kind, "count": len(present),
                           "missing": len(values) - len(present),
                           "unique": len({str(v) for v in present})}
    if not present:
        return out
    if kind in ("integer", "number"):
        out.update(_numeric_stats(present))
    elif kind == "datetime":
        with contextlib.suppress(TypeError):  # naive and aware mixed: no order
            out.update(min=min(present).isoformat(), max=max(present).isoformat())
    elif kind == "boolean":
        out.update(true=sum(1 for v in present if v), false=sum(1 for v in present if not v))
    else:
        lengths = [len(v) for v in present]
        out.update(min_length=min(lengths), max_length=max(lengths),
                   top=[[v, n] for v, n in Counter(present).most_common(5)])
    return out


def _numeric_stats(values: list[float]) -> dict[str, Any]:
    stats: dict[str, Any] = {"min": min(values), "max": max(values), "sum": _round(sum(values)),
                             "mean": _round(statistics.fmean(values)),
                             "median": _round(statistics.median(values))}
    stats["stdev"] = _round(statistics.stdev(values)) if len(values) > 1 else None
    return stats


def _round(x: float) -> float:
    return x if isinstance(x, int) or not math.isfinite(x) else round(x, 10)


# -- data_convert ------------------------------------------------------------------------------

Format = Literal["json", "yaml", "csv", "xml", "toml"]


@builtin_tool(category="data", side_effects=SideEffects.local)
def data_convert(ctx: ToolContext, from_format: Format, to_format: Format,
                 text: str | None = None, path: str | None = None,
                 output_path: str | None = None, root: str = "root",
                 delimiter: str = ",", infer_types: bool = True) -> dict[str, Any]:
    """Convert structured data between JSON, YAML, CSV, XML and TOML. Returns the converted
    text, or writes it to `output_path` in the sandbox. CSV is a list of objects (one per row,
    nested values as JSON text); XML maps attributes to "@name" keys, text beside children to
    "#text" and repeated elements to lists. XML with entity declarations or external references
    is refused.

    Args:
        from_format: the input's format
        to_format: the output's format
        text: the input, inline (give this or path)
        path: the input file in the sandbox (give this or text)
        output_path: write the result to this file in the sandbox instead of returning it
        root: the root element name when writing XML, and the key a list goes under when
            writing TOML (which needs an object at the top)
        delimiter: the field separator of CSV input and output
        infer_types: read CSV cells as numbers, booleans and nulls where a whole column
            fits; off, every cell is a string
    """
    source = source_text(ctx, "data_convert", text, path)
    value = _parse(source, from_format, delimiter, infer_types)
    _check_size("data_convert", value)
    output = _emit(value, to_format, root, delimiter)
    if output_path is not None:
        data = output.encode("utf-8")
        write_atomic(ctx, "data_convert", output_path, data)
        return {"output_path": output_path, "format": to_format, "bytes": len(data)}
    shown, cut = cap_text(output, ctx.sandbox.max_output_bytes)
    return {"format": to_format, "text": shown, "truncated": cut}


def _parse(text: str, fmt: str, delimiter: str, infer: bool) -> Any:
    try:
        if fmt == "json":
            return _load_json("data_convert", text)
        if fmt == "yaml":
            return yaml.safe_load(text)
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "csv":
            return _parse_csv(text, delimiter, infer)
        return _parse_xml(text)
    except yaml.YAMLError as exc:
        raise ToolError("data_convert", f"not valid YAML: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ToolError("data_convert", f"not valid TOML: {exc}") from None


def _parse_csv(text: str, delimiter: str, infer: bool) -> list[dict[str, Any]]:
    table = CsvTable("data_convert", text, delimiter, True, MAX_NODES)
    if table.truncated:
        raise ToolError("data_convert", f"the CSV has more than {MAX_NODES} rows")
    if infer:
        return table.records()
    return [dict(zip(table.names, row, strict=True)) for row in table.cells]


def safe_xml(tool_name: str, text: str | bytes) -> StdET.Element:
    """Parse XML with defusedxml: entity declarations, external entities and DTD tricks are
    refused with an error that says why."""
    try:
        element: StdET.Element = SafeET.fromstring(text)
    except DefusedXmlException as exc:
        raise ToolError(tool_name, f"refused unsafe XML ({type(exc).__name__}: {exc}); "
                                   "documents that declare entities or reference external "
                                   "resources are not parsed (XML bomb / XXE)") from None
    except StdET.ParseError as exc:
        raise ToolError(tool_name, f"not well-formed XML: {exc}") from None
    return element


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # "{namespace}name" -> "name"


def _parse_xml(text: str) -> dict[str, Any]:
    element = safe_xml("data_convert", text)
    return {_local(element.tag): _element_value(element)}


def _element_value(element: StdET.Element) -> Any:
    text = (element.text or "").strip()
    children = list(element)
    if not children and not element.attrib:
        return text or None
    out: dict[str, Any] = {f"@{_local(k)}": v for k, v in element.attrib.items()}
    repeated: set[str] = set()  # keys that became lists because the element repeats
    for child in children:
        key, value = _local(child.tag), _element_value(child)
        if key in repeated:
            out[key].append(value)
        elif key in out:
            out[key] = [out[key], value]
            repeated.add(key)
        else:
            out[key] = value
    if text:
        out["#text"] = text
    return out


def _emit(value: Any, fmt: str, root: str, delimiter: str) -> str:
    if fmt == "json":
        return json.dumps(value, indent=2, ensure_ascii=False, default=_json_default)
    if fmt == "yaml":
        return str(yaml.safe_dump(value, sort_keys=False, allow_unicode=True))
    if fmt == "toml":
        return _emit_toml(value, root)
    if fmt == "csv":
        return _emit_csv(value, delimiter)
    return _emit_xml(value, root)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, set):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _emit_toml(value: Any, root: str) -> str:
    if not isinstance(value, dict):
        value = {root: value}
    null = _find_null(value, "$")
    if null is not None:
        raise ToolError("data_convert", f"TOML has no null: the value at {null} is null; "
                                        "remove it or convert to another format")
    try:
        return tomli_w.dumps(value)
    except TypeError as exc:
        raise ToolError("data_convert", f"cannot write TOML: {exc}") from None


def _find_null(value: Any, where: str) -> str | None:
    if value is None:
        return where
    items: Iterable[tuple[str, Any]] = ()
    if isinstance(value, dict):
        items = ((_json_path([k]).replace("$", where, 1), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    for child_where, child in items:
        found = _find_null(child, child_where)
        if found is not None:
            return found
    return None


def _rows_of(value: Any) -> list[Any]:
    """The list of rows in a value: the value itself, or the one list inside a wrapper object
    (`{"root": {"item": [...]}}` as XML and TOML give it)."""
    while isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise ToolError("data_convert", "CSV needs a list of objects (or of lists); got "
                                        f"{type(value).__name__}")
    return value


def _emit_csv(value: Any, delimiter: str) -> str:
    rows = _rows_of(value)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    if all(isinstance(r, list) for r in rows):
        writer.writerows([_csv_cell(c) for c in r] for r in rows)
        return out.getvalue()
    if not all(isinstance(r, dict) for r in rows):
        raise ToolError("data_convert", "CSV rows must all be objects or all be lists")
    header = list(dict.fromkeys(k for r in rows for k in r))
    writer.writerow(header)
    writer.writerows([_csv_cell(r.get(k)) for k in header] for r in rows)
    return out.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    return str(value)


_XML_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")


def _xml_name(key: str) -> str:
    """A key as an XML element name: invalid characters become _, a leading digit gets _."""
    if _XML_NAME.match(key):
        return key
    name = re.sub(r"[^\w.-]", "_", key) or "_"
    return name if re.match(r"^[A-Za-z_]", name) else f"_{name}"


def _emit_xml(value: Any, root: str) -> str:
    if isinstance(value, dict) and len(value) == 1 and not next(iter(value)).startswith("@"):
        root, value = next(iter(value.items()))
    element = StdET.Element(_xml_name(root))
    _fill(element, value)
    StdET.indent(element)
    return StdET.tostring(element, encoding="unicode", xml_declaration=True)


def _fill(element: StdET.Element, value: Any) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            if key.startswith("@"):
                element.set(_xml_name(key[1:]), _csv_cell(child))
            elif key == "#text":
                element.text = _csv_cell(child)
            else:
                _append(element, _xml_name(str(key)), child)
    elif isinstance(value, list):
        for child in value:
            _append(element, "item", child)
    elif value is not None:
        element.text = _csv_cell(value)


def _append(parent: StdET.Element, tag: str, value: Any) -> None:
    if isinstance(value, list):
        for item in value:  # a list is the element repeated, as XML is read back
            _fill(StdET.SubElement(parent, tag), item)
    else:
        _fill(StdET.SubElement(parent, tag), value)


# -- xml_query ---------------------------------------------------------------------------------

_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


@builtin_tool(category="data")
def xml_query(ctx: ToolContext, xpath: str, text: str | None = None, path: str | None = None,
              namespaces: dict[str, str] | None = None,
              max_results: Annotated[int, Field(ge=1, le=10_000)] = 100) -> dict[str, Any]:
    """Run an XPath 1.0 expression over an XML document: `//book[price > 30]/title`,
    `//item/@id`, `count(//item)`. Elements come back as their tag, attributes, text and XML;
    attribute and text nodes as strings; count() and friends as numbers. Documents that declare
    entities (XML bombs, XXE) are refused.

    Args:
        xpath: the XPath expression
        text: the XML, inline (give this or path)
        path: an XML file in the sandbox (give this or text)
        namespaces: prefixes for namespaced documents, e.g. {"a": "http://www.w3.org/2005/Atom"}
            to query `//a:entry`
        max_results: return at most this many nodes
    """
    raw = _xml_bytes(ctx, text, path)
    safe_xml("xml_query", raw)  # the defused parse refuses bombs before lxml sees the bytes
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False)
    try:
        root = etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        raise ToolError("xml_query", f"not well-formed XML: {exc}") from None
    try:
        found = root.xpath(xpath, namespaces=namespaces or {})
    except etree.XPathError as exc:
        raise ToolError("xml_query", f"invalid XPath {xpath!r}: {exc}") from None
    return _xpath_result(ctx, found, max_results, root)


def _xml_bytes(ctx: ToolContext, text: str | None, path: str | None) -> bytes:
    if (text is None) == (path is None):
        raise ToolError("xml_query", "give exactly one of 'text' (inline) or 'path' (a file)")
    if path is not None:
        return read_bytes(ctx, "xml_query", path)
    assert text is not None
    if len(text) > MAX_INPUT_BYTES:
        raise ToolError("xml_query", f"'text' is {len(text)} characters; the limit is "
                                     f"{MAX_INPUT_BYTES}")
    # The string is already decoded: its declaration's encoding no longer applies.
    return _DECLARATION.sub("", text, count=1).encode("utf-8")


def _xpath_result(ctx: ToolContext, found: Any, max_results: int, root: Any
                  ) -> dict[str, Any]:
    if not isinstance(found, list):  # a number, string or boolean expression
        value = found if isinstance(found, bool | float) else str(found)
        return {"count": 1, "results": [value], "truncated": False}
    results = [_node(n) for n in found[:max_results]]
    out: dict[str, Any] = {"count": len(found), "results": results,
                           "truncated": len(found) > max_results}
    if not found and None in (root.nsmap or {}):
        out["hint"] = (f"the document has a default namespace ({root.nsmap[None]}): "
                       "bind it to a prefix in 'namespaces' and use that prefix in the XPath")
    return _fit_output(ctx, "xml_query", out, "lower 'max_results' or select less")


def _node(node: Any) -> Any:
    if isinstance(node, etree._Element):
        if not isinstance(node.tag, str):  # a comment or processing instruction
            return {"xml": etree.tostring(node, encoding="unicode")}
        xml, _ = cap_text(etree.tostring(node, encoding="unicode", with_tail=False), 2000)
        content, _ = cap_text("".join(str(t) for t in node.itertext()).strip(), 2000)
        return {"tag": etree.QName(node).localname, "attributes": dict(node.attrib),
                "text": content, "xml": xml}
    return str(node)


# -- sqlite_query ------------------------------------------------------------------------------

# PRAGMAs that only describe the database (any argument is a table or index name).
_DESCRIBE_PRAGMAS = {
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
    "collation_list", "function_list", "pragma_list", "module_list", "compile_options",
}
# PRAGMAs that are settings: read (no argument) only.
_SETTING_PRAGMAS = {"user_version", "application_id", "schema_version", "page_size",
                    "page_count", "encoding", "journal_mode", "foreign_keys", "freelist_count"}
_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                 sqlite3.SQLITE_RECURSIVE, sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT}
# ATTACH opens (and VACUUM INTO creates) a database file anywhere on disk: never allowed.
_NEVER = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH}


def _read_only_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None,
                          _trigger: str | None) -> int:
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
        name = arg1.lower()
        if name in _DESCRIBE_PRAGMAS or (name in _SETTING_PRAGMAS and arg2 is None):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _write_authorizer(action: int, _a1: str | None, _a2: str | None, _db: str | None,
                      _trigger: str | None) -> int:
    return sqlite3.SQLITE_DENY if action in _NEVER else sqlite3.SQLITE_OK


@builtin_tool(category="data", side_effects=SideEffects.local, idempotent=False, timeout=90.0)
def sqlite_query(ctx: ToolContext, path: str, sql: str,
                 params: list[Any] | dict[str, Any] | None = None, allow_write: bool = False,
                 max_rows: Annotated[int, Field(ge=1, le=10_000)] = 500,
                 time_limit: Annotated[float, Field(gt=0, le=60)] = 10.0) -> dict[str, Any]:
    """Run one SQL statement on an SQLite database file in the sandbox. Read-only unless
    `allow_write` is set (and the sandbox allows writing); ATTACH and VACUUM INTO are never
    allowed. Use `?` or `:name` placeholders with `params` rather than pasting values into SQL.
    Returns the column names and up to `max_rows` rows (lists), or for a write the number of
    rows changed. Inspect a database with `SELECT name, sql FROM sqlite_master`.

    Args:
        path: the database file in the sandbox (created when writing and missing)
        sql: exactly one SQL statement
        params: values for the placeholders: a list for `?`, an object for `:name`
        allow_write: allow INSERT, UPDATE, DELETE, CREATE and other changes
        max_rows: return at most this many rows
        time_limit: stop the statement after this many seconds
    """
    conn = _open_db(ctx, path, allow_write, time_limit)
    deadline = time.monotonic() + time_limit
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        cursor = conn.execute(sql, params if params is not None else ())
        rows = cursor.fetchmany(max_rows + 1)
        columns = [d[0] for d in cursor.description or ()]
        result = _sql_result(columns, rows, max_rows, cursor, allow_write)
    except sqlite3.Error as exc:
        raise _sql_error(exc, path, allow_write, time_limit) from None
    finally:
        conn.close()
    return _shrink_rows(ctx, result)


def _open_db(ctx: ToolContext, path: str, allow_write: bool, time_limit: float
             ) -> sqlite3.Connection:
    target = ctx.sandbox.path("sqlite_query", path, write=allow_write)
    if not allow_write and not target.is_file():
        raise ToolError("sqlite_query", f"{path!r}: no such database file in the sandbox")
    mode = "rwc" if allow_write else "ro"  # ro: SQLite itself refuses every write
    if allow_write:
        target.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(f"file:{quote(str(target))}?mode={mode}", uri=True,
                               timeout=min(time_limit, 5.0), isolation_level=None)
    except sqlite3.Error as exc:
        raise ToolError("sqlite_query", f"cannot open {path!r}: {exc}") from None
    conn.set_authorizer(_write_authorizer if allow_write else _read_only_authorizer)
    return conn


def _sql_result(columns: list[str], rows: list[Any], max_rows: int, cursor: sqlite3.Cursor,
                allow_write: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"columns": columns,
                           "rows": [[_sql_value(v) for v in row] for row in rows[:max_rows]],
                           "row_count": min(len(rows), max_rows),
                           "truncated": len(rows) > max_rows}
    if allow_write and cursor.rowcount >= 0:
        out["rows_changed"] = cursor.rowcount
        out["last_row_id"] = cursor.lastrowid
    return out


def _sql_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"blob_hex": value[:256].hex(), "bytes": len(value)}
    return value


def _sql_error(exc: sqlite3.Error, path: str, allow_write: bool, time_limit: float
               ) -> ToolError:
    message = str(exc)
    if message == "interrupted":
        return ToolError("sqlite_query", f"the statement ran past {time_limit:g}s and was "
                                         "stopped")
    if any(m in message for m in ("not authorized", "authorization denied",
                                  "readonly database")):
        rule = ("ATTACH, DETACH and VACUUM INTO are never allowed" if allow_write else
                "the database is opened read-only; set allow_write to change it")
        return ToolError("sqlite_query", f"refused: {rule} ({message})")
    if "file is not a database" in message:
        return ToolError("sqlite_query", f"{path!r} is not an SQLite database")
    return ToolError("sqlite_query", f"SQL error: {message}")


def _shrink_rows(ctx: ToolContext, result: dict[str, Any]) -> dict[str, Any]:
    """Drop rows from the end until the result fits the sandbox's output limit."""
    limit = ctx.sandbox.max_output_bytes
    while (len(json.dumps(result, default=str).encode("utf-8")) > limit
           and result["rows"]):
        result["rows"] = result["rows"][: len(result["rows"]) // 2]
        result["row_count"] = len(result["rows"])
        result["truncated"] = True
    return result


TOOLS: list[Tool] = [json_query, json_validate, csv_analyze, data_convert, xml_query,
                     sqlite_query]
