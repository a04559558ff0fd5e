"""Proto <-> domain conversion for IngestService (transport layer only)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from pylon.common.v1 import common_pb2
from pylon.ingest.v1 import ingest_pb2 as pb
from pylon_services.common.errors import InvalidArgument
from pylon_services.ingest.domain.operations import Operation
from pylon_services.ingest.domain.uploads import UploadSession
from pylon_services.runtime.protoconv import from_struct, struct, ts

FORMATS = {pb.DATA_FORMAT_TEXT: "text", pb.DATA_FORMAT_JSONL: "jsonl", pb.DATA_FORMAT_CSV: "csv",
           pb.DATA_FORMAT_PARQUET: "parquet"}
FORMAT_PB = {v: k for k, v in FORMATS.items()}
COMPRESSIONS = {pb.COMPRESSION_NONE: "", pb.COMPRESSION_GZIP: "gzip", pb.COMPRESSION_ZSTD: "zstd"}
COMPRESSION_PB = {v: k for k, v in COMPRESSIONS.items()}
_CODES = {"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
          "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
          "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
          "DATA_LOSS": 15, "UNAUTHENTICATED": 16}
_SESSION_STATE = {"open": pb.UPLOAD_SESSION_STATE_OPEN, "committed": pb.UPLOAD_SESSION_STATE_COMMITTED,
                  "aborted": pb.UPLOAD_SESSION_STATE_ABORTED}


def file_format(field: str, path: str, fmt: pb.DataFormat, compression: pb.Compression) -> tuple[str, str]:
    """(format, compression) from the enums, detected from the file name where unspecified."""
    from pylon_services.ingest.domain.pipeline import detect_format

    detected = detect_format(path) if path else ("text", "")
    if fmt and fmt not in FORMATS:
        raise InvalidArgument.field(f"{field}.format", f"unknown value {fmt}")
    if compression and compression not in COMPRESSIONS:
        raise InvalidArgument.field(f"{field}.compression", f"unknown value {compression}")
    return (FORMATS[fmt] if fmt else detected[0]), (COMPRESSIONS[compression] if compression else detected[1])


def processing(p: pb.ProcessingOptions) -> dict[str, Any]:
    """Only the fields the caller set; the domain fills in defaults."""
    r = p.recipe
    recipe: dict[str, Any] = {k: v for k, v in (("text_field", r.text_field), ("normalize_unicode", r.normalize_unicode),
                                                ("min_chars", r.min_chars), ("max_chars", r.max_chars)) if v}
    recipe.update({k: True for k in ("scrub_email", "scrub_phone") if getattr(r, k)})
    recipe.update({k: getattr(r, k) for k in ("normalize_whitespace", "dedupe") if r.HasField(k)})
    out: dict[str, Any] = {"recipe": recipe}
    if p.HasField("schema"):
        out["schema"] = from_struct(p.schema)
    if p.HasField("max_reject_rate"):
        out["max_reject_rate"] = p.max_reject_rate
    return out


def header(h: pb.UploadHeader) -> dict[str, Any]:
    fmt, comp = file_format("header", h.path, h.format, h.compression)
    return {"path": h.path, "format": fmt, "compression": comp, "digest": h.digest, "size": h.size_bytes,
            "description": h.description, "request_id": h.request_id, "processing": processing(h.processing)}


def dataset_pb(d: dict[str, Any]) -> pb.Dataset:
    return pb.Dataset(name=d["name"], description=d.get("description", ""),
                      labels=[common_pb2.Label(key=k, value=v) for k, v in (d.get("labels") or {}).items()],
                      latest_version=d.get("latest_version", 0), create_time=ts(d.get("create_time")),
                      etag=d.get("_etag", ""))


def _file_pb(f: dict[str, Any]) -> pb.DatasetFile:
    return pb.DatasetFile(path=f["path"], digest=f["digest"], size_bytes=f["size_bytes"],
                          format=FORMAT_PB.get(f.get("format", ""), pb.DATA_FORMAT_UNSPECIFIED),
                          compression=COMPRESSION_PB.get(f.get("compression", ""), pb.COMPRESSION_NONE),
                          record_count=f.get("record_count", 0), object_key=f["object_key"])


def version_pb(d: dict[str, Any]) -> pb.DatasetVersion:
    return pb.DatasetVersion(
        name=d["name"], version=d["version"], state=pb.DATASET_VERSION_STATE_READY,
        files=[_file_pb(f) for f in d["files"]], digest=d["digest"], record_count=d["record_count"],
        size_bytes=d["size_bytes"], schema=struct(d.get("schema")), profile=struct(d.get("profile")),
        cleaning=d.get("cleaning", []), parent=d.get("parent", ""), source=d.get("source", ""),
        creator=d.get("creator", ""), reject_count=d.get("reject_count", 0), create_time=ts(d.get("create_time")),
        processed_files=[_file_pb(f) for f in d.get("processed_files", [])],
        reject_files=[_file_pb(f) for f in d.get("reject_files", [])], recipe=struct(d.get("recipe")),
        dropped={k: int(v) for k, v in d.get("dropped", {}).items()}, operation=d.get("operation", ""))


def operation_pb(op: Operation) -> common_pb2.Operation:
    out = common_pb2.Operation(name=op.name, target=op.target, metadata=struct({"state": op.state, **op.metadata}),
                               progress=op.progress, done=op.done, result=op.result,
                               create_time=ts(op.create_time), update_time=ts(op.update_time))
    if op.error_code:
        out.error.CopyFrom(common_pb2.OperationError(code=_CODES.get(op.error_code, 2), message=op.error_message))
    return out


def session_pb(s: UploadSession, urls: dict[int, str], stored: dict[int, str]) -> pb.UploadSession:
    h = pb.UploadHeader(dataset=f"tenants/{s.tenant}/datasets/{s.dataset}", path=s.path,
                        format=FORMAT_PB[s.format], compression=COMPRESSION_PB[s.compression], digest=s.digest,
                        size_bytes=s.size, description=s.description)
    parts = [pb.UploadPart(part_number=n, url=urls.get(n, ""), etag=stored.get(n, ""), uploaded=n in stored)
             for n in range(1, s.part_count + 1)] if not s.already_stored else []
    return pb.UploadSession(name=s.name, header=h, part_size_bytes=s.part_size, parts=parts,
                            expire_time=ts(s.expire_time), already_stored=s.already_stored,
                            state=_SESSION_STATE[s.state],
                            operation=f"tenants/{s.tenant}/operations/{s.operation}" if s.operation else "")


def tokenization_pb(d: dict[str, Any]) -> pb.Tokenization:
    return pb.Tokenization(name=d["name"], dataset_version=d["dataset_version"], dataset_digest=d["dataset_digest"],
                           tokenizer=d["tokenizer"], tokenizer_digest=d["tokenizer_digest"],
                           tokenizer_object_key=d["tokenizer_object_key"], index_object_key=d["index_object_key"],
                           shard_prefix=d["shard_prefix"], total_tokens=d["total_tokens"],
                           shard_count=d["shard_count"], vocab_size=d["vocab_size"], dtype=d["dtype"],
                           create_time=ts(d.get("create_time")))


def records_pb(records: list[Any]) -> list[struct_pb2.Value]:
    out = []
    for r in records:
        v = struct_pb2.Value()
        json_format.ParseDict(r, v)
        out.append(v)
    return out
