"""Write the OpenAPI schema of one version of a CRD as JSON, with every embedded pod template
replaced by an open object (the chart tests validate pod templates with kubernetes-validate).

    python -m tests.deploy.trim_crd ray.io_rayclusters.yaml v1 > tests/deploy/schemas/raycluster-v1.json

tests/deploy/schemas/raycluster-v1.json comes from KubeRay v1.7.0's
ray-operator/config/crd/bases/ray.io_rayclusters.yaml (git tag v1.7.0 of ray-project/kuberay).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def trim(node: Any) -> None:
    """Drop descriptions and open up pod templates, in place."""
    if not isinstance(node, dict):
        return
    node.pop("description", None)
    for name, prop in (node.get("properties") or {}).items():
        if name == "template" and "spec" in prop.get("properties", {}):
            node["properties"][name] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        else:
            trim(prop)
    for key in ("items", "additionalProperties"):
        trim(node.get(key))


def main(path: str, version: str) -> None:
    with open(path) as f:
        crd = yaml.safe_load(f)
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    schema["properties"].pop("status", None)
    trim(schema)
    json.dump(schema, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
