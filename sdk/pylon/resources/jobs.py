"""Jobs: submit, list, get, logs, wait, cancel, explain; plus the scheduler's cluster and queue views."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format

from pylon.errors import PylonError
from pylon.resources._base import CHUNK_BYTES, _name, _Resource
from pylon.scheduler.v1 import scheduler_pb2
from pylon.types import Job


class Jobs(_Resource):
    def submit(self, spec: dict[str, Any], *, request_id: str | None = None) -> Job:
        """Queue a job. ``spec`` has the JobSpec fields (the YAML of ``pylon jobs submit``).

        A ``command.working_dir`` (a local directory) is archived, uploaded and replaced by the
        ``working_dir_key`` the scheduler returns; the command then runs in a copy of it.
        """
        spec = dict(spec)
        if isinstance(spec.get("command"), dict) and spec["command"].get("working_dir"):
            command = dict(spec["command"])
            command["working_dir_key"] = self.upload_working_dir(command.pop("working_dir"))
            spec["command"] = command
        try:
            pb_spec = json_format.ParseDict(spec, scheduler_pb2.JobSpec())
        except json_format.ParseError as e:
            raise PylonError(f"invalid job spec: {e}") from None
        req = scheduler_pb2.SubmitJobRequest(spec=pb_spec, request_id=request_id or os.urandom(8).hex())
        return Job.from_proto(self._c.call(self._c.scheduler.SubmitJob, req).job)

    def upload_working_dir(self, path: str) -> str:
        """Archive a local directory (tar.gz) and upload it; returns its object key."""
        import io
        import tarfile

        if not os.path.isdir(path):
            raise PylonError(f"working_dir {path!r} is not a directory")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(path, arcname=".", filter=lambda t: None if t.issym() or t.islnk() else t)
        data = buf.getvalue()

        def chunks() -> Iterator[scheduler_pb2.UploadWorkingDirRequest]:
            for i in range(0, len(data), CHUNK_BYTES):
                yield scheduler_pb2.UploadWorkingDirRequest(parent="tenants/-" if i == 0 else "",
                                                            chunk=data[i:i + CHUNK_BYTES])

        return str(self._c.call(self._c.scheduler.UploadWorkingDir, chunks()).working_dir_key)

    def get(self, name: str) -> Job:
        return Job.from_proto(self._c.call(self._c.scheduler.GetJob,
                                           scheduler_pb2.GetJobRequest(name=_name("jobs", name))).job)

    def list(self, page_size: int = 50, states: list[str] | None = None) -> list[Job]:
        req = scheduler_pb2.ListJobsRequest(page_size=page_size, states=[
            scheduler_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in states or []])
        return [Job.from_proto(j) for j in self._c.call(self._c.scheduler.ListJobs, req).jobs]

    def cancel(self, name: str) -> Job:
        return Job.from_proto(self._c.call(self._c.scheduler.CancelJob,
                                           scheduler_pb2.CancelJobRequest(name=_name("jobs", name))).job)

    def logs(self, name: str, *, follow: bool = False, offset: int = 0) -> Iterator[str]:
        req = scheduler_pb2.StreamLogsRequest(name=_name("jobs", name), follow=follow, offset=offset)
        for resp in self._c.stream(self._c.scheduler.StreamLogs, req):
            for line in resp.lines:
                yield line.text

    def watch(self, name: str, timeout: float | None = None) -> Iterator[Job]:
        req = scheduler_pb2.WatchJobRequest(name=_name("jobs", name))
        for resp in self._c.stream(self._c.scheduler.WatchJob, req, timeout=timeout):
            yield Job.from_proto(resp.job)

    def wait(self, name: str, timeout: float | None = None) -> Job:
        """Block until the job ends; returns it in its final state."""
        last = None
        for job in self.watch(name, timeout=timeout):
            last = job
        if last is None or not last.done:
            raise PylonError(f"watch of {name} ended before the job finished")
        return last

    def metrics(self, name: str) -> list[dict[str, Any]]:
        resp = self._c.call(self._c.scheduler.ListJobMetrics, scheduler_pb2.ListJobMetricsRequest(name=_name("jobs", name)))
        return [{"key": p.key, "step": p.step, "value": p.value} for p in resp.points]


    def explain(self, name: str) -> dict[str, Any]:
        """Why a pending job waits: reasons, 1-based position, estimated start (unix time or None)."""
        resp = self._c.call(self._c.scheduler.ExplainJob, scheduler_pb2.ExplainJobRequest(name=_name("jobs", name)))
        start = resp.estimated_start_time.ToNanoseconds() / 1e9 if resp.HasField("estimated_start_time") else 0
        return {"reasons": list(resp.reasons), "position": resp.position, "estimated_start": start or None}

    def cluster(self) -> list[dict[str, Any]]:
        """GPU pools discovered from Ray: nodes, healthy nodes, total/used GPUs and CPUs, bounds."""
        resp = self._c.call(self._c.scheduler.GetCluster, scheduler_pb2.GetClusterRequest())
        return [json_format.MessageToDict(p, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                for p in resp.pools]

    def queues(self, tenant: str = "-") -> list[dict[str, Any]]:
        """The tenant's queues: nominal quota, used and borrowed GPUs per type, job counts."""
        resp = self._c.call(self._c.scheduler.ListQueues, scheduler_pb2.ListQueuesRequest(parent=f"tenants/{tenant}"))
        return [json_format.MessageToDict(q, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                for q in resp.queues]

    def create_queue(self, tenant: str, queue_id: str, *, nominal_gpus: dict[str, float], cohort: str = "",
                     borrowing_limit_gpus: dict[str, float] | None = None, weight: float = 1.0) -> dict[str, Any]:
        """Declare a queue and its quota (admin key)."""
        q = scheduler_pb2.Queue(nominal_gpus=nominal_gpus, cohort=cohort, borrowing_limit_gpus=borrowing_limit_gpus or {},
                                weight=weight)
        resp = self._c.call(self._c.scheduler.CreateQueue, scheduler_pb2.CreateQueueRequest(
            parent=f"tenants/{tenant}", queue_id=queue_id, queue=q))
        return json_format.MessageToDict(resp.queue, preserving_proto_field_name=True)

    def update_queue(self, name: str, *, nominal_gpus: dict[str, float], cohort: str = "",
                     borrowing_limit_gpus: dict[str, float] | None = None, weight: float = 1.0) -> dict[str, Any]:
        """Replace a queue's quota fields (admin key); ``name`` is tenants/{t}/queues/{q}."""
        q = scheduler_pb2.Queue(name=name, nominal_gpus=nominal_gpus, cohort=cohort,
                                borrowing_limit_gpus=borrowing_limit_gpus or {}, weight=weight)
        resp = self._c.call(self._c.scheduler.UpdateQueue, scheduler_pb2.UpdateQueueRequest(queue=q))
        return json_format.MessageToDict(resp.queue, preserving_proto_field_name=True)
