"""The CustomResourceDefinitions, built here once (the status schema is shared) and written to
``deploy/helm/pylon/crds/`` by ``python -m pylon_operator.crds --write``; a test checks the files are
current. Bounds, enums and patterns mirror the protos' documented validation, so most bad specs are
refused by the API server before the operator sees them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

GROUP, VERSION = "pylon.dev", "v1alpha1"
CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "pylon" / "crds"

ID = r"^[a-z][a-z0-9_.-]{0,62}$"  # dataset, model, deployment and alias ids
GPU_TYPE = r"^[A-Za-z0-9._-]{1,64}$"
DATASET_VERSION = r"^tenants/([a-z0-9-]{1,63}|-)/datasets/[a-z][a-z0-9_.-]{0,62}/versions/([1-9][0-9]{0,9}|latest)$"
# A tenant a deployment is shared with: a tenant id as the services check it (common/names.py), or "*".
SHARED_TENANT = r"^([a-z][a-z0-9-]{0,62}|\*)$"
PRIORITY_CLASSES = ["low", "normal", "high"]  # the scheduler's priority classes
MODEL_URI = r"^models:/[a-z][a-z0-9_.-]{0,62}(@[a-z][a-z0-9_.-]{0,62}|/versions/[1-9][0-9]{0,17}|/latest)$"


def _str(max_length: int, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **extra}


def _int(minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "format": "int64", "minimum": minimum, "maximum": maximum}


def _num(minimum: float, maximum: float) -> dict[str, Any]:
    return {"type": "number", "minimum": minimum, "maximum": maximum}


def _list(items: dict[str, Any], max_items: int, **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, "maxItems": max_items, **extra}


def _map(values: dict[str, Any], max_properties: int) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": values, "maxProperties": max_properties}


FREE_OBJECT = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
CONDITION = {
    "type": "object", "required": ["type", "status"],
    "properties": {
        "type": _str(316), "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": _str(1024), "message": _str(32768),
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
    },
}


def status_schema(phases: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """Status shared by the three kinds: phase, conditions (Ready first of all), observedGeneration,
    message, metrics, plus kopf's own progress (kept here, not in annotations)."""
    return {"type": "object", "properties": {
        "observedGeneration": {"type": "integer", "format": "int64"},
        "phase": {"type": "string", "enum": phases},
        "message": {"type": "string"},
        "conditions": {"type": "array", "items": CONDITION, "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["type"]},
        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
        "kopf": FREE_OBJECT,
        **extra,
    }}


def _labels() -> dict[str, Any]:
    return _map(_str(256), 62)


TRAINING_SPEC: dict[str, Any] = {
    "type": "object",
    "description": "The scheduler's JobSpec (its JSON field names); exactly one of trainer or command.",
    "oneOf": [{"required": ["trainer"]}, {"required": ["command"]}],
    "properties": {
        "queue": _str(63, pattern=r"^[A-Za-z0-9-]{1,63}$"),
        "priorityClass": {"type": "string", "enum": PRIORITY_CLASSES},
        "workers": _int(1, 1024),
        "resources": {"type": "object", "properties": {
            "gpus": _num(0, 64), "gpuTypes": _list(_str(64, pattern=GPU_TYPE), 16),
            "cpus": _num(0, 1024), "memoryBytes": _int(0, 2 ** 44)}},
        "gang": {"type": "boolean"},
        "placement": {"type": "string", "enum": ["Pack", "Spread"]},
        "trainer": {"type": "object", "required": ["trainer"], "properties": {
            "trainer": _str(64, minLength=1), "config": FREE_OBJECT,
            "datasets": _list(_str(512, pattern=DATASET_VERSION), 64), "baseModel": _str(512),
            "registerModel": {"type": "object", "properties": {
                "model": _str(63, pattern=ID), "alias": _str(63, pattern=ID)}}}},
        "command": {"type": "object", "required": ["argv"], "properties": {
            "argv": _list(_str(131072), 1024, minItems=1), "workingDirKey": _str(1024),
            "pipRequirements": _list(_str(512), 128), "env": _map(_str(131072), 256),
            "datasets": _list(_str(512, pattern=DATASET_VERSION), 64)}},
        "maxRuntimeSeconds": _int(0, 30 * 86400),
        "maxRetries": _int(0, 100),
        "preemptible": {"type": "boolean"},
        "checkpointEverySteps": _int(0, 10 ** 12),
        "labels": _labels(),
        "displayName": _str(256),
        "jobType": _str(256),
        "totalSteps": _int(0, 10 ** 12),
        "stallTimeoutSeconds": _int(0, 7 * 86400),
    },
}
TRAINING_STATUS = status_schema(
    ["Pending", "Starting", "Running", "Preempting", "Succeeded", "Failed", "Cancelled"],
    {"jobName": {"type": "string"}, "state": {"type": "string"}, "attempt": {"type": "integer"},
     "retries": {"type": "integer"}, "preemptions": {"type": "integer"}, "exitCode": {"type": "integer"},
     "gpuType": {"type": "string"}, "outputUri": {"type": "string"}, "registeredModelVersion": {"type": "string"},
     "startTime": {"type": "string", "format": "date-time"}, "endTime": {"type": "string", "format": "date-time"}})

DEPLOYMENT_SPEC: dict[str, Any] = {
    "type": "object", "required": ["modelUri"],
    "x-kubernetes-validations": [
        {"rule": "self.modelUri == oldSelf.modelUri", "message": "modelUri is immutable; create a new ModelDeployment"},
        {"rule": "!has(self.engine) || !has(oldSelf.engine) || self.engine == oldSelf.engine",
         "message": "engine is immutable"},
        {"rule": "!has(self.priorityClass) || !has(oldSelf.priorityClass) || self.priorityClass == oldSelf.priorityClass",
         "message": "priorityClass is immutable; create a new ModelDeployment"}],
    "properties": {
        "deploymentId": _str(63, pattern=ID),
        "modelUri": _str(512, pattern=MODEL_URI),
        "replicas": _int(1, 16),
        "engine": {"type": "string", "enum": ["torch", "vllm"]},
        "gpusPerReplica": _num(0, 64),
        "gpuTypes": _list(_str(64, pattern=GPU_TYPE), 16),
        "engineConfig": FREE_OBJECT,
        "priorityClass": {"type": "string", "enum": PRIORITY_CLASSES, "default": "high",
                          "description": "The scheduler priority class of the replica jobs; set at create only."},
        "sharedWith": _list(_str(63, pattern=SHARED_TENANT), 64, **{
            "x-kubernetes-list-type": "set",
            "description": 'Other tenants that may send requests to the deployment, or "*" for every tenant.'}),
    },
}
DEPLOYMENT_STATUS = status_schema(
    ["Pending", "Ready", "Failed", "Deleting"],
    {"deploymentName": {"type": "string"}, "modelVersion": {"type": "string"}, "replicas": {"type": "integer"},
     "readyReplicas": {"type": "integer"}, "priorityClass": {"type": "string"},
     "sharedWith": {"type": "array", "items": {"type": "string"}}})

RECIPE = {"type": "object", "properties": {
    "textField": _str(256), "normalizeUnicode": {"type": "string", "enum": ["NFC", "NFKC", "NFD", "NFKD", "none"]},
    "normalizeWhitespace": {"type": "boolean"}, "minChars": _int(0, 16777216), "maxChars": _int(0, 16777216),
    "dedupe": {"type": "boolean"}, "scrubEmail": {"type": "boolean"}, "scrubPhone": {"type": "boolean"}}}
DATASET_SPEC: dict[str, Any] = {
    "type": "object", "required": ["sourceUris"],
    "properties": {
        "datasetId": _str(63, pattern=ID),
        "sourceUris": _list(_str(1024, minLength=1), 1000, minItems=1),
        "format": {"type": "string", "enum": ["text", "jsonl", "csv", "parquet"]},
        "compression": {"type": "string", "enum": ["none", "gzip", "zstd"]},
        "byReference": {"type": "boolean"},
        "description": _str(2048),
        "labels": _map(_str(256), 64),
        "processing": {"type": "object", "properties": {
            "schema": FREE_OBJECT, "recipe": RECIPE, "maxRejectRate": _num(0, 1)}},
        "deletionPolicy": {"type": "string", "enum": ["Retain", "Delete"]},
    },
}
DATASET_STATUS = status_schema(
    ["Importing", "Ready", "Failed"],
    {"datasetName": {"type": "string"}, "operation": {"type": "string"}, "version": {"type": "string"},
     "versionNumber": {"type": "integer"}, "digest": {"type": "string"}})

_READY = {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}
_PHASE = {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
KINDS: dict[str, dict[str, Any]] = {
    "TrainingJob": {"plural": "trainingjobs", "short": ["tj"], "spec": TRAINING_SPEC, "status": TRAINING_STATUS,
                    "columns": [_PHASE, _READY, {"name": "Job", "type": "string", "jsonPath": ".status.jobName"},
                                {"name": "GPU", "type": "string", "jsonPath": ".status.gpuType"},
                                {"name": "Step", "type": "number", "jsonPath": ".status.metrics.step"}, _AGE]},
    "ModelDeployment": {"plural": "modeldeployments", "short": ["md"], "spec": DEPLOYMENT_SPEC,
                        "status": DEPLOYMENT_STATUS,
                        "columns": [_PHASE, _READY, {"name": "Model", "type": "string", "jsonPath": ".spec.modelUri"},
                                    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                                    {"name": "Serving", "type": "integer", "jsonPath": ".status.readyReplicas"},
                                    {"name": "Priority", "type": "string", "jsonPath": ".spec.priorityClass",
                                     "priority": 1}, _AGE]},
    "Dataset": {"plural": "datasets", "short": ["pds"], "spec": DATASET_SPEC, "status": DATASET_STATUS,
                "columns": [_PHASE, _READY, {"name": "Version", "type": "string", "jsonPath": ".status.version"},
                            {"name": "Records", "type": "number", "jsonPath": ".status.metrics.recordCount"}, _AGE]},
}


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition object of ``kind``."""
    k = KINDS[kind]
    schema = {"type": "object", "required": ["spec"],
              "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                             "metadata": {"type": "object"}, "spec": k["spec"], "status": k["status"]}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{k['plural']}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "pylon"}},
        "spec": {
            "group": GROUP, "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": k["plural"], "singular": kind.lower(),
                      "shortNames": k["short"], "categories": ["pylon"]},
            "versions": [{"name": VERSION, "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": schema}, "subresources": {"status": {}},
                          "additionalPrinterColumns": k["columns"]}],
        },
    }


def open_api_schema(kind: str) -> dict[str, Any]:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def render(kind: str) -> str:
    header = "# Generated by `python -m pylon_operator.crds --write` from operators/pylon_operator/crds.py; edit there.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def path_of(kind: str) -> Path:
    return CRD_DIR / f"{KINDS[kind]['plural']}.{GROUP}.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check the CRD manifests.")
    parser.add_argument("--write", action="store_true", help="write deploy/helm/pylon/crds/*.yaml")
    args = parser.parse_args(argv)
    stale = []
    for kind in KINDS:
        if args.write:
            path_of(kind).parent.mkdir(parents=True, exist_ok=True)
            path_of(kind).write_text(render(kind))
        elif not path_of(kind).exists() or path_of(kind).read_text() != render(kind):
            stale.append(str(path_of(kind)))
    if stale:
        print("stale CRD manifests (run python -m pylon_operator.crds --write):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
