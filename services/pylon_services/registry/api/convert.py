"""Registry documents (plain dicts from the domain) to protobuf messages."""

from __future__ import annotations

from typing import Any

from pylon.registry.v1 import registry_pb2 as pb
from pylon_services.runtime.protoconv import struct, ts

_STATES = {"ready": pb.MODEL_VERSION_STATE_READY, "archived": pb.MODEL_VERSION_STATE_ARCHIVED,
           "deleted": pb.MODEL_VERSION_STATE_DELETED}
# The names ``registry.domain.layout.FORMATS`` stores, in enum order (requests index FORMATS).
_FORMATS = {"unspecified": pb.MODEL_FORMAT_UNSPECIFIED, "hf_transformers": pb.MODEL_FORMAT_HF_TRANSFORMERS,
            "safetensors": pb.MODEL_FORMAT_SAFETENSORS, "torch": pb.MODEL_FORMAT_TORCH, "onnx": pb.MODEL_FORMAT_ONNX,
            "other": pb.MODEL_FORMAT_OTHER}
_LINEAGE = ("datasets", "dataset_digests", "job", "checkpoint", "base_model")


def model_pb(d: dict[str, Any]) -> pb.Model:
    return pb.Model(name=d["name"], description=d.get("description", ""), tags=d.get("tags", {}),
                    aliases=d.get("aliases", {}), latest_version=d.get("latest_version", 0),
                    create_time=ts(d.get("create_time")), etag=d.get("etag", ""),
                    protected_aliases=d.get("protected_aliases", []))


def version_pb(d: dict[str, Any]) -> pb.ModelVersion:
    lin = d.get("lineage", {})
    return pb.ModelVersion(
        name=d["name"], version=d["version"], state=_STATES[d["state"]],
        # A stored name without an enum value (``layout.RESERVED_FORMATS``) reads as OTHER.
        format=_FORMATS.get(d["format"], pb.MODEL_FORMAT_OTHER),
        files=[pb.ArtifactFile(**f) for f in d["files"]], config=struct(d.get("config")),
        signature=struct(d.get("signature")), metrics=d.get("metrics", {}), tags=d.get("tags", {}),
        description=d.get("description", ""), lineage=pb.Lineage(**{k: lin[k] for k in _LINEAGE if k in lin}),
        aliases=d.get("aliases", []), deployments=d.get("deployments", []), creator=d.get("creator", ""),
        create_time=ts(d.get("create_time")), update_time=ts(d.get("update_time")),
        delete_time=ts(d.get("delete_time")), etag=d.get("etag", ""), digest=d.get("digest", ""))


def alias_pb(d: dict[str, Any]) -> pb.Alias:
    return pb.Alias(name=d["name"], version=d["version"], etag=d["etag"], update_time=ts(d.get("time")),
                    updated_by=d.get("actor", ""), previous_version=d.get("previous", 0))
