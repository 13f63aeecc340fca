"""Math and time tools: calculator (no eval of Python, bounded numbers), unit_convert,
datetime (real time zones, DST), cron_next."""

from __future__ import annotations

import time
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llmspell.tools import ToolArgumentError, ToolError
from llmspell.tools.builtin.mathtime import calculator, cron_next, datetime_tool, unit_convert
from tests.tools.helpers_data import call, context

# -- calculator ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "expected"), [
    ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("7 // 2", 3), ("7 % 4", 3), ("2 ** 100", 2**100),
    ("sqrt(16) + abs(-2)", 6.0), ("round(pi, 3)", 3.142), ("log(8, 2)", 3.0),
    ("factorial(20)", 2432902008176640000), ("max(3, 9, 4)", 9), ("1 < 2", True),
    ("10 if 3 > 2 else 20", 10), ("hypot(3, 4)", 5.0), ("comb(10, 3)", 120),
])
async def test_calculator_evaluates(tmp_path: Path, expression: str, expected: object) -> None:
    out = await call(calculator, context(tmp_path), expression=expression)
    assert out["result"] == expected


async def test_calculator_variables_and_precision(tmp_path: Path) -> None:
    out = await call(calculator, context(tmp_path), expression="rate * hours / 3",
                     variables={"rate": 42.5, "hours": 8}, precision=2)
    assert out["result"] == 113.33


@pytest.mark.parametrize(("expression", "message"), [
    ("__import__('os').system('id')", "unknown function '__import__'"),
    ("().__class__.__bases__", "not allowed in an expression"),
    ("(1).__class__", "not allowed in an expression"),
    ("'abc'.upper()", "gives a str, not a number"),
    ("(lambda: 1)()", "not allowed in an expression"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("9 ** 9 ** 9", "result too large"),
    ("1 << 10 ** 9", "result too large"),
    ("factorial(100000)", "factorial\\(\\) is limited"),
    ("1 / 0", "division by zero"),
    ("sqrt(-1)", "ValueError: math domain error"),
    ("x + 1", "unknown name 'x'"),
    ("2 +* 3", "not a valid expression"),
    ("exp(10000)", "overflows"),
])
async def test_calculator_refuses_with_a_reason(tmp_path: Path, expression: str,
                                                message: str) -> None:
    start = time.monotonic()
    with pytest.raises(ToolError, match=message):
        await call(calculator, context(tmp_path), expression=expression)
    assert time.monotonic() - start < 2


async def test_calculator_argument_limits(tmp_path: Path) -> None:
    with pytest.raises(ToolArgumentError, match="expression"):
        await call(calculator, context(tmp_path), expression="1+" * 2000 + "1")
    with pytest.raises(ToolError, match="'bad name' is not an identifier"):
        await call(calculator, context(tmp_path), expression="1", variables={"bad name": 1})


# -- unit_convert --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "source", "target", "expected"), [
    (100, "km/h", "mph", 62.1371192237), (100, "degC", "degF", 212.0), (0, "degC", "K", 273.15),
    (1, "mile", "m", 1609.344), (5, "kWh", "MJ", 18.0), (1, "MiB", "kB", 1048.576),
    (30, "psi", "bar", 2.06842718795), (1, "gallon", "liter", 3.785411784),
])
async def test_unit_convert(tmp_path: Path, value: float, source: str, target: str,
                            expected: float) -> None:
    out = await call(unit_convert, context(tmp_path), value=value, from_unit=source,
                     to_unit=target)
    assert out["value"] == pytest.approx(expected, rel=1e-9)


async def test_unit_convert_bad_units(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match="unknown unit 'furlongz'"):
        await call(unit_convert, ctx, value=1, from_unit="furlongz", to_unit="m")
    with pytest.raises(ToolError, match=r"cannot convert 'meter' \(\[length\]\) to 'second' "
                                        r"\(\[time\]\): different dimensions"):
        await call(unit_convert, ctx, value=1, from_unit="meter", to_unit="second")


# -- datetime ------------------------------------------------------------------------------------


