"""A fake of our own Kubernetes port (``pylon_operator.kube.Kube``): objects in a dict, status merge
patches and RayCluster JSON patches applied as the API server would, events recorded."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from pylon_operator.kube import ObjectRef


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386: null deletes, objects merge, anything else replaces."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str, bool]] = []
        self.status_patches: list[tuple[str, dict[str, Any]]] = []
        self.raycluster_patches: list[list[dict[str, Any]]] = []

    def add(self, obj: dict[str, Any], plural: str) -> dict[str, Any]:
        """Store an object as the API server would create it: uid, generation 1."""
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", str(uuid.uuid4()))
        obj["metadata"].setdefault("generation", 1)
        obj["metadata"].setdefault("namespace", "default")
        self.objects[(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    def edit_spec(self, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A user's merge patch of the spec, as the API server applies it: the generation moves."""
        obj = self.objects[(plural, namespace, name)]
        obj["spec"] = merge_patch(obj["spec"], patch)
        obj["metadata"]["generation"] += 1
        return copy.deepcopy(obj)

    def body(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(plural, namespace, name)])

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        obj = self.objects.get((ref.plural, ref.namespace, ref.name))
        return copy.deepcopy(obj) if obj is not None else None

    def patch_status(self, ref: ObjectRef, status: dict[str, Any]) -> None:
        key = (ref.plural, ref.namespace, ref.name)
        if key not in self.objects:
            raise LookupError(f"no {key}")
        self.status_patches.append((ref.name, copy.deepcopy(status)))
        self.objects[key]["status"] = merge_patch(self.objects[key].get("status") or {}, status)

    def patch_raycluster(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        obj = copy.deepcopy(self.objects[("rayclusters", namespace, name)])
        for op in ops:  # the two JSON patch operations the operator sends
            *parents, last = op["path"].strip("/").split("/")
            node: Any = obj
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if op["op"] == "test":
                if node.get(last) != op["value"]:
                    raise ValueError(f"test failed at {op['path']}")
            elif op["op"] == "add":
                node[last] = op["value"]
            else:
                raise ValueError(f"unexpected op {op['op']}")
        self.raycluster_patches.append(ops)
        self.objects[("rayclusters", namespace, name)] = obj

    def emit_event(self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append((ref.name, reason, message, warning))
