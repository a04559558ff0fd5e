import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pylon.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_FORMAT_UNSPECIFIED: _ClassVar[DataFormat]
    DATA_FORMAT_TEXT: _ClassVar[DataFormat]
    DATA_FORMAT_JSONL: _ClassVar[DataFormat]
    DATA_FORMAT_CSV: _ClassVar[DataFormat]
    DATA_FORMAT_PARQUET: _ClassVar[DataFormat]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_UNSPECIFIED: _ClassVar[Compression]
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_GZIP: _ClassVar[Compression]
    COMPRESSION_ZSTD: _ClassVar[Compression]

class DatasetVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_VERSION_STATE_UNSPECIFIED: _ClassVar[DatasetVersionState]
    DATASET_VERSION_STATE_PROCESSING: _ClassVar[DatasetVersionState]
    DATASET_VERSION_STATE_READY: _ClassVar[DatasetVersionState]
    DATASET_VERSION_STATE_FAILED: _ClassVar[DatasetVersionState]

class UploadSessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPLOAD_SESSION_STATE_UNSPECIFIED: _ClassVar[UploadSessionState]
    UPLOAD_SESSION_STATE_OPEN: _ClassVar[UploadSessionState]
    UPLOAD_SESSION_STATE_COMMITTED: _ClassVar[UploadSessionState]
    UPLOAD_SESSION_STATE_ABORTED: _ClassVar[UploadSessionState]
DATA_FORMAT_UNSPECIFIED: DataFormat
DATA_FORMAT_TEXT: DataFormat
DATA_FORMAT_JSONL: DataFormat
DATA_FORMAT_CSV: DataFormat
DATA_FORMAT_PARQUET: DataFormat
COMPRESSION_UNSPECIFIED: Compression
COMPRESSION_NONE: Compression
COMPRESSION_GZIP: Compression
COMPRESSION_ZSTD: Compression
DATASET_VERSION_STATE_UNSPECIFIED: DatasetVersionState
DATASET_VERSION_STATE_PROCESSING: DatasetVersionState
DATASET_VERSION_STATE_READY: DatasetVersionState
DATASET_VERSION_STATE_FAILED: DatasetVersionState
UPLOAD_SESSION_STATE_UNSPECIFIED: UploadSessionState
UPLOAD_SESSION_STATE_OPEN: UploadSessionState
UPLOAD_SESSION_STATE_COMMITTED: UploadSessionState
UPLOAD_SESSION_STATE_ABORTED: UploadSessionState

class Dataset(_message.Message):
    __slots__ = ("name", "description", "labels", "latest_version", "create_time", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    labels: _containers.RepeatedCompositeFieldContainer[_common_pb2.Label]
    latest_version: int
    create_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[_common_pb2.Label, _Mapping]]] = ..., latest_version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class DatasetFile(_message.Message):
    __slots__ = ("path", "digest", "size_bytes", "format", "compression", "record_count", "object_key")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    path: str
    digest: str
    size_bytes: int
    format: DataFormat
    compression: Compression
    record_count: int
    object_key: str
    def __init__(self, path: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[_Union[DataFormat, str]] = ..., compression: _Optional[_Union[Compression, str]] = ..., record_count: _Optional[int] = ..., object_key: _Optional[str] = ...) -> None: ...

class DatasetVersion(_message.Message):
    __slots__ = ("name", "version", "state", "files", "digest", "record_count", "size_bytes", "schema", "profile", "cleaning", "parent", "source", "creator", "reject_count", "failure_reason", "create_time", "processed_files", "reject_files", "recipe", "dropped", "operation")
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CLEANING_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    REJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_FILES_FIELD_NUMBER: _ClassVar[int]
    REJECT_FILES_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    state: DatasetVersionState
    files: _containers.RepeatedCompositeFieldContainer[DatasetFile]
    digest: str
    record_count: int
    size_bytes: int
    schema: _struct_pb2.Struct
    profile: _struct_pb2.Struct
    cleaning: _containers.RepeatedScalarFieldContainer[str]
    parent: str
    source: str
    creator: str
    reject_count: int
    failure_reason: str
    create_time: _timestamp_pb2.Timestamp
    processed_files: _containers.RepeatedCompositeFieldContainer[DatasetFile]
    reject_files: _containers.RepeatedCompositeFieldContainer[DatasetFile]
    recipe: _struct_pb2.Struct
    dropped: _containers.ScalarMap[str, int]
    operation: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[DatasetVersionState, str]] = ..., files: _Optional[_Iterable[_Union[DatasetFile, _Mapping]]] = ..., digest: _Optional[str] = ..., record_count: _Optional[int] = ..., size_bytes: _Optional[int] = ..., schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., cleaning: _Optional[_Iterable[str]] = ..., parent: _Optional[str] = ..., source: _Optional[str] = ..., creator: _Optional[str] = ..., reject_count: _Optional[int] = ..., failure_reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., processed_files: _Optional[_Iterable[_Union[DatasetFile, _Mapping]]] = ..., reject_files: _Optional[_Iterable[_Union[DatasetFile, _Mapping]]] = ..., recipe: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dropped: _Optional[_Mapping[str, int]] = ..., operation: _Optional[str] = ...) -> None: ...

