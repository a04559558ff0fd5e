"""Dataset reconcile logic, pure: the ingest import a Dataset's spec asks for, and the CR's status
from the import's operation and the version it made."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pylon.types import DatasetVersion, Operation
from pylon_operator.conditions import summarize

_FORMATS = {"text": "DATA_FORMAT_TEXT", "jsonl": "DATA_FORMAT_JSONL", "csv": "DATA_FORMAT_CSV",
            "parquet": "DATA_FORMAT_PARQUET"}
_COMPRESSIONS = {"none": "COMPRESSION_NONE", "gzip": "COMPRESSION_GZIP", "zstd": "COMPRESSION_ZSTD"}


def dataset_id(name: str, spec: dict[str, Any]) -> str:
    """The ingest dataset id: spec.datasetId, else the object's name."""
    return str(spec.get("datasetId") or name)


def request_id(uid: str, step: str) -> str:
    """One request_id per call the object makes (create, import), from its uid."""
    return f"k8s-{uid}-{step}"


def import_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """ImportDatasetVersionRequest fields (protobuf JSON) but the dataset and request_id."""
    out: dict[str, Any] = {"sourceUris": list(spec["sourceUris"]), "byReference": bool(spec.get("byReference", False))}
    if spec.get("format"):
        out["format"] = _FORMATS[spec["format"]]
    if spec.get("compression"):
        out["compression"] = _COMPRESSIONS[spec["compression"]]
    if spec.get("processing"):
        out["processing"] = spec["processing"]
    if spec.get("description"):
        out["description"] = spec["description"]
    return out


def labels(spec: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}


def importing_status(prev: dict[str, Any], dataset: str, op: Operation, generation: int, now: datetime
                     ) -> dict[str, Any]:
    """While the import runs (or once it failed)."""
    progress = max(op.progress, 0.0)
    if op.failed:
        message = op.error_message or "the import failed"
        return {"observedGeneration": generation, "phase": "Failed", "datasetName": dataset, "operation": op.name,
                "message": message, "metrics": {"progress": progress},
                "conditions": summarize(prev.get("conditions", []), "stalled", "ImportFailed", message, generation, now)}
    message = f"importing into {dataset}: {progress:.0%}" if op.progress >= 0 else f"importing into {dataset}"
    return {"observedGeneration": generation, "phase": "Importing", "datasetName": dataset, "operation": op.name,
            "message": message, "metrics": {"progress": progress},
            "conditions": summarize(prev.get("conditions", []), "progressing", "Importing", message, generation, now)}


def ready_status(prev: dict[str, Any], dataset: str, op: Operation, version: DatasetVersion, generation: int,
                 now: datetime) -> dict[str, Any]:
    """The import made ``version``."""
    message = f"{version.name}: {version.record_count} records"
    return {"observedGeneration": generation, "phase": "Ready", "datasetName": dataset, "operation": op.name,
            "version": version.name, "versionNumber": version.version, "digest": version.digest, "message": message,
            "metrics": {"progress": 1.0, "recordCount": version.record_count, "sizeBytes": version.size_bytes,
                        "rejectCount": version.reject_count},
            "conditions": summarize(prev.get("conditions", []), "ready", "Imported", message, generation, now)}


def rejected_status(prev: dict[str, Any], message: str, generation: int, now: datetime) -> dict[str, Any]:
    return {"observedGeneration": generation, "phase": "Failed", "message": message,
            "conditions": summarize(prev.get("conditions", []), "stalled", "InvalidSpec", message, generation, now)}
