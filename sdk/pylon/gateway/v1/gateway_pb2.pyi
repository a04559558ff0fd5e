import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pylon.engine.v1 import engine_pb2 as _engine_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeploymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATE_UNSPECIFIED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_PENDING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_READY: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_FAILED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_DELETING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_IDLE: _ClassVar[DeploymentState]
DEPLOYMENT_STATE_UNSPECIFIED: DeploymentState
DEPLOYMENT_STATE_PENDING: DeploymentState
DEPLOYMENT_STATE_READY: DeploymentState
DEPLOYMENT_STATE_FAILED: DeploymentState
DEPLOYMENT_STATE_DELETING: DeploymentState
DEPLOYMENT_STATE_IDLE: DeploymentState

class Replica(_message.Message):
    __slots__ = ("job", "address", "ready", "running_requests", "model_version", "canary")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    job: str
    address: str
    ready: bool
    running_requests: int
    model_version: str
    canary: bool
    def __init__(self, job: _Optional[str] = ..., address: _Optional[str] = ..., ready: _Optional[bool] = ..., running_requests: _Optional[int] = ..., model_version: _Optional[str] = ..., canary: _Optional[bool] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("name", "model_uri", "model_version", "engine", "replicas", "gpus_per_replica", "gpu_types", "engine_config", "state", "message", "replica_status", "create_time", "etag", "autoscaling", "rollout", "canary", "rollout_history", "scale_events", "last_cold_start_s", "priority_class", "shared_with")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_REPLICA_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_HISTORY_FIELD_NUMBER: _ClassVar[int]
    SCALE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_COLD_START_S_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_CLASS_FIELD_NUMBER: _ClassVar[int]
    SHARED_WITH_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_uri: str
    model_version: str
    engine: str
    replicas: int
    gpus_per_replica: float
    gpu_types: _containers.RepeatedScalarFieldContainer[str]
    engine_config: _struct_pb2.Struct
    state: DeploymentState
    message: str
    replica_status: _containers.RepeatedCompositeFieldContainer[Replica]
    create_time: _timestamp_pb2.Timestamp
    etag: str
    autoscaling: AutoscalingPolicy
    rollout: RolloutPolicy
    canary: CanaryStatus
    rollout_history: _containers.RepeatedCompositeFieldContainer[RolloutEvent]
    scale_events: _containers.RepeatedCompositeFieldContainer[ScaleEvent]
    last_cold_start_s: float
    priority_class: str
    shared_with: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., model_uri: _Optional[str] = ..., model_version: _Optional[str] = ..., engine: _Optional[str] = ..., replicas: _Optional[int] = ..., gpus_per_replica: _Optional[float] = ..., gpu_types: _Optional[_Iterable[str]] = ..., engine_config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., state: _Optional[_Union[DeploymentState, str]] = ..., message: _Optional[str] = ..., replica_status: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ..., autoscaling: _Optional[_Union[AutoscalingPolicy, _Mapping]] = ..., rollout: _Optional[_Union[RolloutPolicy, _Mapping]] = ..., canary: _Optional[_Union[CanaryStatus, _Mapping]] = ..., rollout_history: _Optional[_Iterable[_Union[RolloutEvent, _Mapping]]] = ..., scale_events: _Optional[_Iterable[_Union[ScaleEvent, _Mapping]]] = ..., last_cold_start_s: _Optional[float] = ..., priority_class: _Optional[str] = ..., shared_with: _Optional[_Iterable[str]] = ...) -> None: ...

class AutoscalingPolicy(_message.Message):
    __slots__ = ("min_replicas", "max_replicas", "target_queue", "target_kv_usage", "target_ttft_ms", "scale_down_delay_s", "scale_to_zero_after_s")
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TARGET_QUEUE_FIELD_NUMBER: _ClassVar[int]
    TARGET_KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    SCALE_TO_ZERO_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    min_replicas: int
    max_replicas: int
    target_queue: float
    target_kv_usage: float
    target_ttft_ms: float
    scale_down_delay_s: float
    scale_to_zero_after_s: float
    def __init__(self, min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., target_queue: _Optional[float] = ..., target_kv_usage: _Optional[float] = ..., target_ttft_ms: _Optional[float] = ..., scale_down_delay_s: _Optional[float] = ..., scale_to_zero_after_s: _Optional[float] = ...) -> None: ...