async def test_datetime_parse_convert_and_format(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    parsed = await call(datetime_tool, ctx, operation="parse", value="2025-07-14 09:30",
                        timezone="Europe/Paris")
    assert parsed["iso"] == "2025-07-14T09:30:00+02:00" and parsed["dst"] is True
    assert parsed["utc"] == "2025-07-14T07:30:00+00:00" and parsed["weekday"] == "Monday"
    tokyo = await call(datetime_tool, ctx, operation="convert", value=parsed["iso"],
                       to_timezone="Asia/Tokyo")
    assert tokyo["iso"] == "2025-07-14T16:30:00+09:00" and tokyo["timezone"] == "Asia/Tokyo"
    formatted = await call(datetime_tool, ctx, operation="format", value="March 3 2025 5pm",
                           format="%A %d %B %Y, %H:%M")
    assert formatted["formatted"] == "Monday 03 March 2025, 17:00"
    epoch = await call(datetime_tool, ctx, operation="parse", value="1700000000")
    assert epoch["iso"] == "2023-11-14T22:13:20+00:00"
    india = await call(datetime_tool, ctx, operation="parse", value="2025-01-01T00:00",
                       timezone="+05:30")
    assert india["utc"] == "2024-12-31T18:30:00+00:00"
    now = await call(datetime_tool, ctx, operation="now")
    assert abs(now["timestamp"] - datetime.now(UTC).timestamp()) < 5


async def test_datetime_add_across_a_dst_change(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    start = "2025-03-29T12:00"  # Paris moves its clocks forward on the night of the 30th
    a_day = await call(datetime_tool, ctx, operation="add", value=start,
                       timezone="Europe/Paris", days=1)
    assert a_day["iso"] == "2025-03-30T12:00:00+02:00"  # same wall-clock time
    hours = await call(datetime_tool, ctx, operation="add", value=start,
                       timezone="Europe/Paris", hours=24)
    assert hours["iso"] == "2025-03-30T13:00:00+02:00"  # 24 elapsed hours
    month = await call(datetime_tool, ctx, operation="add", value="2024-01-31", months=1)
    assert month["date"] == "2024-02-29"
    back = await call(datetime_tool, ctx, operation="add", value="2024-01-01", weeks=-1)
    assert back["date"] == "2023-12-25"


async def test_datetime_diff(tmp_path: Path) -> None:
    out = await call(datetime_tool, context(tmp_path), operation="diff",
                     value="2024-01-01T00:00Z", other="2025-03-15T12:00:00+01:00")
    assert out["hours"] == pytest.approx((366 + 31 + 28 + 14) * 24 + 11)
    assert out["calendar"]["years"] == 1 and out["calendar"]["months"] == 2


async def test_datetime_bad_inputs(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match="unknown time zone 'Mars/Olympus'"):
        await call(datetime_tool, ctx, operation="now", timezone="Mars/Olympus")
    with pytest.raises(ToolError, match="cannot read 'the day after never' as a date"):
        await call(datetime_tool, ctx, operation="parse", value="the day after never")
    with pytest.raises(ToolError, match="convert needs 'to_timezone'"):
        await call(datetime_tool, ctx, operation="convert", value="2025-01-01")
    with pytest.raises(ToolError, match="diff needs 'other'"):
        await call(datetime_tool, ctx, operation="diff", value="2025-01-01")
    with pytest.raises(ToolArgumentError, match="operation"):
        await call(datetime_tool, ctx, operation="yesterday")


@pytest.fixture
def only_tzdata() -> Iterator[None]:
    """Zone files from the tzdata package only, as on a machine with no /usr/share/zoneinfo."""
    zoneinfo.reset_tzpath(to=[])
    zoneinfo.ZoneInfo.clear_cache()
    yield
    zoneinfo.reset_tzpath()
    zoneinfo.ZoneInfo.clear_cache()


async def test_time_zones_work_without_system_zone_files(tmp_path: Path,
                                                         only_tzdata: None) -> None:
    out = await call(datetime_tool, context(tmp_path), operation="parse",
                     value="2025-01-15T12:00", timezone="America/New_York")
    assert out["utc_offset"] == "-05:00"


# -- cron_next -----------------------------------------------------------------------------------


async def test_cron_next_times(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    out = await call(cron_next, ctx, expression="*/15 9-17 * * mon-fri", count=3,
                     start="2025-06-06T17:50:00")  # a Friday
    assert out["next"] == ["2025-06-09T09:00:00+00:00", "2025-06-09T09:15:00+00:00",
                           "2025-06-09T09:30:00+00:00"]
    daily = await call(cron_next, ctx, expression="@daily", count=2, start="2025-01-01T10:00",
                       timezone="Asia/Tokyo")
    assert daily["next"] == ["2025-01-02T00:00:00+09:00", "2025-01-03T00:00:00+09:00"]


async def test_cron_next_in_a_time_zone_across_dst(tmp_path: Path) -> None:
    out = await call(cron_next, context(tmp_path), expression="0 9 * * *", count=3,
                     start="2025-03-29T00:00", timezone="Europe/Paris")
    assert out["next"] == ["2025-03-29T09:00:00+01:00", "2025-03-30T09:00:00+02:00",
                           "2025-03-31T09:00:00+02:00"]


async def test_cron_next_bad_expressions(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match="invalid cron expression '61 \\* \\* \\* \\*'"):
        await call(cron_next, ctx, expression="61 * * * *")
    with pytest.raises(ToolError, match="invalid cron expression 'every day'"):
        await call(cron_next, ctx, expression="every day")
    with pytest.raises(ToolError, match="never matches a real date"):
        await call(cron_next, ctx, expression="0 0 30 2 *")
    with pytest.raises(ToolArgumentError, match="count"):
        await call(cron_next, ctx, expression="* * * * *", count=10_000)
