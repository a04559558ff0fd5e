"""Claim: uploading a file with the SDK (direct presigned multipart through an ingest session)
is at least 0.9x as fast as boto3 ``upload_file`` with its default TransferConfig to the same
SeaweedFS, and uploading the same bytes again is at least 20x faster than the first upload.

Everything real: SeaweedFS (`weed mini`), Redis, a local Ray head, and the ingest service as its
own process. Each round uses a fresh tenant (dedupe is per tenant) and a fresh SDK hash cache, so
"first upload" includes hashing the file (the sha256 up front; the part MD5s are computed while
each part is sent and declared at commit), creating the session, sending the parts and
committing; "re-upload" is the same call again. Processing (validate/clean on Ray) is
started by the commit and waited for outside the timed region, and reported on its own.

Run: .venv/bin/python benchmarks/ingest_upload.py [--mib 1024] [--rounds 2] [--part-mib 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

KEY = "pyl_admin_bench-bootstrap-key"


class IngestStack:
    """SeaweedFS + Redis + Ray head + ``python -m pylon_services.ingest``, all on loopback."""

    def __init__(self, root: str, ray_cpus: int = 2) -> None:
        self.root, self.ray_cpus = root, ray_cpus
        self.procs: dict[str, Any] = {}

    def start(self) -> IngestStack:
        from pylon_services.localstack.procs import free_port
        from pylon_services.localstack.ray_head import LOCAL_RAY_ENV, RayHead
        from pylon_services.localstack.redis_server import RedisServer
        from pylon_services.localstack.seaweed import SeaweedServer
        from pylon_services.storage.s3 import S3ObjectStore

        self.seaweed = SeaweedServer(os.path.join(self.root, "weed")).start()
        self.redis = RedisServer(os.path.join(self.root, "redis")).start()
        self.ray = RayHead(os.path.join(self.root, "ray"), self.ray_cpus).start()
        self.bucket = "bench"
        self.s3 = {"endpoint_url": self.seaweed.endpoint_url, "access_key": self.seaweed.access_key,
                   "secret_key": self.seaweed.secret_key}
        S3ObjectStore(self.bucket, **self.s3).ensure_bucket()
        self.port = free_port()
        env = {**os.environ, "PYLON_PORT": str(self.port), "PYLON_REDIS_URL": self.redis.url,
               "PYLON_OBJECT_STORE_URL": f"s3://{self.bucket}/platform", "PYLON_S3_ENDPOINT_URL": self.s3["endpoint_url"],
               "PYLON_S3_ACCESS_KEY": self.s3["access_key"], "PYLON_S3_SECRET_KEY": self.s3["secret_key"],
               "PYLON_RAY_ADDRESS": self.ray.address, "PYLON_RAY_NODE_IP_ADDRESS": "127.0.0.1",
               "PYLON_ADMIN_KEY": KEY, "PYLON_METRICS_PORT": "-1", "PYLON_LOG_LEVEL": "WARNING",
               **LOCAL_RAY_ENV, "RAY_ADDRESS": self.ray.address}
        log = open(os.path.join(self.root, "ingest.log"), "wb")  # noqa: SIM115 - owned by the child
        self.ingest = subprocess.Popen([sys.executable, "-m", "pylon_services.ingest"], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        from pylon.health import check_health
        from pylon_services.localstack.procs import wait_until

        wait_until(lambda: check_health(self.address) == "SERVING", 180, "ingest", self.ingest,
                   os.path.join(self.root, "ingest.log"))
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def token(self, tenant: str) -> str:
        import redis.asyncio as aioredis

        from pylon_services.runtime.auth import ApiKeyStore

        async def create() -> str:
            r = aioredis.from_url(self.redis.url)
            _, token = await ApiKeyStore(r).create(tenant, "editor")
            await r.aclose()
            return token

        return asyncio.run(create())

    def stop(self) -> None:
        from pylon_services.localstack.procs import stop_process

        stop_process(getattr(self, "ingest", None))
        for name in ("ray", "redis", "seaweed"):
            if hasattr(self, name):
                getattr(self, name).stop()


def make_jsonl(path: str, mib: int, words: tuple[int, int] = (5, 45)) -> None:
    """``mib`` MiB of distinct JSONL records of ``words`` (min, max) words, written in blocks."""
    vocab = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
    target, n = mib << 20, 0
    with open(path, "w") as f:
        written = 0
        while written < target:
            block = []
            for _ in range(20000 if words[1] < 100 else 2000):
                n += 1
                count = words[0] + n % (words[1] - words[0])
                text = " ".join(vocab[(n * 7 + k * k) % len(vocab)] for k in range(count))
                block.append(json.dumps({"text": f"{n} {text}", "id": n}))
            data = "\n".join(block) + "\n"
            f.write(data[: target - written] if written + len(data) > target else data)
            written += min(len(data), target - written)
    with open(path, "rb+") as f:  # end on a whole record
        f.seek(-1, os.SEEK_END)
        while f.read(1) != b"\n":
            f.seek(-2, os.SEEK_CUR)
        f.truncate()


def boto3_upload(stack: IngestStack, path: str, key: str) -> float:
    import boto3

    client = boto3.client("s3", endpoint_url=stack.s3["endpoint_url"], aws_access_key_id=stack.s3["access_key"],
                          aws_secret_access_key=stack.s3["secret_key"], region_name="us-east-1")
    t0 = time.perf_counter()
    client.upload_file(path, stack.bucket, key)  # default TransferConfig
    return time.perf_counter() - t0


def sdk_upload(stack: IngestStack, token: str, path: str, part_mib: int, cache: str
               ) -> tuple[float, float, float, Any]:
    """(seconds to commit, of which hashing, seconds until processed, the processed version).
    Hashing is timed on its own first (the upload call then finds the hashes cached); the
    total is what one ``upload`` call costs on a file never seen before."""
    import pylon
    from pylon import transfer

    os.environ["PYLON_CACHE_DIR"] = cache
    with pylon.Client(stack.address, token) as c:
        t0 = time.perf_counter()
        transfer.hash_file(path)  # what the SDK hashes before asking: the sha256 (part MD5s: while sending)
        hash_s = time.perf_counter() - t0
        op = c.datasets.upload(path, "bench", part_size=part_mib << 20, wait=False)
        upload_s = time.perf_counter() - t0
        done = c.datasets.wait(op.name, timeout=3600)
        processed_s = time.perf_counter() - t0
        if done.failed:
            raise RuntimeError(done.error_message)
        return upload_s, hash_s, processed_s, c.datasets.get("bench", "latest")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--part-mib", type=int, default=16)
    ap.add_argument("--dir", default="")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="pylon-bench-upload-", dir=args.dir or None)
    stack = IngestStack(root)
    try:
        path = os.path.join(root, "data.jsonl")
        make_jsonl(path, args.mib)
        size = os.path.getsize(path)
        print(f"file: {size / 2**20:.0f} MiB; load before: {os.getloadavg()}")
        stack.start()
        rows = []
        for r in range(args.rounds):
            token = stack.token(f"bench{r}")
            cache = os.path.join(root, f"cache{r}")
            if r % 2 == 0:  # alternate who goes first, so drift on a shared machine hits both
                base = boto3_upload(stack, path, f"baseline/{r}.jsonl")
                first, hash_s, processed, v = sdk_upload(stack, token, path, args.part_mib, cache)
            else:
                first, hash_s, processed, v = sdk_upload(stack, token, path, args.part_mib, cache)
                base = boto3_upload(stack, path, f"baseline/{r}.jsonl")
            again, _, _, v2 = sdk_upload(stack, token, path, args.part_mib, cache)
            if (v2.version, v2.digest, v2.files[0]["object_key"]) != (2, v.digest, v.files[0]["object_key"]):
                print(f"WARNING: the re-upload is not the same content: {v2} vs {v}")
            rows.append((base, first, again, processed))
            print(f"round {r + 1}: boto3 {base:.2f} s ({size / base / 2**20:.0f} MiB/s) | sdk first {first:.2f} s "
                  f"({size / first / 2**20:.0f} MiB/s; hashing {hash_s:.2f} s) | sdk again {again:.3f} s | "
                  f"processed {processed:.1f} s after the start, {v.record_count} records | "
                  f"ratio boto3/sdk {base / first:.3f} | first/again {first / again:.1f}x; "
                  f"load {os.getloadavg()[0]:.2f}")
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(f"median: boto3 {med[0]:.2f} s, sdk first {med[1]:.2f} s, sdk again {med[2]:.3f} s")
        print(f"RATIO sdk/boto3 throughput: {med[0] / med[1]:.3f} (target >= 0.9)")
        print(f"RATIO first/re-upload: {med[1] / med[2]:.1f}x (target >= 20x)")
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
