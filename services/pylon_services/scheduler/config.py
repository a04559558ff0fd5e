"""Scheduler-only settings (env prefix ``PYLON_SCHED_``), parsed once at start. The API and the
leader process read the same variables; the leader uses most of them."""

from __future__ import annotations

import json

from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict

from pylon_services.scheduler.domain.autoscale import DeclaredPool
from pylon_services.scheduler.domain.pacing import PacingConfig


class PoolBounds(BaseModel):
    """A declared GPU pool: how many nodes Kubernetes may scale it between."""

    min_nodes: int = 0
    max_nodes: int = 0
    # Shape of the nodes the pool adds (0 = unknown: its largest live node, else unchecked).
    gpus_per_node: float = 0.0
    cpus_per_node: float = 0.0


class SchedulerConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PYLON_SCHED_", frozen=True, extra="ignore")

    # fifo | fair-share | gavel | finish-time-fairness (domain/policies.py).
    policy: str = "fifo"
    # Longest idle wait of the leader's loop (active jobs are checked at least this often).
    pass_period_s: float = 0.5
    # A pass runs when something changed (a submit, cancel, queue change, worker result or
    # progress, a job the leader moved); with nothing new, only this often (estimates age and
    # nodes join without telling anyone).
    idle_pass_s: float = 2.0
    # Passes (and checks of active jobs) run at most this often, however many events arrive...
    min_pass_interval_s: float = 0.2
    # ...and take at most this fraction of the leader's time (the gap grows with a pass's cost;
    # waiting on Ray for admitted jobs' placement groups does not count).
    pass_duty_cycle: float = 0.25
    # Whole passes that run only because time passed (``idle_pass_s``: estimates age; arrivals
    # taken by append passes get their fair-share place back) take at most this fraction: an
    # unchanging backlog of 25k jobs is not re-decided every 2 s at a quarter of a core.
    idle_pass_duty_cycle: float = 0.05
    # The leader re-reads the whole pending queue this often; in between it reads only the jobs
    # events and its own writes name (``backlog.py``).
    backlog_resync_s: float = 30.0
    # The leader logs its passes (count, CPU per pass, backlog size) this often.
    stats_every_s: float = 30.0
    # Seconds a preempted job gets between the should_preempt() flag and SIGTERM.
    preempt_grace_s: float = 30.0
    # Fair-share usage halves every this many seconds.
    usage_half_life_s: float = 86400.0
    # A placement group not created within this long is given back and the job requeued.
    start_timeout_s: float = 120.0
    # Leader lease: a dead leader is replaced after at most this long.
    lease_s: float = 10.0
    # Dispatch entries unacknowledged this long are reclaimed (XAUTOCLAIM) by the leader.
    reclaim_idle_ms: int = 10_000
    # Ray namespace and prefix of placement group / actor names; distinct per platform sharing a
    # Ray cluster (a leader removes placement groups with its prefix that no job owns).
    instance: str = "pylon"
    # Declared pools, JSON: {"V100": {"min_nodes": 0, "max_nodes": 8}}.
    pools: str = ""
    # Most PENDING jobs one tenant may have; SubmitJob beyond it answers RESOURCE_EXHAUSTED with
    # a retry delay (counted atomically in the submit script). 0 turns the limit off.
    max_pending_per_tenant: int = 10_000

    def pool_bounds(self) -> dict[str, PoolBounds]:
        return {k: PoolBounds(**v) for k, v in json.loads(self.pools).items()} if self.pools else {}

    def declared_pools(self) -> list[DeclaredPool]:
        return [DeclaredPool(t, b.min_nodes, b.max_nodes, b.gpus_per_node, b.cpus_per_node)
                for t, b in sorted(self.pool_bounds().items())]

    def pacing(self) -> PacingConfig:
        return PacingConfig(pass_period_s=self.pass_period_s, idle_pass_s=self.idle_pass_s,
                            min_pass_interval_s=self.min_pass_interval_s, pass_duty_cycle=self.pass_duty_cycle,
                            idle_pass_duty_cycle=self.idle_pass_duty_cycle, reclaim_every_s=self.reclaim_idle_ms / 2000)