class RolloutPolicy(_message.Message):
    __slots__ = ("follow_alias", "canary_percent", "canary_replicas", "min_requests", "max_error_rate", "max_ttft_ms", "bake_s", "start_timeout_s")
    FOLLOW_ALIAS_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CANARY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    BAKE_S_FIELD_NUMBER: _ClassVar[int]
    START_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    follow_alias: bool
    canary_percent: float
    canary_replicas: int
    min_requests: int
    max_error_rate: float
    max_ttft_ms: float
    bake_s: float
    start_timeout_s: float
    def __init__(self, follow_alias: _Optional[bool] = ..., canary_percent: _Optional[float] = ..., canary_replicas: _Optional[int] = ..., min_requests: _Optional[int] = ..., max_error_rate: _Optional[float] = ..., max_ttft_ms: _Optional[float] = ..., bake_s: _Optional[float] = ..., start_timeout_s: _Optional[float] = ...) -> None: ...

class CanaryStatus(_message.Message):
    __slots__ = ("model_version", "start_time", "ready", "requests", "errors", "mean_ttft_ms")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MEAN_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    start_time: _timestamp_pb2.Timestamp
    ready: bool
    requests: int
    errors: int
    mean_ttft_ms: float
    def __init__(self, model_version: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready: _Optional[bool] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., mean_ttft_ms: _Optional[float] = ...) -> None: ...

