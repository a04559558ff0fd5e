"""The Pylon calls the operator makes, on the services' gRPC APIs with the SDK's stubs, error
mapping and result types (the operator is one more client of the platform)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from pylon.client import MAX_MESSAGE_BYTES, Client
from pylon.errors import from_rpc_error
from pylon.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from pylon.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from pylon.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from pylon.types import DatasetVersion, Deployment, GpuPool, Job, Operation
from pylon_operator.settings import OperatorSettings

SERVICES = ("scheduler", "gateway", "ingest")


class PylonApi:
    """Unary calls to the scheduler, gateway and ingest; every failure is a ``pylon.errors``
    PylonError (UnavailableError when a service cannot be reached)."""

    def __init__(self, endpoints: Mapping[str, str], token: str, *, timeout: float = 30.0,
                 discover: Callable[[], Mapping[str, str]] | None = None) -> None:
        self._endpoints = dict(endpoints)
        self._discover = discover
        self._token = token
        self._timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> PylonApi:
        """Addresses set per service are used as is; the others are discovered from
        ``PYLON_ADDRESS`` through PlatformService when first needed."""
        explicit = settings.explicit_endpoints()

        def discover() -> Mapping[str, str]:
            with Client(settings.address, settings.token, timeout=settings.operator_call_timeout_s) as c:
                return {**c.endpoints(), **explicit}

        return cls(explicit, settings.token, timeout=settings.operator_call_timeout_s,
                   discover=discover if settings.address else None)

    def _stub(self, service: str, cls: Callable[[grpc.Channel], Any]) -> Any:
        if service not in self._endpoints and self._discover is not None:
            self._endpoints.update(self._discover())
        address = self._endpoints.get(service)
        if not address:
            from pylon.errors import UnavailableError

            raise UnavailableError(f"no address for the {service} service (set PYLON_ADDRESS or "
                                   f"PYLON_{service.upper()}_ADDRESS)")
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        return cls(self._channels[address])

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        metadata = [("x-request-id", uuid.uuid4().hex[:16])]
        if self._token:
            metadata.append(("authorization", f"Bearer {self._token}"))
        try:
            return method(request, metadata=metadata, timeout=self._timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return self._stub("scheduler", scheduler_pb2_grpc.SchedulerServiceStub)

    def _gateway(self) -> gateway_pb2_grpc.GatewayServiceStub:
        return self._stub("gateway", gateway_pb2_grpc.GatewayServiceStub)

    def _ingest(self) -> ingest_pb2_grpc.IngestServiceStub:
        return self._stub("ingest", ingest_pb2_grpc.IngestServiceStub)

    # -- scheduler ----------------------------------------------------------------------------
    def submit_job(self, tenant: str, spec: dict[str, Any], request_id: str) -> Job:
        """SubmitJob; a spec the proto cannot hold is an InvalidArgumentError, like the server's."""
        from pylon.errors import InvalidArgumentError

        try:
            pb_spec = json_format.ParseDict(spec, scheduler_pb2.JobSpec())
        except json_format.ParseError as e:
            raise InvalidArgumentError(f"spec: {e}") from None
        req = scheduler_pb2.SubmitJobRequest(parent=f"tenants/{tenant}", spec=pb_spec, request_id=request_id)
        return Job.from_proto(self._call(self._scheduler().SubmitJob, req).job)

    def get_job(self, name: str) -> Job:
        return Job.from_proto(self._call(self._scheduler().GetJob, scheduler_pb2.GetJobRequest(name=name)).job)

    def cancel_job(self, name: str) -> Job:
        return Job.from_proto(self._call(self._scheduler().CancelJob, scheduler_pb2.CancelJobRequest(name=name)).job)

    def pending_jobs(self, tenant: str, page_size: int = 500) -> list[Job]:
        """Every PENDING job of the tenant, all pages."""
        out: list[Job] = []
        token = ""
        while True:
            req = scheduler_pb2.ListJobsRequest(parent=f"tenants/{tenant}", page_size=page_size, page_token=token,
                                                states=[scheduler_pb2.JOB_STATE_PENDING])
            resp = self._call(self._scheduler().ListJobs, req)
            out.extend(Job.from_proto(j) for j in resp.jobs)
            token = resp.next_page_token
            if not token:
                return out

    def cluster(self) -> list[GpuPool]:
        resp = self._call(self._scheduler().GetCluster, scheduler_pb2.GetClusterRequest())
        return [GpuPool.from_proto(p) for p in resp.pools]

    # -- gateway ------------------------------------------------------------------------------
    def create_deployment(self, tenant: str, deployment_id: str, fields: dict[str, Any], request_id: str
                          ) -> Deployment:
        from pylon.errors import InvalidArgumentError

        try:
            dep = json_format.ParseDict(fields, gateway_pb2.Deployment())
        except json_format.ParseError as e:
            raise InvalidArgumentError(f"spec: {e}") from None
        req = gateway_pb2.CreateDeploymentRequest(parent=f"tenants/{tenant}", deployment_id=deployment_id,
                                                  deployment=dep, request_id=request_id)
        return Deployment.from_proto(self._call(self._gateway().CreateDeployment, req).deployment)

    def get_deployment(self, name: str) -> Deployment:
        req = gateway_pb2.GetDeploymentRequest(name=name)
        return Deployment.from_proto(self._call(self._gateway().GetDeployment, req).deployment)

    def scale_deployment(self, name: str, replicas: int) -> Deployment:
        req = gateway_pb2.ScaleDeploymentRequest(name=name, replicas=replicas)
        return Deployment.from_proto(self._call(self._gateway().ScaleDeployment, req).deployment)

    def update_deployment_sharing(self, name: str, shared_with: list[str], etag: str = "") -> Deployment:
        """UpdateDeploymentSharing: the whole new list; with ``etag``, only if still current."""
        req = gateway_pb2.UpdateDeploymentSharingRequest(name=name, shared_with=shared_with, etag=etag)
        return Deployment.from_proto(self._call(self._gateway().UpdateDeploymentSharing, req).deployment)

    def delete_deployment(self, name: str) -> None:
        self._call(self._gateway().DeleteDeployment, gateway_pb2.DeleteDeploymentRequest(name=name))

    # -- ingest -------------------------------------------------------------------------------
    def create_dataset(self, tenant: str, dataset_id: str, description: str, labels: dict[str, str],
                       request_id: str) -> str:
        from pylon.common.v1 import common_pb2

        req = ingest_pb2.CreateDatasetRequest(parent=f"tenants/{tenant}", dataset_id=dataset_id, description=description,
                                              labels=[common_pb2.Label(key=k, value=v) for k, v in labels.items()],
                                              request_id=request_id)
        return str(self._call(self._ingest().CreateDataset, req).dataset.name)

    def import_version(self, dataset: str, fields: dict[str, Any], request_id: str) -> Operation:
        from pylon.errors import InvalidArgumentError

        try:
            req = json_format.ParseDict(fields, ingest_pb2.ImportDatasetVersionRequest())
        except json_format.ParseError as e:
            raise InvalidArgumentError(f"spec: {e}") from None
        req.dataset, req.request_id = dataset, request_id
        return Operation.from_proto(self._call(self._ingest().ImportDatasetVersion, req).operation)

    def get_operation(self, name: str) -> Operation:
        return Operation.from_proto(self._call(self._ingest().GetOperation,
                                               ingest_pb2.GetOperationRequest(name=name)).operation)

    def get_version(self, name: str) -> DatasetVersion:
        return DatasetVersion.from_proto(self._call(self._ingest().GetDatasetVersion,
                                                    ingest_pb2.GetDatasetVersionRequest(name=name)).version)

    def delete_dataset(self, name: str) -> None:
        self._call(self._ingest().DeleteDataset, ingest_pb2.DeleteDatasetRequest(name=name))

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
