"""Standard gRPC health checks against any Pylon service."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check_health(address: str, timeout: float = 2.0) -> str:
    """'SERVING', 'NOT_SERVING', or 'UNREACHABLE'."""
    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
    except grpc.RpcError:
        return "UNREACHABLE"
