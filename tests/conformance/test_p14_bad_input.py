"""Promise 14, bad input: hypothesis-generated frames (random bytes, well-formed frames with
wrong fields, valid envelopes) sent straight to an actor's Ray methods, specs (the runtime's,
and whole job specs through JobSpec.from_data), and tool arguments sent to a pool. Every bad
one gets a clear error (a job spec: a JobSpecError listing each problem by path, never another
exception), no actor dies (same process throughout), and the good messages interleaved with
them are all handled, in order."""

from __future__ import annotations

from typing import Any

import msgpack
import pydantic
import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmspell import Runtime
from llmspell.actors.scaling import PoolConfig
from llmspell.agents.spec import AgentSpec
from llmspell.jobs import JobSpec, JobSpecError
from llmspell.runtime.messages import WIRE_VERSION, Envelope, Kind, decode, encode
from llmspell.supervisors.supervisor import SupervisorSpec
from llmspell.tools import ToolArgumentError, ToolContext
from tests.conformance.fakes import Order, Sink

pytestmark = pytest.mark.ray

EXAMPLES = 60
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)
fields = st.lists(values, min_size=0, max_size=20)
frames = st.one_of(
    st.binary(max_size=200),
    fields.map(lambda f: bytes((WIRE_VERSION,)) + msgpack.packb(f, use_bin_type=True)),
    st.tuples(st.integers(0, 255), fields).map(
        lambda vf: bytes((vf[0],)) + msgpack.packb(vf[1], use_bin_type=True)),
)


def _good(n: int) -> bytes:
    return encode(Envelope(type="item", payload=n, kind=Kind.TELL, sender="fuzz",
                           stream="fuzz-stream", seq=n))


@pytest.fixture(scope="module")
def sink(runtime: Runtime) -> Any:
    ref = runtime.spawn(Sink, "fuzz-sink", job_id="conformance-fuzz")
    ray.get(ray.get_actor(ref.address, namespace=runtime.settings.namespace).ping.remote())
    yield ref
    runtime.kill_job("conformance-fuzz")


_good_sent = [0]


@SETTINGS
@given(frame=frames)
def test_bad_frames_get_clear_errors_and_lose_no_other_work(runtime: Runtime, sink: Any,
                                                            frame: bytes) -> None:
    handle = ray.get_actor(sink.address, namespace=runtime.settings.namespace)
    pid = ray.get(handle.ping.remote())["pid"]
    _good_sent[0] += 1
    n = _good_sent[0]
    report = ray.get(handle.deliver.remote([_good(n), frame]), timeout=60)
    try:
        decode(frame)
        bad = False
    except Exception:
        bad = True
    if bad:
        [error] = report["errors"]
        assert error["index"] == 1 and error["error_type"] == "CodecError" and error["error"]
        reply = decode(ray.get(handle.ask.remote(frame), timeout=60))
        assert reply.type == "error" and reply.payload["error_type"] == "CodecError"
    info = ray.get(handle.ping.remote())
    assert info["pid"] == pid  # the actor never died
    seen = ray.get(handle.ask.remote(encode(Envelope(type="dump", kind=Kind.ASK))), timeout=60)
    goods = [p for s, p in decode(seen).payload if s == "fuzz"]
    assert goods == list(range(1, n + 1))  # every good message handled, once, in order


SPECS = [(AgentSpec, {"name": "a", "model": "scripted:m"}),
         (SupervisorSpec, {"name": "s", "children": [{"name": "c"}]}),
         (PoolConfig, {"name": "p"})]


@SETTINGS
@given(which=st.sampled_from(range(len(SPECS))),
       extra=st.dictionaries(st.sampled_from(["name", "model", "max_turns", "children",
                                              "strategy", "intensity", "min_replicas",
                                              "max_replicas", "tools", "bogus"]), values,
                             max_size=3))
def test_bad_specs_get_errors_naming_the_field(which: int, extra: dict[str, Any]) -> None:
    cls, base = SPECS[which]
    try:
        cls(**{**base, **extra}) if cls is PoolConfig else cls.model_validate({**base, **extra})
    except pydantic.ValidationError as exc:
        assert all(e["loc"] for e in exc.errors()) or exc.errors()
        assert str(exc)
    except (ValueError, TypeError) as exc:  # PoolConfig: a dataclass, its checks name the field
        assert str(exc)


@pytest.fixture(scope="module")
def shop(runtime: Runtime) -> Any:
    # Calls wait in the router's queue until the replica is up: no need to wait for it here.
    yield runtime.spawn_pool("shop", [Order()], job_id="conformance-shop")
    runtime.kill_job("conformance-shop")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(arguments=st.one_of(values, st.dictionaries(st.sampled_from(["item", "count", "express",
                                                                    "x"]), values, max_size=4)))
