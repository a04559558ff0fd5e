"""The simulator: trace readers, event handling, preemption with checkpoints, metrics, plot, CLI."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pylon_services.scheduler.domain.policies import FifoPolicy, make_policy
from pylon_services.scheduler.domain.throughput import ThroughputTable
from pylon_services.scheduler.sim.__main__ import main
from pylon_services.scheduler.sim.cluster import parse_cluster
from pylon_services.scheduler.sim.engine import Simulator
from pylon_services.scheduler.sim.metrics import plot, summarise
from pylon_services.scheduler.sim.traces import (
    TraceError,
    TraceJob,
    load_gavel_throughputs,
    loaded,
    poisson_jobs,
    read_alibaba_nodes,
    read_alibaba_pods,
    read_gavel_trace,
)

DATA = Path(__file__).resolve().parents[1] / "data"
GAVEL, ALI = DATA / "gavel", DATA / "alibaba-gpu-v2023"


class Recording(FifoPolicy):
    """FIFO that remembers every snapshot and decision it was given (same object in the sim)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list = []

    def schedule(self, snap):
        d = super().schedule(snap)
        self.calls.append((snap, d))
        return d


def test_reads_both_gavel_trace_forms():
    phys = read_gavel_trace(GAVEL / "small_test.trace")
    assert len(phys) == 20 and all(j.total_steps > 0 for j in phys)
    first = (GAVEL / "small_test.trace").read_text().splitlines()[0].split("\t")
    assert phys[0].total_steps == float(first[5]) and phys[0].arrival == float(first[9])
    assert phys[0].job_type.startswith(first[0]) and phys[0].workers == int(first[6])
    assert {j.workers for j in phys} <= {1, 2, 4, 8}
    msr = read_gavel_trace(GAVEL / "msr_0e4a51_head40.trace")
    assert len(msr) == 40
    assert msr[0].job_type == "Transformer (batch size 128)" and msr[0].total_steps == 95121 and msr[0].arrival == 0
    assert msr[1].arrival == 6.0


@pytest.mark.parametrize("line,why", [
    ("ResNet-18\tcmd\t--n\t1\t100\n", "got 5"),
    ("ResNet-18\tcmd\t--n\t1\tmany\t0\t1\n", "could not convert"),
    ("ResNet-18\tcmd\t--n\t1\t-5\t0\t1\n", "total_steps must be > 0"),
])
def test_malformed_gavel_line_names_file_and_line(tmp_path, line, why):
    f = tmp_path / "bad.trace"
    f.write_text("LM (batch size 5)\tcmd\t-n\t1\t100\t0\t1\n" + line)
    with pytest.raises(TraceError, match=rf"bad.trace:2: .*{why}"):
        read_gavel_trace(f)


def test_reads_alibaba_pods_with_gpu_type_constraints_and_nodes(tmp_path):
    pods = read_alibaba_pods(ALI / "pods_gpuspec33_sample.csv")
    assert len(pods) > 250 and all(p.gpus_per_worker > 0 and p.total_steps > 0 for p in pods)
    assert any(p.gpu_types == ("V100M16", "V100M32") for p in pods)
    assert any(p.gpus_per_worker < 1 for p in pods)  # GPU-sharing pods keep their fraction
    nodes = read_alibaba_nodes(ALI / "nodes_sample.csv")
    assert len(nodes) == 122 and {n.gpu_type for n in nodes} >= {"T4", "P100", "G2"}
    bad = tmp_path / "pods.csv"
    bad.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
                   "deletion_time,scheduled_time\np1,1,1,one,1000,,LS,Running,0,10,0\n")
    with pytest.raises(TraceError, match="pods.csv:2"):
        read_alibaba_pods(bad)


def test_cluster_spec_parsing():
    nodes = parse_cluster("v100=2x4,k80=3")
    assert [(n.gpu_type, n.gpus_total) for n in nodes] == [("v100", 4)] * 2 + [("k80", 1)] * 3
    for bad in ("v100", "v100=0", "v100=2xz", ""):
        with pytest.raises(ValueError):
            parse_cluster(bad)


def _table(rate: float = 1.0) -> ThroughputTable:
    t = ThroughputTable()
    t.set("m", "v100", rate)
    return t


def test_jobs_complete_when_work_runs_out_and_passes_are_batched_per_timestamp():
    jobs = [TraceJob("a", 0, "m", 100), TraceJob("b", 0, "m", 100), TraceJob("c", 0, "m", 50)]
    policy = Recording()
    out = Simulator(policy, parse_cluster("v100=1"), _table(10.0), jobs).run()
    assert out.finish == {"a": 10.0, "b": 20.0, "c": 25.0}
    assert [c[0].now for c in policy.calls] == [0.0, 10.0, 20.0]  # one pass per timestamp, none at 25
    s = summarise(out)
    assert s.avg_jct_s == pytest.approx(55 / 3) and s.makespan_s == 25 and s.utilisation == pytest.approx(1.0)
    assert s.p99_jct_s == 25


def test_preempted_job_keeps_progress_up_to_its_last_checkpoint():
    jobs = [TraceJob("low", 0, "m", 100, priority=0), TraceJob("high", 30, "m", 10, priority=5)]
    for interval, low_end in ((0.0, 110.0), (20.0, 120.0)):
        out = Simulator(make_policy("fifo"), parse_cluster("v100=1"), _table(), jobs,
                        checkpoint_interval_s=interval).run()
        assert out.finish == {"high": 40.0, "low": low_end}, interval
        assert out.preemptions == 1


