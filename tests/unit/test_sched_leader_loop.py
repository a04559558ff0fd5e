"""The leader's loop on in-memory fakes of its ports and a fake clock: a job's whole life from
submit to success, append passes for a stream of arrivals on a saturated queue, whole passes for
anything else, idempotent dispatch, and leadership by lease. (The same loop against real Redis and
Ray: tests/integration/test_scheduler_leader.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.domain.cancel import cancel_job
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.scheduling import QueueQuota
from pylon_services.scheduler.domain.snapshot import ClusterNode
from pylon_services.scheduler.domain.spec import Command, JobSpec, Resources, Trainer
from pylon_services.scheduler.orchestration.leader import Leader
from tests.unit.sched_fakes import FakeClock, FakeExecutor, FakeLease, MemoryLedger, MemoryState

V100 = ClusterNode("n-v100", "V100", gpus=2, cpus=8, memory=0, alive=True)
CPU = ClusterNode("n-cpu", "cpu", gpus=0, cpus=4, memory=0, alive=True)


@dataclasses.dataclass
class World:
    clock: FakeClock
    state: MemoryState
    jobs: MemoryLedger
    executor: FakeExecutor
    lease: FakeLease
    leader: Leader

    async def turns(self, n: int = 1, step_s: float = 0.25) -> None:
        """What ``Leader.run`` does, one turn at a time, with time moving ``step_s`` between."""
        for _ in range(n):
            if await self.lease.hold(self.leader.identity, 10):
                if not self.leader.leading:
                    await self.leader.become_leader()
                await self.leader.turn()
            else:
                self.leader.leading = False
            self.clock.advance(step_s)

    async def until(self, t: float) -> None:
        """Turns until the clock reads ``t`` (a turn with no events waits, as a blocking read does)."""
        while self.clock.now < t:
            await self.turns(1, step_s=0.0)

    async def submit(self, n: int = 1, *, queue: str = "default", gpus: float = 1, priority: str = "normal"
                     ) -> list[Job]:
        out = []
        for _ in range(n):
            spec = JobSpec(Command(("true",)), queue=queue, resources=Resources(gpus=gpus, gpu_types=("V100",)),
                           priority_class=priority)
            job = Job(id=f"j{len(self.jobs.docs):04d}", tenant="acme", spec=spec, create_time=self.clock.time())
            out.append((await self.jobs.create(job))[0])
        return out

    async def job(self, job: Job) -> Job:
        return await self.jobs.get(job.tenant, job.id)


class FakeRegistrar:
    """The registry as the leader sees it: records what it registers; fails the first
    ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.calls = failures, []  # type: ignore[var-annotated]

    async def register(self, job: Job) -> str:
        self.calls.append(job.name)
        if len(self.calls) <= self.failures:
            raise ConnectionError("registry unreachable")
        return f"tenants/{job.tenant}/models/{job.spec.workload.register_model}/versions/1"  # type: ignore[union-attr]


def world(nodes: list[ClusterNode] | None = None, identity: str = "leader-a", registrar: Any = None,
          **cfg: Any) -> World:
    clock = FakeClock()
    state = MemoryState(clock)
    jobs = MemoryLedger(state)
    executor = FakeExecutor(list(nodes if nodes is not None else [V100, CPU]))
    lease = FakeLease()
    leader = Leader(jobs, state, executor, lease, SchedulerConfig(instance="t", **cfg), clock=clock, identity=identity,
                    registrar=registrar)
    return World(clock, state, jobs, executor, lease, leader)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_job_runs_from_submit_to_success_and_its_resources_are_released():
    async def body() -> None:
        w = world()
        [job] = await w.submit()
        await w.turns(1)
        admitted = await w.job(job)
        assert admitted.state == JobState.STARTING and admitted.gpu_type == "V100" and admitted.attempt == 1
        assert w.state.view is not None and {n.id for n in w.state.view.nodes} == {"n-v100", "n-cpu"}
        await w.turns(1)
        assert (await w.job(job)).state == JobState.RUNNING
        w.jobs.report(await w.job(job), output_uri="tenants/acme/jobs/x/output")
        await w.turns(1)
        done = await w.job(job)
        assert done.state == JobState.SUCCEEDED and done.output_uri == "tenants/acme/jobs/x/output"
        assert w.executor.released == [w.executor.attempt_name(done)] and not w.jobs.active_set
        assert set(w.state.acked) == {eid for eid, _ in w.state.stream}  # every event acknowledged

    run(body())


