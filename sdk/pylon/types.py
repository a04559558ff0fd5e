"""Typed results the SDK returns instead of raw protos."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from pylon.admin.v1 import admin_pb2
from pylon.engine.v1 import engine_pb2
from pylon.gateway.v1 import gateway_pb2
from pylon.ingest.v1 import ingest_pb2
from pylon.registry.v1 import registry_pb2
from pylon.scheduler.v1 import scheduler_pb2


def _time(t: Any) -> datetime | None:
    return t.ToDatetime(tzinfo=UTC) if t.seconds or t.nanos else None


def _enum_suffix(enum: Any, value: int, prefix: str) -> str:
    return enum.Name(value)[len(prefix):].lower()


@dataclass
class DatasetVersion:
    name: str
    version: int
    digest: str
    record_count: int
    size_bytes: int
    files: list[dict[str, Any]]
    state: str
    created: datetime | None
    deduplicated: bool = False
    reject_count: int = 0
    processed_files: list[dict[str, Any]] = field(default_factory=list)
    schema: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    cleaning: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    source: str = ""
    operation: str = ""

    @classmethod
    def from_proto(cls, v: ingest_pb2.DatasetVersion, deduplicated: bool = False) -> DatasetVersion:
        def files(fs: Any) -> list[dict[str, Any]]:
            return [json_format.MessageToDict(f, preserving_proto_field_name=True) for f in fs]

        return cls(v.name, v.version, v.digest, v.record_count, v.size_bytes, files(v.files),
                   _enum_suffix(ingest_pb2.DatasetVersionState, v.state, "DATASET_VERSION_STATE_"),
                   _time(v.create_time), deduplicated, v.reject_count, files(v.processed_files),
                   json_format.MessageToDict(v.schema), json_format.MessageToDict(v.profile),
                   json_format.MessageToDict(v.recipe), list(v.cleaning), dict(v.dropped), v.source, v.operation)


@dataclass
class Operation:
    """A long-running operation (processing, tokenization): poll it or watch it."""

    name: str
    target: str
    done: bool
    progress: float
    metadata: dict[str, Any]
    result: str
    error_code: int
    error_message: str

    @property
    def failed(self) -> bool:
        return self.done and bool(self.error_code)

    @classmethod
    def from_proto(cls, o: Any) -> Operation:
        return cls(o.name, o.target, o.done, o.progress, json_format.MessageToDict(o.metadata), o.result,
                   o.error.code, o.error.message)


@dataclass
class Dataset:
    name: str
    description: str
    latest_version: int
    created: datetime | None
    labels: dict[str, str] = field(default_factory=dict)
    etag: str = ""

    @classmethod
    def from_proto(cls, d: ingest_pb2.Dataset) -> Dataset:
        return cls(d.name, d.description, d.latest_version, _time(d.create_time),
                   {label.key: label.value for label in d.labels}, d.etag)


@dataclass
class TrainerStatus:
    """A running job's live progress (Kubeflow Trainer's ``trainerStatus``): percent done and the
    estimated seconds left (None while unknown), the latest metrics, when they were reported."""

    progress_percentage: int | None
    estimated_remaining_seconds: int | None
    metrics: dict[str, float]
    last_update: datetime | None
    step: int = 0
    total_steps: int = 0

    @classmethod
    def from_proto(cls, t: scheduler_pb2.TrainerStatus) -> TrainerStatus:
        return cls(t.progress_percentage if t.HasField("progress_percentage") else None,
                   t.estimated_remaining_seconds if t.HasField("estimated_remaining_seconds") else None,
                   dict(t.metrics), _time(t.last_update_time), t.step, t.total_steps)


@dataclass
class Job:
    name: str
    state: str
    message: str
    attempt: int
    exit_code: int
    gpu_type: str
    output_uri: str
    metrics: dict[str, Any]
    last_log_lines: list[str]
    spec: dict[str, Any]
    created: datetime | None
    started: datetime | None
    ended: datetime | None
    retries: int = 0
    preemptions: int = 0
    step: int = 0
    # Live progress from the job's workers; None before their first report.
    trainer_status: TrainerStatus | None = None
    # The model version the job's output was registered as (trainer.register_model), if any.
    registered_model_version: str = ""

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")

    @classmethod
    def from_proto(cls, j: scheduler_pb2.Job) -> Job:
        s = j.status
        return cls(j.name, _enum_suffix(scheduler_pb2.JobState, s.state, "JOB_STATE_"), s.message, s.attempt,
                   s.exit_code, s.gpu_type, s.output_uri, json_format.MessageToDict(s.latest_metrics),
                   list(s.last_log_lines), json_format.MessageToDict(j.spec, preserving_proto_field_name=True),
                   _time(j.create_time), _time(s.start_time), _time(s.end_time), s.retries, s.preemptions, s.step,
                   TrainerStatus.from_proto(s.trainer_status) if s.HasField("trainer_status") else None,
                   s.registered_model_version)


@dataclass
class Model:
    name: str
    description: str
    aliases: dict[str, int]
    latest_version: int
    tags: dict[str, str]
    protected_aliases: list[str] = field(default_factory=list)
    etag: str = ""

    @classmethod
    def from_proto(cls, m: registry_pb2.Model) -> Model:
        return cls(m.name, m.description, dict(m.aliases), m.latest_version, dict(m.tags),
                   list(m.protected_aliases), m.etag)


@dataclass
class ModelVersion:
    name: str
    version: int
    state: str
    format: str
    digest: str
    files: list[dict[str, Any]]
    metrics: dict[str, float]
    tags: dict[str, str]
    lineage: dict[str, Any]
    aliases: list[str]
    deployments: list[str]
    created: datetime | None
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    etag: str = ""
    creator: str = ""

    @classmethod
    def from_proto(cls, v: registry_pb2.ModelVersion) -> ModelVersion:
        return cls(v.name, v.version, _enum_suffix(registry_pb2.ModelVersionState, v.state, "MODEL_VERSION_STATE_"),
                   _enum_suffix(registry_pb2.ModelFormat, v.format, "MODEL_FORMAT_"), v.digest,
                   [json_format.MessageToDict(f, preserving_proto_field_name=True) for f in v.files],
                   dict(v.metrics), dict(v.tags), json_format.MessageToDict(v.lineage, preserving_proto_field_name=True),
                   list(v.aliases), list(v.deployments), _time(v.create_time), v.description,
                   json_format.MessageToDict(v.config), v.etag, v.creator)


@dataclass
class Alias:
    name: str
    version: int
    etag: str
    previous_version: int = 0
    updated_by: str = ""
    updated: datetime | None = None

    @classmethod
    def from_proto(cls, a: registry_pb2.Alias) -> Alias:
        return cls(a.name, a.version, a.etag, a.previous_version, a.updated_by, _time(a.update_time))


@dataclass
class AliasMove:
    """One entry of an alias's audit history (0 = the alias did not exist / was removed)."""

    from_version: int
    to_version: int
    actor: str
    time: datetime | None

    @classmethod
    def from_proto(cls, m: registry_pb2.AliasMove) -> AliasMove:
        return cls(m.from_version, m.to_version, m.actor, _time(m.time))


