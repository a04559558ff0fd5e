"""deploy/kind/: its values render into objects that pass kubernetes-validate, its TrainingJob
passes the chart's CRD schema, and the script and workflow are well formed. The kind run itself
needs Docker (.github/workflows/kind.yml)."""

from __future__ import annotations

import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart_support import CHART, ROOT, of_kind, render, strict_schema

KIND = ROOT / "deploy" / "kind"


def test_kind_values_render_valid_objects() -> None:
    objects = render(yaml.safe_load((KIND / "values-kind.yaml").read_text()))
    for obj in objects:
        if obj["kind"] not in {"RayCluster", "ServiceMonitor"}:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    for deployment in of_kind(objects, "Deployment"):
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        assert (c["image"], c["imagePullPolicy"]) == ("pylon:kind", "Never")


def test_kind_trainingjob_passes_the_crd_schema() -> None:
    crd_file = CHART / "crds" / "trainingjobs.pylon.dev.yaml"
    if not crd_file.exists():
        pytest.skip("the TrainingJob CRD (deploy/helm/pylon/crds/, the operator's part) is not in this tree")
    crd = yaml.safe_load(crd_file.read_text())
    job = yaml.safe_load((KIND / "trainingjob.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == job["apiVersion"].split("/")[1]]
    assert job["kind"] == crd["spec"]["names"]["kind"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    jsonschema.validate(job, schema)
    job["spec"]["maxRetrys"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, schema)


def test_e2e_script_and_workflow_are_well_formed() -> None:
    subprocess.run(["bash", "-n", str(KIND / "e2e.sh")], check=True)
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "kind.yml").read_text())
    steps = [s.get("run", "") for s in workflow["jobs"]["kind"]["steps"]]
    assert "deploy/kind/e2e.sh" in steps
    script = (KIND / "e2e.sh").read_text()
    for needed in ("helm upgrade --install pylon", "--wait", "helm test pylon", "trainingjob.yaml",
                   "{.status.phase}'=Succeeded"):
        assert needed in script
