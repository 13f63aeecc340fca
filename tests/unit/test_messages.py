"""Envelopes and their wire codec: round trips, typed payloads, and every kind of bad frame."""

from __future__ import annotations

import pickle
import time
from typing import Any

import msgpack
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.runtime.errors import CodecError, LlmspellError
from llmspell.runtime.messages import (
    DEFAULT_MAX_FRAME_BYTES,
    WIRE_VERSION,
    Envelope,
    Kind,
    Priority,
    decode,
    encode,
    new_id,
    payload_type,
    register_payload,
)


@register_payload("test.messages.point")
class Point(pydantic.BaseModel):
    x: int
    y: int


@register_payload("test.messages.shape")
class Shape(pydantic.BaseModel):
    name: str
    points: list[Point]
    tags: dict[str, str] = {}


class Unregistered(pydantic.BaseModel):
    value: int = 1


def full_envelope(**overrides: Any) -> Envelope:
    fields: dict[str, Any] = dict(
        type="agent.task",
        payload={"text": "hello", "n": [1, 2.5, None, True], "blob": b"\x00\xff"},
        kind=Kind.ASK,
        sender="job1/writer",
        recipient="job1/editor",
        job_id="job1",
        id="01890000-0000-7000-8000-000000000001",
        correlation_id="corr-1",
        causation_id="cause-1",
        stream="job1/writer->job1/editor",
        seq=42,
        priority=Priority.HIGH,
        deadline=1_900_000_000.25,
        attempt=3,
        idempotency_key="idem-1",
        trace_id="trace-1",
        span_id="span-1",
    )
    fields.update(overrides)
    return Envelope(**fields)


def frame_fields(env: Envelope) -> list[Any]:
    """The msgpack array inside a frame, to build broken frames from a valid one."""
    fields: list[Any] = msgpack.unpackb(encode(env)[1:], raw=False)
    return fields


def frame_of(fields: Any, version: int = WIRE_VERSION) -> bytes:
    return bytes((version,)) + msgpack.packb(fields, use_bin_type=True)


def codec_error(frame: Any, **kw: Any) -> CodecError:
    with pytest.raises(CodecError) as info:
        decode(frame, **kw)
    return info.value


# -- round trips ------------------------------------------------------------------------------


def test_every_field_round_trips() -> None:
    env = full_envelope()
    frame = encode(env)
    assert isinstance(frame, bytes)
    assert frame[0] == WIRE_VERSION
    back = decode(frame)
    assert back == env
    for name in Envelope.__slots__:
        assert getattr(back, name) == getattr(env, name), name
    assert back.kind is Kind.ASK
    assert back.payload["blob"] == b"\x00\xff"


def test_defaults_round_trip_and_optional_fields_stay_none() -> None:
    env = Envelope(type="ping")
    back = decode(encode(env))
    assert back == env
    assert back.payload is None
    assert back.correlation_id is None and back.deadline is None and back.span_id is None
    assert back.kind is Kind.TELL and back.priority == Priority.NORMAL and back.seq == 0


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips(kind: Kind) -> None:
    assert decode(encode(Envelope(type="t", kind=kind))).kind is kind


@pytest.mark.parametrize("frame_type", [bytes, bytearray, memoryview])
def test_decode_accepts_any_bytes_like(frame_type: type) -> None:
    env = full_envelope()
    assert decode(frame_type(encode(env))) == env


def test_registered_payload_round_trips_as_its_model() -> None:
    shape = Shape(name="tri", points=[Point(x=0, y=0), Point(x=3, y=4)], tags={"c": "red"})
    back = decode(encode(Envelope(type="draw", payload=shape)))
    assert isinstance(back.payload, Shape)
    assert isinstance(back.payload.points[1], Point)
    assert back.payload == shape
    assert payload_type("test.messages.shape") is Shape
    assert payload_type("test.messages.nothing") is None


def test_registering_twice_is_idempotent_but_a_name_cannot_be_reused() -> None:
    assert register_payload("test.messages.point")(Point) is Point
    with pytest.raises(ValueError, match="already registered"):
        register_payload("test.messages.point")(Unregistered)
    assert payload_type("test.messages.point") is Point