def test_a_failed_attempt_is_retried_and_a_late_result_of_it_changes_nothing():
    async def body() -> None:
        w = world()
        spec = JobSpec(Command(("false",)), max_retries=1, resources=Resources(gpus=1))
        job, _ = await w.jobs.create(Job(id="j1", tenant="acme", spec=spec))
        await w.turns(2)
        first = await w.job(job)
        w.jobs.report(first, exit_code=3, error="exit code 3")
        await w.turns(1)
        assert (await w.job(job)).state in (JobState.PENDING, JobState.ADMITTED, JobState.STARTING)
        await w.turns(2)
        second = await w.job(job)
        assert second.attempt == 2 and second.retries == 1 and second.state == JobState.RUNNING
        w.jobs.report(first, exit_code=0)  # the first attempt's result again: already over
        await w.turns(1)
        assert (await w.job(job)).state == JobState.RUNNING

    run(body())


def test_a_stream_of_arrivals_on_a_saturated_queue_gets_append_passes_only():
    async def body() -> None:
        w = world()
        w.state.quotas["tenants/acme/queues/zero"] = QueueQuota("tenants/acme/queues/zero", "acme", {"V100": 0.0})
        first = await w.submit(5, queue="zero")
        await w.turns(1)
        assert w.leader.passes.whole_passes == 1 and w.leader.passes.can_append
        assert set(w.state.explained) == {j.key for j in first}
        later = await w.submit(10, queue="zero")
        await w.turns(1)
        assert (w.leader.passes.whole_passes, w.leader.passes.append_passes) == (1, 1)
        assert set(w.state.explained) == {j.key for j in first + later}
        assert w.state.explained[later[-1].key].position == 15
        # Time alone: a whole pass every idle_pass_s (2 s) after the last one, none before.
        start = w.leader.pacer.last_whole
        await w.until(start + 2.6)
        assert w.leader.passes.whole_passes == 2 and w.leader.passes.append_passes == 1
        assert 2.0 <= w.leader.pacer.last_whole - start < 2.6

    run(body())


def test_a_cancel_or_a_higher_priority_arrival_needs_a_whole_pass():
    async def body() -> None:
        w = world()
        w.state.quotas["tenants/acme/queues/zero"] = QueueQuota("tenants/acme/queues/zero", "acme", {"V100": 0.0})
        jobs = await w.submit(3, queue="zero", priority="low")
        await w.turns(1)
        await w.submit(2, queue="zero", priority="low")
        await cancel_job(w.jobs, await w.job(jobs[0]))
        await w.turns(1)
        assert (w.leader.passes.whole_passes, w.leader.passes.append_passes) == (2, 0)
        assert jobs[0].key not in w.state.explained and len(w.state.explained) == 4
        await w.submit(1, queue="zero", priority="high")
        await w.turns(1)  # the append pass gives up on it at once...
        assert (w.leader.passes.whole_passes, w.leader.passes.append_passes) == (2, 0) and w.leader.pacer.dirty
        await w.turns(1)  # ...and the next turn passes over the whole backlog
        assert (w.leader.passes.whole_passes, w.leader.passes.append_passes) == (3, 0)
        assert len(w.state.explained) == 5

    run(body())


