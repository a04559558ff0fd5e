"""Autoscaling and rollout policies, and a deployment's rollout and scaling history, between
the proto messages and the domain (zeros in a request mean the documented defaults)."""

from __future__ import annotations

from pylon.gateway.v1 import gateway_pb2 as pb
from pylon_services.gateway.domain import autoscale, rollouts
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import ServingView
from pylon_services.gateway.domain.requests import invalid
from pylon_services.runtime.protoconv import ts

_DEFAULT_AUTOSCALE = autoscale.AutoscalePolicy()
_DEFAULT_ROLLOUT = rollouts.RolloutPolicy()


def autoscaling_from_pb(m: pb.AutoscalingPolicy, field: str) -> autoscale.AutoscalePolicy:
    """The policy a request asks for, or INVALID_ARGUMENT naming each bad field."""
    p = autoscale.AutoscalePolicy(
        min_replicas=m.min_replicas, max_replicas=m.max_replicas,
        target_queue=m.target_queue or _DEFAULT_AUTOSCALE.target_queue, target_kv_usage=m.target_kv_usage,
        target_ttft_ms=m.target_ttft_ms, scale_down_delay_s=m.scale_down_delay_s,
        scale_to_zero_after_s=m.scale_to_zero_after_s)
    bad = autoscale.policy_violations(field, p)
    if bad:
        raise invalid(bad)
    return p


def rollout_from_pb(m: pb.RolloutPolicy, field: str, model_uri: str) -> rollouts.RolloutPolicy:
    p = rollouts.RolloutPolicy(
        follow_alias=m.follow_alias, canary_percent=m.canary_percent or _DEFAULT_ROLLOUT.canary_percent,
        canary_replicas=m.canary_replicas or 1, min_requests=m.min_requests, max_error_rate=m.max_error_rate,
        max_ttft_ms=m.max_ttft_ms, bake_s=m.bake_s,
        start_timeout_s=m.start_timeout_s or _DEFAULT_ROLLOUT.start_timeout_s)
    bad = rollouts.policy_violations(field, p, model_uri)
    if bad:
        raise invalid(bad)
    return p


def autoscaling_pb(p: autoscale.AutoscalePolicy) -> pb.AutoscalingPolicy:
    if not p.enabled:
        return pb.AutoscalingPolicy()
    return pb.AutoscalingPolicy(min_replicas=p.min_replicas, max_replicas=p.max_replicas, target_queue=p.target_queue,
                                target_kv_usage=p.target_kv_usage, target_ttft_ms=p.target_ttft_ms,
                                scale_down_delay_s=p.scale_down_delay_s, scale_to_zero_after_s=p.scale_to_zero_after_s)


def rollout_pb(p: rollouts.RolloutPolicy) -> pb.RolloutPolicy:
    if not p.follow_alias:
        return pb.RolloutPolicy()
    return pb.RolloutPolicy(follow_alias=True, canary_percent=p.canary_percent, canary_replicas=p.canary_replicas,
                            min_requests=p.min_requests, max_error_rate=p.max_error_rate, max_ttft_ms=p.max_ttft_ms,
                            bake_s=p.bake_s, start_timeout_s=p.start_timeout_s)


def history_fields(rec: DeploymentRecord, view: ServingView) -> dict[str, object]:
    """The Deployment fields that report autoscaling and rollouts."""
    out: dict[str, object] = dict(
        autoscaling=autoscaling_pb(rec.autoscaling), rollout=rollout_pb(rec.rollout),
        rollout_history=[pb.RolloutEvent(time=ts(e.time), from_version=e.from_version, to_version=e.to_version,
                                         outcome=e.outcome, reason=e.reason) for e in rec.history],
        scale_events=[pb.ScaleEvent(time=ts(e.time), from_replicas=e.from_replicas, to_replicas=e.to_replicas,
                                    by=e.by, reason=e.reason) for e in rec.scale_events],
        last_cold_start_s=view.cold_start_s)
    c = rec.canary
    if c is not None:
        n = view.versions.get(c.version, rollouts.VersionCounters())
        ttft_n = n.ttft_count - c.base_ttft_count
        out["canary"] = pb.CanaryStatus(
            model_version=c.version, start_time=ts(c.start_time), ready=bool(c.ready_time),
            requests=n.requests - c.base_requests, errors=n.errors - c.base_errors,
            mean_ttft_ms=(n.ttft_ms_sum - c.base_ttft_ms_sum) / ttft_n if ttft_n > 0 else 0.0)
    return out
