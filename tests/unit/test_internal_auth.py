"""The internal credential engine replicas require: a real grpc.aio server with the interceptor
answers unary and streaming calls only when the channel adds the right key; health is exempt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pylon.engine.v1 import engine_pb2, engine_pb2_grpc
from pylon_services.runtime.internal_auth import EngineStub, RequireInternalKey
from pylon_services.runtime.settings import Settings


class _Engine(engine_pb2_grpc.EngineServiceServicer):
    async def GetEngineInfo(self, request: engine_pb2.GetEngineInfoRequest,
                            context: grpc.aio.ServicerContext) -> engine_pb2.GetEngineInfoResponse:
        return engine_pb2.GetEngineInfoResponse(engine="fake")

    async def Generate(self, request: engine_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[engine_pb2.GenerateResponse]:
        yield engine_pb2.GenerateResponse(text="hi")


async def _calls(port: int, key: str | None) -> tuple[str, str]:
    """(unary outcome, streaming outcome) of a channel that sends ``key`` (None: no header)."""
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub: Any = EngineStub(ch, key) if key else engine_pb2_grpc.EngineServiceStub(ch)
    out = []
    for call in (lambda: stub.GetEngineInfo(engine_pb2.GetEngineInfoRequest()),
                 lambda: _collect(stub.Generate(engine_pb2.GenerateRequest(prompt="x")))):
        try:
            await call()
            out.append("ok")
        except grpc.aio.AioRpcError as e:
            out.append(e.code().name)
    await ch.close()
    return out[0], out[1]


async def _collect(stream: grpc.aio.UnaryStreamCall) -> list[object]:
    return [piece async for piece in stream]


def test_only_the_internal_key_gets_in_and_health_stays_open():
    async def body() -> None:
        server = grpc.aio.server(interceptors=[RequireInternalKey("the-key")])
        engine_pb2_grpc.add_EngineServiceServicer_to_server(_Engine(), server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            assert await _calls(port, "the-key") == ("ok", "ok")
            assert await _calls(port, "another-key") == ("UNAUTHENTICATED", "UNAUTHENTICATED")
            assert await _calls(port, None) == ("UNAUTHENTICATED", "UNAUTHENTICATED")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:  # probes need no key
                reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(0)

    asyncio.run(body())


def test_a_server_without_a_key_refuses_everyone():
    async def body() -> None:
        server = grpc.aio.server(interceptors=[RequireInternalKey("")])
        engine_pb2_grpc.add_EngineServiceServicer_to_server(_Engine(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            assert await _calls(port, "") == ("UNAUTHENTICATED", "UNAUTHENTICATED")
        finally:
            await server.stop(0)

    asyncio.run(body())


def test_the_internal_key_is_derived_from_the_admin_key_unless_set():
    a, b = Settings(admin_key="pyl_admin_x"), Settings(admin_key="pyl_admin_x")
    assert a.internal_key == b.internal_key and a.internal_key.startswith("pyl_internal_")
    assert Settings(admin_key="pyl_admin_y").internal_key != a.internal_key
    assert Settings(admin_key="pyl_admin_x", internal_key="explicit").internal_key == "explicit"
    assert Settings().internal_key == ""
