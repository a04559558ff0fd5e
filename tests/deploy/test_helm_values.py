"""The chart's values and what they decide: invalid values refused with the schema's message,
`helm lint`, GPU pools as Ray worker groups and scheduler pools, RBAC, NetworkPolicies, the
ServiceMonitor, NOTES.txt and the `helm test` hooks."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest

from pylon_services.scheduler.config import SchedulerConfig
from tests.deploy.chart_support import (
    CHART,
    RELEASE,
    Obj,
    containers,
    named,
    of_kind,
    pod_templates,
    render,
    render_notes,
)
from tests.deploy.test_helm_chart import GPU_POOLS


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return render({})


@pytest.fixture(scope="module")
def pools() -> list[Obj]:
    return render({"gpuPools": GPU_POOLS})


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
    ({"services": {"gateway": {"replicas": "two"}}}, "at '/services/gateway/replicas': got string, want integer"),
    ({"gpuPools": [{"name": "a100", "gpusPerNode": 8}]}, "at '/gpuPools/0': missing property 'accelerator'"),
    ({"gpuPools": [{"name": "a100", "accelerator": "A100", "gpus": 8}]}, "additional properties 'gpus' not allowed"),
    ({"gpuPools": [{"name": "A100!", "accelerator": "A100"}]}, "/gpuPools/0/name"),
    ({"redis": {"persistence": {"size": "lots"}}}, "/redis/persistence/size"),
    ({"config": {"extra": {"PYLON_ADMIN_KEY": "x"}}}, "invalid propertyName 'PYLON_ADMIN_KEY'"),
    ({"config": {"extra": {"REDIS_URL": "x"}}}, "invalid propertyName 'REDIS_URL'"),
    ({"config": {"schedPolicy": "random"}}, "/config/schedPolicy"),
    ({"external": {"redis": {"url": "redis://:secret@redis:6379/0"}}}, "/external/redis/url"),
    ({"monitoring": {"enabled": "yes"}}, "at '/monitoring/enabled': got string, want boolean"),
])
def test_invalid_values_are_refused_with_the_schemas_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert "values don't meet the specifications of the schema" in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(("values", "message"), [
    ({"gpuPools": [{"name": "a", "accelerator": "A100"}, {"name": "b", "accelerator": "A100"}]},
     'the accelerator "A100" has two pools'),
    ({"gpuPools": [{"name": "a", "accelerator": "A100"}, {"name": "a", "accelerator": "L4"}]}, 'the name "a" is used twice'),
    ({"gpuPools": [{"name": "a", "accelerator": "A100", "minReplicas": 3, "maxReplicas": 2}]},
     "minReplicas is above maxReplicas"),
    ({"redis": {"enabled": False}}, "set external.redis.url"),
    ({"minio": {"enabled": False}}, "set external.s3.bucket"),
])
def test_values_the_schema_cannot_express_fail_the_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(values)


def test_helm_lint_finds_nothing_but_the_unfetched_optional_dependency() -> None:
    for values in ({}, {"gpuPools": GPU_POOLS, "monitoring": {"enabled": True}}):
        report = helm.lint(CHART, values, strict=False, kube_version="v1.35.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        # KubeRay's chart is an optional dependency fetched by `helm dependency build`, never
        # committed (docs/deploy-kubernetes.md); that is the one finding allowed.
        assert [m["error"] for m in problems] == ["chart directory is missing these dependencies: kuberay-operator"]
    (dep,) = helm.Chart.load(CHART).metadata["dependencies"]
    assert dep["condition"] == "kuberay.enabled" and dep["version"] == "1.7.0"


def test_each_gpu_pool_is_one_ray_worker_group(pools: list[Obj]) -> None:
    (cluster,) = of_kind(pools, "RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert list(groups) == ["cpu", "a100", "l4", "h100"]
    a100 = groups["a100"]
    assert (a100["replicas"], a100["minReplicas"], a100["maxReplicas"], a100["priority"]) == (0, 0, 4, 10)
    assert a100["resources"] == {"CPU": "64", "GPU": "8", "memory": "480Gi", "accelerator_type:A100": "1", "nvlink": "1"}
    assert a100["labels"] == {"ray.io/accelerator-type": "A100", "pylon.dev/pool": "a100", "zone": "us-central1-a"}
    # KubeRay refuses a group with resources both here and in rayStartParams.
    assert a100["rayStartParams"] == {}
    pod = a100["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    assert pod["tolerations"] == GPU_POOLS[0]["tolerations"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert (groups["l4"]["replicas"], groups["l4"]["minReplicas"], groups["l4"]["maxReplicas"]) == (1, 1, 8)
    assert groups["h100"]["replicas"] == 2
    assert cluster["spec"]["enableInTreeAutoscaling"] is False


def test_without_group_resources_the_accelerator_goes_into_ray_start_params() -> None:
    (cluster,) = of_kind(render({"gpuPools": GPU_POOLS, "ray": {"declareGroupResources": False}}), "RayCluster")
    a100 = cluster["spec"]["workerGroupSpecs"][1]
    assert "resources" not in a100 and "labels" not in a100
    params = a100["rayStartParams"]
    assert (params["num-gpus"], params["num-cpus"]) == ("8", "64")
    assert json.loads(params["resources"].strip("'")) == {"accelerator_type:A100": 1, "nvlink": 1}


def test_the_scheduler_is_told_the_pools_it_may_scale(pools: list[Obj], monkeypatch: pytest.MonkeyPatch) -> None:
    config = named(pools, "ConfigMap", f"{RELEASE}-config")["data"]
    monkeypatch.setenv("PYLON_SCHED_POOLS", config["PYLON_SCHED_POOLS"])
    bounds = SchedulerConfig().pool_bounds()
    assert {k: (b.min_nodes, b.max_nodes, b.gpus_per_node, b.cpus_per_node) for k, b in bounds.items()} == {
        "A100": (0, 4, 8, 64), "L4": (1, 8, 1, 8), "H100": (0, 2, 8, 8)}


def test_only_the_operator_gets_kubernetes_permissions_and_only_what_it_needs(default: list[Obj]) -> None:
    (role,) = of_kind(default, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("pylon.dev",), ("trainingjobs", "modeldeployments", "datasets")): {"get", "list", "watch", "patch", "update"},
        (("pylon.dev",), ("trainingjobs/status", "modeldeployments/status", "datasets/status")): {"get", "patch", "update"},
        (("ray.io",), ("rayclusters",)): {"get", "list", "watch", "patch"},
        (("",), ("events",)): {"create", "patch"},
        (("events.k8s.io",), ("events",)): {"create", "patch"},
    }
    (cluster_role,) = of_kind(default, "ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                                      "verbs": ["get", "list", "watch"]}]
    subjects = {s["name"] for b in of_kind(default, "RoleBinding") + of_kind(default, "ClusterRoleBinding")
                for s in b["subjects"]}
    assert subjects == {f"{RELEASE}-operator"}
    for where, pod in pod_templates(default):
        if "operator" not in where:
            assert pod["spec"].get("automountServiceAccountToken") is False, f"{where} gets an API token"


def _labels(pod: Obj) -> dict[str, str]:
    return pod["metadata"].get("labels", {})


def _selects(policy_from: Obj, labels: dict[str, str]) -> bool:
    want = policy_from["podSelector"]["matchLabels"]
    return all(labels.get(k) == v for k, v in want.items())


def test_redis_and_minio_take_connections_only_from_platform_pods_and_ray_workers(default: list[Obj]) -> None:
    pods = dict(pod_templates(default))
    for backend, port in (("redis", 6379), ("minio", 9000)):
        policy = named(default, "NetworkPolicy", f"{RELEASE}-{backend}")
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        allowed = {where for where, pod in pods.items() if any(_selects(f, _labels(pod)) for f in rule["from"])}
        expected = {f"Deployment/{RELEASE}-{s}" for s in [*SERVICES_NAMES, "scheduler-leader"]}
        expected |= {f"RayCluster/{RELEASE}-ray/cpu"}
        if backend == "minio":
            expected.add(f"Job/{RELEASE}-minio-bucket")
        assert allowed == expected, backend


SERVICES_NAMES = ["gateway", "ingest", "scheduler", "registry"]


def test_ray_workers_egress_excludes_the_cloud_metadata_endpoint(default: list[Obj]) -> None:
    policy = named(default, "NetworkPolicy", f"{RELEASE}-ray-workers-egress")
    assert policy["spec"]["podSelector"]["matchLabels"]["pylon.dev/ray-worker"] == "true"
    blocks = [t["ipBlock"] for rule in policy["spec"]["egress"] for t in rule["to"] if "ipBlock" in t]
    assert blocks == [{"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}]
    closed = render({"networkPolicy": {"rayWorkerInternet": False}})
    policy = named(closed, "NetworkPolicy", f"{RELEASE}-ray-workers-egress")
    assert not [t for rule in policy["spec"]["egress"] for t in rule["to"] if "ipBlock" in t]


def test_disruption_budgets_cover_every_platform_component(default: list[Obj]) -> None:
    budgets = {p["metadata"]["name"]: p["spec"] for p in of_kind(default, "PodDisruptionBudget")}
    assert set(budgets) == {f"{RELEASE}-{c}" for c in [*SERVICES_NAMES, "scheduler-leader", "redis", "minio"]}
    assert all(b["maxUnavailable"] == 1 for b in budgets.values())


def test_the_service_monitor_exists_only_with_monitoring_and_scrapes_named_metrics_ports(default: list[Obj]) -> None:
    assert not of_kind(default, "ServiceMonitor")
    objects = render({"monitoring": {"enabled": True, "labels": {"release": "prometheus"}}})
    (monitor,) = of_kind(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (expr_instance, expr_component) = monitor["spec"]["selector"]["matchExpressions"]
    selected = [s for s in of_kind(objects, "Service")
                if s["metadata"]["labels"]["app.kubernetes.io/component"] in expr_component["values"]]
    assert len(selected) == 5
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval"}
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}, service["metadata"]["name"]


def test_helm_test_hooks_check_every_service_and_carry_no_secret(default: list[Obj]) -> None:
    pod = named(default, "Pod", f"{RELEASE}-test-services")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = named(default, "ConfigMap", f"{RELEASE}-test-script")
    assert script["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "UNAUTHENTICATED" in script["data"]["helm_test.py"]
    (c,) = containers({"spec": pod["spec"]})
    targets = dict(item.split("=") for item in c["env"][0]["value"].split(","))
    assert targets == {s: f"{RELEASE}-{s}.ml.svc:{p}" for s, p in
                       zip(SERVICES_NAMES, (50051, 50052, 50053, 50054), strict=True)}
    assert all("valueFrom" not in e for e in c["env"])


def test_notes_say_what_to_do_next() -> None:
    notes = render_notes({})
    for text in ("helm test pylon -n ml", "get secret pylon -o jsonpath='{.data.admin-key}'",
                 "port-forward svc/pylon-gateway 50051", "pylon status", "No GPU pools are declared",
                 "port-forward svc/pylon-gateway 8000", "http://127.0.0.1:8000/v1/models"):
        assert text in notes
    assert "a100: accelerator A100, 8 GPU(s) per node, 0..4 nodes" in render_notes({"gpuPools": GPU_POOLS})


def test_the_operator_watches_the_release_namespace_and_scales_the_labelled_raycluster(default: list[Obj]) -> None:
    (c,) = named(default, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "pylon_operator"]
    env = {e["name"]: e for e in c["env"]}
    assert env["PYLON_OPERATOR_NAMESPACES"]["value"] == "ml"
    assert env["PYLON_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "admin-key"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    (cluster,) = of_kind(default, "RayCluster")
    assert cluster["metadata"]["labels"]["pylon.dev/gpu-pools"] == "true"
    (cluster,) = of_kind(render({"ray": {"inTreeAutoscaling": True}}), "RayCluster")
    assert "pylon.dev/gpu-pools" not in cluster["metadata"]["labels"]
