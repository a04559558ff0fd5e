"""Routing over two real engine replicas on Ray, through the real gateway: a shared prompt prefix
and an ``x-session-id`` stay on one replica while other work spreads; the gateway's Prometheus
endpoint counts what was served (TTFT, ITL, TPOT, e2e, tokens, routing decisions, throttled);
and a replica killed mid-stream ends only its own streams, with UNAVAILABLE, while the next
requests are served by the other replica and the scheduler restarts the killed one."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from pylon.engine.v1 import engine_pb2
from pylon.gateway.v1 import gateway_pb2
from tests.integration.test_gateway_serving import chat_model_dir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
DEPLOYMENT = "gw-route"
SHARED = "You are a careful assistant. Answer in one short sentence and never use lists. " * 3


@pytest.fixture(scope="module")
def served(tenant_clients: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    acme = tenant_clients["acme"]
    mv = acme.models.register(DEPLOYMENT, str(chat_model_dir(tmp_path_factory.mktemp("route") / "m")))
    dep = acme.deployments.deploy(DEPLOYMENT, f"models:/{DEPLOYMENT}/versions/{mv.version}", replicas=2, timeout=300)
    wait_for(lambda: all(r.ready for r in acme.deployments.get(DEPLOYMENT).replica_status), 300, "both replicas")
    yield dep
    acme.deployments.delete(DEPLOYMENT)


def stream(acme: Any, dep: Any, prompt: str, max_tokens: int, session: str = "") -> Any:
    """A raw Generate stream (the SDK sends no session id)."""
    md = [*acme.metadata(), *([("x-session-id", session)] if session else [])]
    return acme.gateway.Generate(gateway_pb2.GenerateRequest(
        deployment=dep.name, prompt=prompt,
        sampling=engine_pb2.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)),
        metadata=md, timeout=120)


def replica_of(acme: Any, dep: Any, prompt: str, session: str = "") -> str:
    return [p.replica for p in stream(acme, dep, prompt, 2, session)][-1]


def scrape(platform: Any) -> dict[str, float]:
    """The gateway's metrics endpoint as {"name{labels}": value} for our deployment's series."""
    port = platform.servers["gateway"].metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("pylon_gateway_") and DEPLOYMENT in line:
            key, value = line.rsplit(" ", 1)
            name, _, labels = key.partition("{")
            kept = ",".join(x for x in re.findall(r'\w+="[^"]*"', labels) if not x.startswith("deployment="))
            out[f"{name}{{{kept}}}"] = float(value)
    return out


def test_a_shared_prefix_and_a_session_stay_on_one_replica_while_other_work_spreads(tenant_clients, served):
    acme = tenant_clients["acme"]
    long = stream(acme, served, SHARED + "Question 0?", 300)  # holds its replica busy while the others route
    first = next(long).replica
    same = {replica_of(acme, served, SHARED + f"Question {i}?") for i in range(1, 4)}
    assert same == {first}  # prefix hits, within the load bound
    other = replica_of(acme, served, "A different prompt entirely, with nothing shared at all. " * 3)
    assert other != first  # a miss goes to the less loaded replica
    sessions = {replica_of(acme, served, f"turn {i}: something new", session="conv-1") for i in range(3)}
    assert len(sessions) == 1
    long.cancel()


def test_the_metrics_endpoint_counts_what_was_served(tenant_clients, served, platform):
    from pylon_services.gateway.api import metrics

    acme = tenant_clients["acme"]
    before = scrape(platform)
    streams = [list(stream(acme, served, SHARED + "Count me.", 5)), list(stream(acme, served, SHARED + "And me.", 5))]
    metrics.throttled(served.name, "acme", "tokens_per_minute")  # admission's hook, in the gateway's process
    after = scrape(platform)

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew('pylon_gateway_time_to_first_token_seconds_count{tenant="acme"}') == 2
    assert grew('pylon_gateway_e2e_request_latency_seconds_count{tenant="acme"}') == 2
    gaps = sum(sum(1 for p in s if p.token_ids) - 1 for s in streams)  # between the pieces that carry tokens
    assert grew('pylon_gateway_inter_token_latency_seconds_count{tenant="acme"}') == gaps
    assert grew('pylon_gateway_time_per_output_token_seconds_count{tenant="acme"}') == 2
    assert grew('pylon_gateway_generation_tokens_total{tenant="acme"}') == 10
    assert grew('pylon_gateway_prompt_tokens_total{tenant="acme"}') == sum(s[-1].usage.prompt_tokens for s in streams)
    assert grew('pylon_gateway_requests_total{code="OK",tenant="acme"}') == 2
    assert grew('pylon_gateway_routing_decisions_total{decision="prefix_hit"}') >= 1
    assert grew('pylon_gateway_throttled_requests_total{reason="tokens_per_minute",tenant="acme"}') == 1


def test_a_replica_killed_mid_stream_ends_only_its_streams_and_is_restarted(tenant_clients, served):
    acme = tenant_clients["acme"]
    victim = stream(acme, served, SHARED + "Victim.", 2000)
    doomed = next(victim).replica
    survivor = stream(acme, served, "Nothing shared with the victim here, at all. " * 3, 150)
    assert next(survivor).replica != doomed
    job, old_address = next((r.job, r.address) for r in acme.deployments.get(DEPLOYMENT).replica_status
                            if r.job.endswith(doomed))
    pid = int(re.search(r"attempt 1 worker 0 started on .* \(pid (\d+),", "\n".join(acme.jobs.logs(job))).group(1))
    survived: list[Any] = []
    reader = threading.Thread(target=lambda: survived.extend(survivor), daemon=True)
    reader.start()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as e:
        list(victim)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    reader.join(120)
    last = survived[-1]
    assert last.finish_reason == engine_pb2.FINISH_REASON_LENGTH and last.usage.completion_tokens == 150
    # Its registration still looks fresh for a few seconds: requests retry on the other replica.
    for i in range(3):
        pieces = list(stream(acme, served, SHARED + f"After the kill {i}.", 3))
        assert pieces[-1].usage.completion_tokens == 3 and pieces[-1].replica != doomed
    restarted = wait_for(lambda: (j := acme.jobs.get(job)).attempt == 2 and j.state == "running" and j, 240,
                         "the scheduler to restart the killed replica")
    assert restarted.retries == 1
    wait_for(lambda: next(r for r in acme.deployments.get(DEPLOYMENT).replica_status if r.job == job).address
             not in ("", old_address), 240, "the restarted replica to register")
    busy = stream(acme, served, "Keep one replica busy for a while, please. " * 3, 300)
    both = {next(busy).replica, replica_of(acme, served, "Something new for the other replica. " * 3)}
    assert both == {doomed, survived[-1].replica}  # the restarted replica serves again
    busy.cancel()


def test_pylon_bench_serve_loads_the_gateway_over_grpc_and_http_and_one_engine(tenant_clients, served, platform):
    from typer.testing import CliRunner

    from pylon.cli import app
    from pylon_services.runtime.settings import Settings
    from tests.support.platform import ADMIN_KEY

    acme = tenant_clients["acme"]
    http = f"http://127.0.0.1:{platform.servers['gateway'].parts.extra['http'].port}/v1"
    replica = acme.deployments.get(DEPLOYMENT).replica_status[0].address
    internal = Settings(admin_key=ADMIN_KEY).internal_key
    common = ["--num-prompts", "6", "--max-tokens", "4", "--prompt-words", "8", "--goodput", "ttft:60000 tpot:60000",
              "--json"]
    for target, token, extra in (("grpc", acme.token, ["--rate", "20"]), ("http", acme.token, ["--url", http]),
                                 ("engine", internal, ["--url", replica, "--concurrency", "2"])):
        res = CliRunner().invoke(app, ["--address", platform.addresses["gateway"], "--token", token, "bench", "serve",
                                       DEPLOYMENT, "--target", target, *common, *extra])
        assert res.exit_code == 0, (target, res.output)
        out = json.loads(res.stdout)
        assert (out["completed"], out["failed"]) == (6, 0), (target, out)
        assert out["output_throughput"] > 0 and out["goodput"] == out["request_throughput"]  # every SLO met
        assert 0 < out["ttft_ms"]["p50"] <= out["e2el_ms"]["p50"] and out["itl_ms"]["p50"] > 0
