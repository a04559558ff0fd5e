"""Property-based fuzzing of every RPC of every service, built from the service descriptors.

For each method, hypothesis draws requests field by field from the request's descriptor: random
and boundary values per field type, resource names of every shape (Unicode digits, 5,000-digit
versions, other tenants, ``..``), oversized strings, bytes, lists and maps, unknown enum numbers,
non-finite floats in doubles and inside Structs, extreme Durations. Each is sent to the session
platform as an admin or an editor; a second test sends undecodable bytes through a generic
channel method. No call may answer INTERNAL or UNKNOWN, no unary call may outlive its deadline,
and afterwards every service is SERVING and answers a normal call.

Examples are bounded per RPC (``PYLON_FUZZ_EXAMPLES``, default 40) and derandomized, so a run is
reproducible and takes a few minutes; ``PYLON_FUZZ_SHRINK=1`` shrinks a failure to a small example.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory, struct_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from pylon.admin.v1 import admin_pb2
from pylon.common.v1 import common_pb2
from pylon.gateway.v1 import gateway_pb2
from pylon.ingest.v1 import ingest_pb2
from pylon.registry.v1 import registry_pb2
from pylon.scheduler.v1 import scheduler_pb2
from tests.support.platform import ADMIN_KEY

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("PYLON_FUZZ_EXAMPLES", "40"))
DEADLINE_S = 20.0
MAX_STREAM_MESSAGES = 20
# (server the method is served by, service descriptor)
SERVICES = [("ingest", ingest_pb2.DESCRIPTOR.services_by_name["IngestService"]),
            ("scheduler", scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"]),
            ("registry", registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]),
            ("registry", admin_pb2.DESCRIPTOR.services_by_name["AdminService"]),
            ("gateway", gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]),
            ("gateway", common_pb2.DESCRIPTOR.services_by_name["PlatformService"])]
RPCS = [(server, method) for server, service in SERVICES for method in service.methods]
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
FD = descriptor.FieldDescriptor

# -- strategies -----------------------------------------------------------------------------

# Resource names: a shape the method's resource words fit (GetModelVersion: models, versions),
# well-formed but, most of the time, for one part: an odd tenant, id or version number.
_SHAPES = ["tenants/{t}", "tenants/{t}/datasets/{i}", "tenants/{t}/datasets/{i}/versions/{n}",
           "tenants/{t}/datasets/{i}/versions/{n}/tokenizations/{i}", "tenants/{t}/datasets/{i}/uploads/{i}",
           "tenants/{t}/operations/{i}", "tenants/{t}/models/{i}", "tenants/{t}/models/{i}/versions/{n}",
           "tenants/{t}/models/{i}/aliases/{i}", "tenants/{t}/models/{i}/uploads/{i}", "tenants/{t}/jobs/{i}",
           "tenants/{t}/queues/{i}", "tenants/{t}/deployments/{i}", "tenants/{t}/workdirs/{i}", "models:/{i}@{i}",
           "models:/{i}/versions/{n}", "models:/{i}/latest", "apiKeys/{i}"]
_GOOD = {"t": ["-", "fuzz"], "i": ["x", "m-1"], "n": ["1", "latest"]}
# Hypothesis favours the first choices of a list, so the likeliest troublemakers come first.
_ODD = {"t": ["acme", "\u00b2", "", "Fuzz", "t" * 70, ".."],
        "i": ["\u00b2", "X", "", "..", "i" * 64, "a/b"],
        "n": ["\u00b2", "9" * 5000, "\u0663", "9" * 25, "0", "-1", "01", "1.5"]}


def _shapes_for(method: str) -> list[str]:
    """The shapes whose collections the method's name mentions (all shapes when none does)."""
    words = [w.lower() for w in re.findall(r"[A-Z][a-z]+", method)]
    score = {sh: sum(f"{w}s/" in sh or f"{w}s:" in sh for w in words) for sh in _SHAPES}
    fit = sorted((sh for sh in _SHAPES if score[sh]), key=lambda sh: -score[sh])  # best fits first
    return [*fit, "tenants/{t}"] if fit else _SHAPES