def test_an_append_pass_that_admits_makes_the_next_pass_whole():
    async def body() -> None:
        w = world()
        w.state.quotas["tenants/acme/queues/zero"] = QueueQuota("tenants/acme/queues/zero", "acme", {"V100": 0.0})
        await w.submit(2, queue="zero")
        await w.turns(1)
        [fits] = await w.submit(1)  # the default queue has no quota limit here: it fits
        await w.turns(1)
        assert w.leader.passes.append_passes == 1 and (await w.job(fits)).state == JobState.STARTING
        assert not w.leader.passes.can_append and w.leader.pacer.dirty
        await w.turns(1)
        assert w.leader.passes.whole_passes == 2

    run(body())


def test_only_the_lease_holder_acts_and_a_stopped_leader_gives_the_lease_back():
    async def body() -> None:
        w = world()
        await w.lease.hold("someone-else", 10)
        [job] = await w.submit()
        await w.turns(3)
        assert not w.leader.leading and w.leader.passes.whole_passes == 0
        assert (await w.job(job)).state == JobState.PENDING
        await w.lease.give_back("someone-else")
        await w.turns(1)
        assert w.leader.leading and (await w.job(job)).state == JobState.STARTING
        await w.leader.stop()
        assert w.lease.holder is None

    run(body())


def test_a_new_leader_adopts_a_running_job_instead_of_starting_it_again():
    async def body() -> None:
        w = world()
        [job] = await w.submit()
        await w.turns(2)
        running = await w.job(job)
        assert running.state == JobState.RUNNING
        await w.leader.stop()
        successor = Leader(w.jobs, w.state, w.executor, w.lease, SchedulerConfig(instance="t"), clock=w.clock,
                           identity="leader-b")
        w.leader = successor
        await w.turns(2)
        assert len(w.executor.launched) == 1 and (await w.job(job)).attempt == 1  # adopted, not relaunched
        w.jobs.report(running)
        await w.turns(1)
        assert (await w.job(job)).state == JobState.SUCCEEDED

    run(body())


def test_a_node_that_dies_ends_a_continued_pass():
    async def body() -> None:
        w = world()
        w.state.quotas["tenants/acme/queues/zero"] = QueueQuota("tenants/acme/queues/zero", "acme", {"V100": 0.0})
        await w.submit(2, queue="zero")
        await w.turns(1)
        assert w.leader.passes.can_append
        w.executor.cluster = [dataclasses.replace(V100, alive=False), CPU]
        await w.until(w.clock.now + 1.5)  # the node check runs every second; idle passes every 2 s
        assert w.leader.passes.whole_passes == 2
        assert w.state.view is not None and not next(n for n in w.state.view.nodes if n.id == "n-v100").alive

    run(body())


class _SwallowingState(MemoryState):
    """A blocking event read that turns the first cancellation into an empty answer, as a
    redis-py read cancelled mid-block and retried as a connection error does."""

    swallowed = 0

    async def read_events(self, consumer: str, block_ms: int, count: int = 200) -> list[Any]:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if self.swallowed:
                raise  # only the first one (so a failing test still ends)
            self.swallowed += 1
            return []
        return await super().read_events(consumer, 0, count)


def test_a_stopping_leader_ends_its_loop_even_when_a_cancellation_is_swallowed():
    async def body() -> None:
        w = world()
        w.state.__class__ = _SwallowingState
        loop = asyncio.create_task(w.leader.run())
        await asyncio.sleep(0.1)
        assert w.leader.leading
        w.leader.stopping = True
        loop.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(loop), 5)  # ends after its turn, cancelled or not
        finally:
            loop.cancel()
        await w.leader.stop()
        assert w.lease.holder is None

    run(body())


async def _running(w: World, stall_s: float, retries: int = 0) -> Job:
    spec = JobSpec(Command(("sleep", "1000")), resources=Resources(gpus=1), stall_timeout_s=stall_s,
                   max_retries=retries)
    job, _ = await w.jobs.create(Job(id="j-stall", tenant="acme", spec=spec))
    await w.turns(2)
    running = await w.job(job)
    assert running.state == JobState.RUNNING
    return running


