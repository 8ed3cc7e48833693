"""The loop every benchmark shares: modes interleaved over repeats, the kernel datapath switched per mode,
segments, CPU and program run time read around each run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dapb_mesh.agent import Agent
from dapb_mesh.bench.metrics import RawRun, median_of, relate, summarize
from dapb_mesh.bench.modes import ModePlan
from dapb_mesh.kernel import layout as L
from dapb_mesh.kernel.datapath import Datapath
from dapb_mesh.testbed.impair import Impairment, apply_bottleneck

SMALL_BYTES = 512  # a data segment with less payload than this counts as small


def cpu_usec(cgroup: Path) -> int:
    """CPU time of a cgroup v2 directory (and its children), from cpu.stat."""
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class CpuSample:
    """The node's CPU counters (/proc/stat, all CPUs, in ticks): what could distort a run."""

    busy: int
    steal: int
    total: int

    def since(self, before: CpuSample) -> dict[str, float]:
        """Busy and steal shares of the node's CPU time between two samples (0..1)."""
        total = max(self.total - before.total, 1)
        return {"node_cpu_busy": (self.busy - before.busy) / total, "cpu_steal": (self.steal - before.steal) / total}


def node_cpu_sample() -> CpuSample:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return CpuSample(busy=total - idle - fields[7], steal=fields[7], total=total)


def egress_segments(dp: Datapath, dscps: range | tuple[int, ...] = range(64)) -> tuple[int, int, list[int]]:
    """(data segments, small data segments, segments per size bin) counted by tc on egress so far, over the
    given DSCPs."""
    data = small = 0
    sizes = [0] * L.SIZE_BINS
    for dscp in dscps:
        s = dp.tc_stats("egress", dscp)
        data += s.data_packets
        small += s.small_packets
        sizes = [a + b for a, b in zip(sizes, s.size_hist, strict=True)]
    return data, small, sizes


def program_ns(dp: Datapath) -> int:
    """Run time of the DAPB programs (tc excluded: it is the benchmark's own instrument, present in every mode)."""
    return sum(ns for name, (ns, _) in dp.program_run_time().items() if not name.startswith("dapb_tc"))


def run_modes(
    dp: Datapath,
    modes: list[str],
    repeats: int,
    plans: dict[str, ModePlan],
    cgroups: list[Path],
    run_once: Callable[[], RawRun],
    progress: Callable[[str], None],
    label: str,
    *,
    count_dscps: range | tuple[int, ...] = range(64),
    attach_cgroups: list[Path] | None = None,
    agent_factory: Callable[[], Agent] | None = None,
    before_run: Callable[[ModePlan], None] = lambda _plan: None,
    proxy_cgroups: list[Path] | None = None,
) -> dict[str, dict]:
    """Run every mode ``repeats`` times, rotating the order each repeat, and return the median metrics.

    CPU is read from ``cgroups``; programs attach to ``attach_cgroups`` (default: the same); segments are the
    tc egress counts of ``count_dscps``. ``proxy_cgroups`` (the sidecar containers) are also read alone.
    """
    attach_to = cgroups if attach_cgroups is None else attach_cgroups
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    agents: list[dict] = []
    attached = False
    for rep in range(repeats):
        order = modes[rep % len(modes) :] + modes[: rep % len(modes)]
        for mode in order:
            p = plans[mode]
            if p.attach and not attached:
                for cg in attach_to:
                    dp.attach_cgroup(cg)
            elif not p.attach and attached:
                for cg in attach_to:
                    dp.detach_cgroup(cg)
            attached = p.attach
            dp.write_policy(p.policies, default_class=p.default_class, small_bytes=SMALL_BYTES, unguarded=p.unguarded)
            progress(f"{label} [{rep + 1}/{repeats}] {mode}")
            before_run(p)
            agent = start_agent(agent_factory) if p.agent else None
            timed = agent.datapath if agent is not None else dp
            cpu0, seg0, ns0 = sum(cpu_usec(c) for c in cgroups), egress_segments(dp, count_dscps), program_ns(timed)
            node0 = node_cpu_sample()
            proxy0 = sum(cpu_usec(c) for c in proxy_cgroups or [])
            try:
                raw = run_once()
                raw.ebpf_ns = program_ns(timed) - ns0
            finally:
                if agent is not None:
                    agents.append(_agent_summary(agent))
                    agent.stop()
            raw.cpu_seconds = (sum(cpu_usec(c) for c in cgroups) - cpu0) / 1e6
            if proxy_cgroups:
                raw.proxy_cpu_seconds = (sum(cpu_usec(c) for c in proxy_cgroups) - proxy0) / 1e6
            seg1 = egress_segments(dp, count_dscps)
            raw.small_segments = seg1[1] - seg0[1]
            raw.segment_size_hist = [b - a for a, b in zip(seg0[2], seg1[2], strict=True)]
            if raw.data_segments < 0:  # the workload could not count: take the kernel's tc count
                raw.data_segments = seg1[0] - seg0[0]
            runs[mode].append(summarize(raw) | node_cpu_sample().since(node0))
    result = {m: median_of(rs) for m, rs in runs.items()}
    relate(result)
    for mode, metrics in result.items():
        metrics["enforced_bound_ms"] = plans[mode].bound_ms  # None: unbounded
        decision = plans[mode].decision
        metrics["enforcer"] = decision.knobs.enforcer if decision is not None else None
    if agents:
        result["agent"]["agent"] = agents[-1]
    return result


def start_agent(factory: Callable[[], Agent] | None) -> Agent:
    """Start the agent in a thread and wait until its first snapshot is in the kernel."""
    import threading

    if factory is None:
        raise ValueError("mode 'agent' needs an agent factory (it runs through the sidecar testbed)")
    agent = factory()
    agent.start()
    threading.Thread(target=agent.run, daemon=True).start()
    return agent


def _agent_summary(agent: Agent) -> dict:
    from dapb_mesh.agent import CLASS_NAMES

    return {
        "policy_version": agent.version,
        "writes": agent.writes,
        "decisions": {
            CLASS_NAMES[c]: {
                "buffer_bytes": st.decision.buffer_bytes,
                "timeout_ms": st.decision.timeout_ms,
                "enforced_timeout_ms": st.decision.enforced_timeout_ms,
                "source": st.decision.source.value,
                "rtt_ms": st.decision.conditions.rtt_ms,
            }
            for c, st in agent.aggregator.classes.items()
            if st.decision is not None
        },
        "telemetry_rejected": dict(agent.aggregator.rejected),
    }


def impair(dp: Datapath, imp: Impairment, sender: tuple[str, str], receiver: tuple[str, str]) -> None:
    """Apply an impairment: the bottleneck on the sender's egress, the loss on the receiver's ingress."""
    apply_bottleneck(*sender, imp)
    if imp.loss:
        if receiver != sender:
            dp.attach_tc(receiver[1], netns=receiver[0])
        dp.write_policy({}, drop_per_million=imp.drop_per_million)
