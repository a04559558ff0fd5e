"""`pylon deployments ...`: deploy, list, get, scale, share, delete (the verbs of ``client.deployments``)."""

from __future__ import annotations

import dataclasses

import typer

from pylon.cli._common import JSON, LIMIT, client, emit, limit_of
from pylon.types import Autoscaling, Rollout

deploy_app = typer.Typer(help="Serve model versions through the gateway.", no_args_is_help=True)
_COLUMNS = ["name", "state", "model_version", "replicas", "message"]


@deploy_app.command("deploy")
def deployments_deploy(
        name: str, model_uri: str,
        replicas: int = typer.Option(0, help="Replicas to start with (0: 1, or --min-replicas)."),
        engine: str = "torch", gpus: float = 0.0, wait: bool = True,
        min_replicas: int = typer.Option(1, help="Autoscaling: fewest replicas (0 allows scale to zero)."),
        max_replicas: int = typer.Option(0, help="Autoscaling: most replicas (0: autoscaling off)."),
        target_queue: float = typer.Option(4.0, help="Autoscaling: requests running or waiting per replica."),
        target_kv_usage: float = typer.Option(0.8, help="Autoscaling: mean KV-cache use, 0-1 (0: not a signal)."),
        target_ttft_ms: float = typer.Option(0.0, help="Autoscaling: mean time to first token (0: not a signal)."),
        scale_down_delay: float = typer.Option(60.0, help="Autoscaling: seconds at a lower count before going down."),
        scale_to_zero_after: float = typer.Option(300.0, help="Autoscaling: idle seconds before zero replicas."),
        follow_alias: bool = typer.Option(False, help="Roll later moves of the alias out as canaries."),
        canary_percent: float = typer.Option(10.0, help="Rollouts: share of requests a canary gets."),
        canary_replicas: int = typer.Option(1, help="Rollouts: canary replicas."),
        min_requests: int = typer.Option(20, help="Rollouts: requests a canary serves before promotion."),
        max_error_rate: float = typer.Option(0.05, help="Rollouts: roll back above this error rate."),
        max_ttft_ms: float = typer.Option(0.0, help="Rollouts: roll back above this mean TTFT (0: off)."),
        bake: float = typer.Option(30.0, help="Rollouts: seconds a canary serves before promotion."),
        priority_class: str = typer.Option("high", help="Scheduler priority of the replica jobs: low, normal or "
                                                        "high (may preempt lower-priority preemptible training)."),
        share_with: list[str] = typer.Option([], "--share-with", help="Another tenant that may send requests to "
                                                                     "it (repeat for more; '*': every tenant)."),
        as_json: bool = JSON) -> None:
    """Deploy models:/NAME@ALIAS as deployment NAME, optionally autoscaled and following the alias."""
    scaling = Autoscaling(min_replicas, max_replicas, target_queue, target_kv_usage, target_ttft_ms,
                          scale_down_delay, scale_to_zero_after) if max_replicas else None
    rollout = Rollout(True, canary_percent, canary_replicas, min_requests, max_error_rate, max_ttft_ms,
                      bake) if follow_alias else None
    emit(client().deployments.deploy(name, model_uri, replicas=replicas, engine=engine, gpus=gpus, wait=wait,
                                     autoscaling=scaling, rollout=rollout, priority_class=priority_class,
                                     shared_with=share_with),
         as_json, ["name", "state", "model_version", "message"])


@deploy_app.command("list")
def deployments_list(limit: int = LIMIT, as_json: bool = JSON) -> None:
    """List deployments."""
    emit(client().deployments.list(limit=limit_of(limit)), as_json, _COLUMNS)


@deploy_app.command("models")
def deployments_models(as_json: bool = JSON) -> None:
    """What requests may name: each deployment, the version it serves, whether it is ready."""
    emit(client().deployments.models(), as_json, ["deployment", "model_uri", "model_version", "ready"])


@deploy_app.command("get")
def deployments_get(name: str, as_json: bool = JSON) -> None:
    """Show a deployment, its replicas, its autoscaling and its rollout history."""
    dep = client().deployments.get(name)
    if as_json:
        emit(dep, as_json)
        return
    emit(dep, False, [*_COLUMNS, "priority_class", "etag"])
    print(f"shared with: {', '.join(dep.shared_with)}" if dep.shared_with else "shared with: no other tenant")
    emit(dep.replica_status, False, ["job", "ready", "model_version", "canary", "running_requests"])
    if dep.autoscaling:
        emit(dep.autoscaling, False)
        print(f"last cold start: {dep.last_cold_start_s:.1f}s" if dep.last_cold_start_s else "no cold start yet")
    if dep.canary:
        emit(dep.canary, False)
    if dep.rollout_history:
        emit(dep.rollout_history, False, ["time", "outcome", "from_version", "to_version", "reason"])
    if dep.scale_events:
        emit(dep.scale_events, False, ["time", "from_replicas", "to_replicas", "by", "reason"])


@deploy_app.command("scale")
def deployments_scale(name: str, replicas: int = typer.Argument(..., help="Desired replicas, 1-16 (0 with "
                                                                         "--max-replicas: keep the count)."),
                      etag: str = typer.Option("", help="Scale only if the deployment still has this etag "
                                                        "(see `pylon deployments get`)."),
                      min_replicas: int = typer.Option(1, help="Autoscaling: fewest replicas (0: scale to zero)."),
                      max_replicas: int = typer.Option(-1, help="Autoscaling: most replicas (0 turns it off; "
                                                                "-1 leaves the policy as it is)."),
                      as_json: bool = JSON) -> None:
    """Set the replica count (and the autoscaling bounds): new replicas start as jobs, the
    highest-numbered ones are cancelled."""
    scaling = None
    if max_replicas >= 0:
        current = client().deployments.get(name).autoscaling or Autoscaling()
        scaling = dataclasses.replace(current, min_replicas=min_replicas, max_replicas=max_replicas)
    emit(client().deployments.scale(name, replicas, etag=etag, autoscaling=scaling), as_json, [*_COLUMNS, "etag"])


@deploy_app.command("share")
def deployments_share(name: str,
                      tenant: list[str] = typer.Option([], "--tenant", help="A tenant that may send requests to it "
                                                                            "(repeat for more; '*': every tenant; "
                                                                            "none: no other tenant)."),
                      etag: str = typer.Option("", help="Change only if the deployment still has this etag."),
                      as_json: bool = JSON) -> None:
    """Set which other tenants may send requests to a deployment (replacing the list); they
    pay for their requests with their own limits."""
    emit(client().deployments.share(name, tenant, etag=etag), as_json, ["name", "shared_with", "etag"])


@deploy_app.command("delete")
def deployments_delete(name: str, as_json: bool = JSON) -> None:
    """Stop a deployment's replicas and remove it."""
    client().deployments.delete(name)
    emit({"deleted": name}, as_json, ["deleted"])
