"""The small expressions a job spec writes where Python would pass a function: a conditional's
`when` rules and a loop's `until`.

    until: "'APPROVED' in text or iteration >= 3"
    when: [{if: "state.priority == 'high'", then: escalate}]

They are evaluated by simpleeval: names, attribute access on dicts (`state.plan`), comparisons,
boolean logic, `in`, a few pure functions (len, lower, int, float, str, any, all) - no imports,
no calls into Python objects, no loops.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression

__all__ = ["Expression", "ExpressionError"]

_FUNCTIONS = {"len": len, "int": int, "float": float, "str": str, "bool": bool, "any": any,
              "all": all, "lower": lambda s: str(s).lower(), "json": json.loads}


class ExpressionError(ValueError):
    pass



def _dotted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _Attrs({k: _dotted(v) for k, v in value.items()})
    return value


class _Attrs(dict[str, Any]):
    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            return None  # an unset state key reads as None, as state.get does


class Expression:
    def __init__(self, source: str, *, where: str = "expression") -> None:
        self.source = source
        self.where = where
        try:
            compile(source, where, "eval")
        except SyntaxError as exc:
            raise ExpressionError(f"{where}: {exc.msg} in {source!r}") from None

    def value(self, names: Mapping[str, Any]) -> Any:
        evaluator = EvalWithCompoundTypes(names={k: _dotted(v) for k, v in names.items()},
                                          functions=_FUNCTIONS)
        evaluator.ATTR_INDEX_FALLBACK = True
        try:
            return evaluator.eval(self.source)
        except (InvalidExpression, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ExpressionError(f"{self.where}: {self.source!r} failed: "
                                  f"{type(exc).__name__}: {exc}") from None

    def truth(self, names: Mapping[str, Any]) -> bool:
        return bool(self.value(names))
