"""`pylon cluster` (GPU pools) and `pylon queues ...` (quotas, usage, borrowing: the verbs of
``client.queues``)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import typer

from pylon.cli._common import JSON, client, emit

queues_app = typer.Typer(help="Tenant queues: quotas per GPU type, usage and borrowing.", invoke_without_command=True)


def cluster(as_json: bool = JSON) -> None:
    """Show each GPU pool discovered from Ray: nodes, healthy nodes, used/total GPUs and CPUs."""
    pools = client().jobs.cluster()
    if as_json:
        emit(pools, True)
        return
    rows = [{**dataclasses.asdict(p), "free_gpus": p.total_gpus - p.used_gpus,
             "bounds": f"{p.min_nodes}..{p.max_nodes}" if p.max_nodes else "-"} for p in pools]
    emit(rows, False, ["gpu_type", "nodes", "healthy_nodes", "total_gpus", "used_gpus", "free_gpus",
                       "total_cpus", "used_cpus", "bounds"])


def _per_type(d: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(d.items())) or "-"


def _show_queues(tenant: str, as_json: bool) -> None:
    queues = client().queues.list(tenant)
    if as_json:
        emit(queues, True)
        return
    per_type = ("nominal_gpus", "used_gpus", "borrowed_gpus", "borrowing_limit_gpus")
    rows = [{**dataclasses.asdict(q), **{k: _per_type(getattr(q, k)) for k in per_type}} for q in queues]
    emit(rows, False, ["name", "cohort", "weight", "nominal_gpus", "used_gpus", "borrowed_gpus",
                       "borrowing_limit_gpus", "pending_jobs", "running_jobs", "usage_gpu_seconds"])


_TENANT = typer.Option("-", help="Tenant (admins may name another).")


@queues_app.callback()
def queues_default(ctx: typer.Context, tenant: str = _TENANT, as_json: bool = JSON) -> None:
    """Without a command: the same as `pylon queues list`."""
    if ctx.invoked_subcommand is None:
        _show_queues(tenant, as_json)


@queues_app.command("list")
def queues_list(tenant: str = _TENANT, as_json: bool = JSON) -> None:
    """List the tenant's queues: nominal quota, used and borrowed GPUs per type, job counts."""
    _show_queues(tenant, as_json)


def _quota(values: list[str], option: str) -> dict[str, float]:
    out = {}
    for v in values:
        gpu_type, sep, n = v.partition("=")
        if not sep:
            raise typer.BadParameter(f"{v!r}: expected GPU_TYPE=GPUS, e.g. V100=8", param_hint=option)
        out[gpu_type] = float(n)
    return out


@queues_app.command("create")
def queues_create(tenant: str, queue_id: str,
                  nominal: list[str] = typer.Option([], "--nominal", help="GPU_TYPE=GPUS (repeatable)."),
                  cohort: str = typer.Option("", help="Cohort whose idle quota the queue may borrow."),
                  borrow_limit: list[str] = typer.Option([], "--borrow-limit", help="GPU_TYPE=GPUS (repeatable)."),
                  weight: float = typer.Option(1.0, help="Fair-share weight."), as_json: bool = JSON) -> None:
    """Create a queue with its quota (admin key)."""
    emit(client().queues.create(tenant, queue_id, nominal_gpus=_quota(nominal, "--nominal"), cohort=cohort,
                                borrowing_limit_gpus=_quota(borrow_limit, "--borrow-limit"), weight=weight), as_json)


@queues_app.command("update")
def queues_update(name: str, nominal: list[str] = typer.Option([], "--nominal", help="GPU_TYPE=GPUS (repeatable)."),
                  cohort: Optional[str] = typer.Option("", help="Cohort."),
                  borrow_limit: list[str] = typer.Option([], "--borrow-limit", help="GPU_TYPE=GPUS (repeatable)."),
                  weight: float = typer.Option(1.0, help="Fair-share weight."), as_json: bool = JSON) -> None:
    """Replace a queue's quota fields, NAME = tenants/{t}/queues/{q} (admin key)."""
    emit(client().queues.update(name, nominal_gpus=_quota(nominal, "--nominal"), cohort=cohort or "",
                                borrowing_limit_gpus=_quota(borrow_limit, "--borrow-limit"), weight=weight), as_json)


def register(top: typer.Typer) -> None:
    top.command("cluster")(cluster)
    top.add_typer(queues_app, name="queues")