class RolloutEvent(_message.Message):
    __slots__ = ("time", "from_version", "to_version", "outcome", "reason")
    TIME_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    from_version: str
    to_version: str
    outcome: str
    reason: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ScaleEvent(_message.Message):
    __slots__ = ("time", "from_replicas", "to_replicas", "by", "reason")
    TIME_FIELD_NUMBER: _ClassVar[int]
    FROM_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TO_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    from_replicas: int
    to_replicas: int
    by: str
    reason: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., from_replicas: _Optional[int] = ..., to_replicas: _Optional[int] = ..., by: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CreateDeploymentRequest(_message.Message):
    __slots__ = ("parent", "deployment_id", "deployment", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    deployment_id: str
    deployment: Deployment
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., deployment_id: _Optional[str] = ..., deployment: _Optional[_Union[Deployment, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    next_page_token: str
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ScaleDeploymentRequest(_message.Message):
    __slots__ = ("name", "replicas", "etag", "autoscaling")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    name: str
    replicas: int
    etag: str
    autoscaling: AutoscalingPolicy
    def __init__(self, name: _Optional[str] = ..., replicas: _Optional[int] = ..., etag: _Optional[str] = ..., autoscaling: _Optional[_Union[AutoscalingPolicy, _Mapping]] = ...) -> None: ...

class ScaleDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class UpdateDeploymentSharingRequest(_message.Message):
    __slots__ = ("name", "shared_with", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHARED_WITH_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    shared_with: _containers.RepeatedScalarFieldContainer[str]
    etag: str
    def __init__(self, name: _Optional[str] = ..., shared_with: _Optional[_Iterable[str]] = ..., etag: _Optional[str] = ...) -> None: ...

class UpdateDeploymentSharingResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDeploymentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("deployment", "prompt", "sampling", "request_id", "model")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    prompt: str
    sampling: _engine_pb2.SamplingParams
    request_id: str
    model: str
    def __init__(self, deployment: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[_engine_pb2.SamplingParams, _Mapping]] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "token_ids", "finish_reason", "usage", "replica", "index", "logprobs", "deployment")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: _engine_pb2.FinishReason
    usage: _engine_pb2.Usage
    replica: str
    index: int
    logprobs: _containers.RepeatedCompositeFieldContainer[_engine_pb2.TokenLogprob]
    deployment: str
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[_engine_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_engine_pb2.Usage, _Mapping]] = ..., replica: _Optional[str] = ..., index: _Optional[int] = ..., logprobs: _Optional[_Iterable[_Union[_engine_pb2.TokenLogprob, _Mapping]]] = ..., deployment: _Optional[str] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("deployment", "prompt", "sampling", "request_id", "model")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    prompt: str
    sampling: _engine_pb2.SamplingParams
    request_id: str
    model: str
    def __init__(self, deployment: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[_engine_pb2.SamplingParams, _Mapping]] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("index", "text", "token_ids", "finish_reason", "logprobs")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: _engine_pb2.FinishReason
    logprobs: _containers.RepeatedCompositeFieldContainer[_engine_pb2.TokenLogprob]
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[_engine_pb2.FinishReason, str]] = ..., logprobs: _Optional[_Iterable[_Union[_engine_pb2.TokenLogprob, _Mapping]]] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("completions", "usage", "replica", "deployment")
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    usage: _engine_pb2.Usage
    replica: str
    deployment: str
    def __init__(self, completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ..., usage: _Optional[_Union[_engine_pb2.Usage, _Mapping]] = ..., replica: _Optional[str] = ..., deployment: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("deployment", "model", "messages", "sampling", "request_id")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    sampling: _engine_pb2.SamplingParams
    request_id: str
    def __init__(self, deployment: _Optional[str] = ..., model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[_engine_pb2.SamplingParams, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("text", "token_ids", "finish_reason", "usage", "replica", "index", "logprobs", "deployment")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: _engine_pb2.FinishReason
    usage: _engine_pb2.Usage
    replica: str
    index: int
    logprobs: _containers.RepeatedCompositeFieldContainer[_engine_pb2.TokenLogprob]
    deployment: str
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[_engine_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_engine_pb2.Usage, _Mapping]] = ..., replica: _Optional[str] = ..., index: _Optional[int] = ..., logprobs: _Optional[_Iterable[_Union[_engine_pb2.TokenLogprob, _Mapping]]] = ..., deployment: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("parent",)
    PARENT_FIELD_NUMBER: _ClassVar[int]
    parent: str
    def __init__(self, parent: _Optional[str] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("deployment", "model_uri", "model_version", "ready", "create_time")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    model_uri: str
    model_version: str
    ready: bool
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, deployment: _Optional[str] = ..., model_uri: _Optional[str] = ..., model_version: _Optional[str] = ..., ready: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ...) -> None: ...

class ServingLimits(_message.Message):
    __slots__ = ("requests_per_min", "tokens_per_min", "key_requests_per_min", "key_tokens_per_min", "max_concurrent", "priority", "weight")
    REQUESTS_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    KEY_REQUESTS_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    KEY_TOKENS_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    requests_per_min: int
    tokens_per_min: int
    key_requests_per_min: int
    key_tokens_per_min: int
    max_concurrent: int
    priority: str
    weight: float
    def __init__(self, requests_per_min: _Optional[int] = ..., tokens_per_min: _Optional[int] = ..., key_requests_per_min: _Optional[int] = ..., key_tokens_per_min: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., priority: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class SetServingLimitsRequest(_message.Message):
    __slots__ = ("parent", "limits")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    parent: str
    limits: ServingLimits
    def __init__(self, parent: _Optional[str] = ..., limits: _Optional[_Union[ServingLimits, _Mapping]] = ...) -> None: ...

class SetServingLimitsResponse(_message.Message):
    __slots__ = ("limits", "overridden")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    limits: ServingLimits
    overridden: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, limits: _Optional[_Union[ServingLimits, _Mapping]] = ..., overridden: _Optional[_Iterable[str]] = ...) -> None: ...

class GetServingLimitsRequest(_message.Message):
    __slots__ = ("parent",)
    PARENT_FIELD_NUMBER: _ClassVar[int]
    parent: str
    def __init__(self, parent: _Optional[str] = ...) -> None: ...

class GetServingLimitsResponse(_message.Message):
    __slots__ = ("limits", "overridden")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    limits: ServingLimits
    overridden: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, limits: _Optional[_Union[ServingLimits, _Mapping]] = ..., overridden: _Optional[_Iterable[str]] = ...) -> None: ...
