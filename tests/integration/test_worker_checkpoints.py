"""The worker's side of a gang through real Redis and a real (local) object store: two ranks
meet at one rendezvous address per attempt, a rank waiting for a rank 0 that never comes gets a
clear TimeoutError, both ranks' background checkpoints become one whole checkpoint, and
``report_progress`` sends the job's live status on the dispatch stream."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from pylon_services.runtime.settings import Settings
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.domain.spec import Command, JobSpec
from pylon_services.scheduler.store.keys import EVENTS, rendezvous_key
from pylon_services.scheduler.worker.context import WorkerContext
from pylon_services.storage.local import LocalObjectStore

pytestmark = pytest.mark.integration


def _contexts(redis_url: str, store: LocalObjectStore, job_id: str, attempt: int = 1, workers: int = 2
              ) -> list[WorkerContext]:
    job = Job(id=job_id, tenant="acme", spec=JobSpec(Command(("true",)), workers=workers))
    return [WorkerContext(Settings(redis_url=redis_url), job, attempt, rank=r, store=store) for r in range(workers)]


def test_two_ranks_meet_at_rank_zeros_address_and_attempts_do_not_mix(redis_server, redis_client, tmp_path: Path):
    store = LocalObjectStore(str(tmp_path))
    r0, r1 = _contexts(redis_server.url, store, "rdzv1")
    got: dict[int, Any] = {}
    waiter = threading.Thread(target=lambda: got.__setitem__(1, r1.rendezvous(timeout_s=30)))
    waiter.start()  # rank 1 first: it waits for rank 0
    threading.Timer(0.5, lambda: got.__setitem__(0, r0.rendezvous())).start()
    waiter.join(40)
    assert got[0] == got[1]
    addr, port = got[0]
    with socket.socket() as s:  # the port rank 0 picked is free for torch.distributed's store
        s.bind(("", port))
    assert redis_client.ttl(rendezvous_key("acme", "rdzv1", 1)) > 80_000
    # The next attempt has a key of its own: its rank 1 never dials attempt 1's address.
    _, late = _contexts(redis_server.url, store, "rdzv1", attempt=2)
    with pytest.raises(TimeoutError, match="rank 1 waited 0.5s for rank 0 of attempt 2"):
        late.rendezvous(timeout_s=0.5)


def test_a_single_worker_needs_no_redis(tmp_path: Path):
    (ctx,) = _contexts("redis://127.0.0.1:1/0", LocalObjectStore(str(tmp_path)), "solo", workers=1)
    addr, port = ctx.rendezvous()
    assert addr == "127.0.0.1" and port > 0


def test_both_ranks_background_saves_make_one_whole_checkpoint(redis_server, tmp_path: Path):
    store = LocalObjectStore(str(tmp_path))
    ranks = _contexts(redis_server.url, store, "ck2")
    for step in (10, 20):
        futures = [ctx.checkpoints(keep=1).save(step, {"state": f"r{ctx.rank}-{step}".encode()}) for ctx in ranks]
        for f in futures:
            f.result(30)
    for ctx in ranks:
        ctx.close_checkpoints()
    assert ranks[0].load_latest_checkpoint() == (20, {"state": b"r0-20"})
    assert ranks[1].load_latest_checkpoint() == (20, {"state": b"r1-20"})
    keys = {o.key for o in store.iter_all("tenants/acme/jobs/ck2/checkpoint/")}
    assert not any("step-000000000010" in k for k in keys)  # keep=1


def test_report_progress_sends_total_steps_and_a_small_metrics_summary(redis_server, redis_client, tmp_path: Path):
    (ctx,) = _contexts(redis_server.url, LocalObjectStore(str(tmp_path)), "prog", workers=1)
    before = redis_client.xrevrange(EVENTS, count=1)
    start = before[0][0] if before else b"0-0"
    metrics = {"loss": 2.345678912, "lr": 3e-4, "grad_norm": float("nan"), "tokens_per_s": 1234.5, "mfu": 0.31,
               "eta_s": 12.0, "something_else": 7.0}
    for step in (1, 2, 3):  # within 2 s of each other: no event before the final step
        ctx.report_progress(step, 4, metrics)
    ctx.report_progress(4, 4, metrics)  # the final step always sends
    events = [json.loads(f[b"e"]) for _, f in redis_client.xrange(EVENTS, min=start)]
    mine = [e for e in events if e.get("job") == "acme/prog" and e["type"] == "progress"]
    assert len(mine) == 1, mine
    e = mine[0]
    assert (e["step"], e["total_steps"]) == (4, 4)
    assert e["metrics"] == {"loss": 2.34568, "lr": 0.0003, "tokens_per_s": 1234.5, "mfu": 0.31, "eta_s": 12.0}
    assert len(json.dumps(e)) < 400
    stored = [json.loads(x) for x in redis_client.lrange("pylon:jobmetrics:acme:prog", 0, -1)]
    assert {m["key"] for m in stored} >= {"loss", "something_else"} and max(m["step"] for m in stored) == 4