@dataclass
class Replica:
    """One engine replica: the scheduler job running it, its address once registered, whether
    it serves now, its requests in flight, the version it runs and whether it is a canary."""

    job: str
    address: str
    ready: bool
    running_requests: int
    model_version: str = ""
    canary: bool = False

    @classmethod
    def from_proto(cls, r: gateway_pb2.Replica) -> Replica:
        return cls(r.job, r.address, r.ready, r.running_requests, r.model_version, r.canary)


@dataclass
class Autoscaling:
    """A deployment's autoscaling (``max_replicas == 0``: off). See ``AutoscalingPolicy`` in
    gateway.proto for what each target means."""

    min_replicas: int = 1
    max_replicas: int = 0
    target_queue: float = 4.0
    target_kv_usage: float = 0.8
    target_ttft_ms: float = 0.0
    scale_down_delay_s: float = 60.0
    scale_to_zero_after_s: float = 300.0

    def to_proto(self) -> gateway_pb2.AutoscalingPolicy:
        return gateway_pb2.AutoscalingPolicy(**self.__dict__)

    @classmethod
    def from_proto(cls, m: gateway_pb2.AutoscalingPolicy) -> Autoscaling:
        return cls(m.min_replicas, m.max_replicas, m.target_queue, m.target_kv_usage, m.target_ttft_ms,
                   m.scale_down_delay_s, m.scale_to_zero_after_s)


