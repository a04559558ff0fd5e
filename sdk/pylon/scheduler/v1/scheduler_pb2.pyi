import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_ADMITTED: _ClassVar[JobState]
    JOB_STATE_STARTING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_PREEMPTING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class PlacementStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLACEMENT_STRATEGY_UNSPECIFIED: _ClassVar[PlacementStrategy]
    PLACEMENT_STRATEGY_PACK: _ClassVar[PlacementStrategy]
    PLACEMENT_STRATEGY_SPREAD: _ClassVar[PlacementStrategy]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_ADMITTED: JobState
JOB_STATE_STARTING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_PREEMPTING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
PLACEMENT_STRATEGY_UNSPECIFIED: PlacementStrategy
PLACEMENT_STRATEGY_PACK: PlacementStrategy
PLACEMENT_STRATEGY_SPREAD: PlacementStrategy

class WorkerResources(_message.Message):
    __slots__ = ("gpus", "gpu_types", "cpus", "memory_bytes")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPES_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    gpus: float
    gpu_types: _containers.RepeatedScalarFieldContainer[str]
    cpus: float
    memory_bytes: int
    def __init__(self, gpus: _Optional[float] = ..., gpu_types: _Optional[_Iterable[str]] = ..., cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class BuiltinTrainer(_message.Message):
    __slots__ = ("trainer", "config", "datasets", "base_model", "base_model_version", "token_data", "register_model")
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_DATA_FIELD_NUMBER: _ClassVar[int]
    REGISTER_MODEL_FIELD_NUMBER: _ClassVar[int]
    trainer: str
    config: _struct_pb2.Struct
    datasets: _containers.RepeatedScalarFieldContainer[str]
    base_model: str
    base_model_version: str
    token_data: _containers.RepeatedCompositeFieldContainer[PinnedTokens]
    register_model: RegisterModel
    def __init__(self, trainer: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., datasets: _Optional[_Iterable[str]] = ..., base_model: _Optional[str] = ..., base_model_version: _Optional[str] = ..., token_data: _Optional[_Iterable[_Union[PinnedTokens, _Mapping]]] = ..., register_model: _Optional[_Union[RegisterModel, _Mapping]] = ...) -> None: ...

class PinnedTokens(_message.Message):
    __slots__ = ("dataset_version", "tokenization", "tokenizer", "tokenizer_object_key", "tokenizer_digest", "index_object_key", "shard_prefix", "total_tokens", "shard_count", "vocab_size", "dtype", "dataset_digest")
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKENIZATION_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INDEX_OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    SHARD_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATASET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    dataset_version: str
    tokenization: str
    tokenizer: str
    tokenizer_object_key: str
    tokenizer_digest: str
    index_object_key: str
    shard_prefix: str
    total_tokens: int
    shard_count: int
    vocab_size: int
    dtype: str
    dataset_digest: str
    def __init__(self, dataset_version: _Optional[str] = ..., tokenization: _Optional[str] = ..., tokenizer: _Optional[str] = ..., tokenizer_object_key: _Optional[str] = ..., tokenizer_digest: _Optional[str] = ..., index_object_key: _Optional[str] = ..., shard_prefix: _Optional[str] = ..., total_tokens: _Optional[int] = ..., shard_count: _Optional[int] = ..., vocab_size: _Optional[int] = ..., dtype: _Optional[str] = ..., dataset_digest: _Optional[str] = ...) -> None: ...

class RegisterModel(_message.Message):
    __slots__ = ("model", "alias")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("argv", "working_dir_key", "pip_requirements", "env", "datasets")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARGV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_KEY_FIELD_NUMBER: _ClassVar[int]
    PIP_REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    argv: _containers.RepeatedScalarFieldContainer[str]
    working_dir_key: str
    pip_requirements: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    datasets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, argv: _Optional[_Iterable[str]] = ..., working_dir_key: _Optional[str] = ..., pip_requirements: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., datasets: _Optional[_Iterable[str]] = ...) -> None: ...