def test_simulator_honours_alibaba_gpu_type_constraints():
    policy = Recording()
    pods = read_alibaba_pods(ALI / "pods_gpuspec33_sample.csv", limit=120)
    out = Simulator(policy, read_alibaba_nodes(ALI / "nodes_sample.csv"), ThroughputTable(default_rate=1.0),
                    pods).run()
    wanted = {p.id: p.gpu_types for p in pods}
    admits = [a for _, d in policy.calls for a in d.admits]
    assert len(admits) == len(out.finish) == 120
    assert all(not wanted[a.job_id] or a.gpu_type in wanted[a.job_id] for a in admits)
    assert any(wanted[a.job_id] for a in admits)


def test_loaded_variant_compresses_arrivals_and_drops_the_longest_jobs():
    jobs = [TraceJob("a", 1000.0, "pod", 60.0), TraceJob("b", 4000.0, "pod", 7200.0),
            TraceJob("c", 7000.0, "pod", 30.0)]
    out = loaded(jobs, compress=100, max_work=3600)
    assert [(j.id, j.arrival, j.total_steps) for j in out] == [("a", 1000.0, 60.0), ("c", 1060.0, 30.0)]
    assert [j.arrival for j in loaded(jobs, compress=2)] == [1000.0, 2500.0, 4000.0]  # max_work 0 keeps all
    with pytest.raises(ValueError):
        loaded(jobs, compress=0)
    # More load on the same cluster: the compressed sample queues, the original does not.
    pods = read_alibaba_pods(ALI / "pods_gpuspec33_sample.csv", limit=120)
    nodes = read_alibaba_nodes(ALI / "nodes_sample.csv")[:2]
    waits = []
    for trace in (pods, loaded(pods, compress=1000)):
        out = Simulator(make_policy("fifo"), nodes, ThroughputTable(default_rate=1.0), trace).run()
        waits.append(summarise(out).avg_jct_s - sum(j.total_steps for j in trace) / len(trace))
    assert waits[1] > waits[0]


def test_metrics_plot_and_fairness(tmp_path):
    table = load_gavel_throughputs(GAVEL / "throughputs_isolated.json")
    jobs = poisson_jobs(table, jobs_per_hour=30, count=60, seed=1)
    out = Simulator(make_policy("gavel"), parse_cluster("v100=2,p100=2,k80=2"), table, jobs).run()
    s = summarise(out)
    assert s.finished == 60 and 0 < s.jain_fairness <= 1 and s.avg_rho >= 1 and 0 < s.utilisation <= 1
    assert s.p99_jct_s >= s.avg_jct_s
    png = tmp_path / "q.png"
    plot(out, str(png), "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_runs_a_trace_and_reports_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--policy" in capsys.readouterr().out
    rc = main(["--trace", str(GAVEL / "msr_0e4a51_head40.trace"), "--throughputs",
               str(GAVEL / "throughputs_isolated.json"), "--policy", "gavel", "--cluster", "v100=2,p100=2,k80=2",
               "--json", "--plot", str(tmp_path / "p.png")])
    printed = capsys.readouterr().out
    # 4 jobs of the sample want 4 GPUs: no pool of 2 can ever hold them, so they are rejected.
    assert rc == 0 and '"finished": 36, "rejected": 4' in printed and (tmp_path / "p.png").exists()
    bad = tmp_path / "bad.trace"
    bad.write_text("x\ty\n")
    assert main(["--trace", str(bad), "--throughputs", str(GAVEL / "throughputs_isolated.json")]) == 2
    assert "bad.trace:1" in capsys.readouterr().err
    assert main(["--trace", str(bad), "--cluster", "v100=zero"]) == 2


def test_cli_replays_alibaba_pods_on_alibaba_nodes(capsys):
    rc = main(["--trace", str(ALI / "pods_gpuspec33_sample.csv"), "--nodes", str(ALI / "nodes_sample.csv"),
               "--limit", "50", "--policy", "fair-share", "--json"])
    assert rc == 0 and '"jobs": 50, "finished": 50, "rejected": 0' in capsys.readouterr().out


def test_cli_runs_with_no_data_arguments_outside_the_repository(tmp_path: Path) -> None:
    """The default throughput table ships with the package: a copy of the package away from the
    repository (as an install is) replays a Poisson trace with no data path."""
    services = Path(__file__).resolve().parents[2] / "services"
    site = tmp_path / "site"
    shutil.copytree(services / "pylon_services", site / "pylon_services",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(services.parent / "sdk")])}
    run = subprocess.run([sys.executable, "-m", "pylon_services.scheduler.sim", "--trace",
                          "poisson:jobs_per_hour=60,count=200", "--policy", "gavel", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert '"jobs": 200, "finished": 200, "rejected": 0' in run.stdout


def test_packaged_throughputs_are_gavels_isolated_table() -> None:
    packaged = load_gavel_throughputs()
    assert packaged.to_dict() == load_gavel_throughputs(GAVEL / "throughputs_isolated.json").to_dict()
    assert packaged.gpu_types() == ["k80", "p100", "v100"] and len(packaged.job_types()) == 83


def test_package_data_declaration_carries_every_simulator_data_file() -> None:
    """A non-editable install carries only what services/pyproject.toml declares as package data."""
    services = Path(__file__).resolve().parents[2] / "services"
    declared = tomllib.loads((services / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    sim = services / "pylon_services" / "scheduler" / "sim"
    carried = {p for pattern in declared["pylon_services.scheduler.sim"] for p in sim.glob(pattern)}
    on_disk = {p for p in (sim / "data").iterdir() if p.is_file()}
    assert on_disk and on_disk <= carried
    assert {p.name for p in on_disk} >= {"gavel_throughputs.json", "LICENSE", "ATTRIBUTION.md"}