@dataclass
class Rollout:
    """How a deployment of ``models:/name@alias`` follows the alias with canaries (see
    ``RolloutPolicy`` in gateway.proto)."""

    follow_alias: bool = True
    canary_percent: float = 10.0
    canary_replicas: int = 1
    min_requests: int = 20
    max_error_rate: float = 0.05
    max_ttft_ms: float = 0.0
    bake_s: float = 30.0
    start_timeout_s: float = 600.0

    def to_proto(self) -> gateway_pb2.RolloutPolicy:
        return gateway_pb2.RolloutPolicy(**self.__dict__)

    @classmethod
    def from_proto(cls, m: gateway_pb2.RolloutPolicy) -> Rollout:
        return cls(m.follow_alias, m.canary_percent, m.canary_replicas, m.min_requests, m.max_error_rate,
                   m.max_ttft_ms, m.bake_s, m.start_timeout_s)


@dataclass
class CanaryStatus:
    """The rollout in progress: the version on trial and what its requests did so far."""

    model_version: str
    start_time: datetime | None
    ready: bool
    requests: int
    errors: int
    mean_ttft_ms: float


@dataclass
class RolloutEvent:
    time: datetime | None
    from_version: str
    to_version: str
    outcome: str  # "started", "promoted", "rolled_back"
    reason: str


@dataclass
class ScaleEvent:
    time: datetime | None
    from_replicas: int
    to_replicas: int
    by: str  # "autoscaler", "user", "request"
    reason: str


@dataclass
class Deployment:
    name: str
    model_uri: str
    model_version: str
    engine: str
    replicas: int
    state: str
    message: str
    replica_status: list[Replica] = field(default_factory=list)
    gpus_per_replica: float = 0.0
    gpu_types: list[str] = field(default_factory=list)
    create_time: datetime | None = None
    etag: str = ""
    autoscaling: Autoscaling | None = None
    rollout: Rollout | None = None
    canary: CanaryStatus | None = None
    rollout_history: list[RolloutEvent] = field(default_factory=list)
    scale_events: list[ScaleEvent] = field(default_factory=list)
    last_cold_start_s: float = 0.0
    priority_class: str = "high"  # the scheduler priority class of its replica jobs
    shared_with: list[str] = field(default_factory=list)  # other tenants that may use it ("*": all)

    @classmethod
    def from_proto(cls, d: gateway_pb2.Deployment) -> Deployment:
        c = d.canary
        return cls(d.name, d.model_uri, d.model_version, d.engine, d.replicas,
                   _enum_suffix(gateway_pb2.DeploymentState, d.state, "DEPLOYMENT_STATE_"), d.message,
                   [Replica.from_proto(r) for r in d.replica_status],
                   d.gpus_per_replica, list(d.gpu_types), _time(d.create_time), d.etag,
                   Autoscaling.from_proto(d.autoscaling) if d.autoscaling.max_replicas else None,
                   Rollout.from_proto(d.rollout) if d.rollout.follow_alias else None,
                   CanaryStatus(c.model_version, _time(c.start_time), c.ready, c.requests, c.errors, c.mean_ttft_ms)
                   if d.HasField("canary") else None,
                   [RolloutEvent(_time(e.time), e.from_version, e.to_version, e.outcome, e.reason)
                    for e in d.rollout_history],
                   [ScaleEvent(_time(e.time), e.from_replicas, e.to_replicas, e.by, e.reason) for e in d.scale_events],
                   d.last_cold_start_s, priority_class=d.priority_class or "high",
                   shared_with=list(d.shared_with))


def _finish(reason: int) -> str:
    return "" if not reason else _enum_suffix(engine_pb2.FinishReason, reason, "FINISH_REASON_")


