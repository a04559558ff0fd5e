"""Jobs: submit, list, get, logs, wait, cancel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format

from pylon.errors import PylonError
from pylon.resources._base import _name, _Resource
from pylon.scheduler.v1 import scheduler_pb2
from pylon.types import Job


class Jobs(_Resource):
    def submit(self, spec: dict[str, Any], *, request_id: str | None = None) -> Job:
        """Queue a job. ``spec`` has the JobSpec fields (the YAML of ``pylon jobs submit``)."""
        try:
            pb_spec = json_format.ParseDict(spec, scheduler_pb2.JobSpec())
        except json_format.ParseError as e:
            raise PylonError(f"invalid job spec: {e}") from None
        req = scheduler_pb2.SubmitJobRequest(spec=pb_spec, request_id=request_id or os.urandom(8).hex())
        return Job.from_proto(self._c.call(self._c.scheduler.SubmitJob, req).job)

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


