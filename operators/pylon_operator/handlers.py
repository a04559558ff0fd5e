"""The kopf handlers, kept thin: read the object, call the Pylon service, hand the answer to a pure
reconcile function, write the status it returns through our ``Kube`` port.

Errors: a service that cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
ABORTED) is a ``kopf.TemporaryError`` retried with a doubling delay, and the object's conditions
say so; a refusal (INVALID_ARGUMENT and the other codes) is a ``kopf.PermanentError`` and the object
is marked Failed with the service's message: never retried forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf

from pylon.errors import (
    AbortedError,
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    NotFoundError,
    PylonError,
    ResourceExhaustedError,
    UnavailableError,
)
from pylon_operator import datasets, deployments, pools, training
from pylon_operator.conditions import status_changed
from pylon_operator.kube import RAY_GROUP, RAY_VERSION, RAYCLUSTERS, Kube, ObjectRef
from pylon_operator.pylon_api import PylonApi
from pylon_operator.settings import OperatorSettings

log = logging.getLogger("pylon_operator")
RETRYABLE = (UnavailableError, DeadlineExceededError, ResourceExhaustedError, AbortedError)
# A RayCluster whose GPU worker groups the operator scales carries this label.
POOL_LABEL = "pylon.dev/gpu-pools"
TRAININGJOBS, MODELDEPLOYMENTS, DATASETS = "trainingjobs", "modeldeployments", "datasets"


@dataclass
class Runtime:
    """What every handler needs, passed through kopf's memo."""

    api: PylonApi
    kube: Kube
    settings: OperatorSettings
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    monotonic: Callable[[], float] = time.monotonic
    # RayCluster -> group -> when its demand first fell below its replicas (scale-down damping).
    pool_memory: dict[str, dict[str, float]] = field(default_factory=dict)


def _rt(memo: Any) -> Runtime:
    return memo.runtime  # type: ignore[no-any-return]


def _status(body: Any) -> dict[str, Any]:
    return dict(body.get("status") or {})


def _generation(body: Any) -> int:
    return int(body["metadata"].get("generation") or 1)


def backoff_s(retry: int, settings: OperatorSettings, hint: float | None = None) -> float:
    """2 s doubling per retry up to the ceiling; at least the server's RetryInfo delay."""
    return min(settings.operator_max_backoff_s, max(2.0 * 2 ** min(retry, 20), hint or 0.0))


def _retry_later(rt: Runtime, ref: ObjectRef, body: Any, service: str, err: PylonError, retry: int) -> NoReturn:
    rt.kube.patch_status(ref, training.unreachable_status(_status(body), service, err.message, _generation(body),
                                                          rt.clock()))
    rt.kube.emit_event(ref, f"{service.capitalize()}Unavailable", str(err), warning=True)
    raise kopf.TemporaryError(f"{service}: {err}", delay=backoff_s(retry, rt.settings, err.retry_after_s))


def _reject(rt: Runtime, ref: ObjectRef, body: Any, err: PylonError,
            build: Callable[[dict[str, Any], str, int, datetime], dict[str, Any]]) -> NoReturn:
    message = f"{err.code.name}: {err.message}"
    if err.violations:
        message += " (" + "; ".join(f"{v.field}: {v.description}" for v in err.violations) + ")"
    rt.kube.patch_status(ref, build(_status(body), message, _generation(body), rt.clock()))
    rt.kube.emit_event(ref, "Rejected", message, warning=True)
    raise kopf.PermanentError(message)


