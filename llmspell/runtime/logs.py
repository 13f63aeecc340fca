"""Structured logging, configured once per process and bound to job and actor ids."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any


def _structlog_without_rich() -> None:
    """Import structlog without letting it load rich: structlog.dev imports rich, if installed,
    only to print tracebacks in colour, which our renderers never do (JSON lines, or a console
    without colours); that import was ~60 ms of every actor process's start. Rich itself stays
    importable afterwards (the CLI's live view uses it)."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_structlog_without_rich()

import structlog  # noqa: E402

_configured = False
_SECRET_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LLMSPELL_LOCAL_LLM_KEY")
_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,})")
_secrets: set[str] = set()


def add_secret(value: str | None) -> None:
    """Never print this value: logs and event payloads show [REDACTED] instead."""
    if value and len(value) >= 6:
        _secrets.add(value)


def redact(text: str) -> str:
    """`text` with every known secret and anything shaped like an API key replaced."""
    for var in _SECRET_ENV:
        add_secret(os.environ.get(var))
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    return _KEY_PATTERN.sub("[REDACTED]", text)


def _redact_event(logger: Any, method: str, event_dict: MutableMapping[str, Any]
                  ) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in event_dict.items()}


def configure_logging(*, json: bool | None = None, level: str | None = None) -> None:
    """Configure structlog once for this process (later calls are no-ops).

    JSON lines when `json` is true (the default when stderr is not a terminal, or with
    LLMSPELL_LOG_JSON=1); a readable console format otherwise. Logs go to stderr.
    """
    global _configured
    if _configured:
        return
    _configured = True
    if json is None:
        env = os.environ.get("LLMSPELL_LOG_JSON")
        json = env == "1" if env is not None else not sys.stderr.isatty()
    level_name = (level or os.environ.get("LLMSPELL_LOG_LEVEL", "WARNING")).upper()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.WARNING)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: Any) -> Any:
    """A logger bound to the given ids (job_id, actor, ...)."""
    configure_logging()
    return structlog.get_logger("llmspell").bind(**bound)
