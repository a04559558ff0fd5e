"""SchedulerService request fields checked at the boundary: shapes and sizes first (so no reply
echoes a long input and nothing malformed reaches Redis), then the tenant rules of
``common/names.py`` (``-`` is the caller's tenant; another tenant's resource is NOT_FOUND unless
the caller is an admin), and the references a spec makes, which must stay in the job's tenant.
"""

from __future__ import annotations

import dataclasses
import re

from pylon_services.common.errors import FieldViolation, InvalidArgument
from pylon_services.common.limits import check_request_id
from pylon_services.common.names import (
    ID_PATTERN,
    MODEL_URI_RE,
    MODEL_URI_RULE,
    TENANT_PATTERN,
    Principal,
    parse_name,
    parse_parent,
    shape_error,
)
from pylon_services.scheduler.domain.spec import Command, EngineReplica, JobSpec, Trainer, invalid

MAX_NAME_CHARS = 256
MAX_LOG_OFFSET = 10**12
MAX_METRIC_KEYS = 256
_JOB_NAME = re.compile(rf"tenants/{TENANT_PATTERN}/jobs/{ID_PATTERN}")
_PARENT = re.compile(rf"tenants/{TENANT_PATTERN}")
_QUEUE_NAME = re.compile(rf"tenants/{TENANT_PATTERN}/queues/[A-Za-z0-9-]{{1,63}}")
_DATASET_VERSION = re.compile(rf"tenants/({TENANT_PATTERN})/datasets/({ID_PATTERN})/versions/([1-9][0-9]{{0,17}}|latest)")
_MODEL_VERSION = re.compile(rf"tenants/({TENANT_PATTERN})/models/({ID_PATTERN})/versions/([1-9][0-9]{{0,17}})")
_DEPLOYMENT = re.compile(rf"tenants/({TENANT_PATTERN})/deployments/({ID_PATTERN})")
# What ResolveModelUri accepts, in ASCII: checked here so a malformed URI never reaches the registry.
_WORKDIR_KEY = re.compile(r"tenants/([a-z][a-z0-9-]{0,62})/workdirs/sha256-[0-9a-f]{64}\.tar\.gz")


def job_name(field: str, name: str, p: Principal) -> tuple[str, str]:
    """(tenant, job id) of ``tenants/{t}/jobs/{id}``."""
    if len(name) > MAX_NAME_CHARS or not _JOB_NAME.fullmatch(name):
        raise shape_error(field, "tenants/{tenant}/jobs/{job}")
    tenant, job_id = parse_name(field, name, ("tenants", "jobs"), p)
    return tenant, job_id


def parent(field: str, value: str, p: Principal) -> str:
    """The tenant of ``tenants/{t}`` (empty: the caller's)."""
    if value and (len(value) > MAX_NAME_CHARS or not _PARENT.fullmatch(value)):
        raise shape_error(field, "tenants/{tenant} (or tenants/- for your own)")
    return parse_parent(field, value, p)


def queue_name(field: str, name: str, p: Principal) -> tuple[str, str]:
    """(tenant, queue id) of ``tenants/{t}/queues/{q}``."""
    if len(name) > MAX_NAME_CHARS or not _QUEUE_NAME.fullmatch(name):
        raise shape_error(field, "tenants/{tenant}/queues/{queue}")
    tenant, queue = parse_name(field, name, ("tenants", "queues"), p)
    return tenant, queue


def request_id(value: str) -> str:
    return check_request_id("request_id", value)


def log_offset(value: int) -> int:
    if not 0 <= value <= MAX_LOG_OFFSET:
        raise InvalidArgument.field("offset", f"must be between 0 and {MAX_LOG_OFFSET}")
    return value


def metric_keys(values: list[str]) -> set[str]:
    if len(values) > MAX_METRIC_KEYS or any(len(k) > MAX_NAME_CHARS for k in values):
        raise InvalidArgument.field("keys", f"at most {MAX_METRIC_KEYS} keys of at most {MAX_NAME_CHARS} characters")
    return set(values)


def in_tenant(spec: JobSpec, tenant: str, p: Principal) -> JobSpec:
    """``spec`` with every resource it names written in full (``-`` is the caller's tenant), or
    INVALID_ARGUMENT naming each reference that is malformed or outside the job's tenant ``tenant``:
    the job's worker reads only its own tenant's objects, so another tenant's dataset or working
    directory would only fail there. An admin submitting for another tenant names that tenant."""
    w, bad = spec.workload, []

    def resolve(field: str, pattern: re.Pattern[str], value: str, rule: str) -> str:
        m = pattern.fullmatch(value)
        if m is None:
            bad.append(FieldViolation(field, rule))
            return value
        owner = p.tenant if m[1] == "-" else m[1]
        if owner != tenant:
            bad.append(FieldViolation(field, f"must be in the job's tenant ({tenant})"))
            return value
        return f"tenants/{tenant}" + value[len(f"tenants/{m[1]}"):]

    if isinstance(w, Trainer):
        datasets = tuple(resolve(f"spec.trainer.datasets[{n}]", _DATASET_VERSION, d,
                                 "must be tenants/{tenant}/datasets/{dataset}/versions/{n or latest}")
                         for n, d in enumerate(w.datasets))
        if w.base_model and not MODEL_URI_RE.fullmatch(w.base_model):
            bad.append(FieldViolation("spec.trainer.base_model", MODEL_URI_RULE))
        w = dataclasses.replace(w, datasets=datasets)
    elif isinstance(w, Command):
        w = dataclasses.replace(w, datasets=tuple(
            resolve(f"spec.command.datasets[{n}]", _DATASET_VERSION, d,
                    "must be tenants/{tenant}/datasets/{dataset}/versions/{n or latest}")
            for n, d in enumerate(w.datasets)))
        m = _WORKDIR_KEY.fullmatch(w.working_dir_key)
        if w.working_dir_key and (m is None or m[1] != tenant):
            bad.append(FieldViolation("spec.command.working_dir_key", f"must be a key UploadWorkingDir returned for "
                                                                      f"this tenant (tenants/{tenant}/workdirs/...)"))
    elif isinstance(w, EngineReplica):
        w = dataclasses.replace(
            w, deployment=resolve("spec.engine.deployment", _DEPLOYMENT, w.deployment,
                                  "must be tenants/{tenant}/deployments/{deployment}"),
            model_version=resolve("spec.engine.model_version", _MODEL_VERSION, w.model_version,
                                  "must be tenants/{tenant}/models/{model}/versions/{n}"))
    if bad:
        raise invalid(bad)
    return dataclasses.replace(spec, workload=w)