def test_registered_payload_is_validated_on_decode_naming_the_field_path() -> None:
    fields = frame_fields(Envelope(type="draw", payload=Shape(name="s", points=[])))
    fields[17] = {"name": "s", "points": [{"x": 1, "y": 2}, {"x": "not a number", "y": 2}]}
    error = codec_error(frame_of(fields))
    assert error.reason == "invalid_payload"
    assert "points.1.x" in str(error)
    assert "test.messages.shape" in str(error) and "'draw'" in str(error)


def test_registered_payload_missing_field_and_wrong_root_are_invalid() -> None:
    fields = frame_fields(Envelope(type="p", payload=Point(x=1, y=2)))
    fields[17] = {"x": 1}
    error = codec_error(frame_of(fields))
    assert error.reason == "invalid_payload" and "at y" in str(error)
    fields[17] = [1, 2]
    error = codec_error(frame_of(fields))
    assert error.reason == "invalid_payload" and "(root)" in str(error)


def test_unknown_payload_type_on_decode() -> None:
    fields = frame_fields(Envelope(type="p", payload=Point(x=1, y=2)))
    fields[16] = "test.messages.never_registered"
    error = codec_error(frame_of(fields))
    assert error.reason == "unknown_type"
    assert "test.messages.never_registered" in str(error)


def test_unregistered_model_cannot_be_encoded() -> None:
    with pytest.raises(CodecError) as info:
        encode(Envelope(type="p", payload=Unregistered()))
    assert info.value.reason == "unknown_type"
    assert "Unregistered" in str(info.value) and "register_payload" in str(info.value)


@pytest.mark.parametrize("payload", [object(), {1, 2}, 2**70, {"nested": [complex(1, 2)]}])
def test_unpackable_payload_cannot_be_encoded(payload: Any) -> None:
    with pytest.raises(CodecError) as info:
        encode(Envelope(type="odd", payload=payload))
    assert info.value.reason == "invalid_payload"
    assert "'odd'" in str(info.value)


# -- sizes ------------------------------------------------------------------------------------


def test_too_large_on_encode() -> None:
    env = Envelope(type="big", payload="x" * 2000)
    assert len(encode(env)) > 2000
    with pytest.raises(CodecError) as info:
        encode(env, max_bytes=1000)
    assert info.value.reason == "too_large" and "1000" in str(info.value)


def test_too_large_on_decode() -> None:
    frame = encode(Envelope(type="big", payload="x" * 2000))
    error = codec_error(frame, max_bytes=1000)
    assert error.reason == "too_large" and str(len(frame)) in str(error)
    assert decode(frame, max_bytes=len(frame)).payload == "x" * 2000


def test_default_cap_applies() -> None:
    too_big = b"\x01" + b"\x00" * DEFAULT_MAX_FRAME_BYTES
    assert codec_error(too_big).reason == "too_large"


# -- malformed frames -------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ["a string", None, 12, [1, 2], {"a": 1}])
def test_non_bytes_input(frame: Any) -> None:
    error = codec_error(frame)
    assert error.reason == "malformed" and "must be bytes" in str(error)


@pytest.mark.parametrize("frame", [b"", b"\x01"])
def test_too_short(frame: bytes) -> None:
    error = codec_error(frame)
    assert error.reason == "malformed" and "too short" in str(error)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_wire_version(version: int) -> None:
    frame = bytes((version,)) + encode(full_envelope())[1:]
    error = codec_error(frame)
    assert error.reason == "version" and f"version {version}" in str(error)


