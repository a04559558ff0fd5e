"""Jobs: submit, list, get, logs, wait, cancel, explain, metrics; plus the scheduler's view of the cluster."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf import json_format

from pylon.errors import PylonError
from pylon.paging import Paged
from pylon.resources._base import CHUNK_BYTES, _name, _Resource
from pylon.scheduler.v1 import scheduler_pb2
from pylon.types import GpuPool, Job, JobExplanation, MetricPoint


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

    def list(self, *, states: builtins.list[str] | None = None, page_size: int = 100,
             limit: int | None = None) -> Paged[Job]:
        """The tenant's jobs, newest first, optionally only those in ``states`` ("running", ...);
        pages are fetched as iteration reaches them, up to ``limit`` jobs."""
        wanted = [f"JOB_STATE_{s.upper()}" for s in states or []]  # enum names; a typo is a ValueError

        def page(token: str, size: int) -> tuple[Sequence[Job], str]:
            req = scheduler_pb2.ListJobsRequest(page_size=size, page_token=token, states=wanted)
            resp = self._c.call(self._c.scheduler.ListJobs, req)
            return [Job.from_proto(j) for j in resp.jobs], resp.next_page_token

        return Paged(page, page_size=page_size, limit=limit)

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

    def metrics(self, name: str, keys: builtins.list[str] | None = None) -> builtins.list[MetricPoint]:
        """Every metric point the job reported (only ``keys`` if given), in report order."""
        req = scheduler_pb2.ListJobMetricsRequest(name=_name("jobs", name), keys=keys or [])
        return [MetricPoint.from_proto(p) for p in self._c.call(self._c.scheduler.ListJobMetrics, req).points]

    def explain(self, name: str) -> JobExplanation:
        """Why a pending job waits: reasons, 1-based position, estimated start (or None)."""
        resp = self._c.call(self._c.scheduler.ExplainJob, scheduler_pb2.ExplainJobRequest(name=_name("jobs", name)))
        return JobExplanation.from_proto(resp)

    def cluster(self) -> builtins.list[GpuPool]:
        """GPU pools discovered from Ray: nodes, healthy nodes, total/used GPUs and CPUs, bounds."""
        resp = self._c.call(self._c.scheduler.GetCluster, scheduler_pb2.GetClusterRequest())
        return [GpuPool.from_proto(p) for p in resp.pools]