@st.composite
def _name(draw: st.DrawFn, shapes: list[str]) -> str:
    shape = draw(st.sampled_from(shapes))
    slots = re.findall(r"\{(\w)\}", shape)
    odd = draw(st.sampled_from([*range(len(slots) - 1, -1, -1), -1])) if slots else -1  # the last part first
    values = [draw(st.sampled_from(_ODD[k] if n == odd else _GOOD[k])) for n, k in enumerate(slots)]
    return re.sub(r"\{\w\}", lambda _m, it=iter(values): next(it), shape)


_NAMES = st.one_of(_name(_SHAPES), st.sampled_from(["tenants/-/workdirs/../../x", "file:///etc/passwd", "s3://b/k",
                                                    "tenants//jobs/", "/"]))
_SPECIAL = st.sampled_from(["", " ", "\0", "..", "../../etc/passwd", "\u00b2", "\u0663", "NaN", "-1", "1e309",
                            "null", "{}", "%s%n", "\u00e9" * 10, "\ud7ff", "a\nb", "tenants/-"])
_HUGE = st.builds(lambda ch, n: ch * n, st.sampled_from(["a", "\u00b2", "/", "\u00e9"]),
                  st.sampled_from([300, 5_000, 100_000, 1_000_000]))
STRINGS = st.one_of(_NAMES, _SPECIAL, st.text(max_size=24), _HUGE)
BYTES = st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\x1f\x8b\x08\x00garbage", b"\0" * 1_000_000]))
_I32 = st.one_of(st.sampled_from([0, 1, -1, 2, 16, 17, 1000, 2**31 - 1, -2**31]), st.integers(-2**31, 2**31 - 1))
_I64 = st.one_of(st.sampled_from([0, 1, -1, 10**12, 2**53 + 1, 2**63 - 1, -2**63]), st.integers(-2**63, 2**63 - 1))
_U32 = st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
_U64 = st.one_of(st.sampled_from([0, 1, 2**64 - 1]), st.integers(0, 2**64 - 1))
DOUBLES = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, math.nan, math.inf, -math.inf, 1e308, 5e-324, 1e12]),
                    st.floats(allow_nan=True, allow_infinity=True))
_SCALARS = {FD.CPPTYPE_INT32: _I32, FD.CPPTYPE_INT64: _I64, FD.CPPTYPE_UINT32: _U32, FD.CPPTYPE_UINT64: _U64,
            FD.CPPTYPE_DOUBLE: DOUBLES, FD.CPPTYPE_FLOAT: DOUBLES, FD.CPPTYPE_BOOL: st.booleans()}
_JSON = st.recursive(st.none() | st.booleans() | DOUBLES | st.text(max_size=10) | _SPECIAL,
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                     max_leaves=12)
_DEEP = st.builds(lambda n: _nest(n), st.sampled_from([20, 60]))


def _nest(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"x": 1}
    for _ in range(n):
        out = {"x": out}
    return out


def _to_value(v: Any, out: struct_pb2.Value) -> None:
    """Struct.update refuses some values; set each kind by hand (NaN and infinity included)."""
    if v is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, float | int):
        out.number_value = float(v)
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, list):
        out.list_value.SetInParent()
        for x in v:
            _to_value(x, out.list_value.values.add())
    else:
        out.struct_value.SetInParent()
        for k, x in v.items():
            _to_value(x, out.struct_value.fields[k])


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    for k, v in d.items():
        _to_value(v, s.fields[k])
    return s


STRUCTS = st.one_of(st.dictionaries(st.one_of(st.text(max_size=8), _SPECIAL), _JSON, max_size=4), _DEEP,
                    st.builds(lambda n: {f"k{i}": "v" * 100 for i in range(n)}, st.sampled_from([10, 2000]))
                    ).map(_struct)


NAME_FIELDS = {"name", "parent", "dataset", "model", "model_version", "deployment", "upload", "operation",
               "version", "uri", "base_model", "job", "source_uri", "datasets", "dataset_version", "api_key"}
_METHOD: list[str] = [""]  # the RPC whose request is being drawn (its resource words pick name shapes)


def _named(method: str) -> st.SearchStrategy[str]:
    return st.one_of(_name(_shapes_for(method)), STRINGS)