def test_bad_tool_arguments_get_clear_errors(runtime: Runtime, shop: Any,
                                             arguments: Any) -> None:
    from llmspell.actors.pool import CALL, error_from_wire

    try:
        Order().validate(arguments)
        valid = True
    except ToolArgumentError:
        valid = False
    outcome = runtime.node.ask_sync(shop.address, CALL, {
        "tool": "order", "arguments": arguments, "ctx": ToolContext().to_wire()}, timeout=60)
    if valid:
        assert outcome["ok"], outcome
    else:
        error = error_from_wire(outcome["error"])
        assert isinstance(error, ToolArgumentError) and error.tool == "order" and str(error)
    stats = runtime.node.ask_sync(shop.address, "pool.stats", timeout=60)
    assert stats["replicas_failed"] == 0


# -- job specs, through JobSpec.from_data (the check of references included) --------------------

GOOD_SPEC: dict[str, Any] = {
    "name": "fuzz",
    "models": {"default": "local:m", "providers": {"local": {"base_url": "http://127.0.0.1:1/v1"}}},
    "inputs": {"topic": {"type": "string", "default": "x"}},
    "input": "About {{ topic }}",
    "agents": [{"name": "a", "model": "local:m", "tools": ["calculator"]},
               {"name": "b", "handoffs": ["a"], "template": "research"}],
    "pools": [{"name": "p", "tools": ["calculator"], "min_replicas": 1, "max_replicas": 2}],
    "hosts": {"groups": [{"name": "g", "agents": ["a"]}]},
    "pattern": {"kind": "sequential", "steps": ["a", {"agent": "b", "input": "{{ previous }}"}]},
    "hooks": [{"name": "logging"}],
    "budgets": {"max_tokens": 1000},
}
# Where a mutation lands: the top level, an agent, a pool, the pattern, a step, a host group.
PLACES: list[tuple[Any, ...]] = [(), ("agents", 0), ("agents", 1), ("pools", 0), ("pattern",),
                                 ("pattern", "steps", 1), ("hosts", "groups", 0), ("models",),
                                 ("inputs", "topic"), ("budgets",)]
KEYS = ["name", "kind", "agents", "agent", "steps", "branches", "tools", "model", "models",
        "handoffs", "pattern", "input", "inputs", "min_replicas", "max_replicas", "resources",
        "template", "type", "default", "max_turns", "providers", "hooks", "join", "k", "until",
        "when", "router", "manager", "specialists", "strategy", "quorum", "bogus", "version"]
names = st.sampled_from(["a", "b", "c", "p", "g", "calculator", "sequential", "consensus",
                         "local:m", "{{ x", "{% for %}", "", "A B", "../x"])
spec_values = st.one_of(values, names, st.lists(names, max_size=3),
                        st.lists(st.dictionaries(st.sampled_from(KEYS), st.one_of(names, values),
                                                 max_size=3), max_size=2))


def _mutate(spec: dict[str, Any], place: tuple[Any, ...], key: str, value: Any,
            delete: bool) -> dict[str, Any]:
    import copy

    data = copy.deepcopy(spec)
    target: Any = data
    for step in place:
        target = target[step]
    if delete:
        target.pop(key, None)
    else:
        target[key] = value
    return data


job_specs = st.one_of(
    values,  # not a spec at all
    st.builds(_mutate, st.just(GOOD_SPEC), st.sampled_from(PLACES), st.sampled_from(KEYS),
              spec_values, st.booleans()),
    st.builds(lambda a, b: _mutate(_mutate(GOOD_SPEC, *a), *b),  # two mistakes at once
              st.tuples(st.sampled_from(PLACES), st.sampled_from(KEYS), spec_values,
                        st.booleans()),
              st.tuples(st.sampled_from(PLACES[:1]), st.sampled_from(KEYS), spec_values,
                        st.booleans())),
)


def test_the_base_job_spec_is_good() -> None:
    assert JobSpec.from_data(GOOD_SPEC).name == "fuzz"


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=job_specs)
def test_bad_job_specs_get_a_job_spec_error_listing_paths_and_messages(data: Any) -> None:
    try:
        JobSpec.from_data(data, source="fuzz.yaml")
    except JobSpecError as exc:  # anything else escapes and fails the test
        assert exc.errors, "an error with nothing listed"
        for error in exc.errors:
            assert isinstance(error.get("path"), str) and error["path"], error
            assert isinstance(error.get("message"), str) and error["message"].strip(), error
        assert str(exc).startswith("fuzz.yaml: ")


@pytest.mark.parametrize("template", [[], {"name": "research"}])
def test_a_template_that_is_not_a_name_is_a_job_spec_error(template: Any) -> None:
    data = {**GOOD_SPEC, "agents": [{"name": "a", "template": template}],
            "pools": [], "hosts": {}, "pattern": None}
    with pytest.raises(JobSpecError) as info:
        JobSpec.from_data(data)
    assert [e["path"] for e in info.value.errors] == ["agents[0].template"]
