"""Deployments: deploy, list, get, scale, share, delete."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from pylon.errors import FailedPreconditionError, UnavailableError
from pylon.gateway.v1 import gateway_pb2
from pylon.paging import Paged
from pylon.resources._base import _name, _Resource
from pylon.types import Autoscaling, Deployment, Rollout, ServedModel


class Deployments(_Resource):
    def deploy(self, name: str, model_uri: str, *, replicas: int = 0, engine: str = "torch", gpus: float = 0,
               gpu_types: list[str] | None = None, wait: bool = True, timeout: float = 600,
               request_id: str | None = None, autoscaling: Autoscaling | None = None,
               rollout: Rollout | None = None, priority_class: str = "",
               shared_with: Sequence[str] = ()) -> Deployment:
        """Deploy ``models:/name@alias`` (or a version); with ``wait``, return once a replica
        serves (raises FailedPreconditionError as soon as every replica job has failed).
        ``replicas`` 0 means 1, or the autoscaling minimum (at least 1). ``autoscaling`` scales
        between its bounds on load (to zero when min_replicas is 0); ``rollout`` makes a
        deployment of an alias roll its later moves out as canaries. ``priority_class`` ("low",
        "normal" or "high"; "" means "high") is the scheduler priority of its replica jobs: above a
        running preemptible job's, a replica that finds no free GPU preempts it. ``shared_with``
        names other tenants (or "*": every tenant) that may send requests to it, as their own."""
        dep = gateway_pb2.Deployment(model_uri=model_uri, replicas=replicas, engine=engine, gpus_per_replica=gpus,
                                     gpu_types=gpu_types or [], priority_class=priority_class,
                                     shared_with=list(shared_with))
        if autoscaling is not None:
            dep.autoscaling.CopyFrom(autoscaling.to_proto())
        if rollout is not None:
            dep.rollout.CopyFrom(rollout.to_proto())
        req = gateway_pb2.CreateDeploymentRequest(deployment_id=name, deployment=dep,
                                                  request_id=request_id or os.urandom(8).hex())
        out = Deployment.from_proto(self._c.call(self._c.gateway.CreateDeployment, req).deployment)
        return self.wait_ready(name, timeout) if wait else out

    def wait_ready(self, name: str, timeout: float = 600) -> Deployment:
        """Poll until a replica serves; FailedPreconditionError once the deployment is FAILED,
        UnavailableError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            dep = self.get(name)
            if dep.state in ("ready", "idle"):
                return dep
            if dep.state == "failed":
                raise FailedPreconditionError(f"deployment {name} failed: {dep.message}")
            if time.monotonic() > deadline:
                raise UnavailableError(f"deployment {name} not ready after {timeout:.0f}s: {dep.message}")
            time.sleep(0.5)

    def models(self) -> list[ServedModel]:
        """What the tenant can send requests to: its deployments, then those other tenants share
        with it (by full name), each with the version it serves and whether a replica is ready
        (the OpenAI API's /v1/models lists the same)."""
        resp = self._c.call(self._c.gateway.ListModels, gateway_pb2.ListModelsRequest())
        return [ServedModel.from_proto(m) for m in resp.models]

    def get(self, name: str) -> Deployment:
        req = gateway_pb2.GetDeploymentRequest(name=_name("deployments", name))
        return Deployment.from_proto(self._c.call(self._c.gateway.GetDeployment, req).deployment)

    def list(self, *, page_size: int = 100, limit: int | None = None) -> Paged[Deployment]:
        """The tenant's deployments by id, fetched page by page as iteration reaches them."""
        def page(token: str, size: int) -> tuple[Sequence[Deployment], str]:
            req = gateway_pb2.ListDeploymentsRequest(page_size=size, page_token=token)
            resp = self._c.call(self._c.gateway.ListDeployments, req)
            return [Deployment.from_proto(d) for d in resp.deployments], resp.next_page_token

        return Paged(page, page_size=page_size, limit=limit)

    def scale(self, name: str, replicas: int = 0, *, etag: str = "", autoscaling: Autoscaling | None = None
              ) -> Deployment:
        """Set the replica count (new replicas start as scheduler jobs, the highest-numbered ones
        are cancelled) and, with ``autoscaling``, the autoscaling policy (``Autoscaling()`` with
        max_replicas 0 turns it off); with ``etag`` (from ``get``), only if the deployment is
        unchanged since, else AbortedError."""
        req = gateway_pb2.ScaleDeploymentRequest(name=_name("deployments", name), replicas=replicas, etag=etag)
        if autoscaling is not None:
            req.autoscaling.CopyFrom(autoscaling.to_proto())
        return Deployment.from_proto(self._c.call(self._c.gateway.ScaleDeployment, req).deployment)

    def share(self, name: str, shared_with: Sequence[str], *, etag: str = "") -> Deployment:
        """Replace the tenants (or "*": every tenant) that may send requests to the deployment,
        as their own: their limits, their share of the fair queue; empty shares it with no one.
        With ``etag`` (from ``get``), only if the deployment is unchanged since, else AbortedError."""
        req = gateway_pb2.UpdateDeploymentSharingRequest(name=_name("deployments", name), shared_with=list(shared_with),
                                                         etag=etag)
        return Deployment.from_proto(self._c.call(self._c.gateway.UpdateDeploymentSharing, req).deployment)

    def delete(self, name: str) -> None:
        self._c.call(self._c.gateway.DeleteDeployment, gateway_pb2.DeleteDeploymentRequest(name=_name("deployments", name)))