class CreateDatasetRequest(_message.Message):
    __slots__ = ("parent", "dataset_id", "description", "labels", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    dataset_id: str
    description: str
    labels: _containers.RepeatedCompositeFieldContainer[_common_pb2.Label]
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., dataset_id: _Optional[str] = ..., description: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[_common_pb2.Label, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("name", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("dataset", "path", "format", "compression", "digest", "size_bytes", "description", "request_id", "processing")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    path: str
    format: DataFormat
    compression: Compression
    digest: str
    size_bytes: int
    description: str
    request_id: str
    processing: ProcessingOptions
    def __init__(self, dataset: _Optional[str] = ..., path: _Optional[str] = ..., format: _Optional[_Union[DataFormat, str]] = ..., compression: _Optional[_Union[Compression, str]] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ..., processing: _Optional[_Union[ProcessingOptions, _Mapping]] = ...) -> None: ...

class CleaningRecipe(_message.Message):
    __slots__ = ("text_field", "normalize_unicode", "normalize_whitespace", "min_chars", "max_chars", "dedupe", "scrub_email", "scrub_phone")
    TEXT_FIELD_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_UNICODE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_WHITESPACE_FIELD_NUMBER: _ClassVar[int]
    MIN_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_FIELD_NUMBER: _ClassVar[int]
    SCRUB_EMAIL_FIELD_NUMBER: _ClassVar[int]
    SCRUB_PHONE_FIELD_NUMBER: _ClassVar[int]
    text_field: str
    normalize_unicode: str
    normalize_whitespace: bool
    min_chars: int
    max_chars: int
    dedupe: bool
    scrub_email: bool
    scrub_phone: bool
    def __init__(self, text_field: _Optional[str] = ..., normalize_unicode: _Optional[str] = ..., normalize_whitespace: _Optional[bool] = ..., min_chars: _Optional[int] = ..., max_chars: _Optional[int] = ..., dedupe: _Optional[bool] = ..., scrub_email: _Optional[bool] = ..., scrub_phone: _Optional[bool] = ...) -> None: ...

class ProcessingOptions(_message.Message):
    __slots__ = ("schema", "recipe", "max_reject_rate")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    MAX_REJECT_RATE_FIELD_NUMBER: _ClassVar[int]
    schema: _struct_pb2.Struct
    recipe: CleaningRecipe
    max_reject_rate: float
    def __init__(self, schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., recipe: _Optional[_Union[CleaningRecipe, _Mapping]] = ..., max_reject_rate: _Optional[float] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("data", "crc32c")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    crc32c: int
    def __init__(self, data: _Optional[bytes] = ..., crc32c: _Optional[int] = ...) -> None: ...

class UploadDatasetVersionRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: UploadChunk
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[UploadChunk, _Mapping]] = ...) -> None: ...

class UploadDatasetVersionResponse(_message.Message):
    __slots__ = ("version", "deduplicated", "operation")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    deduplicated: bool
    operation: _common_pb2.Operation
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ..., deduplicated: _Optional[bool] = ..., operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...

class CreateUploadSessionRequest(_message.Message):
    __slots__ = ("header", "part_size_bytes", "part_md5s")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PART_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PART_MD5S_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    part_size_bytes: int
    part_md5s: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., part_size_bytes: _Optional[int] = ..., part_md5s: _Optional[_Iterable[str]] = ...) -> None: ...

class UploadSession(_message.Message):
    __slots__ = ("name", "header", "part_size_bytes", "parts", "expire_time", "already_stored", "state", "operation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PART_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    header: UploadHeader
    part_size_bytes: int
    parts: _containers.RepeatedCompositeFieldContainer[UploadPart]
    expire_time: _timestamp_pb2.Timestamp
    already_stored: bool
    state: UploadSessionState
    operation: str
    def __init__(self, name: _Optional[str] = ..., header: _Optional[_Union[UploadHeader, _Mapping]] = ..., part_size_bytes: _Optional[int] = ..., parts: _Optional[_Iterable[_Union[UploadPart, _Mapping]]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., already_stored: _Optional[bool] = ..., state: _Optional[_Union[UploadSessionState, str]] = ..., operation: _Optional[str] = ...) -> None: ...

class UploadPart(_message.Message):
    __slots__ = ("part_number", "url", "etag", "uploaded")
    PART_NUMBER_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_FIELD_NUMBER: _ClassVar[int]
    part_number: int
    url: str
    etag: str
    uploaded: bool
    def __init__(self, part_number: _Optional[int] = ..., url: _Optional[str] = ..., etag: _Optional[str] = ..., uploaded: _Optional[bool] = ...) -> None: ...

class CreateUploadSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: UploadSession
    def __init__(self, session: _Optional[_Union[UploadSession, _Mapping]] = ...) -> None: ...

class GetUploadSessionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetUploadSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: UploadSession
    def __init__(self, session: _Optional[_Union[UploadSession, _Mapping]] = ...) -> None: ...

class CommitUploadSessionRequest(_message.Message):
    __slots__ = ("name", "request_id", "version", "part_md5s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PART_MD5S_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    version: int
    part_md5s: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ..., version: _Optional[int] = ..., part_md5s: _Optional[_Iterable[str]] = ...) -> None: ...

class CommitUploadSessionResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _common_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...

class AbortUploadSessionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AbortUploadSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ImportDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset", "source_uris", "format", "compression", "by_reference", "request_id", "processing", "description")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URIS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    BY_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    source_uris: _containers.RepeatedScalarFieldContainer[str]
    format: DataFormat
    compression: Compression
    by_reference: bool
    request_id: str
    processing: ProcessingOptions
    description: str
    def __init__(self, dataset: _Optional[str] = ..., source_uris: _Optional[_Iterable[str]] = ..., format: _Optional[_Union[DataFormat, str]] = ..., compression: _Optional[_Union[Compression, str]] = ..., by_reference: _Optional[bool] = ..., request_id: _Optional[str] = ..., processing: _Optional[_Union[ProcessingOptions, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...

class ImportDatasetVersionResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _common_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...

class GetDatasetVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDatasetVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...

class ListDatasetVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[DatasetVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[DatasetVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PreviewDatasetVersionRequest(_message.Message):
    __slots__ = ("name", "limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    limit: int
    def __init__(self, name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class PreviewDatasetVersionResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    def __init__(self, records: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ...) -> None: ...

class ListRejectsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("path", "line", "reason", "raw")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    path: str
    line: int
    reason: str
    raw: str
    def __init__(self, path: _Optional[str] = ..., line: _Optional[int] = ..., reason: _Optional[str] = ..., raw: _Optional[str] = ...) -> None: ...

class ListRejectsResponse(_message.Message):
    __slots__ = ("rejects", "next_page_token")
    REJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rejects: _containers.RepeatedCompositeFieldContainer[Reject]
    next_page_token: str
    def __init__(self, rejects: _Optional[_Iterable[_Union[Reject, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TokenizeDatasetVersionRequest(_message.Message):
    __slots__ = ("name", "tokenizer", "vocab_size", "shard_tokens", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    tokenizer: str
    vocab_size: int
    shard_tokens: int
    request_id: str
    def __init__(self, name: _Optional[str] = ..., tokenizer: _Optional[str] = ..., vocab_size: _Optional[int] = ..., shard_tokens: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class TokenizeDatasetVersionResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _common_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...

class GetTokenizationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Tokenization(_message.Message):
    __slots__ = ("name", "dataset_version", "dataset_digest", "tokenizer", "tokenizer_digest", "tokenizer_object_key", "index_object_key", "shard_prefix", "total_tokens", "shard_count", "vocab_size", "dtype", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    INDEX_OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    SHARD_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
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
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., dataset_version: _Optional[str] = ..., dataset_digest: _Optional[str] = ..., tokenizer: _Optional[str] = ..., tokenizer_digest: _Optional[str] = ..., tokenizer_object_key: _Optional[str] = ..., index_object_key: _Optional[str] = ..., shard_prefix: _Optional[str] = ..., total_tokens: _Optional[int] = ..., shard_count: _Optional[int] = ..., vocab_size: _Optional[int] = ..., dtype: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetTokenizationResponse(_message.Message):
    __slots__ = ("tokenization",)
    TOKENIZATION_FIELD_NUMBER: _ClassVar[int]
    tokenization: Tokenization
    def __init__(self, tokenization: _Optional[_Union[Tokenization, _Mapping]] = ...) -> None: ...

class GetOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _common_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...

class WatchOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _common_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...