@dataclass
class Choice:
    """One of a request's ``n`` completions, whole."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class Completion:
    """A whole answer: the first completion's text and finish reason, every completion in
    ``choices``, and the request's token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    replica: str
    choices: list[Choice] = field(default_factory=list)
    cached_tokens: int = 0
    deployment: str = ""

    @classmethod
    def from_proto(cls, r: gateway_pb2.CompleteResponse) -> Completion:
        choices = [Choice(c.index, c.text, list(c.token_ids), _finish(c.finish_reason)) for c in r.completions]
        first = choices[0] if choices else Choice(0, "", [], "")
        return cls(first.text, first.finish_reason, r.usage.prompt_tokens, r.usage.completion_tokens, r.replica,
                   choices, r.usage.cached_tokens, r.deployment)


@dataclass
class CompletionChunk:
    """One streamed piece of one completion (``index`` of the ``n``); a completion's last piece
    carries its ``finish_reason`` ("length", "stop" or "aborted"); the token counts are the
    request's so far."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    replica: str
    index: int = 0
    deployment: str = ""

    @classmethod
    def from_proto(cls, r: gateway_pb2.GenerateResponse) -> CompletionChunk:
        return cls(r.text, list(r.token_ids), _finish(r.finish_reason), r.usage.prompt_tokens,
                   r.usage.completion_tokens, r.replica, r.index, r.deployment)


@dataclass
class ServedModel:
    """A deployment a request may name, the version it serves and whether a replica is ready."""

    deployment: str
    model_uri: str
    model_version: str
    ready: bool
    create_time: datetime | None = None

    @classmethod
    def from_proto(cls, m: gateway_pb2.ServedModel) -> ServedModel:
        return cls(m.deployment, m.model_uri, m.model_version, m.ready, _time(m.create_time))


# -- scheduler views ------------------------------------------------------------------------------
@dataclass
class MetricPoint:
    """One metric a job reported."""

    key: str
    step: int
    value: float
    time: datetime | None = None

    @classmethod
    def from_proto(cls, p: scheduler_pb2.MetricPoint) -> MetricPoint:
        return cls(p.key, p.step, p.value, _time(p.time))


@dataclass
class JobExplanation:
    """Why a pending job waits: one line per reason, its 1-based queue position, and an
    estimated start (None when the scheduler cannot tell)."""

    reasons: list[str]
    position: int
    estimated_start_time: datetime | None

    @classmethod
    def from_proto(cls, r: scheduler_pb2.ExplainJobResponse) -> JobExplanation:
        start = _time(r.estimated_start_time) if r.HasField("estimated_start_time") else None
        return cls(list(r.reasons), r.position, start)


@dataclass
class GpuPool:
    """The nodes of one accelerator type ("cpu" for nodes without GPUs); max_nodes 0: no bound."""

    gpu_type: str
    nodes: int
    total_gpus: float
    used_gpus: float
    total_cpus: float
    used_cpus: float
    healthy_nodes: int
    min_nodes: int
    max_nodes: int

    @classmethod
    def from_proto(cls, p: scheduler_pb2.GpuPool) -> GpuPool:
        return cls(p.gpu_type, p.nodes, p.total_gpus, p.used_gpus, p.total_cpus, p.used_cpus, p.healthy_nodes,
                   p.min_nodes, p.max_nodes)


@dataclass
class Queue:
    """A tenant's queue: quota, usage and borrowing per GPU type, job counts, fair-share weight."""

    name: str
    cohort: str
    nominal_gpus: dict[str, float]
    used_gpus: dict[str, float]
    borrowed_gpus: dict[str, float]
    pending_jobs: int
    running_jobs: int
    borrowing_limit_gpus: dict[str, float]
    weight: float
    usage_gpu_seconds: float

    @classmethod
    def from_proto(cls, q: scheduler_pb2.Queue) -> Queue:
        return cls(q.name, q.cohort, dict(q.nominal_gpus), dict(q.used_gpus), dict(q.borrowed_gpus), q.pending_jobs,
                   q.running_jobs, dict(q.borrowing_limit_gpus), q.weight, q.usage_gpu_seconds)