class EngineReplica(_message.Message):
    __slots__ = ("deployment", "model_version", "engine", "engine_config")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    model_version: str
    engine: str
    engine_config: _struct_pb2.Struct
    def __init__(self, deployment: _Optional[str] = ..., model_version: _Optional[str] = ..., engine: _Optional[str] = ..., engine_config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("queue", "priority_class", "workers", "resources", "gang", "placement", "trainer", "command", "engine", "max_runtime", "max_retries", "preemptible", "checkpoint_every_steps", "labels", "display_name", "job_type", "total_steps", "stall_timeout")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_CLASS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    GANG_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIBLE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    STALL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    priority_class: str
    workers: int
    resources: WorkerResources
    gang: bool
    placement: PlacementStrategy
    trainer: BuiltinTrainer
    command: Command
    engine: EngineReplica
    max_runtime: _duration_pb2.Duration
    max_retries: int
    preemptible: bool
    checkpoint_every_steps: int
    labels: _containers.ScalarMap[str, str]
    display_name: str
    job_type: str
    total_steps: int
    stall_timeout: _duration_pb2.Duration
    def __init__(self, queue: _Optional[str] = ..., priority_class: _Optional[str] = ..., workers: _Optional[int] = ..., resources: _Optional[_Union[WorkerResources, _Mapping]] = ..., gang: _Optional[bool] = ..., placement: _Optional[_Union[PlacementStrategy, str]] = ..., trainer: _Optional[_Union[BuiltinTrainer, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., engine: _Optional[_Union[EngineReplica, _Mapping]] = ..., max_runtime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_retries: _Optional[int] = ..., preemptible: _Optional[bool] = ..., checkpoint_every_steps: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., display_name: _Optional[str] = ..., job_type: _Optional[str] = ..., total_steps: _Optional[int] = ..., stall_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("state", "message", "gpu_type", "attempt", "exit_code", "last_log_lines", "output_uri", "start_time", "end_time", "latest_metrics", "retries", "preemptions", "step", "trainer_status", "registered_model_version")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_LINES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TRAINER_STATUS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    message: str
    gpu_type: str
    attempt: int
    exit_code: int
    last_log_lines: _containers.RepeatedScalarFieldContainer[str]
    output_uri: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    latest_metrics: _struct_pb2.Struct
    retries: int
    preemptions: int
    step: int
    trainer_status: TrainerStatus
    registered_model_version: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ..., gpu_type: _Optional[str] = ..., attempt: _Optional[int] = ..., exit_code: _Optional[int] = ..., last_log_lines: _Optional[_Iterable[str]] = ..., output_uri: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., retries: _Optional[int] = ..., preemptions: _Optional[int] = ..., step: _Optional[int] = ..., trainer_status: _Optional[_Union[TrainerStatus, _Mapping]] = ..., registered_model_version: _Optional[str] = ...) -> None: ...

class TrainerStatus(_message.Message):
    __slots__ = ("progress_percentage", "estimated_remaining_seconds", "metrics", "last_update_time", "step", "total_steps")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROGRESS_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REMAINING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    progress_percentage: int
    estimated_remaining_seconds: int
    metrics: _containers.ScalarMap[str, float]
    last_update_time: _timestamp_pb2.Timestamp
    step: int
    total_steps: int
    def __init__(self, progress_percentage: _Optional[int] = ..., estimated_remaining_seconds: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., last_update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("name", "spec", "status", "create_time", "creator", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: JobSpec
    status: JobStatus
    create_time: _timestamp_pb2.Timestamp
    creator: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., status: _Optional[_Union[JobStatus, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., creator: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("parent", "spec", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    spec: JobSpec
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class UploadWorkingDirRequest(_message.Message):
    __slots__ = ("parent", "chunk")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    parent: str
    chunk: bytes
    def __init__(self, parent: _Optional[str] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadWorkingDirResponse(_message.Message):
    __slots__ = ("working_dir_key", "size_bytes")
    WORKING_DIR_KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    working_dir_key: str
    size_bytes: int
    def __init__(self, working_dir_key: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "states")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("name", "follow", "offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    follow: bool
    offset: int
    def __init__(self, name: _Optional[str] = ..., follow: _Optional[bool] = ..., offset: _Optional[int] = ...) -> None: ...

class StreamLogsResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("index", "text", "attempt", "time")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    attempt: int
    time: _timestamp_pb2.Timestamp
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., attempt: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListJobMetricsRequest(_message.Message):
    __slots__ = ("name", "keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("key", "step", "value", "time")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    key: str
    step: int
    value: float
    time: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., step: _Optional[int] = ..., value: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListJobMetricsResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...

class ExplainJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ExplainJobResponse(_message.Message):
    __slots__ = ("reasons", "position", "estimated_start_time")
    REASONS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_START_TIME_FIELD_NUMBER: _ClassVar[int]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    position: int
    estimated_start_time: _timestamp_pb2.Timestamp
    def __init__(self, reasons: _Optional[_Iterable[str]] = ..., position: _Optional[int] = ..., estimated_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetClusterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GpuPool(_message.Message):
    __slots__ = ("gpu_type", "nodes", "total_gpus", "used_gpus", "total_cpus", "used_cpus", "healthy_nodes", "min_nodes", "max_nodes")
    GPU_TYPE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_GPUS_FIELD_NUMBER: _ClassVar[int]
    USED_GPUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CPUS_FIELD_NUMBER: _ClassVar[int]
    USED_CPUS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_NODES_FIELD_NUMBER: _ClassVar[int]
    MIN_NODES_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    gpu_type: str
    nodes: int
    total_gpus: float
    used_gpus: float
    total_cpus: float
    used_cpus: float
    healthy_nodes: int
    min_nodes: int
    max_nodes: int
    def __init__(self, gpu_type: _Optional[str] = ..., nodes: _Optional[int] = ..., total_gpus: _Optional[float] = ..., used_gpus: _Optional[float] = ..., total_cpus: _Optional[float] = ..., used_cpus: _Optional[float] = ..., healthy_nodes: _Optional[int] = ..., min_nodes: _Optional[int] = ..., max_nodes: _Optional[int] = ...) -> None: ...

class GetClusterResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[GpuPool]
    def __init__(self, pools: _Optional[_Iterable[_Union[GpuPool, _Mapping]]] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ("parent",)
    PARENT_FIELD_NUMBER: _ClassVar[int]
    parent: str
    def __init__(self, parent: _Optional[str] = ...) -> None: ...

class Queue(_message.Message):
    __slots__ = ("name", "cohort", "nominal_gpus", "used_gpus", "borrowed_gpus", "pending_jobs", "running_jobs", "borrowing_limit_gpus", "weight", "usage_gpu_seconds")
    class NominalGpusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class UsedGpusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class BorrowedGpusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class BorrowingLimitGpusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    NOMINAL_GPUS_FIELD_NUMBER: _ClassVar[int]
    USED_GPUS_FIELD_NUMBER: _ClassVar[int]
    BORROWED_GPUS_FIELD_NUMBER: _ClassVar[int]
    PENDING_JOBS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    BORROWING_LIMIT_GPUS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    USAGE_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    cohort: str
    nominal_gpus: _containers.ScalarMap[str, float]
    used_gpus: _containers.ScalarMap[str, float]
    borrowed_gpus: _containers.ScalarMap[str, float]
    pending_jobs: int
    running_jobs: int
    borrowing_limit_gpus: _containers.ScalarMap[str, float]
    weight: float
    usage_gpu_seconds: float
    def __init__(self, name: _Optional[str] = ..., cohort: _Optional[str] = ..., nominal_gpus: _Optional[_Mapping[str, float]] = ..., used_gpus: _Optional[_Mapping[str, float]] = ..., borrowed_gpus: _Optional[_Mapping[str, float]] = ..., pending_jobs: _Optional[int] = ..., running_jobs: _Optional[int] = ..., borrowing_limit_gpus: _Optional[_Mapping[str, float]] = ..., weight: _Optional[float] = ..., usage_gpu_seconds: _Optional[float] = ...) -> None: ...

class CreateQueueRequest(_message.Message):
    __slots__ = ("parent", "queue_id", "queue")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    queue_id: str
    queue: Queue
    def __init__(self, parent: _Optional[str] = ..., queue_id: _Optional[str] = ..., queue: _Optional[_Union[Queue, _Mapping]] = ...) -> None: ...

class CreateQueueResponse(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: Queue
    def __init__(self, queue: _Optional[_Union[Queue, _Mapping]] = ...) -> None: ...

class UpdateQueueRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: Queue
    def __init__(self, queue: _Optional[_Union[Queue, _Mapping]] = ...) -> None: ...

class UpdateQueueResponse(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: Queue
    def __init__(self, queue: _Optional[_Union[Queue, _Mapping]] = ...) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues",)
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[Queue]
    def __init__(self, queues: _Optional[_Iterable[_Union[Queue, _Mapping]]] = ...) -> None: ...
