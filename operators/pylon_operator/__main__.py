"""``python -m pylon_operator``: run the operator with our handlers, configured from ``PYLON_*``."""

from __future__ import annotations

import logging
import sys

import kopf

from pylon_operator.handlers import Runtime, register
from pylon_operator.kube import KubernetesKube
from pylon_operator.pylon_api import PylonApi
from pylon_operator.settings import OperatorSettings


def build(settings: OperatorSettings) -> tuple[kopf.OperatorRegistry, Runtime]:
    """The handler registry and the runtime the handlers share (Pylon calls, Kubernetes port)."""
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    return registry, Runtime(PylonApi.from_settings(settings), KubernetesKube(), settings)


def main() -> None:
    settings = OperatorSettings()
    if not (settings.address or settings.explicit_endpoints()):
        sys.exit("pylon-operator: set PYLON_ADDRESS (any service) or PYLON_SCHEDULER_ADDRESS, "
                 "PYLON_GATEWAY_ADDRESS and PYLON_INGEST_ADDRESS")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from kubernetes.config import ConfigException

    try:
        registry, runtime = build(settings)
    except ConfigException as e:  # neither in a pod nor with a kubeconfig
        sys.exit(f"pylon-operator: no Kubernetes credentials: {e}")
    namespaces = settings.namespaces
    kopf.run(registry=registry, memo=kopf.Memo(runtime=runtime), standalone=True,
             clusterwide=not namespaces, namespaces=namespaces, liveness_endpoint="http://0.0.0.0:8080/healthz")


if __name__ == "__main__":
    main()
