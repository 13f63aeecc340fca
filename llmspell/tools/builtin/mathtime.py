"""Built-in tools: math and time (calculator, unit_convert, datetime, cron_next).

The calculator never runs Python: simpleeval walks the expression's syntax tree with an
allow-list of operators, functions and names, and every operator that can make a number huge
(powers, shifts, factorials) checks the size of its result before computing it. Time zones come
from zoneinfo with the tzdata package, so they work on a machine with no system zone files.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as fixed_zone
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import simpleeval
from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError
from dateutil import parser as date_parser
from dateutil.relativedelta import relativedelta
from pydantic import Field

from llmspell.tools.base import Tool
from llmspell.tools.builtin.utility import builtin_tool
from llmspell.tools.errors import ToolError

if TYPE_CHECKING:
    import pint

__all__ = ["TOOLS"]

# -- calculator --------------------------------------------------------------------------------

MAX_RESULT_BITS = 100_000  # about 30,000 decimal digits: far past any real calculation
MAX_FACTORIAL = 5_000


def _power(base: Any, exponent: Any) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 \
            and abs(base) > 1 and exponent * abs(base).bit_length() > MAX_RESULT_BITS:
        raise simpleeval.NumberTooHigh(f"{base} ** {exponent} is too large to compute")
    return base ** exponent


def _shift(value: Any, bits: Any) -> Any:
    if isinstance(bits, int) and bits > MAX_RESULT_BITS:
        raise simpleeval.NumberTooHigh(f"shifting by {bits} bits is too large")
    return value << bits


def _capped(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if any(isinstance(a, int) and a > MAX_FACTORIAL for a in args):
            raise simpleeval.NumberTooHigh(f"{name}() is limited to arguments up to "
                                           f"{MAX_FACTORIAL}")
        return fn(*args)
    return call


def _log(x: float, base: float = math.e) -> float:
    return math.log(x, base)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": min, "max": max, "int": int, "float": float,
    "sqrt": math.sqrt, "cbrt": math.cbrt, "exp": math.exp, "log": _log, "ln": math.log,
    "log2": math.log2, "log10": math.log10, "sin": math.sin, "cos": math.cos, "tan": math.tan,
    "asin": math.asin, "acos": math.acos, "atan": math.atan, "atan2": math.atan2,
    "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh, "degrees": math.degrees,
    "radians": math.radians, "hypot": math.hypot, "floor": math.floor, "ceil": math.ceil,
    "trunc": math.trunc, "gcd": math.gcd, "lcm": math.lcm, "isqrt": math.isqrt,
    "factorial": _capped(math.factorial, "factorial"), "comb": _capped(math.comb, "comb"),
    "perm": _capped(math.perm, "perm"),
}
_NAMES: dict[str, Any] = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf,
                          "true": True, "false": False, "True": True, "False": False}


def _evaluator(variables: dict[str, float]) -> simpleeval.SimpleEval:
    operators = dict(simpleeval.DEFAULT_OPERATORS)
    operators.update({ast.Pow: _power, ast.LShift: _shift,
                      ast.BitXor: operator.xor})
    return simpleeval.SimpleEval(operators=operators, functions=dict(_FUNCTIONS),
                                 names={**_NAMES, **variables})


@builtin_tool(category="math")
def calculator(expression: Annotated[str, Field(max_length=2000)],
               variables: dict[str, float] | None = None,
               precision: Annotated[int | None, Field(ge=0, le=15)] = None) -> dict[str, Any]:
    """Evaluate a math expression safely (no code runs): + - * / // % ** (powers), comparisons,
    parentheses, `x if cond else y`; constants pi, e, tau, inf; functions sqrt, cbrt, exp, log
    (log(x) natural, log(x, base)), ln, log2, log10, sin, cos, tan, asin, acos, atan, atan2,
    sinh, cosh, tanh, degrees, radians, hypot, floor, ceil, trunc, round, abs, min, max, gcd,
    lcm, isqrt, factorial, comb, perm. Integers are exact at any size up to a limit.

    Args:
        expression: the expression, e.g. "sqrt(2) * (3 + 4) ** 2" or "rate * hours"
        variables: values for names used in the expression, e.g. {"rate": 42.5, "hours": 8}
        precision: round a non-integer result to this many decimal places
    """
    for name in variables or {}:
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ToolError("calculator", f"variable name {name!r} is not an identifier")
    try:
        result = _evaluator(variables or {}).eval(expression)
    except Exception as exc:
        raise _calc_error(exc, expression) from None
    if isinstance(result, float) and precision is not None:
        result = round(result, precision)
    if not isinstance(result, int | float | bool):
        raise ToolError("calculator", f"the expression gives a {type(result).__name__}, "
                                      "not a number")
    return {"expression": expression, "result": result}


def _calc_error(exc: Exception, expression: str) -> ToolError:
    if isinstance(exc, simpleeval.NameNotDefined):
        known = ", ".join(sorted(n for n in _NAMES if n.islower()))
        return ToolError("calculator", f"unknown name {exc.name!r} (known constants: {known}; "
                                       "pass others in 'variables')")
    if isinstance(exc, simpleeval.FunctionNotDefined):
        return ToolError("calculator", f"unknown function {exc.func_name!r} (available: "
                                       f"{', '.join(sorted(_FUNCTIONS))})")
    if isinstance(exc, simpleeval.NumberTooHigh):
        return ToolError("calculator", f"result too large: {exc}")
    if isinstance(exc, simpleeval.InvalidExpression):  # attributes, lambdas, imports, ...
        return ToolError("calculator", f"not allowed in an expression: {exc}")
    if isinstance(exc, SyntaxError):
        return ToolError("calculator", f"not a valid expression {expression!r}: {exc.msg}"
                                       f" (column {exc.offset})")
    if isinstance(exc, ZeroDivisionError):
        return ToolError("calculator", "division by zero")
    if isinstance(exc, OverflowError):
        return ToolError("calculator", f"the result overflows: {exc}")
    if isinstance(exc, ValueError | TypeError):
        return ToolError("calculator", f"{type(exc).__name__}: {exc}")
    return ToolError("calculator", f"cannot evaluate {expression!r}: {type(exc).__name__}: "
                                   f"{exc}")


# -- unit_convert ------------------------------------------------------------------------------


@cache
def _units() -> pint.UnitRegistry[Any]:
    # Imported on first use: pint costs ~0.1 s, in every process holding the calculator too.
    # The default definitions ship inside pint; no cache folder, so nothing is written.
    import pint

    return pint.UnitRegistry(cache_folder=None)


@builtin_tool(category="math")
def unit_convert(value: float, from_unit: Annotated[str, Field(max_length=100)],
                 to_unit: Annotated[str, Field(max_length=100)]) -> dict[str, Any]:
    """Convert a quantity between units: length, mass, time, speed (km/h, mph, knot),
    temperature (degC, degF, kelvin), area, volume (liter, gallon), energy (J, kWh, cal),
    power, pressure (Pa, bar, psi, atm), data (byte, kB, MiB, bit), angles and compound units
    ("m/s^2", "kg*m/s^2"). Unit names follow pint: meter or m, foot or ft, pound or lb, ...

    Args:
        value: the amount in from_unit
        from_unit: the unit of value, e.g. "km/h" or "degC"
        to_unit: the unit to convert to, e.g. "mph" or "degF"
    """
    ureg = _units()
    import pint  # loaded by _units()

    try:
        quantity = ureg.Quantity(value, from_unit).to(to_unit)
    except pint.UndefinedUnitError as exc:
        raise ToolError("unit_convert", f"unknown unit {', '.join(map(repr, exc.args))}"
                        ) from None
    except pint.DimensionalityError as exc:
        raise ToolError("unit_convert", f"cannot convert {from_unit!r} ({exc.dim1}) to "
                                        f"{to_unit!r} ({exc.dim2}): different dimensions"
                        ) from None
    except (pint.PintError, ValueError, TypeError, OverflowError, AttributeError) as exc:
        raise ToolError("unit_convert", f"cannot convert {from_unit!r} to {to_unit!r}: {exc}"
                        ) from None
    magnitude = float(quantity.magnitude)
    return {"value": float(f"{magnitude:.12g}"), "unit": str(quantity.units),
            "symbol": f"{quantity.units:~P}", "from": {"value": value, "unit": from_unit},
            "dimensionality": str(quantity.dimensionality)}


# -- datetime ----------------------------------------------------------------------------------

_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def zone(tool_name: str, name: str) -> tzinfo:
    """An IANA time zone (Europe/Paris), UTC, or a fixed offset (+05:30)."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    m = _OFFSET.match(name)
    if m:
        sign = 1 if m.group(1) == "+" else -1
        return fixed_zone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(tool_name, f"unknown time zone {name!r}: use an IANA name like "
                                   "'Europe/Paris' or 'America/New_York', 'UTC', or an offset "
                                   "like '+05:30'") from None


