"""Settings for every Pylon process, from ``PYLON_*`` environment variables.

Parsed once at start into a frozen object and passed down; the same names appear in the
README, docker-compose.yml and the Helm values.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PYLON_", frozen=True, extra="ignore")

    # Where this process listens (gRPC) and what it tells others to dial.
    host: str = "127.0.0.1"
    port: int = 0
    advertise_address: str = ""
    # Prometheus metrics HTTP port; 0 picks a free port, -1 disables.
    metrics_port: int = 0
    # The gateway's OpenAI-compatible HTTP API (on PYLON_HOST, beside its gRPC port); 0 picks a
    # free port, -1 disables. Other services ignore it.
    gateway_http_port: int = 0
    # Gateway autoscaling and rollouts (gateway/api/controller.py): how often the gateway that
    # holds the controller lease looks at every deployment, and how long a request to a
    # deployment with no ready replica (scaled to zero, or starting) is held for one at most.
    gateway_controller_interval_s: float = 2.0
    gateway_cold_start_wait_s: float = 300.0
    # Gateway replica replacement (gateway/domain/replacement.py): the scheduler restarts a
    # replica's failed attempt gateway_replica_max_retries times; a replica job that ends anyway
    # is replaced by the controller, a failed one after a backoff of gateway_replace_backoff_s
    # doubling up to gateway_replace_backoff_max_s, until gateway_replace_max_failures consecutive
    # failures with no replacement becoming ready turn the deployment FAILED.
    gateway_replica_max_retries: int = 3
    gateway_replace_backoff_s: float = 10.0
    gateway_replace_backoff_max_s: float = 300.0
    gateway_replace_max_failures: int = 5
    # Gateway routing (gateway/domain/routing.py): "prefix" (session, then prompt-prefix affinity
    # with a load bound, then least outstanding tokens), "least_load" or "round_robin"; how many
    # outstanding tokens more than the least-loaded replica a replica holding the prefix may have
    # and still win.
    gateway_routing_policy: Literal["prefix", "least_load", "round_robin"] = "prefix"
    gateway_prefix_load_bound_tokens: float = 2048.0
    # Seconds a gateway keeps a deployment's record and its replicas' heartbeats between Redis
    # reads on the serving path (gateway/api/route_cache.py); 0 reads them on every request.
    gateway_route_cache_s: float = 0.5

    redis_url: str = "redis://127.0.0.1:6379/0"
    # "file:///var/lib/pylon" or "s3://bucket/prefix".
    object_store_url: str = "file:///tmp/pylon-objects"
    s3_endpoint_url: str = ""
    # The endpoint presigned URLs name, for clients outside the services' network (compose: the
    # host's published MinIO port, where the services reach MinIO as minio:9000). Used only for
    # presigning; empty: s3_endpoint_url.
    s3_public_endpoint_url: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"

    # Bootstrap admin key: accepted without being stored. Empty disables it.
    admin_key: str = ""
    # What services and the platform's own workers present to internal APIs (engine replicas'
    # EngineService); never given to user code. Empty: derived from the admin key, so every
    # process started with the same admin key agrees without a second secret.
    internal_key: str = ""
    # Service addresses used for service-to-service calls.
    ingest_address: str = ""
    scheduler_address: str = ""
    registry_address: str = ""
    gateway_address: str = ""

    ray_address: str = ""
    # IP this process uses as a Ray driver; empty lets Ray choose (set to 127.0.0.1 on one machine).
    ray_node_ip_address: str = ""
    # How long a service keeps retrying to join the Ray cluster at start before it exits (the
    # head may come up after it: pylon up on a busy machine, compose, Kubernetes).
    ray_connect_timeout_s: float = 180.0
    # Who a job's user code runs as (scheduler/worker/isolation.py): "auto" (its own unprivileged
    # uid when the worker is root and Python is readable by other users, else the worker's user,
    # said in the job's log), "isolated" (its own uid or the job fails), "same" (the worker's user).
    job_user: str = "auto"
    # First uid of the range jobs' own users are taken from (one per job, 1,000,000 of them).
    job_uid_base: int = 1_000_000
    # Limits and lifecycle.
    max_message_bytes: int = 16 * 1024 * 1024
    # On SIGTERM: drain in-flight calls for this long; the process ends at most a second later
    # whatever its worker threads are doing.
    shutdown_grace_s: float = 20.0
    # Work a call drives in threads (list loops, scans) stops at the caller's deadline, and after
    # this long when the caller set none or a longer one.
    max_call_s: float = 300.0
    auth_cache_ttl_s: float = 5.0
    log_level: str = "INFO"
    # Registry: how long a deleted model version's artifacts are kept before they are purged.
    registry_retention_s: float = 7 * 24 * 3600.0
    # Registry: how long a get-version / resolve-alias answer may be served from memory at most
    # (writes invalidate it at once, in every replica, through Redis pub/sub); 0 turns it off.
    registry_read_cache_ttl_s: float = 60.0
    # Registry: files with a declared sha256 up to this size are uploaded in one PUT that the
    # object store verifies against the digest (no read-back at registration); larger files go in
    # parallel parts and are read back once. One stream kept up with parallel parts to SeaweedFS on
    # the development machine; to a distant cloud store one stream is slower, so lower it there.
    registry_verified_put_max_bytes: int = 1 << 30

    # Gateway admission (gateway/api/admission.py). Per-minute token buckets in Redis, shared
    # by every gateway replica; 0 is unlimited. These are the defaults of every tenant; an admin
    # overrides them per tenant with SetServingLimits. key_* apply to each API key of a tenant;
    # max_concurrent counts a tenant's requests queued or running, across gateways.
    gateway_requests_per_min: int = 0
    gateway_tokens_per_min: int = 0
    gateway_key_requests_per_min: int = 0
    gateway_key_tokens_per_min: int = 0
    gateway_max_concurrent: int = 0
    # Priority a tenant's requests get by default and may ask for at most (low, normal, high),
    # and its share of the fair queue.
    gateway_priority: str = "normal"
    gateway_weight: float = 1.0
    # Requests one gateway sends each replica of a deployment at once; the rest wait in this
    # gateway's fair queue (virtual token counters: tenants, then their keys), at most
    # gateway_max_queued per deployment, gateway_max_queued_per_client of them one key's, for
    # gateway_max_queue_wait_s. While another caller has been active on the deployment within
    # gateway_share_window_s, a tenant holds at most gateway_max_inflight_share of the slots (a
    # key less of its tenant's), so a caller that comes back during another's flood finds one
    # free; a caller alone may use them all.
    gateway_max_inflight_per_replica: int = 16
    gateway_max_inflight_share: float = 0.75
    gateway_share_window_s: float = 10.0
    gateway_max_queued: int = 256
    gateway_max_queued_per_client: int = 64
    gateway_max_queue_wait_s: float = 30.0
    # False serves the queue first come, first served (the fairness benchmark's baseline).
    gateway_fair_queuing: bool = True
    # What a served token adds to its tenant's virtual counter: output tokens cost more, as in
    # the VTC paper (w_p=1, w_q=2).
    gateway_vtc_input_weight: float = 1.0
    gateway_vtc_output_weight: float = 2.0
    # How long a gateway uses a tenant's limits read from Redis before reading them again.
    gateway_limits_cache_s: float = 2.0

    @model_validator(mode="after")
    def _derive_internal_key(self) -> Settings:
        if not self.internal_key and self.admin_key:
            derived = hmac.new(self.admin_key.encode(), b"pylon-internal-v1", hashlib.sha256).hexdigest()
            object.__setattr__(self, "internal_key", f"pyl_internal_{derived}")
        return self
