"""Rendering the Helm chart with the real Helm engine (helm-python-sdk) and walking what it
renders: objects, pod specs, containers and their environment."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "pylon"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
RELEASE, NAMESPACE = "pylon", "ml"

Obj = dict[str, Any]


def render(values: dict[str, Any], *, notes: bool = False) -> list[Obj]:
    """Every object the chart renders for these values (hooks and test hooks included)."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def render_notes(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def pod_templates(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """(where, pod template {metadata, spec}) for every pod the objects would create."""
    for o in objects:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield where, o["spec"]["template"]
        elif o["kind"] == "Pod":
            yield where, {"metadata": o["metadata"], "spec": o["spec"]}
        elif o["kind"] == "RayCluster":
            yield f"{where}/head", o["spec"]["headGroupSpec"]["template"]
            for group in o["spec"].get("workerGroupSpecs", []):
                yield f"{where}/{group['groupName']}", group["template"]


def containers(pod: Obj) -> list[Obj]:
    return list(pod["spec"].get("initContainers", [])) + list(pod["spec"]["containers"])


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def strict_schema(schema: Any) -> Any:
    """A CRD schema as kubernetes-validate's strict mode treats built-in kinds: objects with
    declared properties refuse unknown ones (unless they preserve unknown fields)."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if node.get("properties") and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for child in (node.get("properties") or {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            walk(node.get(key))

    walk(schema)
    return schema


def raycluster_schema() -> Any:
    return strict_schema(json.loads((SCHEMAS / "raycluster-v1.json").read_text()))