def parse_time(tool_name: str, value: str | None, tz: tzinfo, dayfirst: bool = False
               ) -> datetime:
    """A date and time from text: "now", ISO 8601, epoch seconds (milliseconds when the number
    is too large for seconds) or free text ("March 3 2025 5pm"). A value without a zone is in
    `tz`."""
    text = (value or "now").strip()
    if text.lower() == "now":
        return datetime.now(tz)
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        stamp = float(text)
        return datetime.fromtimestamp(stamp / 1000 if abs(stamp) > 1e11 else stamp, tz)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = date_parser.parse(text, dayfirst=dayfirst)
        except (ValueError, OverflowError) as exc:
            raise ToolError(tool_name, f"cannot read {text!r} as a date and time: {exc}"
                            ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)


def _zone_name(dt: datetime) -> str:
    tz = dt.tzinfo
    if isinstance(tz, ZoneInfo):
        return tz.key
    return "UTC" if dt.utcoffset() == timedelta(0) else (dt.tzname() or "")


def describe(dt: datetime, fmt: str | None = None) -> dict[str, Any]:
    offset = dt.strftime("%z")
    out: dict[str, Any] = {
        "iso": dt.isoformat(), "timezone": _zone_name(dt),
        "utc_offset": f"{offset[:3]}:{offset[3:]}" if offset else "+00:00",
        "utc": dt.astimezone(UTC).isoformat(), "timestamp": dt.timestamp(),
        "date": dt.date().isoformat(), "time": dt.time().isoformat(),
        "weekday": dt.strftime("%A"), "iso_week": dt.isocalendar().week,
        "day_of_year": dt.timetuple().tm_yday, "dst": bool(dt.dst()),
    }
    if fmt is not None:
        out["formatted"] = dt.strftime(fmt)
    return out