def _value(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.cpp_type == FD.CPPTYPE_STRING:
        if field.type == FD.TYPE_BYTES:
            return BYTES
        if field.name in NAME_FIELDS or field.name.endswith(("_name", "_uri", "_version")):
            return st.deferred(lambda: _named(_METHOD[0]))
        return STRINGS
    if field.cpp_type == FD.CPPTYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.sampled_from([-1, 99, 2**31 - 1]))
    if field.cpp_type == FD.CPPTYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _SCALARS[field.cpp_type]


def _small(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    """Short values of a field's type: what an oversized list or map repeats."""
    if field.cpp_type == FD.CPPTYPE_STRING:
        return st.binary(max_size=8) if field.type == FD.TYPE_BYTES else st.one_of(st.text(max_size=8), _SPECIAL)
    if field.cpp_type == FD.CPPTYPE_MESSAGE:
        return st.just(message_factory.GetMessageClass(field.message_type)())
    return _value(field, 3)


def _oversized(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[list[Any]]:
    return st.one_of(st.lists(_value(field, depth), max_size=3),
                     st.builds(lambda x, n: [x] * n, _small(field), st.sampled_from([100, 3000])))


def _set(msg: Message, field: descriptor.FieldDescriptor, value: Any) -> None:
    target = getattr(msg, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        for k, v in value.items():
            if value_field.cpp_type == FD.CPPTYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif field.is_repeated:
        if field.cpp_type == FD.CPPTYPE_MESSAGE:
            for v in value:
                target.add().CopyFrom(v)
        else:
            target.extend(value)
    elif field.cpp_type == FD.CPPTYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def _field(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        keys = _value(key, depth)
        values = _value(value, depth)
        return st.one_of(st.dictionaries(keys, values, max_size=3),
                         st.builds(lambda v, n: {f"k{i}" if key.cpp_type == FD.CPPTYPE_STRING else i: v
                                                 for i in range(n)}, _small(value), st.sampled_from([100, 2000])))
    if field.is_repeated:
        return _oversized(field, depth)
    return _value(field, depth)


_CACHE: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def messages(desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Requests of type ``desc``: each field set or not, at most one member of each oneof."""
    if desc.full_name == "google.protobuf.Struct":
        return STRUCTS
    if desc.full_name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        cls = message_factory.GetMessageClass(desc)
        return st.builds(lambda s, n: cls(seconds=s, nanos=n), _I64, _I32)
    key = (desc.full_name, min(depth, 3))
    if key in _CACHE:
        return _CACHE[key]
    cls = message_factory.GetMessageClass(desc)
    fields = [f for f in desc.fields if depth < 3 or f.cpp_type != FD.CPPTYPE_MESSAGE]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        for f in fields:
            oneof = f.containing_oneof
            if draw(st.integers(0, 2)) == 0:  # about a third of the fields stay unset
                continue
            if oneof is not None and len(oneof.fields) > 1 and msg.WhichOneof(oneof.name):
                continue
            _set(msg, f, draw(_field(f, depth)))
        return msg

    _CACHE[key] = strategy = build()
    return strategy


# -- calls ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channels(platform: Any) -> Iterator[dict[str, grpc.Channel]]:
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    out = {svc: grpc.insecure_channel(address, options=opts) for svc, address in platform.addresses.items()}
    yield out
    for ch in out.values():
        ch.close()


@pytest.fixture(scope="module")
def tokens(admin_client: Any) -> dict[str, str]:
    _, editor = admin_client.admin.create_key("fuzz", "editor")
    return {"admin": ADMIN_KEY, "editor": editor}


def _path(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _invoke(channel: grpc.Channel, method: descriptor.MethodDescriptor, payload: Any, token: str,
            raw: bool = False) -> grpc.StatusCode:
    """Call ``method`` with ``payload`` (a message, or bytes when ``raw``) and return its code."""
    ser = None if raw else (lambda m: m.SerializeToString())
    de = None if raw else message_factory.GetMessageClass(method.output_type).FromString
    md = (("authorization", f"Bearer {token}"),)
    path = _path(method)
    try:
        if method.client_streaming:
            factory = channel.stream_stream if method.server_streaming else channel.stream_unary
            call = factory(path, request_serializer=ser, response_deserializer=de)(
                iter(payload if isinstance(payload, list) else [payload]), metadata=md, timeout=DEADLINE_S)
        else:
            factory = channel.unary_stream if method.server_streaming else channel.unary_unary
            call = factory(path, request_serializer=ser, response_deserializer=de)(payload, metadata=md,
                                                                                  timeout=DEADLINE_S)
        if method.server_streaming:
            for n, _ in enumerate(call, start=1):
                if n >= MAX_STREAM_MESSAGES:
                    call.cancel()
                    break
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        if code in BAD_CODES or (code == grpc.StatusCode.DEADLINE_EXCEEDED and not method.server_streaming):
            note(f"{path} answered {code.name}: {(e.details() or '')[:500]}")
        return code
    return grpc.StatusCode.OK


def _check(code: grpc.StatusCode, method: descriptor.MethodDescriptor) -> None:
    assert code not in BAD_CODES, f"{_path(method)} answered {code.name}"
    if not method.server_streaming:  # a watch may wait out its deadline; a unary call may not
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{_path(method)} did not answer within {DEADLINE_S}s"


def _describe(request: Any) -> str:
    text = str(request)
    return text if len(text) <= 1500 else text[:1500] + f"... ({len(text)} characters)"


# Shrinking a failure to a small example takes minutes: on for a local hunt, off in CI.
_PHASES = [Phase.explicit, Phase.generate] + ([Phase.shrink] if os.environ.get("PYLON_FUZZ_SHRINK") else [])
_FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=_PHASES,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("server, method", RPCS, ids=[f"{s}/{m.containing_service.name}.{m.name}" for s, m in RPCS])
@_FUZZ
@given(data=st.data())
def test_no_request_makes_an_rpc_fail_internally(channels, tokens, server, method, data):
    who = data.draw(st.sampled_from(["admin", "editor"]), label="identity")
    _METHOD[0] = method.name
    request = data.draw(messages(method.input_type), label="request")
    payload = data.draw(st.lists(st.just(request), min_size=1, max_size=3)) if method.client_streaming else request
    note(f"as {who}: {_describe(request)}")
    _check(_invoke(channels[server], method, payload, tokens[who]), method)


UNDECODABLE = [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",
               b"\x0b", b"\x12\xff\xff\xff\xff\x0f"]


@pytest.mark.parametrize("server, method", RPCS, ids=[f"{s}/{m.containing_service.name}.{m.name}" for s, m in RPCS])
@_FUZZ
@given(raw=st.one_of(st.sampled_from(UNDECODABLE), st.binary(min_size=1, max_size=48)))
def test_undecodable_request_bytes_are_not_an_internal_error(channels, tokens, server, method, raw):
    note(f"bytes: {raw!r}")
    _check(_invoke(channels[server], method, raw, tokens["admin"], raw=True), method)


def test_every_service_is_healthy_and_answers_after_the_fuzz(channels, tokens, admin_client):
    for server, ch in channels.items():
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, server
    md = (("authorization", f"Bearer {tokens['editor']}"),)
    from pylon.gateway.v1 import gateway_pb2_grpc
    from pylon.ingest.v1 import ingest_pb2_grpc
    from pylon.registry.v1 import registry_pb2_grpc
    from pylon.scheduler.v1 import scheduler_pb2_grpc

    ingest_pb2_grpc.IngestServiceStub(channels["ingest"]).ListDatasets(ingest_pb2.ListDatasetsRequest(), metadata=md,
                                                                       timeout=10)
    scheduler_pb2_grpc.SchedulerServiceStub(channels["scheduler"]).ListJobs(scheduler_pb2.ListJobsRequest(),
                                                                            metadata=md, timeout=10)
    registry_pb2_grpc.RegistryServiceStub(channels["registry"]).ListModels(registry_pb2.ListModelsRequest(),
                                                                           metadata=md, timeout=10)
    gateway_pb2_grpc.GatewayServiceStub(channels["gateway"]).ListDeployments(gateway_pb2.ListDeploymentsRequest(),
                                                                             metadata=md, timeout=10)
    job = admin_client.jobs.submit({"command": {"argv": ["true"]}})
    assert admin_client.jobs.wait(job.name, timeout=120).state == "succeeded"
