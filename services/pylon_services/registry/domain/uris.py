"""``models:/`` URIs: the one parser every caller goes through (via ResolveModelUri)."""

from __future__ import annotations

import re

from pylon_services.common.errors import InvalidArgument
from pylon_services.common.limits import MAX_NAME, quote
from pylon_services.common.names import check_id

URI_RE = re.compile(r"^models:/(?P<model>[^/@]+)(?:@(?P<alias>[^/]+)|/versions/(?P<version>[1-9][0-9]{0,9})"
                    r"|/(?P<latest>latest))$")
URI_RULE = "must be models:/<model>@<alias>, models:/<model>/versions/<n> or models:/<model>/latest"


def parse_model_uri(uri: str) -> tuple[str, str, str]:
    """(model, alias, version) with exactly one of alias and version set ("latest" counts as a version)."""
    m = URI_RE.match(uri or "") if len(uri or "") <= MAX_NAME else None
    if not m:
        raise InvalidArgument.field("uri", f"{quote(uri)} {URI_RULE}")
    model = check_id("uri", m["model"])
    if m["alias"]:
        return model, check_id("uri", m["alias"]), ""
    return model, "", m["version"] or "latest"