@builtin_tool(name="datetime", category="time")
def datetime_tool(operation: Literal["now", "parse", "format", "convert", "add", "diff"],
                  value: str | None = None, other: str | None = None,
                  timezone: str = "UTC", to_timezone: str | None = None,
                  format: Annotated[str | None, Field(max_length=200)] = None,
                  years: int = 0, months: int = 0, weeks: int = 0, days: int = 0,
                  hours: float = 0, minutes: float = 0, seconds: float = 0,
                  dayfirst: bool = False) -> dict[str, Any]:
    """Dates and times with real time zones. Operations: now (the current time), parse
    (read `value` and describe it: ISO form, UTC, timestamp, weekday, week, DST), format
    (`value` with a strftime `format` such as "%A %d %B %Y %H:%M"), convert (`value` into
    `to_timezone`), add (add years/months/weeks/days in calendar time and hours/minutes/seconds
    in elapsed time; negative to subtract), diff (from `value` to `other`: elapsed seconds,
    days and a calendar breakdown). Values may be ISO 8601, free text ("3 March 2025 5pm"),
    epoch seconds or "now".

    Args:
        operation: now, parse, format, convert, add or diff
        value: the date and time to work on ("now" when omitted)
        other: for diff, the second date and time
        timezone: the zone of values written without one, and of "now" (an IANA name such as
            "Europe/Paris", "UTC" or an offset like "+05:30")
        to_timezone: the zone of the result (convert needs it; others keep the value's zone)
        format: a strftime format for the result's `formatted` field
        years: for add
        months: for add
        weeks: for add
        days: for add
        hours: for add
        minutes: for add
        seconds: for add
        dayfirst: read ambiguous dates like 03/04/2025 as 3 April (day first)
    """
    tz = zone("datetime", timezone)
    moment = parse_time("datetime", value, tz, dayfirst)
    if operation == "convert" and to_timezone is None:
        raise ToolError("datetime", "convert needs 'to_timezone'")
    if operation == "format" and format is None:
        raise ToolError("datetime", "format needs 'format' (e.g. \"%Y-%m-%d %H:%M\")")
    if operation == "diff":
        if other is None:
            raise ToolError("datetime", "diff needs 'other' (the second date and time)")
        return _difference(moment, parse_time("datetime", other, tz, dayfirst))
    if operation == "add":
        moment = _add(moment, relativedelta(years=years, months=months, weeks=weeks, days=days),
                      timedelta(hours=hours, minutes=minutes, seconds=seconds))
    if to_timezone is not None:
        moment = moment.astimezone(zone("datetime", to_timezone))
    try:
        return describe(moment, format)
    except ValueError as exc:
        raise ToolError("datetime", f"cannot format with {format!r}: {exc}") from None


