"""How validation errors are shown to users: by field path, the way they find it in a file."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["field_path", "validation_lines"]


def field_path(loc: tuple[int | str, ...]) -> str:
    """`("rules", 1, "reply")` as `rules[1].reply`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validation_lines(exc: ValidationError) -> list[dict[str, str]]:
    """One `{"path", "message"}` per error of a pydantic validation."""
    return [{"path": field_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
