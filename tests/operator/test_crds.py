"""The CRD manifests: current with crds.py, valid CustomResourceDefinition objects for a current
Kubernetes (kubernetes-validate, strict), structural, and the sample objects validate against their
openAPIV3Schema (jsonschema) while the invalid sample and unknown fields are refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pylon_operator import crds

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "operators" / "samples").glob("*.yaml"))
K8S_VERSION = "1.37.0"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the API server applies it with strict field validation (kubectl's default):
    a field no schema declares is an error, except under x-kubernetes-preserve-unknown-fields; a
    list of listType set refuses duplicates (jsonschema's uniqueItems, which a CRD may not say)."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            if node.get("x-kubernetes-list-type") == "set":
                node["uniqueItems"] = True
            for key, value in node.items():
                if key != "metadata":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(out)
    return out


def validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(strict(crds.open_api_schema(kind)))


def test_crd_files_are_generated_from_crds_py():
    assert crds.main([]) == 0, "run: python -m pylon_operator.crds --write"
    assert sorted(p.name for p in crds.CRD_DIR.glob("*.yaml")) == [
        "datasets.pylon.dev.yaml", "modeldeployments.pylon.dev.yaml", "trainingjobs.pylon.dev.yaml"]


@pytest.mark.parametrize("kind", sorted(crds.KINDS))
def test_crd_is_a_valid_kubernetes_object(kind):
    obj = load(crds.path_of(kind))
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    version = obj["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"conditions", "observedGeneration", "phase", "metrics", "kopf"} <= set(status)
    assert status["kopf"]["x-kubernetes-preserve-unknown-fields"] is True  # kopf's progress lives here
    assert set(status["conditions"]["items"]["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:2] == ["Phase", "Ready"]


def _structural_errors(node: Any, path: str, in_logic: bool = False) -> list[str]:
    """Kubernetes' structural-schema rules we rely on: every node outside oneOf/anyOf/allOf/not
    has a type (or keeps unknown fields); inside them, no types, properties or defaults."""
    errors: list[str] = []
    if not isinstance(node, dict):
        return errors
    if in_logic and {"type", "properties", "default", "additionalProperties"} & set(node):
        errors.append(f"{path}: a logic branch declares structure")
    if not in_logic and "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        errors.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: properties and additionalProperties together")
    for name, child in (node.get("properties") or {}).items():
        errors += _structural_errors(child, f"{path}.{name}", in_logic)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            errors += _structural_errors(node[key], f"{path}.{key}", in_logic)
    for key in ("oneOf", "anyOf", "allOf"):
        for i, branch in enumerate(node.get(key) or []):
            errors += _structural_errors(branch, f"{path}.{key}[{i}]", True)
    return errors


@pytest.mark.parametrize("kind", sorted(crds.KINDS))
def test_crd_schema_is_structural(kind):
    assert _structural_errors(crds.open_api_schema(kind), kind) == []


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_validate(path):
    obj = load(path)
    if obj["apiVersion"] == "ray.io/v1":
        from pylon_operator.pools import worker_groups
        assert len(worker_groups(obj)) == 2
        return
    # The object's metadata is valid Kubernetes metadata (checked on a ConfigMap, a kind the schemas know).
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
                                 K8S_VERSION, strict=True)
    errors = [e.message for e in validator(obj["kind"]).iter_errors(obj)]
    assert errors == []


def test_invalid_sample_is_refused_with_each_reason():
    obj = load(ROOT / "operators" / "samples" / "invalid" / "trainingjob-invalid.yaml")
    errors = {"/".join(map(str, e.absolute_path)): e.message for e in validator("TrainingJob").iter_errors(obj)}
    assert errors["spec/workers"] == "0 is less than the minimum of 1"
    assert "'urgent' is not one of ['low', 'normal', 'high']" == errors["spec/priorityClass"]
    assert "65 is greater than the maximum of 64" == errors["spec/resources/gpus"]
    assert "valid under each of" in errors["spec"]  # trainer and command together


@pytest.mark.parametrize("kind, patch, words", [
    ("TrainingJob", {"spec": {"command": {"argv": ["true"]}, "workerz": 2}}, "Additional properties"),
    ("TrainingJob", {"spec": {}}, "is not valid under any of the given schemas"),
    ("TrainingJob", {"spec": {"command": {"argv": ["true"]}, "resources": {"gpuTypes": ["A 100"]}}}, "does not match"),
    ("TrainingJob", {"spec": {"trainer": {"trainer": "causal-lm", "datasets": ["lm-docs"]}}}, "does not match"),
    ("ModelDeployment", {"spec": {"modelUri": "models:/m@prod", "replicas": 17}}, "maximum of 16"),
    ("ModelDeployment", {"spec": {"modelUri": "gpt@prod"}}, "does not match"),
    ("ModelDeployment", {"spec": {"modelUri": "models:/m@prod", "engine": "tgi"}}, "is not one of"),
    ("ModelDeployment", {"spec": {"modelUri": "models:/m@prod", "priorityClass": "urgent"}}, "is not one of"),
    ("ModelDeployment", {"spec": {"modelUri": "models:/m@prod", "sharedWith": ["Search_Team"]}}, "does not match"),
    ("ModelDeployment", {"spec": {"modelUri": "models:/m@prod", "sharedWith": ["tenants/globex"]}}, "does not match"),
    ("ModelDeployment", {"spec": {"modelUri": "models:/m@prod", "sharedWith": ["**"]}}, "does not match"),
    ("ModelDeployment", {"spec": {"modelUri": "models:/m@prod", "sharedWith": [f"t{i}" for i in range(65)]}},
     "is too long"),
    ("ModelDeployment", {"spec": {"modelUri": "models:/m@prod", "sharedWith": ["globex", "globex"]}},
     "non-unique elements"),
    ("Dataset", {"spec": {"sourceUris": []}}, "should be non-empty"),
    ("Dataset", {"spec": {"sourceUris": ["k"], "processing": {"maxRejectRate": 2}}}, "maximum of 1"),
    ("Dataset", {"spec": {"sourceUris": ["k"], "format": "xml"}}, "is not one of"),
])
def test_bad_specs_are_refused(kind, patch, words):
    obj = {"apiVersion": "pylon.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, **patch}
    messages = [e.message for e in validator(kind).iter_errors(obj)]
    assert any(words in m for m in messages), messages


def test_a_model_deployment_shares_with_tenants_or_everyone_at_a_priority_class():
    obj = {"apiVersion": "pylon.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "x"},
           "spec": {"modelUri": "models:/m@prod", "priorityClass": "low",
                    "sharedWith": ["*", "globex", "a", "b" + "-" * 62] + [f"t{i}" for i in range(60)]}}
    assert list(validator("ModelDeployment").iter_errors(obj)) == []
    spec = crds.open_api_schema("ModelDeployment")["properties"]["spec"]
    assert spec["properties"]["priorityClass"]["default"] == "high"  # the gateway's own default
    # Immutable like engine: the API server refuses a change once set (a CEL transition rule).
    rules = {v["message"]: v["rule"] for v in spec["x-kubernetes-validations"]}
    assert rules["priorityClass is immutable; create a new ModelDeployment"] == (
        "!has(self.priorityClass) || !has(oldSelf.priorityClass) || self.priorityClass == oldSelf.priorityClass")
    assert "sharedWith" not in " ".join(rules.values())  # sharing changes in place


def test_a_trainer_config_keeps_unknown_fields():
    obj = {"apiVersion": "pylon.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "x"},
           "spec": {"trainer": {"trainer": "causal-lm", "config": {"anything": {"nested": [1, 2]}}}}}
    assert list(validator("TrainingJob").iter_errors(obj)) == []