def _add(moment: datetime, calendar: relativedelta, elapsed: timedelta) -> datetime:
    """Calendar units move the wall clock (a day later is the same time tomorrow, across a DST
    change too); clock units are elapsed time (two hours later is 7200 s later)."""
    try:
        shifted: datetime = moment + calendar
        return (shifted.astimezone(UTC) + elapsed).astimezone(shifted.tzinfo)
    except (OverflowError, ValueError) as exc:
        raise ToolError("datetime", f"the result is out of range: {exc}") from None


def _difference(start: datetime, end: datetime) -> dict[str, Any]:
    delta = end.astimezone(UTC) - start.astimezone(UTC)
    cal = relativedelta(end, start.astimezone(end.tzinfo))
    total = delta.total_seconds()
    return {
        "from": start.isoformat(), "to": end.isoformat(), "seconds": total,
        "minutes": total / 60, "hours": total / 3600, "days": total / 86400,
        "calendar": {"years": cal.years, "months": cal.months, "days": cal.days,
                     "hours": cal.hours, "minutes": cal.minutes, "seconds": cal.seconds},
        "human": str(delta),
    }


# -- cron_next ---------------------------------------------------------------------------------


@builtin_tool(category="time")
def cron_next(expression: Annotated[str, Field(max_length=200)],
              count: Annotated[int, Field(ge=1, le=500)] = 5, start: str | None = None,
              timezone: str = "UTC") -> dict[str, Any]:
    """The next run times of a cron expression ("minute hour day-of-month month day-of-week",
    e.g. "*/15 9-17 * * mon-fri"; an optional sixth field is seconds; @hourly, @daily, @weekly,
    @monthly, @yearly), counted from `start` in a time zone (DST-aware).

    Args:
        expression: the cron expression
        count: how many run times to list
        start: the time to count from (ISO 8601 or free text; now when omitted)
        timezone: the zone the schedule runs in (an IANA name such as "Europe/Paris", or UTC)
    """
    tz = zone("cron_next", timezone)
    begin = parse_time("cron_next", start, tz).astimezone(tz)
    try:
        schedule = croniter(expression, begin)
        times = [schedule.get_next(datetime) for _ in range(count)]
    except CroniterBadDateError:
        raise ToolError("cron_next", f"{expression!r} never matches a real date (e.g. "
                                     "February 30)") from None
    except (CroniterError, ValueError, KeyError) as exc:
        raise ToolError("cron_next", f"invalid cron expression {expression!r}: {exc}"
                        ) from None
    return {"expression": expression, "timezone": _zone_name(begin), "start": begin.isoformat(),
            "next": [t.isoformat() for t in times]}


TOOLS: list[Tool] = [calculator, unit_convert, datetime_tool, cron_next]
