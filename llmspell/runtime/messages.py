"""Envelopes and their wire codec.

An `Envelope` is what actors exchange. Inside a process it is a plain slotted object and is
trusted; when it crosses a process it travels as a *frame*: one version byte followed by a
msgpack array. Frames are validated when decoded (a trust boundary), and every failure raises
`CodecError` naming what is wrong.

Typed payloads are pydantic models registered under a name with `register_payload`; the codec
sends the name with the data and rebuilds (and validates) the model on the other side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, TypeVar

import msgpack
import pydantic
import uuid_utils

from llmspell.runtime.errors import CodecError

WIRE_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024


class Kind(StrEnum):
    ASK = "ask"
    TELL = "tell"
    REPLY = "reply"
    EVENT = "event"
    SYSTEM = "system"


class Priority(IntEnum):
    """Lanes of a mailbox: lower values are served first."""

    SYSTEM = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


_KINDS = {k.value: k for k in Kind}


def new_id() -> str:
    """A time-ordered unique id (UUIDv7)."""
    return str(uuid_utils.uuid7())


@dataclass(slots=True)
class Envelope:
    """One message. `seq` orders messages within `stream` (one sender to one recipient)."""

    type: str
    payload: Any = None
    kind: Kind = Kind.TELL
    sender: str = ""
    recipient: str = ""
    job_id: str = ""
    id: str = field(default_factory=new_id)
    correlation_id: str | None = None
    causation_id: str | None = None
    stream: str = ""
    seq: int = 0
    priority: int = Priority.NORMAL
    deadline: float | None = None
    attempt: int = 0
    idempotency_key: str | None = None
    trace_id: str | None = None
    span_id: str | None = None

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.time()) > self.deadline

    def reply(self, payload: Any, *, type: str = "reply") -> Envelope:
        """The reply to this message, addressed back to its sender."""
        return Envelope(
            type=type,
            payload=payload,
            kind=Kind.REPLY,
            sender=self.recipient,
            recipient=self.sender,
            job_id=self.job_id,
            correlation_id=self.id,
            causation_id=self.id,
            priority=self.priority,
            trace_id=self.trace_id,
        )


# -- typed payloads ---------------------------------------------------------------------------

_payload_types: dict[str, type[pydantic.BaseModel]] = {}
_payload_names: dict[type[pydantic.BaseModel], str] = {}

M = TypeVar("M", bound=type[pydantic.BaseModel])


def register_payload(name: str) -> Callable[[M], M]:
    """Register a pydantic model as a payload type under `name` (a dotted name)."""

    def decorate(model: M) -> M:
        existing = _payload_types.get(name)
        if existing is not None and existing is not model:
            raise ValueError(f"payload type {name!r} is already registered to {existing!r}")
        _payload_types[name] = model
        _payload_names[model] = name
        return model

    return decorate


def payload_type(name: str) -> type[pydantic.BaseModel] | None:
    return _payload_types.get(name)


# -- codec ------------------------------------------------------------------------------------

# Field order on the wire. Changing it means bumping WIRE_VERSION.
_STR_FIELDS = ("id", "type", "sender", "recipient", "job_id", "stream")
_OPT_STR_FIELDS = ("correlation_id", "causation_id", "idempotency_key", "trace_id", "span_id")
_FIELD_COUNT = 18


def _encode_payload(payload: Any) -> tuple[str, Any]:
    if isinstance(payload, pydantic.BaseModel):
        name = _payload_names.get(type(payload))
        if name is None:
            raise CodecError(
                f"payload model {type(payload).__qualname__} is not registered "
                "(decorate it with @register_payload('name'))",
                reason="unknown_type",
            )
        return name, payload.model_dump(mode="json")
    return "", payload


def encode(env: Envelope, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Encode an envelope as a frame. Raises CodecError if it cannot be packed or is too large."""
    ptype, pdata = _encode_payload(env.payload)
    try:
        body: bytes = msgpack.packb(
            [
                env.id, env.kind.value, env.type, env.sender, env.recipient, env.job_id,
                env.correlation_id, env.causation_id, env.stream, env.seq, int(env.priority),
                env.deadline, env.attempt, env.idempotency_key, env.trace_id, env.span_id,
                ptype, pdata,
            ],
            use_bin_type=True,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(
            f"message {env.type!r}: payload cannot be encoded: {exc}", reason="invalid_payload"
        ) from None
    frame = bytes((WIRE_VERSION,)) + body
    if len(frame) > max_bytes:
        raise CodecError(
            f"message {env.type!r} is {len(frame)} bytes, over the cap of {max_bytes}",
            reason="too_large",
        )
    return frame


def decode(frame: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Envelope:
    """Decode and validate a frame from another process."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise CodecError(f"frame must be bytes, got {type(frame).__name__}")
    if len(frame) > max_bytes:
        raise CodecError(f"frame is {len(frame)} bytes, over the cap of {max_bytes}",
                         reason="too_large")
    if len(frame) < 2:
        raise CodecError(f"frame is {len(frame)} bytes, too short to hold a message")
    if frame[0] != WIRE_VERSION:
        raise CodecError(
            f"frame has wire version {frame[0]}, this runtime speaks {WIRE_VERSION}",
            reason="version",
        )
    try:
        fields = msgpack.unpackb(memoryview(frame)[1:], raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        raise CodecError(f"frame is not valid msgpack: {exc}") from None
    if not isinstance(fields, list) or len(fields) != _FIELD_COUNT:
        raise CodecError(f"frame must hold an array of {_FIELD_COUNT} fields")
    (mid, kind, mtype, sender, recipient, job_id, corr, cause, stream, seq, prio, deadline,
     attempt, idem, trace, span, ptype, pdata) = fields
    _check(mid, str, "id")
    _check(mtype, str, "type")
    _check(sender, str, "sender")
    _check(recipient, str, "recipient")
    _check(job_id, str, "job_id")
    _check(stream, str, "stream")
    for value, name in ((corr, "correlation_id"), (cause, "causation_id"),
                        (idem, "idempotency_key"), (trace, "trace_id"), (span, "span_id")):
        if value is not None:
            _check(value, str, name)
    for value, name in ((seq, "seq"), (prio, "priority"), (attempt, "attempt")):
        if type(value) is not int or value < 0:
            raise CodecError(f"field {name!r} must be a non-negative int, got {value!r}")
    if deadline is not None and not isinstance(deadline, (int, float)):
        raise CodecError(f"field 'deadline' must be a number or nil, got {deadline!r}")
    kind_value = _KINDS.get(kind) if isinstance(kind, str) else None
    if kind_value is None:
        raise CodecError(f"field 'kind' must be one of {sorted(_KINDS)}, got {kind!r}")
    _check(ptype, str, "payload type")
    return Envelope(
        type=mtype, payload=_decode_payload(mtype, ptype, pdata), kind=kind_value, sender=sender,
        recipient=recipient, job_id=job_id, id=mid, correlation_id=corr, causation_id=cause,
        stream=stream, seq=seq, priority=prio, deadline=deadline, attempt=attempt,
        idempotency_key=idem, trace_id=trace, span_id=span,
    )


def _check(value: Any, kind: type, name: str) -> None:
    if not isinstance(value, kind):
        raise CodecError(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")


def _decode_payload(mtype: str, ptype: str, data: Any) -> Any:
    if not ptype:
        return data
    model = _payload_types.get(ptype)
    if model is None:
        raise CodecError(f"message {mtype!r}: unknown payload type {ptype!r}",
                         reason="unknown_type")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise CodecError(
            f"message {mtype!r}: payload {ptype!r} invalid at {where}: {first['msg']}",
            reason="invalid_payload",
        ) from None
