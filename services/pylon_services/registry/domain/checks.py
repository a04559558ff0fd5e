"""Limits on what a model or a version may hold, checked before anything is written.

The figures (``common.limits``): descriptions up to 2048 characters, at most 64 tags with keys
like ids and values up to 256 characters, at most 256 metrics, a config and a signature of at
most 64 KiB of JSON each, at most 64 lineage datasets, at most 64 protected aliases, at most
10,000 files of paths that obey ``common.paths.check_path``. So every model record is a few KiB
and a version's is a few KiB plus its file list, and no stored record can make a later Get or
List fail (list pages are also cut at ``common.paging.MAX_PAGE_BYTES``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pylon_services.common.errors import InvalidArgument
from pylon_services.common.limits import (
    MAX_NAME,
    MAX_URI,
    check_description,
    check_json,
    check_labels,
    check_metrics,
    check_request_id,
    check_strings,
    check_text,
)
from pylon_services.common.names import check_id
from pylon_services.common.paths import check_prefix

if TYPE_CHECKING:
    from pylon_services.registry.domain.registry import VersionSpec

MAX_LINEAGE_DATASETS = 64
MAX_PROTECTED_ALIASES = 64
MAX_DIGEST = 80  # "sha256:" and 64 hex digits, with room for another algorithm's name


def protected_aliases(values: Iterable[str], field: str = "protected_aliases") -> list[str]:
    out = sorted(set(check_strings(field, values, max_items=MAX_PROTECTED_ALIASES)))
    for alias in out:
        check_id(field, alias)
    return out


def model_fields(changes: Mapping[str, Any], prefix: str = "") -> None:
    """Description, tags and protected aliases of a model (create or update)."""
    if "description" in changes:
        check_description(prefix + "description", changes["description"])
    if "tags" in changes:
        check_labels(prefix + "tags", changes["tags"])
    if "protected_aliases" in changes:
        protected_aliases(changes["protected_aliases"], prefix + "protected_aliases")


def version_meta(changes: Mapping[str, Any]) -> None:
    """The mutable fields of a version (update)."""
    if "description" in changes:
        check_description("version.description", changes["description"])
    if "tags" in changes:
        check_labels("version.tags", changes["tags"])


def lineage(lin: Mapping[str, Any]) -> None:
    check_strings("lineage.datasets", lin.get("datasets", []), max_items=MAX_LINEAGE_DATASETS, max_chars=MAX_NAME)
    check_strings("lineage.dataset_digests", lin.get("dataset_digests", []), max_items=MAX_LINEAGE_DATASETS,
                  max_chars=MAX_DIGEST)
    check_text("lineage.job", lin.get("job", ""), MAX_NAME)
    check_text("lineage.checkpoint", lin.get("checkpoint", ""), MAX_URI)
    check_text("lineage.base_model", lin.get("base_model", ""), MAX_NAME)


def version_spec(spec: VersionSpec) -> None:
    """Everything a new version carries besides its files (checked in ``artifacts``)."""
    if spec.source_prefix:
        check_text("source_uri", spec.source_prefix, MAX_URI)
        check_prefix("source_uri", spec.source_prefix)
    check_description("description", spec.description)
    check_labels("tags", spec.tags)
    check_metrics("metrics", spec.metrics)
    check_json("config", spec.config)
    check_json("signature", spec.signature)
    lineage(spec.lineage)
    check_request_id("request_id", spec.request_id)
    if not isinstance(spec.config, dict) or not isinstance(spec.signature, dict):
        raise InvalidArgument.field("config", "must be a JSON object")
