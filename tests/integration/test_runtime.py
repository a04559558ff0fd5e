"""The shared runtime, through real services: discovery, health, reflection, auth, errors,
limits, metrics and graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import google_crc32c
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import pylon
from pylon.health import check_health
from pylon.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from pylon.registry.v1 import registry_pb2, registry_pb2_grpc
from pylon_services.localstack.procs import free_port, wait_until
from tests.support.platform import ADMIN_KEY

EXPECTED = {
    "ingest": "pylon.ingest.v1.IngestService",
    "scheduler": "pylon.scheduler.v1.SchedulerService",
    "registry": "pylon.registry.v1.RegistryService",
    "gateway": "pylon.gateway.v1.GatewayService",
}


def test_discovery_lists_every_service(admin_client, platform):
    assert admin_client.endpoints() == platform.addresses


@pytest.mark.parametrize("svc", sorted(EXPECTED))
def test_health_and_reflection_on_every_service(platform, svc):
    with grpc.insecure_channel(platform.addresses[svc]) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", EXPECTED[svc]):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert {EXPECTED[svc], "grpc.health.v1.Health", "pylon.common.v1.PlatformService"} <= services
    if svc == "registry":
        assert "pylon.admin.v1.AdminService" in services


def _registry(platform):
    return registry_pb2_grpc.RegistryServiceStub(grpc.insecure_channel(platform.addresses["registry"]))


@pytest.mark.parametrize("metadata,why", [
    ((), "missing API key"),
    ((("authorization", "Bearer pyl_nosuchkey_abcdef"),), "invalid API key"),
    ((("authorization", "Bearer not-even-a-pylon-key"),), "invalid API key"),
    ((("authorization", "Basic dXNlcjpwYXNz"),), "missing API key"),
])
def test_unauthenticated_calls_are_refused(platform, metadata, why):
    with pytest.raises(grpc.RpcError) as e:
        _registry(platform).ListModels(registry_pb2.ListModelsRequest(), metadata=metadata)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert why in e.value.details()


def test_revoked_key_stops_working(admin_client, platform):
    name, token = admin_client.admin.create_key("revoked", "viewer")
    with pylon.Client(platform.addresses["gateway"], token) as c:
        assert c.admin.whoami().tenant == "revoked"
        admin_client.admin.delete_key(name)
        time.sleep(5.2)  # the per-process auth cache holds an answer for PYLON_AUTH_CACHE_TTL_S (5 s)
        with pytest.raises(pylon.UnauthenticatedError):
            c.admin.whoami()


def test_other_tenants_resources_are_not_found(tenant_clients, tmp_path):
    acme, globex = tenant_clients["acme"], tenant_clients["globex"]
    path = tmp_path / "secret.txt"
    path.write_text("acme's private data\n" * 10)
    version = acme.datasets.upload(str(path), "private")
    assert version.name.startswith("tenants/acme/")
    with pytest.raises(pylon.NotFoundError):
        globex.datasets.get(version.name.rsplit("/versions/", 1)[0])
    with pytest.raises(pylon.NotFoundError):
        globex.datasets.get("tenants/acme/datasets/private", version="latest")
    assert "private" not in [d.name.rsplit("/", 1)[1] for d in globex.datasets.list()]


def test_viewer_cannot_write_and_non_admin_cannot_manage_keys(tenant_clients, tmp_path):
    viewer, acme = tenant_clients["viewer"], tenant_clients["acme"]
    path = tmp_path / "a.txt"
    path.write_text("hello\n")
    with pytest.raises(pylon.PermissionDeniedError, match="needs 'editor'"):
        viewer.datasets.upload(str(path), "nope")
    with pytest.raises(pylon.PermissionDeniedError):
        acme.admin.create_key("acme", "admin")
    me = viewer.admin.whoami()
    assert (me.tenant, me.role, me.api_key.startswith("apiKeys/")) == ("acme", "viewer", True)


def test_invalid_arguments_carry_field_violations(tenant_clients):
    acme = tenant_clients["acme"]
    with pytest.raises(pylon.InvalidArgumentError) as e:
        acme.call(acme.registry.CreateModel, registry_pb2.CreateModelRequest(model_id="Bad Name!"))
    assert e.value.violations and e.value.violations[0].field == "model_id"
    assert "lowercase" in e.value.violations[0].description
    assert e.value.request_id
    with pytest.raises(pylon.InvalidArgumentError) as e:
        acme.jobs.submit({"workers": 2000, "resources": {"gpus": -1}})
    fields = {v.field for v in e.value.violations}
    assert {"spec.workers", "spec.resources", "spec.workload"} <= fields
    with pytest.raises(pylon.InvalidArgumentError, match="not of the form"):
        acme.jobs.get("tenants/acme/models/x")


def test_unimplemented_rpc_says_so_without_a_traceback(tenant_clients):
    acme = tenant_clients["acme"]
    unknown = acme._channel(acme.endpoints()["registry"]).unary_unary(
        "/pylon.registry.v1.RegistryService/NoSuchMethod",
        request_serializer=registry_pb2.DeleteModelRequest.SerializeToString,
        response_deserializer=registry_pb2.DeleteModelResponse.FromString)
    with pytest.raises(pylon.PylonError) as e:
        acme.call(unknown, registry_pb2.DeleteModelRequest(name="tenants/acme/models/x"))
    assert e.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert "Traceback" not in e.value.message


def test_unreachable_redis_is_unavailable_not_internal(redis_server):
    """A handler that loses the platform's Redis answers UNAVAILABLE (retry), not INTERNAL (bug)."""
    import asyncio

    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from pylon.engine.v1 import engine_pb2, engine_pb2_grpc
    from pylon_services.runtime.server import PylonServer, ServiceParts
    from pylon_services.runtime.settings import Settings

    class Down(engine_pb2_grpc.EngineServiceServicer):
        async def GetEngineInfo(self, request, context):  # noqa: N802 - the RPC's name
            raise RedisConnectionError("Error 111 connecting to 10.9.8.7:6379. Connection refused.")

    async def main() -> tuple[grpc.StatusCode, str]:
        r = aioredis.from_url(redis_server.url)
        parts = ServiceParts(name="down", servicers=[
            (engine_pb2_grpc.add_EngineServiceServicer_to_server, Down(), "pylon.engine.v1.EngineService")])
        server = PylonServer(Settings(port=0, metrics_port=-1, admin_key=ADMIN_KEY, redis_url=redis_server.url), r, parts)
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = engine_pb2_grpc.EngineServiceStub(ch)
                try:
                    await stub.GetEngineInfo(engine_pb2.GetEngineInfoRequest(),
                                             metadata=(("authorization", f"Bearer {ADMIN_KEY}"),))
                except grpc.aio.AioRpcError as e:
                    return e.code(), e.details() or ""
            raise AssertionError("the call did not fail")
        finally:
            await server.stop(1.0)
            await r.aclose()

    code, details = asyncio.run(main())
    assert code == grpc.StatusCode.UNAVAILABLE and "Redis is unreachable" in details, (code, details)
    assert "10.9.8.7" not in details and "6379" not in details  # internal addresses stay in the server log