def _progress(w: World, job: Job, step: int, **more: Any) -> None:
    """What a rank-0 worker sends every few seconds (worker/context.py)."""
    w.state.publish({"type": "progress", "job": job.key, "attempt": job.attempt, "step": step, "rate": 2.0,
                     "gpu_type": "V100", "job_type": "command", **more})


def test_a_running_attempt_without_progress_past_its_stall_timeout_fails():
    async def body() -> None:
        w = world()
        job = await _running(w, stall_s=30)
        await w.until(w.clock.now + 25)
        assert (await w.job(job)).state == JobState.RUNNING  # not yet: 30 s from its admission
        await w.until(w.clock.now + 10)
        failed = await w.job(job)
        assert failed.state == JobState.FAILED and "(stalled)" in failed.message, failed.message
        assert failed.message.startswith("no step progress for 3") and w.executor.released

    run(body())


def test_progress_reports_keep_a_job_alive_and_a_stall_is_retried_within_max_retries():
    async def body() -> None:
        w = world()
        job = await _running(w, stall_s=30, retries=1)
        for step in range(1, 6):  # a report every 20 s: 100 s in all, never 30 s without one
            _progress(w, job, step * 10)
            await w.until(w.clock.now + 20)
        alive = await w.job(job)
        assert (alive.state, alive.step, alive.attempt) == (JobState.RUNNING, 50, 1)
        await w.until(w.clock.now + 15)  # 35 s since the last report: stalled, and nothing else went wrong
        retried = await w.job(job)
        assert retried.retries == 1 and retried.attempt == 2, retried.message

    run(body())


def test_a_new_leader_counts_a_stall_from_when_it_took_over():
    async def body() -> None:
        w = world()
        job = await _running(w, stall_s=30)
        await w.until(w.clock.now + 20)
        await w.leader.stop()
        w.clock.advance(60)  # nobody led for a minute: the job's reports went unread
        w.leader = Leader(w.jobs, w.state, w.executor, w.lease, SchedulerConfig(instance="t"), clock=w.clock,
                          identity="leader-b")
        await w.until(w.clock.now + 20)
        assert (await w.job(job)).state == JobState.RUNNING  # 100 s since admission, 20 s since take-over
        await w.until(w.clock.now + 15)
        assert (await w.job(job)).state == JobState.FAILED

    run(body())


def test_a_leader_away_from_a_job_does_not_count_that_time_as_a_stall():
    async def body() -> None:
        w = world()
        job = await _running(w, stall_s=30)
        await w.until(w.clock.now + 20)
        w.clock.advance(60)  # this leader did not look (it had lost the lease) for a minute
        await w.turns(1)
        assert (await w.job(job)).state == JobState.RUNNING

    run(body())


def test_progress_reports_become_the_jobs_trainer_status():
    async def body() -> None:
        from pylon_services.scheduler.api.convert import job_to_pb

        w = world()
        job = await _running(w, stall_s=0)
        assert (await w.job(job)).trainer_status() is None
        _progress(w, job, 25, total_steps=200, metrics={"loss": 2.5, "tokens_per_s": 1e4, "mfu": 0.31,
                                                        "bad": float("nan"), "x" * 65: 1.0})
        await w.turns(1)
        t = (await w.job(job)).trainer_status()
        assert t is not None and (t.progress_percentage, t.step, t.total_steps) == (12, 25, 200)
        assert t.estimated_remaining_seconds == (200 - 25) // 2  # from the step rate (2 steps/s)
        assert dict(t.metrics) == {"loss": 2.5, "tokens_per_s": 1e4, "mfu": 0.31}  # finite, short keys only
        _progress(w, job, 100, total_steps=200, metrics={"loss": 1.5, "eta_s": 42.0})
        await w.turns(1)
        status = job_to_pb(await w.job(job)).status.trainer_status
        assert status.progress_percentage == 50 and status.estimated_remaining_seconds == 42  # the trainer's own
        assert dict(status.metrics) == {"loss": 1.5, "eta_s": 42.0} and status.last_update_time.seconds > 0

    run(body())


