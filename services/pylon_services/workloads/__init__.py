"""The workloads a scheduler job can run, in one registry (``registry.py``), and the contract
between the worker that runs a job and the trainer or engine code it calls (``contract.py``)."""

from pylon_services.workloads.contract import WorkloadContext, WorkloadResult
from pylon_services.workloads.registry import REGISTRY, Workload, WorkloadKind, WorkloadRegistry

__all__ = ["REGISTRY", "Workload", "WorkloadContext", "WorkloadKind", "WorkloadRegistry", "WorkloadResult"]
