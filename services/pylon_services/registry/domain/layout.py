"""Where registry documents live in object storage (the source of truth) and how they are read
without the index (rebuild).

Under ``tenants/{t}/models/{m}/``:
  model.json                         mutable (description, tags, protected aliases): CAS on etag
  versions/{n:010d}.json             immutable manifest; the create-only put allocates n
  version-meta/{n:010d}.json         mutable state, tags, description of version n: CAS on etag
  aliases/{alias}.json               {version, previous, seq, actor, time}: CAS on etag
  alias-history/{alias}/{seq:010d}.json  one move; rebuilt from the alias document if lost
  deployments/{n}/{deployment}.json  which deployment serves version n
  requests/{request_id}.json         request id -> version number (idempotent registration)
Version manifests and their mutable fields are read by other services too (engines load a pinned
version), so their keys and reader live in ``pylon_services.common.layout``; the rest is the
registry's own. Artifacts are blobs: ``tenants/{t}/blobs/sha256/{hex}`` (copied from a job's
output) or ``tenants/{t}/blobs/staged/{upload}/{i}`` (uploaded by the SDK and verified in place);
manifests name each file's digest and object key. ``tenants/{t}/uploads/{id}.json`` records an
open upload. ``registry/tenants/{t}`` marks tenants that have models (so a rebuild can find them).
"""

from __future__ import annotations

from pylon_services.common.layout import model_prefix

# ``ModelFormat`` names by enum number: requests carry the number, manifests store the name.
FORMATS = ("unspecified", "hf_transformers", "safetensors", "torch", "onnx", "other")
# Names under a reserved enum number that stored manifests may hold: such versions stay readable
# (the API shows them as "other", a format Pylon does not interpret), and no new version is
# registered in one of them.
RESERVED_FORMATS = {6: "pylon_gpt"}
# Every number a request may carry, to its stored name (a reserved one is refused by name).
FORMAT_NUMBERS: dict[int, str] = {**dict(enumerate(FORMATS)), **RESERVED_FORMATS}
STATES = ("ready", "archived", "deleted")
DEFAULT_PROTECTED: tuple[str, ...] = ()  # opt-in per model: UpdateModel(protected_aliases=[...])


def model_key(tenant: str, model: str) -> str:
    return model_prefix(tenant, model) + "model.json"


def alias_key(tenant: str, model: str, alias: str) -> str:
    return model_prefix(tenant, model) + f"aliases/{alias}.json"


def history_key(tenant: str, model: str, alias: str, seq: int) -> str:
    return model_prefix(tenant, model) + f"alias-history/{alias}/{seq:010d}.json"


def deployment_key(tenant: str, model: str, n: int, deployment: str) -> str:
    return model_prefix(tenant, model) + f"deployments/{n}/{deployment.replace('/', '~')}.json"


def request_key(tenant: str, model: str, request_id: str) -> str:
    return model_prefix(tenant, model) + f"requests/{request_id}.json"


def tenant_marker(tenant: str) -> str:
    return f"registry/tenants/{tenant}"
