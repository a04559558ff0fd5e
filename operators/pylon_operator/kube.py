"""Our thin port to the Kubernetes API: the few calls the handlers make besides what kopf does
itself. ``Kube`` is the Protocol the handlers use; ``KubernetesKube`` implements it with the
official client; tests use a fake of this port (never of the Pylon services)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

GROUP, VERSION = "pylon.dev", "v1alpha1"
RAY_GROUP, RAY_VERSION, RAYCLUSTERS = "ray.io", "v1", "rayclusters"
CONTROLLER = "pylon.dev/operator"


@dataclass(frozen=True)
class ObjectRef:
    """Where a custom object lives: group/version/plural, namespace and name."""

    plural: str
    namespace: str
    name: str
    group: str = GROUP
    version: str = VERSION
    kind: str = ""
    uid: str = ""

    @classmethod
    def of(cls, body: Any, plural: str) -> ObjectRef:
        """The reference of a kopf body (or any dict-shaped object)."""
        meta = body["metadata"]
        group, _, version = str(body.get("apiVersion", f"{GROUP}/{VERSION}")).rpartition("/")
        return cls(plural, meta["namespace"], meta["name"], group or GROUP, version, str(body.get("kind", "")),
                   str(meta.get("uid", "")))


class Kube(Protocol):
    """The Kubernetes calls the operator makes on its own."""

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        ...

    def patch_status(self, ref: ObjectRef, status: dict[str, Any]) -> None:
        """Merge ``status`` into the object's status subresource."""
        ...

    def patch_raycluster(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        """Apply a JSON patch to a RayCluster."""
        ...

    def emit_event(self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        """Record an event on the object (best effort)."""
        ...


class KubernetesKube:
    """``Kube`` on the official client, configured in-cluster or from a kubeconfig."""

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self._custom = client.CustomObjectsApi(api_client)
        self._events = client.EventsV1Api(api_client)
        self._instance = socket.gethostname()[:128]

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self._custom.get_namespaced_custom_object(ref.group, ref.version, ref.namespace, ref.plural, ref.name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(obj) if isinstance(obj, dict) else None

    def patch_status(self, ref: ObjectRef, status: dict[str, Any]) -> None:
        self._custom.patch_namespaced_custom_object_status(
            ref.group, ref.version, ref.namespace, ref.plural, ref.name, {"status": status},
            _content_type="application/merge-patch+json")

    def patch_raycluster(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        self._custom.patch_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAYCLUSTERS, name, ops,
                                                    _content_type="application/json-patch+json")

    def emit_event(self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        event = client.EventsV1Event.from_dict({
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "eventTime": datetime.now(UTC), "action": reason, "reason": reason, "note": message[:1024],
            "type": "Warning" if warning else "Normal", "reportingController": CONTROLLER,
            "reportingInstance": self._instance,
            "regarding": {"apiVersion": f"{ref.group}/{ref.version}", "kind": ref.kind, "namespace": ref.namespace,
                          "name": ref.name, "uid": ref.uid},
        })
        if event is None:
            return
        try:
            self._events.create_namespaced_event(ref.namespace, event)
        except ApiException:
            pass  # events are best effort: never fail a reconcile over one
