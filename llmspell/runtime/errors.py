"""The errors of the runtime core.

Every error names what went wrong and where, so that a user can act on it without a debugger::

    LlmspellError
    ├── CodecError            a frame that cannot be decoded or encoded (bytes, version, type, size)
    ├── MailboxError
    │   ├── MailboxFull       the recipient's mailbox is at capacity and its policy is "reject"
    │   └── MailboxClosed     the recipient has stopped
    ├── ActorError
    │   ├── ActorNotFound     no actor is registered under that address
    │   ├── ActorUnavailable  the actor died or could not be reached
    │   ├── AskTimeout        no reply before the deadline
    │   └── RemoteError       the recipient's handler raised; carries the remote type and message
    ├── PatternError          an invalid topic or subscription pattern
    ├── StateError
    │   └── VersionConflict   a compare-and-set lost: carries the current version
    ├── HookCancelled         a hook cancelled the operation, with its reason
    └── Cancelled             the work was cancelled by its owner (a job, a run), with the reason
"""

from __future__ import annotations

from typing import Any


class LlmspellError(Exception):
    """Base class of every error raised by llmspell."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross processes (Ray pickles them); keyword-only constructors need this.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[LlmspellError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class CodecError(LlmspellError):
    """A frame could not be decoded (or a message encoded).

    `reason` is a short machine-readable tag (``malformed``, ``version``, ``unknown_type``,
    ``too_large``, ``invalid_payload``); the message says what exactly is wrong and where.
    """

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class MailboxError(LlmspellError):
    """A message could not be put in a mailbox."""


class MailboxFull(MailboxError):
    def __init__(self, owner: str, capacity: int) -> None:
        super().__init__(f"mailbox of {owner!r} is full ({capacity} messages)")
        self.owner = owner
        self.capacity = capacity


class MailboxClosed(MailboxError):
    def __init__(self, owner: str) -> None:
        super().__init__(f"mailbox of {owner!r} is closed (the actor has stopped)")
        self.owner = owner


class ActorError(LlmspellError):
    """An actor could not be reached or failed to answer."""

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class ActorNotFound(ActorError):
    def __init__(self, address: str, namespace: str) -> None:
        super().__init__(f"no actor named {address!r} in namespace {namespace!r}", address=address)
        self.namespace = namespace


class ActorUnavailable(ActorError):
    def __init__(self, address: str, cause: str) -> None:
        super().__init__(f"actor {address!r} is unavailable: {cause}", address=address)
        self.cause = cause


class AskTimeout(ActorError):
    def __init__(self, address: str, type: str, timeout: float) -> None:
        super().__init__(
            f"no reply from {address!r} to {type!r} within {timeout:g}s", address=address
        )
        self.type = type
        self.timeout = timeout


class RemoteError(ActorError):
    """The recipient's handler raised. The original type and message travel with it."""

    def __init__(
        self, address: str, error_type: str, message: str, traceback: str | None = None
    ) -> None:
        super().__init__(f"{address!r} raised {error_type}: {message}", address=address)
        self.error_type = error_type
        self.remote_message = message
        self.remote_traceback = traceback


class PatternError(LlmspellError, ValueError):
    """An invalid topic or subscription pattern."""


class StateError(LlmspellError):
    """A state operation failed."""


class VersionConflict(StateError):
    def __init__(self, key: str, expected: int | None, current: int | None) -> None:
        super().__init__(
            f"state key {key!r}: expected version {expected}, current version is {current}"
        )
        self.key = key
        self.expected = expected
        self.current = current


class HookCancelled(LlmspellError):
    def __init__(self, point: str, reason: str, hook: str) -> None:
        super().__init__(f"hook {hook!r} cancelled {point}: {reason}")
        self.point = point
        self.reason = reason
        self.hook = hook


class Cancelled(LlmspellError):
    """The work was cancelled by its owner; `reason` says why (a user, a budget, a deadline)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cancelled: {reason}")
        self.reason = reason