def _write(rt: Runtime, ref: ObjectRef, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Patch the status when it changed; an event when the phase did."""
    if status_changed(old, new):
        rt.kube.patch_status(ref, new)
    if new.get("phase") and new.get("phase") != old.get("phase"):
        rt.kube.emit_event(ref, str(new["phase"]), str(new.get("message", "")), warning=new["phase"] == "Failed")


# -- TrainingJob ------------------------------------------------------------------------------------
def training_job_create(body: Any, memo: Any, retry: int = 0, **_: Any) -> None:
    """Submit the job (idempotent on the object's uid); the status timer follows it."""
    rt, ref, status = _rt(memo), ObjectRef.of(body, TRAININGJOBS), _status(body)
    if not training.needs_submit(status):
        return
    spec = training.job_spec(ref.namespace, ref.name, dict(body["spec"]))
    try:
        job = rt.api.submit_job(rt.settings.operator_tenant, spec, training.request_id(ref.uid))
    except RETRYABLE as e:
        _retry_later(rt, ref, body, "scheduler", e, retry)
    except PylonError as e:
        _reject(rt, ref, body, e, training.rejected_status)
    _write(rt, ref, status, training.observed_status(status, job, _generation(body), rt.clock()))


def training_job_sync(body: Any, memo: Any, **_: Any) -> None:
    """Timer: mirror the scheduler's job into the status until the job ends."""
    rt, ref, status = _rt(memo), ObjectRef.of(body, TRAININGJOBS), _status(body)
    if not training.needs_sync(status):
        return
    try:
        job = rt.api.get_job(status["jobName"])
    except RETRYABLE as e:
        rt.kube.patch_status(ref, training.unreachable_status(status, "scheduler", e.message, _generation(body),
                                                              rt.clock()))
        return
    except PylonError as e:
        _write(rt, ref, status, training.rejected_status(status, f"{e.code.name}: {e.message}", _generation(body),
                                                         rt.clock()))
        return
    _write(rt, ref, status, training.observed_status(status, job, _generation(body), rt.clock()))


def training_job_delete(body: Any, memo: Any, retry: int = 0, **_: Any) -> None:
    """Finalizer: cancel the job if it still runs; the object goes only once the scheduler took the
    cancel (an unreachable scheduler keeps the finalizer and retries)."""
    rt, ref, status = _rt(memo), ObjectRef.of(body, TRAININGJOBS), _status(body)
    if not training.needs_cancel(status):
        return
    try:
        job = rt.api.cancel_job(status["jobName"])
    except (FailedPreconditionError, NotFoundError):
        return  # it ended meanwhile, or is gone: nothing to cancel
    except RETRYABLE as e:
        raise kopf.TemporaryError(f"cancel {status['jobName']}: {e}", delay=backoff_s(retry, rt.settings)) from None
    log.info("cancelled %s (%s) for deleted %s/%s", job.name, job.state, ref.namespace, ref.name)


# -- ModelDeployment --------------------------------------------------------------------------------
def _observed_deployment(rt: Runtime, name: str) -> Any:
    try:
        return rt.api.get_deployment(name)
    except NotFoundError:
        return None


def model_deployment_reconcile(body: Any, memo: Any, retry: int = 0, **_: Any) -> None:
    """Create the gateway deployment, or scale and share it, to match the spec; then mirror its
    status."""
    rt, ref, status = _rt(memo), ObjectRef.of(body, MODELDEPLOYMENTS), _status(body)
    if status.get("phase") == "Failed" and status.get("observedGeneration") == _generation(body):
        return  # refused or failed for this spec: wait for a new one
    spec, tenant = dict(body["spec"]), rt.settings.operator_tenant
    name = status.get("deploymentName") or f"tenants/{tenant}/deployments/{deployments.deployment_id(ref.name, spec)}"
    try:
        dep = _observed_deployment(rt, name)
        for _step in range(3):  # create, or scale then share: each step plans from the deployment it returns
            action = deployments.plan(spec, dep)
            if action == "create":
                dep = rt.api.create_deployment(tenant, deployments.deployment_id(ref.name, spec),
                                               deployments.create_fields(spec), deployments.request_id(ref.uid))
            elif action == "scale":
                dep = rt.api.scale_deployment(dep.name, int(spec.get("replicas", 1)))
            elif action == "share":
                # No etag: the spec is the truth, so a compare-and-swap would only add ABORTED
                # retries whenever the gateway's own writes (replica states, autoscaling) move it.
                dep = rt.api.update_deployment_sharing(dep.name, deployments.shared_with(spec))
            else:
                break
    except RETRYABLE as e:
        _retry_later(rt, ref, body, "gateway", e, retry)
    except PylonError as e:
        _reject(rt, ref, body, e, deployments.rejected_status)
    _write(rt, ref, status, deployments.observed_status(status, spec, dep, _generation(body), rt.clock()))


def model_deployment_sync(body: Any, memo: Any, **kwargs: Any) -> None:
    """Timer: the reconcile, with a retryable failure left to the next tick."""
    try:
        model_deployment_reconcile(body, memo, **kwargs)
    except (kopf.TemporaryError, kopf.PermanentError) as e:
        log.info("model deployment %s: %s", body["metadata"]["name"], e)


def model_deployment_delete(body: Any, memo: Any, retry: int = 0, **_: Any) -> None:
    """Finalizer: delete the gateway deployment (its replica jobs are cancelled by the gateway)."""
    rt, status = _rt(memo), _status(body)
    if not status.get("deploymentName"):
        return
    try:
        rt.api.delete_deployment(status["deploymentName"])
    except NotFoundError:
        return
    except RETRYABLE as e:
        raise kopf.TemporaryError(f"delete {status['deploymentName']}: {e}", delay=backoff_s(retry, rt.settings)) from None


# -- Dataset ----------------------------------------------------------------------------------------
def dataset_create(body: Any, memo: Any, retry: int = 0, **_: Any) -> None:
    """Create the dataset (or take the existing one) and start the import from the object store."""
    rt, ref, status = _rt(memo), ObjectRef.of(body, DATASETS), _status(body)
    if status.get("operation") or status.get("phase") == "Failed":
        return
    spec, tenant = dict(body["spec"]), rt.settings.operator_tenant
    dataset_id = datasets.dataset_id(ref.name, spec)
    dataset = f"tenants/{tenant}/datasets/{dataset_id}"
    try:
        try:
            dataset = rt.api.create_dataset(tenant, dataset_id, str(spec.get("description", "")), datasets.labels(spec),
                                            datasets.request_id(ref.uid, "create"))
        except AlreadyExistsError:
            pass  # a new version of an existing dataset
        op = rt.api.import_version(dataset, datasets.import_fields(spec), datasets.request_id(ref.uid, "import"))
    except RETRYABLE as e:
        _retry_later(rt, ref, body, "ingest", e, retry)
    except PylonError as e:
        _reject(rt, ref, body, e, datasets.rejected_status)
    _write(rt, ref, status, datasets.importing_status(status, dataset, op, _generation(body), rt.clock()))


def dataset_sync(body: Any, memo: Any, **_: Any) -> None:
    """Timer: follow the import's operation until the version is READY or the import failed."""
    rt, ref, status = _rt(memo), ObjectRef.of(body, DATASETS), _status(body)
    if not status.get("operation") or status.get("phase") != "Importing":
        return
    gen, now = _generation(body), rt.clock()
    try:
        op = rt.api.get_operation(status["operation"])
        if op.done and not op.failed:
            new = datasets.ready_status(status, status["datasetName"], op, rt.api.get_version(op.result), gen, now)
        else:
            new = datasets.importing_status(status, status["datasetName"], op, gen, now)
    except RETRYABLE as e:
        rt.kube.patch_status(ref, training.unreachable_status(status, "ingest", e.message, gen, now))
        return
    _write(rt, ref, status, new)


def dataset_delete(body: Any, memo: Any, retry: int = 0, **_: Any) -> None:
    """Finalizer: with deletionPolicy Delete, soft-delete the dataset; Retain (default) keeps it."""
    rt, status = _rt(memo), _status(body)
    if body["spec"].get("deletionPolicy", "Retain") != "Delete" or not status.get("datasetName"):
        return
    try:
        rt.api.delete_dataset(status["datasetName"])
    except NotFoundError:
        return
    except (*RETRYABLE, FailedPreconditionError) as e:  # FAILED_PRECONDITION: an import still runs
        raise kopf.TemporaryError(f"delete {status['datasetName']}: {e}", delay=backoff_s(retry, rt.settings)) from None


# -- GPU pools --------------------------------------------------------------------------------------
def raycluster_scale(body: Any, memo: Any, **_: Any) -> dict[str, int] | None:
    """Timer: set each GPU worker group's replicas from the scheduler's pending demand and busy
    GPUs of its type, between the group's bounds; returns what it set (None: no change)."""
    rt = _rt(memo)
    meta = body["metadata"]
    groups = pools.worker_groups(body)
    if not groups:
        return None
    try:
        pending = [j for t in rt.settings.pool_tenants for j in rt.api.pending_jobs(t)]
        cluster = rt.api.cluster()
    except PylonError as e:
        log.warning("pool scaling of %s/%s skipped: %s", meta["namespace"], meta["name"], e)
        return None
    desired = pools.desired_replicas(groups, pools.demand_of(pending), cluster)
    key = f"{meta['namespace']}/{meta['name']}"
    replicas, rt.pool_memory[key] = pools.damp_scale_down(groups, desired, rt.pool_memory.get(key, {}),
                                                          rt.monotonic(), rt.settings.operator_scale_down_delay_s)
    ops = pools.replica_patch(groups, replicas)
    if not ops:
        return None
    rt.kube.patch_raycluster(meta["namespace"], meta["name"], ops)
    changed = {g.name: replicas[g.name] for g in groups if replicas[g.name] != g.replicas}
    ref = ObjectRef(RAYCLUSTERS, meta["namespace"], meta["name"], RAY_GROUP, RAY_VERSION, "RayCluster",
                    str(meta.get("uid", "")))
    rt.kube.emit_event(ref, "GpuPoolsScaled", ", ".join(f"{g}={n}" for g, n in sorted(changed.items())))
    return changed


def _raycluster_timer(body: Any, memo: Any, **kwargs: Any) -> None:
    # Returns nothing: kopf would store a timer's result in the RayCluster's status, which is KubeRay's.
    raycluster_scale(body, memo, **kwargs)


# -- wiring -----------------------------------------------------------------------------------------
def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """Put every handler on ``registry`` with the intervals from ``settings``."""
    from pylon_operator.kube import GROUP, VERSION

    interval = settings.operator_sync_interval_s
    for plural, create, timer, delete in (
        (TRAININGJOBS, training_job_create, training_job_sync, training_job_delete),
        (MODELDEPLOYMENTS, model_deployment_reconcile, model_deployment_sync, model_deployment_delete),
        (DATASETS, dataset_create, dataset_sync, dataset_delete),
    ):
        kopf.on.create(GROUP, VERSION, plural, registry=registry)(create)
        kopf.on.resume(GROUP, VERSION, plural, registry=registry)(create)
        kopf.timer(GROUP, VERSION, plural, interval=interval, registry=registry)(timer)
        kopf.on.delete(GROUP, VERSION, plural, registry=registry)(delete)
    for spec_field in ("spec.replicas", "spec.sharedWith"):
        kopf.on.update(GROUP, VERSION, MODELDEPLOYMENTS, field=spec_field, registry=registry)(
            model_deployment_reconcile)
    kopf.timer(RAY_GROUP, RAY_VERSION, RAYCLUSTERS, labels={POOL_LABEL: "true"},
               interval=settings.operator_pool_interval_s, registry=registry)(_raycluster_timer)
    kopf.on.startup(registry=registry)(configure_kopf)


def configure_kopf(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf keeps its progress and the last handled spec in the status, not in annotations (a
    large spec would pass the 256 KiB annotation limit); the CRDs keep status.kopf."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.lastHandledConfiguration")
    settings.persistence.finalizer = "pylon.dev/operator"
    settings.posting.level = logging.WARNING