def test_oversized_message_is_resource_exhausted(platform):
    big = "x" * (17 * 1024 * 1024)  # over the 16 MiB default limit
    opts = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(platform.addresses["registry"], options=opts) as ch:
        with pytest.raises(grpc.RpcError) as e:
            registry_pb2_grpc.RegistryServiceStub(ch).GetModel(
                registry_pb2.GetModelRequest(name=big), metadata=(("authorization", f"Bearer {ADMIN_KEY}"),))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_request_id_is_echoed_and_metrics_count_codes(platform):
    stub = _registry(platform)
    md = (("authorization", f"Bearer {ADMIN_KEY}"), ("x-request-id", "test-req-42"))
    _, call = stub.ListModels.with_call(registry_pb2.ListModelsRequest(parent="tenants/acme"), metadata=md)
    assert ("x-request-id", "test-req-42") in tuple(call.trailing_metadata())
    with pytest.raises(grpc.RpcError):
        stub.GetModel(registry_pb2.GetModelRequest(name="tenants/acme/models/missing"), metadata=md)
    port = platform.servers["registry"].metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    ok = 'grpc_server_handled_total{grpc_code="OK",grpc_method="ListModels",grpc_service="pylon.registry.v1.RegistryService"}'
    assert ok in text
    assert 'grpc_code="NOT_FOUND",grpc_method="GetModel"' in text
    assert "grpc_server_handling_seconds_bucket" in text


