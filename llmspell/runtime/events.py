"""Events and topic patterns.

An event is a fact that happened: a dotted topic (``agent.writer.tool.call``), the job it belongs
to, who published it, its sequence number in the job's log, a timestamp and a payload of plain
data. Events are slotted objects inside a process and compact arrays on the wire.

Patterns select topics: ``*`` matches exactly one segment, ``**`` matches any number of segments
(zero included), anything else matches itself. ``agent.*.tool.*`` and ``job.**`` are patterns.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache
from typing import Any

import msgpack
import pydantic

from llmspell.runtime.errors import CodecError, PatternError

_SEGMENT = re.compile(r"^[A-Za-z0-9_\-:<>@/]+$")


_UNSET: Any = object()
# The schema version of events between processes and in the event log. A reader refuses a
# version it does not know with a clear error rather than misreading its fields.
EVENT_SCHEMA = 1
_TAG_PREFIX = "llmspell.events/"
_BATCH_TAG = f"{_TAG_PREFIX}{EVENT_SCHEMA}"


def pack_payload(payload: Any) -> bytes:
    """msgpack a payload. An event is never lost for an odd payload: its text form is kept."""
    try:
        packed: bytes = msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        packed = msgpack.packb({"unencodable": repr(payload)[:2000], "error": str(exc)})
    return packed


class Event:
    """One event. `seq` is its position in its job's log (0 until a sequencing bus sets it).

    Between processes the payload travels as msgpack bytes and is decoded only when read, so
    the hub can number, log and forward events without ever decoding their payloads.
    """

    __slots__ = ("_payload", "_raw", "job_id", "sender", "seq", "topic", "ts")

    def __init__(
        self,
        topic: str,
        payload: Any = None,
        *,
        job_id: str = "",
        sender: str = "",
        seq: int = 0,
        ts: float | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.topic = topic
        self._payload = payload if raw is None else _UNSET
        self._raw = raw
        self.job_id = job_id
        self.sender = sender
        self.seq = seq
        self.ts = time.time() if ts is None else ts

    def __repr__(self) -> str:
        return (f"Event({self.topic!r}, job_id={self.job_id!r}, seq={self.seq}, "
                f"sender={self.sender!r}, payload={self.payload!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]

    @property
    def payload(self) -> Any:
        if self._payload is _UNSET:
            try:
                self._payload = msgpack.unpackb(self._raw, raw=False, strict_map_key=False)
            except Exception as exc:  # msgpack raises several unrelated types for bad bytes
                self._payload = {"undecodable": True, "error": str(exc)}
        return self._payload

    @payload.setter
    def payload(self, value: Any) -> None:
        self._payload = value
        self._raw = None

    def raw_payload(self) -> bytes:
        """The payload as msgpack bytes (packed once, then kept)."""
        if self._raw is None:
            self._raw = pack_payload(self._payload)
        return self._raw

    def to_wire(self) -> list[Any]:
        return [self.topic, self.job_id, self.sender, self.seq, self.ts, self.payload]

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "job_id": self.job_id, "sender": self.sender,
                "seq": self.seq, "ts": self.ts, "payload": self.payload}

    @classmethod
    def from_wire(cls, item: Any, *, where: str = "event") -> Event:
        """Rebuild an event received from another process, checking its shape."""
        if not isinstance(item, list) or len(item) != 6:
            raise CodecError(f"{where}: must be an array of 6 fields "
                             "[topic, job_id, sender, seq, ts, payload]")
        topic, job_id, sender, seq, ts, payload = item
        if not isinstance(topic, str) or not _valid_topic(topic):
            raise CodecError(f"{where}: field 'topic' must be a dotted topic name, got {topic!r}")
        if not isinstance(job_id, str) or not isinstance(sender, str):
            raise CodecError(f"{where} {topic!r}: fields 'job_id' and 'sender' must be strings")
        if type(seq) is not int or seq < 0:
            raise CodecError(f"{where} {topic!r}: field 'seq' must be a non-negative int")
        if not isinstance(ts, (int, float)):
            raise CodecError(f"{where} {topic!r}: field 'ts' must be a number")
        return cls(topic, payload, job_id=job_id, sender=sender, seq=seq, ts=float(ts))


def plain(payload: Any) -> Any:
    """Event payloads are plain data: pydantic models are dumped to JSON-compatible dicts."""
    if isinstance(payload, pydantic.BaseModel):
        return payload.model_dump(mode="json")
    return payload


def pack_events(events: list[Event]) -> bytes:
    """A batch of events for another process; payloads stay msgpack bytes inside it."""
    packed: bytes = msgpack.packb(
        [_BATCH_TAG, [[e.topic, e.job_id, e.sender, e.seq, e.ts, e.raw_payload()]
                      for e in events]],
        use_bin_type=True,
    )
    return packed


def unpack_events(data: bytes) -> list[Event]:
    """Decode a batch of events from another process. Raises CodecError on a bad batch."""
    try:
        batch = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        raise CodecError(f"event batch is not valid msgpack: {exc}") from None
    if (isinstance(batch, list) and len(batch) == 2 and isinstance(batch[0], str)
            and batch[0].startswith(_TAG_PREFIX) and batch[0] != _BATCH_TAG):
        raise CodecError(f"event batch has schema version {batch[0][len(_TAG_PREFIX):]!r}; "
                         f"this runtime reads version {EVENT_SCHEMA} (run the same llmspell "
                         "version in every process of a job)", reason="version")
    if not (isinstance(batch, list) and len(batch) == 2 and batch[0] == _BATCH_TAG
            and isinstance(batch[1], list)):
        raise CodecError(f"an event batch must be [{_BATCH_TAG!r}, [events...]]")
    events = []
    for index, item in enumerate(batch[1]):
        event = Event.from_wire(item, where=f"event {index} of the batch")
        if not isinstance(event._payload, bytes) or event._raw is not None:
            raise CodecError(f"event {index} of the batch: payload must be msgpack bytes")
        event._raw, event._payload = event._payload, _UNSET
        events.append(event)
    return events


# -- topics and patterns ----------------------------------------------------------------------


def check_topic(topic: str) -> None:
    """A topic is dotted segments of letters, digits and _-:<>@/ with no wildcards."""
    if not isinstance(topic, str) or not topic:
        raise PatternError(f"topic must be a non-empty string, got {topic!r}")
    for part in topic.split("."):
        if not _SEGMENT.match(part):
            raise PatternError(f"invalid topic {topic!r}: bad segment {part!r}")


@lru_cache(maxsize=4096)
def _valid_topic(topic: str) -> bool:
    try:
        check_topic(topic)
    except PatternError:
        return False
    return True


class TopicPattern:
    """A compiled subscription pattern."""

    __slots__ = ("_regex", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._regex = _compile(text)

    def matches(self, topic: str) -> bool:
        # Every segment is matched with its leading dot, so "**" can stand for zero segments.
        return self._regex.match("." + topic) is not None

    def __repr__(self) -> str:
        return f"TopicPattern({self.text!r})"


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise PatternError(f"pattern must be a non-empty string, got {pattern!r}")
    regex = ""
    for part in pattern.split("."):
        if part == "**":
            regex += r"(?:\.[^.]+)*"
        elif part == "*":
            regex += r"\.[^.]+"
        elif _SEGMENT.match(part):
            regex += r"\." + re.escape(part)
        else:
            raise PatternError(
                f"invalid pattern {pattern!r}: segment {part!r} must be a name, '*' or '**'"
            )
    return re.compile(regex + r"\Z")


def matches(pattern: str, topic: str) -> bool:
    return TopicPattern(pattern).matches(topic)
