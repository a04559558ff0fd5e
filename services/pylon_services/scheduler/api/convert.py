"""Proto <-> domain for SchedulerService: the one place a ``JobSpec`` is built from a request."""

from __future__ import annotations

from typing import Any

from pylon.scheduler.v1 import scheduler_pb2 as pb
from pylon_services.common.errors import FieldViolation, InvalidArgument
from pylon_services.runtime.protoconv import plain_struct, struct, ts
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.spec import (
    Command,
    EngineReplica,
    JobSpec,
    Resources,
    TokenData,
    Trainer,
    Workload,
    common_violations,
    invalid,
)

_PLACEMENTS = {pb.PLACEMENT_STRATEGY_UNSPECIFIED: "pack", pb.PLACEMENT_STRATEGY_PACK: "pack",
               pb.PLACEMENT_STRATEGY_SPREAD: "spread"}
MAX_STATES = 64
_STATE_FROM_PB = {pb.JobState.Value(f"JOB_STATE_{s.name}"): s for s in JobState}


def _workload_from_pb(spec: pb.JobSpec) -> Workload | None:
    which = spec.WhichOneof("workload")
    if which == "trainer":
        t = spec.trainer
        # token_data and base_model_version are output only: whatever the request says is dropped.
        return Trainer(trainer=t.trainer, config=plain_struct(t.config), datasets=tuple(t.datasets),
                       base_model=t.base_model, register_model=t.register_model.model,
                       register_alias=t.register_model.alias)
    if which == "command":
        c = spec.command
        return Command(argv=tuple(c.argv), working_dir_key=c.working_dir_key,
                       pip_requirements=tuple(c.pip_requirements), env=dict(c.env), datasets=tuple(c.datasets))
    if which == "engine":
        e = spec.engine
        return EngineReplica(deployment=e.deployment, model_version=e.model_version, engine=e.engine or "torch",
                             engine_config=plain_struct(e.engine_config))
    return None


def spec_from_pb(spec: pb.JobSpec) -> JobSpec:
    """The request's spec with the platform's defaults filled in (unset workers and CPUs: 1;
    unset gang: true; unset placement: pack). Field checks are ``validate_spec``'s."""
    r = spec.resources
    if spec.placement not in _PLACEMENTS:
        raise InvalidArgument.field("spec.placement", "must be PLACEMENT_STRATEGY_PACK or PLACEMENT_STRATEGY_SPREAD")
    workload = _workload_from_pb(spec)
    out = JobSpec(
        workload=workload or Command(()), queue=spec.queue or "default", priority_class=spec.priority_class or "normal",
        workers=spec.workers or 1,
        resources=Resources(gpus=r.gpus, cpus=r.cpus or 1.0, memory_bytes=r.memory_bytes,
                            gpu_types=tuple(t for t in r.gpu_types if t)),
        gang=spec.gang if spec.HasField("gang") else True, placement=_PLACEMENTS[spec.placement],
        max_runtime_s=_seconds(spec.max_runtime), stall_timeout_s=_seconds(spec.stall_timeout),
        max_retries=spec.max_retries,
        preemptible=spec.preemptible, checkpoint_every_steps=spec.checkpoint_every_steps, labels=dict(spec.labels),
        display_name=spec.display_name, job_type=spec.job_type, total_steps=spec.total_steps)
    if workload is None:  # said together with everything else that is wrong
        raise invalid([FieldViolation("spec.workload", "set one of trainer, command or engine"),
                       *common_violations(out)])
    return out


def _seconds(d: Any) -> float:
    return float(d.seconds + d.nanos / 1e9)


def _tokens_to_pb(t: TokenData) -> pb.PinnedTokens:
    return pb.PinnedTokens(**t.to_dict())


def spec_to_pb(spec: JobSpec) -> pb.JobSpec:
    r = spec.resources
    out = pb.JobSpec(
        queue=spec.queue, priority_class=spec.priority_class, workers=spec.workers,
        resources=pb.WorkerResources(gpus=r.gpus, gpu_types=list(r.gpu_types), cpus=r.cpus, memory_bytes=r.memory_bytes),
        gang=spec.gang, placement=pb.PLACEMENT_STRATEGY_SPREAD if spec.placement == "spread" else pb.PLACEMENT_STRATEGY_PACK,
        max_retries=spec.max_retries, preemptible=spec.preemptible, checkpoint_every_steps=spec.checkpoint_every_steps,
        labels=dict(spec.labels), display_name=spec.display_name, job_type=spec.job_type, total_steps=spec.total_steps)
    if spec.max_runtime_s:
        out.max_runtime.FromNanoseconds(int(spec.max_runtime_s * 1e9))
    if spec.stall_timeout_s:
        out.stall_timeout.FromNanoseconds(int(spec.stall_timeout_s * 1e9))
    w = spec.workload
    if isinstance(w, Trainer):
        register = (pb.RegisterModel(model=w.register_model, alias=w.register_alias)
                    if w.register_model or w.register_alias else None)
        out.trainer.CopyFrom(pb.BuiltinTrainer(trainer=w.trainer, config=struct(dict(w.config)), datasets=list(w.datasets),
                                               base_model=w.base_model, base_model_version=w.base_model_version,
                                               token_data=[_tokens_to_pb(t) for t in w.token_data],
                                               register_model=register))
    elif isinstance(w, Command):
        out.command.CopyFrom(pb.Command(argv=list(w.argv), working_dir_key=w.working_dir_key,
                                        pip_requirements=list(w.pip_requirements), env=dict(w.env),
                                        datasets=list(w.datasets)))
    else:
        out.engine.CopyFrom(pb.EngineReplica(deployment=w.deployment, model_version=w.model_version, engine=w.engine,
                                             engine_config=struct(dict(w.engine_config))))
    return out


def job_to_pb(job: Job) -> pb.Job:
    status = pb.JobStatus(
        state=f"JOB_STATE_{job.state.name}", message=job.message, gpu_type=job.gpu_type, attempt=job.attempt,
        exit_code=job.exit_code, last_log_lines=job.last_log_lines, retries=job.retries,
        preemptions=job.preemptions, step=job.step, output_uri=job.output_uri, start_time=ts(job.start_time),
        end_time=ts(job.end_time), latest_metrics=struct(job.latest_metrics),
        registered_model_version=job.registered_model_version)
    if (t := job.trainer_status()) is not None:
        status.trainer_status.CopyFrom(pb.TrainerStatus(
            progress_percentage=t.progress_percentage, estimated_remaining_seconds=t.estimated_remaining_seconds,
            metrics=dict(t.metrics), last_update_time=ts(t.last_update_time), step=t.step, total_steps=t.total_steps))
    return pb.Job(name=job.name, spec=spec_to_pb(job.spec), status=status, create_time=ts(job.create_time),
                  creator=job.creator, request_id=job.request_id)


def states_from_pb(values: Any) -> list[JobState]:
    """``ListJobsRequest.states``; an unknown or unspecified value is INVALID_ARGUMENT."""
    if len(values) > MAX_STATES:
        raise InvalidArgument.field("states", f"at most {MAX_STATES} states")
    out = []
    for n, v in enumerate(values):
        if v not in _STATE_FROM_PB:
            raise InvalidArgument.field(f"states[{n}]", "is not a job state (JOB_STATE_PENDING ... JOB_STATE_CANCELLED)")
        out.append(_STATE_FROM_PB[v])
    return out