def test_a_report_that_does_not_move_the_step_writes_nothing():
    async def body() -> None:
        w = world()
        job = await _running(w, stall_s=0)
        _progress(w, job, 10, total_steps=100)
        await w.turns(1)
        version = (await w.job(job)).version
        _progress(w, job, 10, total_steps=100, metrics={"loss": 1.0})
        await w.turns(1)
        assert (await w.job(job)).version == version

    run(body())


def test_without_a_total_the_percentage_and_estimate_are_absent():
    async def body() -> None:
        from pylon_services.scheduler.api.convert import job_to_pb

        w = world()
        job = await _running(w, stall_s=0)
        _progress(w, job, 10, metrics={"loss": 3.0})
        await w.turns(1)
        status = job_to_pb(await w.job(job)).status
        assert status.HasField("trainer_status") and status.trainer_status.step == 10
        assert not status.trainer_status.HasField("progress_percentage")
        assert not status.trainer_status.HasField("estimated_remaining_seconds")

    run(body())


def _trainer_job(register: str = "lm", alias: str = "prod", retries: int = 2) -> Job:
    spec = JobSpec(Trainer("causal-lm", datasets=("tenants/acme/datasets/d/versions/1",), register_model=register,
                           register_alias=alias), resources=Resources(gpus=1), max_retries=retries)
    return Job(id="t1", tenant="acme", spec=spec)


async def _succeed(w: World, job: Job) -> Job:
    job, _ = await w.jobs.create(job)
    await w.turns(2)
    w.jobs.report(await w.job(job), output_uri="tenants/acme/jobs/t1/output", metrics={"loss": 2.5})
    await w.turns(1)
    return await w.job(job)


def test_a_succeeded_trainer_is_registered_and_the_version_recorded_on_the_job():
    async def body() -> None:
        w = world(registrar=FakeRegistrar())
        done = await _succeed(w, _trainer_job())
        assert done.state == JobState.SUCCEEDED and "registering its output as models:/lm@prod" in done.message
        await asyncio.gather(*w.leader.attempts._registering)
        after = await w.job(done)
        assert after.registered_model_version == "tenants/acme/models/lm/versions/1"
        assert after.message == "succeeded; registered as tenants/acme/models/lm/versions/1"
        assert after.state == JobState.SUCCEEDED

    run(body())


def test_a_registry_that_stays_down_leaves_the_job_succeeded_with_the_reason(monkeypatch):
    from pylon_services.scheduler.orchestration import attempts

    monkeypatch.setattr(attempts, "REGISTER_RETRY_DELAYS_S", (0.0, 0.0))
    async def body() -> None:
        registrar = FakeRegistrar(failures=5)
        w = world(registrar=registrar)
        done = await _succeed(w, _trainer_job(alias=""))
        await asyncio.gather(*w.leader.attempts._registering)
        after = await w.job(done)
        assert len(registrar.calls) == 2 and after.state == JobState.SUCCEEDED and not after.registered_model_version
        assert "registering its output as models:/lm failed (registry unreachable)" in after.message
        assert "tenants/acme/jobs/t1/output" in after.message

    run(body())


def test_a_job_without_register_model_is_not_registered():
    async def body() -> None:
        registrar = FakeRegistrar()
        w = world(registrar=registrar)
        done = await _succeed(w, _trainer_job(register="", alias=""))
        assert done.message == "succeeded" and not w.leader.attempts._registering and not registrar.calls

    run(body())


def test_a_result_that_is_not_retryable_fails_the_job_without_spending_its_retries():
    async def body() -> None:
        w = world()
        job, _ = await w.jobs.create(_trainer_job(register=""))
        await w.turns(2)
        w.jobs.report(await w.job(job), exit_code=1, error="the loss became nan at step 7", retryable=False)
        await w.turns(1)
        failed = await w.job(job)
        assert failed.state == JobState.FAILED and failed.retries == 0 and "nan" in failed.message

    run(body())
