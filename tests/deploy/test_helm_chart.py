"""The Helm chart, rendered with the real Helm v4 engine (helm-python-sdk) for the default values
and variants: every object passes kubernetes-validate in strict mode, the RayCluster passes
KubeRay v1.7.0's CRD schema, and what a user relies on holds (secrets only in the Secret and
never in Ray pods, non-root containers with requests, probes on the gRPC ports, one Ray worker
group per GPU pool)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from pylon_services.runtime.settings import Settings
from pylon_services.scheduler.config import SchedulerConfig
from tests.deploy.chart_support import (
    RELEASE,
    Obj,
    containers,
    env_of,
    named,
    of_kind,
    pod_templates,
    raycluster_schema,
    render,
)

K8S_VERSION = kubernetes_validate.latest_version()
SERVICES = {"gateway": 50051, "ingest": 50052, "scheduler": 50053, "registry": 50054}
# Secret values that must show up in the Secret and nowhere else.
KNOWN_SECRETS = {"adminKey": "pyl_admin_known0admin0key", "redisPassword": "known0redis0password",
                 "s3SecretKey": "known0s3secret0key", "rayAuthToken": "known0ray0token0value",
                 "internalKey": "pyl_internal_known0internal"}
GPU_POOLS = [
    {"name": "a100", "accelerator": "A100", "gpusPerNode": 8, "cpusPerNode": 64, "memory": "480Gi",
     "minReplicas": 0, "maxReplicas": 4, "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
     "labels": {"zone": "us-central1-a"}, "rayResources": {"nvlink": 1}, "priority": 10},
    {"name": "l4", "accelerator": "L4", "gpusPerNode": 1, "minReplicas": 1, "maxReplicas": 8},
    {"name": "h100", "accelerator": "H100", "gpusPerNode": 8, "replicas": 2, "maxReplicas": 2},
]
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "known-secrets": {"secrets": KNOWN_SECRETS, "gpuPools": GPU_POOLS[:1]},
    "external": {"redis": {"enabled": False}, "minio": {"enabled": False},
                 "secrets": {"existingSecret": "byo-secrets"},
                 "external": {"redis": {"url": "rediss://redis.example.com:6380/2"},
                              "s3": {"endpoint": "https://s3.example.com", "bucket": "ml-data",
                                     "prefix": "/pylon/", "region": "eu-west-1",
                                     "publicEndpoint": "https://files.example.com"}}},
    "gpu-pools": {"gpuPools": GPU_POOLS},
    "gpu-pools-rayStartParams": {"gpuPools": GPU_POOLS, "ray": {"declareGroupResources": False}},
    "monitoring": {"monitoring": {"enabled": True, "labels": {"release": "prometheus"}}},
}
CRD_KINDS = {"RayCluster", "ServiceMonitor"}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, render(VARIANTS[request.param])


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    """Each variant rendered once, for the tests about one particular variant."""
    return {name: render(values) for name, values in VARIANTS.items()}


def test_every_builtin_object_passes_kubernetes_validate_strict(variant: tuple[str, list[Obj]]) -> None:
    _, objects = variant
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    assert checked > 20


def test_raycluster_passes_the_kuberay_crd_schema_and_its_pods_pass_kubernetes_validate(
        variant: tuple[str, list[Obj]]) -> None:
    _, objects = variant
    (cluster,) = of_kind(objects, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    jsonschema.validate(cluster, raycluster_schema())
    for _, template in pod_templates([cluster]):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": template}, K8S_VERSION, strict=True)


def test_the_kuberay_schema_check_catches_a_misspelt_field(rendered: dict[str, list[Obj]]) -> None:
    (cluster,) = of_kind(rendered["gpu-pools"], "RayCluster")
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(cluster, raycluster_schema())


def test_every_container_runs_as_non_root_with_cpu_and_memory_requests(variant: tuple[str, list[Obj]]) -> None:
    _, objects = variant
    for where, pod in pod_templates(objects):
        pod_ctx = pod["spec"].get("securityContext", {})
        for c in containers(pod):
            ctx = {**pod_ctx, **c.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) > 0, f"{where}/{c['name']} may run as root"
            assert ctx.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}"
            requests = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{where}/{c['name']} has no cpu/memory requests"


def _secret_values(objects: list[Obj]) -> list[str]:
    import base64

    return [base64.b64decode(v).decode() for s in of_kind(objects, "Secret") for v in s["data"].values()]


def test_secrets_are_only_in_the_secret(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["known-secrets"]
    secret = named(objects, "Secret", RELEASE)
    assert set(_secret_values(objects)) >= set(KNOWN_SECRETS.values())
    for obj in objects:
        if obj is secret:
            continue
        text = json.dumps(obj)
        for value in KNOWN_SECRETS.values():
            assert value not in text, f"{obj['kind']}/{obj['metadata']['name']} carries a secret"


def test_configmaps_hold_no_secret_setting_and_every_name_is_a_real_setting(variant: tuple[str, list[Obj]]) -> None:
    _, objects = variant
    known = {f"PYLON_{f.upper()}" for f in Settings.model_fields} | {
        f"PYLON_SCHED_{f.upper()}" for f in SchedulerConfig.model_fields}
    secret_names = {"PYLON_ADMIN_KEY", "PYLON_REDIS_URL", "PYLON_S3_ACCESS_KEY", "PYLON_S3_SECRET_KEY",
                    "PYLON_INTERNAL_KEY"}
    config = named(objects, "ConfigMap", f"{RELEASE}-config")["data"]
    assert not secret_names & set(config)
    assert set(config) <= known, f"not settings: {set(config) - known}"
    for cm in of_kind(objects, "ConfigMap"):
        assert not any(k in secret_names for k in cm.get("data", {}))


def _platform_env(objects: list[Obj], deployment: str) -> dict[str, str]:
    """What a service process would see: the ConfigMap plus its own env, with the Secret's
    values filled in where Kubernetes would."""
    config = named(objects, "ConfigMap", f"{RELEASE}-config")["data"]
    (c,) = named(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    env = dict(config)
    for name, e in env_of(c).items():
        env[name] = e.get("value", f"<{name} from secret>").replace("$(REDIS_PASSWORD)", "pw")
    return env


@pytest.mark.parametrize("name", ["default", "external", "gpu-pools"])
def test_service_environment_parses_into_settings(rendered: dict[str, list[Obj]], name: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered[name]
    for svc, port in SERVICES.items():
        env = _platform_env(objects, f"{RELEASE}-{svc}")
        for k, v in env.items():
            if k.startswith("PYLON_"):
                monkeypatch.setenv(k, v)
        settings = Settings()
        assert settings.port == port and settings.host == "0.0.0.0"
        assert settings.advertise_address == f"{RELEASE}-{svc}.ml.svc:{port}"
        assert settings.scheduler_address == f"{RELEASE}-scheduler.ml.svc:50053"
        assert settings.redis_url.startswith(("redis://:pw@", "rediss://:pw@"))
        assert settings.object_store_url.startswith("s3://")
        assert env.get("PYLON_GATEWAY_HTTP_PORT") == ("8000" if svc == "gateway" else None)
        SchedulerConfig().pool_bounds()


def test_the_gateway_serves_its_openai_http_port_on_its_service(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["default"]
    (c,) = named(objects, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]["containers"]
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in c["ports"]
    ports = named(objects, "Service", f"{RELEASE}-gateway")["spec"]["ports"]
    assert [p["port"] for p in ports if p["name"] == "http"] == [8000]
    policy = named(objects, "NetworkPolicy", f"{RELEASE}-services")
    assert {"port": 8000, "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]


def test_external_redis_and_s3_replace_the_bundled_ones(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["external"]
    assert not of_kind(objects, "StatefulSet") and not of_kind(objects, "Secret")
    assert not [j for j in of_kind(objects, "Job") if "bucket" in j["metadata"]["name"]]
    env = _platform_env(objects, f"{RELEASE}-registry")
    assert env["PYLON_REDIS_URL"] == "rediss://:pw@redis.example.com:6380/2"
    assert env["PYLON_OBJECT_STORE_URL"] == "s3://ml-data/pylon"
    assert env["PYLON_S3_ENDPOINT_URL"] == "https://s3.example.com" and env["PYLON_S3_REGION"] == "eu-west-1"
    assert env["PYLON_S3_PUBLIC_ENDPOINT_URL"] == "https://files.example.com"  # what presigned URLs name
    assert "PYLON_S3_PUBLIC_ENDPOINT_URL" not in _platform_env(rendered["default"], f"{RELEASE}-registry")
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for _, pod in pod_templates(objects) for c in containers(pod)
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"byo-secrets"}


def test_ray_pods_get_no_platform_secret_only_the_ray_token_file(variant: tuple[str, list[Obj]]) -> None:
    _, objects = variant
    (cluster,) = of_kind(objects, "RayCluster")
    for where, pod in pod_templates([cluster]):
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False, where
        for c in containers(pod):
            assert not c.get("envFrom"), f"{where}: envFrom"
            for e in c.get("env", []):
                assert "valueFrom" not in e, f"{where}: {e['name']} comes from a secret"
                assert not e["name"].startswith("PYLON_"), f"{where}: {e['name']}"
            assert env_of(c)["RAY_AUTH_MODE"]["value"] == "token"
        secret_volumes = [v["secret"] for v in spec.get("volumes", []) if "secret" in v]
        assert [[i["key"] for i in s["items"]] for s in secret_volumes] == [["ray-auth-token"]], where


def test_services_probe_grpc_health_on_their_own_port(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["default"]
    for svc, port in SERVICES.items():
        (c,) = named(objects, "Deployment", f"{RELEASE}-{svc}")["spec"]["template"]["spec"]["containers"]
        assert env_of(c)["PYLON_PORT"]["value"] == str(port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, f"{svc} {probe}"
        service = named(objects, "Service", f"{RELEASE}-{svc}")
        http = {"http": 8000} if svc == "gateway" else {}
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": port, "metrics": 9090, **http}


def test_leader_and_ingest_join_ray_as_nodes_then_exec_their_process(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["default"]
    for deployment, module in ((f"{RELEASE}-scheduler-leader", "pylon_services.scheduler.leader"),
                               (f"{RELEASE}-ingest", "pylon_services.ingest")):
        (c,) = named(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
        script = " ".join(c["command"] + c.get("args", []))
        assert "ray start --address=\"$PYLON_RAY_ADDRESS\" --num-cpus=0" in script
        assert script.endswith(f"exec python -m {module}")
        assert env_of(c)["RAY_AUTH_TOKEN_PATH"]["value"] == "/etc/pylon/ray/token"
    for svc in ("gateway", "scheduler", "registry"):
        (c,) = named(objects, "Deployment", f"{RELEASE}-{svc}")["spec"]["template"]["spec"]["containers"]
        assert c["command"] == ["python", "-m", f"pylon_services.{svc}"]
        assert "RAY_AUTH_MODE" not in env_of(c)