def test_truncated_frames_are_malformed() -> None:
    frame = encode(full_envelope())
    for cut in (2, len(frame) // 2, len(frame) - 1):
        error = codec_error(frame[:cut])
        assert error.reason == "malformed", cut
        assert "msgpack" in str(error) or "array" in str(error)


@pytest.mark.parametrize(
    "body", [b"\xc1", b"\xc1\xc1\xc1", b"\xdd\xff\xff\xff\xff", b"\x93\x01\x02"],
)
def test_garbage_bytes_are_malformed(body: bytes) -> None:
    assert codec_error(b"\x01" + body).reason == "malformed"


def test_trailing_bytes_are_malformed() -> None:
    assert codec_error(encode(full_envelope()) + b"\x00").reason == "malformed"


@pytest.mark.parametrize("fields", [{"id": "x"}, "text", 7, None])
def test_frame_that_is_not_an_array(fields: Any) -> None:
    error = codec_error(frame_of(fields))
    assert error.reason == "malformed" and "array of 18" in str(error)


@pytest.mark.parametrize("delta", [-1, 1, -17])
def test_wrong_array_length(delta: int) -> None:
    fields = frame_fields(full_envelope())
    fields = fields[:delta] if delta < 0 else [*fields, None]
    error = codec_error(frame_of(fields))
    assert error.reason == "malformed" and "array of 18" in str(error)


_BAD_FIELDS = [
    (0, 5, "id"),
    (1, 3, "kind"),
    (1, "shout", "kind"),
    (2, None, "type"),
    (3, 1.5, "sender"),
    (4, [], "recipient"),
    (5, {}, "job_id"),
    (6, 1, "correlation_id"),
    (7, b"bytes", "causation_id"),
    (8, None, "stream"),
    (9, -1, "seq"),
    (9, "1", "seq"),
    (9, 1.0, "seq"),
    (9, True, "seq"),
    (10, -2, "priority"),
    (10, None, "priority"),
    (11, "tomorrow", "deadline"),
    (11, [1], "deadline"),
    (12, -5, "attempt"),
    (12, 0.5, "attempt"),
    (13, 9, "idempotency_key"),
    (14, False, "trace_id"),
    (15, 1, "span_id"),
    (16, None, "payload type"),
    (16, 3, "payload type"),
]


@pytest.mark.parametrize(("index", "bad", "name"), _BAD_FIELDS)
def test_wrong_field_types_name_the_field(index: int, bad: Any, name: str) -> None:
    fields = frame_fields(full_envelope())
    fields[index] = bad
    error = codec_error(frame_of(fields))
    assert error.reason == "malformed"
    assert f"'{name}'" in str(error)


def test_codec_error_is_an_llmspell_error_and_survives_pickling() -> None:
    error = codec_error(b"\x09\x00")
    assert isinstance(error, LlmspellError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CodecError and copy.reason == "version" and str(copy) == str(error)


# -- the envelope itself ----------------------------------------------------------------------


def test_reply_is_addressed_back_and_correlated() -> None:
    env = full_envelope()
    reply = env.reply({"ok": True})
    assert reply.kind is Kind.REPLY and reply.type == "reply"
    assert (reply.sender, reply.recipient) == (env.recipient, env.sender)
    assert reply.correlation_id == env.id and reply.causation_id == env.id
    assert reply.job_id == env.job_id and reply.trace_id == env.trace_id
    assert reply.priority == env.priority and reply.payload == {"ok": True}
    assert reply.id != env.id
    assert env.reply(1, type="answer").type == "answer"


def test_expired() -> None:
    assert not Envelope(type="t").expired()
    assert Envelope(type="t", deadline=time.time() - 1).expired()
    assert not Envelope(type="t", deadline=time.time() + 60).expired()
    assert Envelope(type="t", deadline=100.0).expired(now=101.0)
    assert not Envelope(type="t", deadline=100.0).expired(now=99.0)


def test_ids_are_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert ids == sorted(ids)
    assert Envelope(type="a").id != Envelope(type="a").id


# -- property: random envelopes round-trip ----------------------------------------------------

_text = st.text(max_size=20)
_opt_text = st.none() | _text
_plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | _text | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_envelopes = st.builds(
    Envelope,
    type=_text,
    payload=_plain | st.builds(Point, x=st.integers(-1000, 1000), y=st.integers(-1000, 1000)),
    kind=st.sampled_from(list(Kind)),
    sender=_text,
    recipient=_text,
    job_id=_text,
    id=_text,
    correlation_id=_opt_text,
    causation_id=_opt_text,
    stream=_text,
    seq=st.integers(0, 2**63),
    priority=st.integers(0, 10),
    deadline=st.none() | st.floats(allow_nan=False),
    attempt=st.integers(0, 1000),
    idempotency_key=_opt_text,
    trace_id=_opt_text,
    span_id=_opt_text,
)


@settings(max_examples=150, deadline=None)
@given(env=_envelopes)
def test_random_envelopes_round_trip(env: Envelope) -> None:
    frame = encode(env)
    assert decode(frame) == env
    assert encode(decode(frame)) == frame


@settings(max_examples=150, deadline=None)
@given(junk=st.binary(max_size=64))
def test_random_bytes_never_escape_as_anything_but_codec_error(junk: bytes) -> None:
    try:
        decode(b"\x01" + junk)
    except CodecError as error:
        assert error.reason in {"malformed", "unknown_type", "invalid_payload"}