# -- registry views -------------------------------------------------------------------------------
@dataclass
class LineageNode:
    name: str
    kind: str
    attributes: dict[str, Any]


@dataclass
class LineageEdge:
    """``source`` produced or fed ``target``."""

    source: str
    target: str


@dataclass
class Lineage:
    """The graph dataset version -> job -> checkpoint -> model version -> deployments."""

    nodes: list[LineageNode]
    edges: list[LineageEdge]

    @classmethod
    def from_proto(cls, g: registry_pb2.GetLineageResponse) -> Lineage:
        return cls([LineageNode(n.name, n.kind, json_format.MessageToDict(n.attributes)) for n in g.nodes],
                   [LineageEdge(e.source, e.target) for e in g.edges])


@dataclass
class IndexCounts:
    """What a registry index rebuild found (``dropped``: entries storage no longer has)."""

    tenants: int
    models: int
    versions: int
    dropped: int

    @classmethod
    def from_proto(cls, r: registry_pb2.RebuildIndexResponse) -> IndexCounts:
        return cls(r.tenants, r.models, r.versions, r.dropped)


# -- ingest views ---------------------------------------------------------------------------------
@dataclass
class Reject:
    """A record validation rejected: file, line, reason and (truncated) raw text."""

    path: str
    line: int
    reason: str
    raw: str

    @classmethod
    def from_proto(cls, r: ingest_pb2.Reject) -> Reject:
        return cls(r.path, r.line, r.reason, r.raw)


@dataclass
class Tokenization:
    """Token shards of a dataset version and the tokenizer that made them."""

    name: str
    dataset_version: str
    dataset_digest: str
    tokenizer: str
    tokenizer_digest: str
    tokenizer_object_key: str
    index_object_key: str
    shard_prefix: str
    total_tokens: int
    shard_count: int
    vocab_size: int
    dtype: str
    create_time: datetime | None

    @classmethod
    def from_proto(cls, t: ingest_pb2.Tokenization) -> Tokenization:
        return cls(t.name, t.dataset_version, t.dataset_digest, t.tokenizer, t.tokenizer_digest, t.tokenizer_object_key,
                   t.index_object_key, t.shard_prefix, t.total_tokens, t.shard_count, t.vocab_size, t.dtype,
                   _time(t.create_time))


# -- admin views ----------------------------------------------------------------------------------
def _role(role: int) -> str:
    return _enum_suffix(admin_pb2.Role, role, "ROLE_")


@dataclass
class ApiKey:
    """A stored API key (never its secret): ``name`` is "apiKeys/{key_id}"."""

    name: str
    tenant: str
    role: str
    description: str
    create_time: datetime | None

    @classmethod
    def from_proto(cls, k: admin_pb2.ApiKey) -> ApiKey:
        return cls(k.name, k.tenant, _role(k.role), k.description, _time(k.create_time))


@dataclass
class Identity:
    """Whom the platform sees behind the key in use."""

    tenant: str
    role: str
    api_key: str

    @classmethod
    def from_proto(cls, r: admin_pb2.WhoAmIResponse) -> Identity:
        return cls(r.tenant, _role(r.role), r.api_key)


@dataclass
class ServingLimits:
    """A tenant's serving limits in effect (0: unlimited), and which are its own overrides
    (the others are the gateway's defaults)."""

    tenant: str
    requests_per_min: int
    tokens_per_min: int
    key_requests_per_min: int
    key_tokens_per_min: int
    max_concurrent: int
    priority: str
    weight: float
    overridden: list[str] = field(default_factory=list)

    @classmethod
    def from_proto(cls, tenant: str, r: gateway_pb2.GetServingLimitsResponse | gateway_pb2.SetServingLimitsResponse
                   ) -> ServingLimits:
        m = r.limits
        return cls(tenant, m.requests_per_min, m.tokens_per_min, m.key_requests_per_min, m.key_tokens_per_min,
                   m.max_concurrent, m.priority, m.weight, list(r.overridden))