def test_sigterm_drains_an_in_flight_upload(redis_server, ray_cluster, tmp_path):
    """SIGTERM mid-upload: the upload in flight completes, new calls are refused, the process exits 0."""
    port = free_port()
    env = {**os.environ, "PYLON_PORT": str(port), "PYLON_REDIS_URL": redis_server.url, "PYLON_METRICS_PORT": "-1",
           "PYLON_RAY_ADDRESS": ray_cluster.address, "PYLON_RAY_NODE_IP_ADDRESS": "127.0.0.1",
           "PYLON_OBJECT_STORE_URL": f"file://{tmp_path}/objects", "PYLON_ADMIN_KEY": ADMIN_KEY,
           "PYLON_SHUTDOWN_GRACE_S": "20"}
    proc = subprocess.Popen([sys.executable, "-m", "pylon_services.ingest"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: check_health(address) == "SERVING", 60, "ingest", proc)
        chunks_sent = []
        terminated = threading.Event()
        health_during_drain: list[str] = []

        def messages():
            yield ingest_pb2.UploadDatasetVersionRequest(header=ingest_pb2.UploadHeader(
                dataset="tenants/acme/datasets/drain", path="d.txt", format=ingest_pb2.DATA_FORMAT_TEXT))
            for i in range(10):
                data = f"line {i}\n".encode()
                chunks_sent.append(i)
                yield ingest_pb2.UploadDatasetVersionRequest(
                    chunk=ingest_pb2.UploadChunk(data=data, crc32c=google_crc32c.value(data)))
                if i == 2:
                    proc.send_signal(signal.SIGTERM)
                    terminated.set()
                if i == 5:
                    health_during_drain.append(check_health(address, timeout=2))
                time.sleep(0.2)

        with grpc.insecure_channel(address) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            resp = stub.UploadDatasetVersion(messages(), metadata=(("authorization", f"Bearer {ADMIN_KEY}"),),
                                             timeout=30)
        assert terminated.is_set() and len(chunks_sent) == 10
        assert health_during_drain and health_during_drain[0] != "SERVING"  # new work is turned away
        assert resp.version.record_count == 10
        assert proc.wait(30) == 0
        output = proc.stdout.read().decode()
        assert '"msg": "shutting down"' in output and '"msg": "stopped"' in output
        assert check_health(address, timeout=1) == "UNREACHABLE"
    finally:
        if proc.poll() is None:
            proc.kill()


_BUSY_SERVICE = """
import asyncio, sys, time
from pylon.engine.v1 import engine_pb2, engine_pb2_grpc
from pylon_services.runtime.server import ServiceParts, main

class Busy(engine_pb2_grpc.EngineServiceServicer):
    async def GetEngineInfo(self, request, context):
        print("busy", file=sys.stderr, flush=True)
        await asyncio.to_thread(time.sleep, 600)  # a worker thread that ignores every deadline
        return engine_pb2.GetEngineInfoResponse()

async def build(settings, redis):
    return ServiceParts("busy", [(engine_pb2_grpc.add_EngineServiceServicer_to_server, Busy(),
                                  "pylon.engine.v1.EngineService")])

main(build)
"""


def test_sigterm_ends_the_process_within_its_grace_even_with_a_busy_worker_thread(redis_server):
    """Python joins worker threads at exit; a thread stuck for ten minutes must not keep a
    service alive after SIGTERM: it ends within its grace (2 s) plus the one-second margin."""
    port = free_port()
    env = {**os.environ, "PYLON_PORT": str(port), "PYLON_REDIS_URL": redis_server.url, "PYLON_METRICS_PORT": "-1",
           "PYLON_ADMIN_KEY": ADMIN_KEY, "PYLON_SHUTDOWN_GRACE_S": "2"}
    proc = subprocess.Popen([sys.executable, "-c", _BUSY_SERVICE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: check_health(address) == "SERVING", 60, "busy service", proc)
        from pylon.engine.v1 import engine_pb2, engine_pb2_grpc

        ch = grpc.insecure_channel(address)
        future = engine_pb2_grpc.EngineServiceStub(ch).GetEngineInfo.future(
            engine_pb2.GetEngineInfoRequest(), metadata=(("authorization", f"Bearer {ADMIN_KEY}"),))
        time.sleep(1.0)  # the call is in its thread now
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        elapsed = time.monotonic() - started
        assert code == 0 and elapsed < 6.0, elapsed
        assert future.exception(5) is not None  # the caller is told, not left hanging
        output = proc.stdout.read().decode()
        assert "worker threads still busy" in output, output[-2000:]
        ch.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_work_in_a_thread_stops_when_its_callers_deadline_passes(redis_server):
    """The interceptor gives each call a budget that follows it into worker threads: a loop
    working for a caller whose deadline passed stops at its next step."""
    import asyncio

    import redis.asyncio as aioredis

    from pylon.engine.v1 import engine_pb2, engine_pb2_grpc
    from pylon_services.common import deadline
    from pylon_services.runtime.server import PylonServer, ServiceParts
    from pylon_services.runtime.settings import Settings

    steps: list[float] = []

    def walk() -> None:
        for _ in range(3000):  # 30 s unless stopped
            deadline.check("the walk")
            steps.append(time.monotonic())
            time.sleep(0.01)

    class Walker(engine_pb2_grpc.EngineServiceServicer):
        async def GetEngineInfo(self, request, context):  # noqa: N802 - the RPC's name
            await asyncio.to_thread(walk)
            return engine_pb2.GetEngineInfoResponse()

    async def main() -> tuple[grpc.StatusCode, float]:
        r = aioredis.from_url(redis_server.url)
        parts = ServiceParts(name="walker", servicers=[
            (engine_pb2_grpc.add_EngineServiceServicer_to_server, Walker(), "pylon.engine.v1.EngineService")])
        server = PylonServer(Settings(port=0, metrics_port=-1, admin_key=ADMIN_KEY, redis_url=redis_server.url), r, parts)
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                try:
                    await engine_pb2_grpc.EngineServiceStub(ch).GetEngineInfo(
                        engine_pb2.GetEngineInfoRequest(), timeout=0.5,
                        metadata=(("authorization", f"Bearer {ADMIN_KEY}"),))
                    raise AssertionError("the call did not time out")
                except grpc.aio.AioRpcError as e:
                    code = e.code()
            ended = time.monotonic()
            await asyncio.sleep(1.0)
            return code, ended
        finally:
            await server.stop(1.0)
            await r.aclose()

    code, ended = asyncio.run(main())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert steps and steps[-1] < ended + 0.3, (len(steps), steps[-1] - ended)  # stopped with the call, not 30 s on



@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe"], ids=["bad-varint", "bad-utf8"])
def test_undecodable_request_bytes_are_invalid_argument_after_auth_and_logged(platform, capsys, data):
    """Bytes that are not the method's message: INVALID_ARGUMENT naming the field ``request``
    (not UNKNOWN with a Python class name), only for an authenticated caller, with an access-log
    line carrying the request id."""
    import logging

    rpc_log = logging.getLogger("pylon.rpc")
    before = rpc_log.level
    rpc_log.setLevel(logging.INFO)
    try:
        _undecodable_calls(platform, data)
    finally:
        rpc_log.setLevel(before)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if '"undecodable-2"' in line]
    assert lines and '"INVALID_ARGUMENT"' in lines[0] and "RegistryService/GetModel" in lines[0]


def _undecodable_calls(platform, data):
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with grpc.insecure_channel(platform.addresses["registry"]) as ch:
        raw = ch.unary_unary("/pylon.registry.v1.RegistryService/GetModel",
                             request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            raw(data, metadata=(("x-request-id", "undecodable-1"),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # nothing said to a stranger about the bytes
        with pytest.raises(grpc.RpcError) as e:
            raw(data, metadata=(("authorization", f"Bearer {ADMIN_KEY}"), ("x-request-id", "undecodable-2")))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert "DecodeError" not in e.value.details() and "pylon.registry.v1.GetModelRequest" in e.value.details()
        status = rpc_status.from_call(e.value)
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details) and bad.field_violations[0].field == "request"
        streamed = ch.stream_unary("/pylon.registry.v1.RegistryService/UploadArtifact",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            streamed(iter([data]), metadata=(("authorization", f"Bearer {ADMIN_KEY}"),))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
