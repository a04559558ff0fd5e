"""`helm test` check of a Pylon release: every service answers gRPC health with SERVING, and
refuses a made-up API key with UNAUTHENTICATED.

Runs in the Pylon image with only grpcio and grpcio-health-checking; it holds no key of the
platform. PYLON_TEST_SERVICES names the services: "gateway=host:port,ingest=host:port,...".
Exit 0 when every check passes, 1 otherwise (each failure printed).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# One read-only RPC per service: the interceptor authenticates before it decodes the request,
# so an empty body is enough to see the key refused.
AUTHENTICATED_RPC = {
    "gateway": "/pylon.gateway.v1.GatewayService/ListDeployments",
    "ingest": "/pylon.ingest.v1.IngestService/ListDatasets",
    "scheduler": "/pylon.scheduler.v1.SchedulerService/ListJobs",
    "registry": "/pylon.registry.v1.RegistryService/ListModels",
}
BAD_KEY = "pyl_helmtest_not-a-real-key"


def check_service(name: str, address: str, timeout: float) -> list[str]:
    """The failures of one service: health not SERVING, or the bad key not refused."""
    failures = []
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                failures.append(f"{name} ({address}): health is {status}")
        except grpc.RpcError as err:
            failures.append(f"{name} ({address}): health check failed: {err.code().name} {err.details()}")
            return failures
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(AUTHENTICATED_RPC[name])
        try:
            call(b"", timeout=timeout, metadata=(("authorization", f"Bearer {BAD_KEY}"),))
            failures.append(f"{name} ({address}): a bad API key was accepted")
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAUTHENTICATED:
                failures.append(f"{name} ({address}): a bad API key got {err.code().name}, not UNAUTHENTICATED")
    return failures


def main() -> int:
    services = dict(item.split("=", 1) for item in os.environ["PYLON_TEST_SERVICES"].split(",") if item)
    timeout = float(os.environ.get("PYLON_TEST_TIMEOUT_S", "10"))
    failures = []
    for name, address in sorted(services.items()):
        found = check_service(name, address, timeout)
        failures += found
        print(f"{name} {address}: {'FAIL' if found else 'ok'}", flush=True)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
