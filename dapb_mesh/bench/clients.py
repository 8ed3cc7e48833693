"""Request/response through the sidecars as users see it: real load clients (wrk, h2load) in the client pod,
keep-alive connections, the node agent attached to whole pods as the DaemonSet attaches (apps, sidecars, every
socket), with or without a CPU hog on the node.

Modes: ``baseline`` (nothing attached), ``agent-auto`` and ``agent-throughput`` (the agent with that default
class: every socket no rule names falls into it), and ``nagle`` (forced Nagle on every socket of the pods, no
guard, no bound: the harm the hold guard prevents, for comparison). Each client load runs every mode in turn,
the order rotating per repeat; medians of the repeats are reported, with the verdict "p90 and p99 within 10 % +
1 ms of baseline, req/s within 5 %, errors no more than baseline's + 0.5 %".
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dapb_mesh.agent import IDLE_CONDITIONS, Agent
from dapb_mesh.bench.metrics import STEAL_DISTORTS
from dapb_mesh.bench.modes import plan
from dapb_mesh.bench.runner import node_cpu_sample, start_agent
from dapb_mesh.config import Settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.kernel import libbpf
from dapb_mesh.kernel.datapath import Datapath
from dapb_mesh.policy import Sensitivity
from dapb_mesh.testbed import envoy_config as ec
from dapb_mesh.testbed.mesh import APP_PORT, UPSTREAM_IDLE_S, Mesh

CLIENT_MODES = ("baseline", "agent-auto", "agent-throughput", "nagle")
LATENCY_SLACK = (0.10, 1.0)  # (fraction, ms): p90 and p99 may exceed baseline by at most this
RATE_SLACK = 0.05  # req/s may fall short of baseline by at most this fraction
MIN_PAIRS = 3  # runs distorted by CPU steal (runner.STEAL_DISTORTS) are left out while this many pairs remain
NOISE_SIGMAS = 2.0  # the verdict's slack widens by this many standard deviations of the baseline's own spread
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client"}  # client -> the Debian package that has it


@dataclass(frozen=True)
class ClientLoad:
    """One real client's load: the tool, HTTP version, connections, and total requests per second (None: as fast
    as the connections allow, a closed loop)."""

    tool: str
    http: str
    connections: int
    rate: int | None = None

    @property
    def label(self) -> str:
        proto = "" if self.tool == "wrk" else f":h{self.http[0]}"
        rate = f":r{self.rate}" if self.rate else ""
        return f"{self.tool}{proto}:c{self.connections}{rate}"


def parse_client(spec: str) -> ClientLoad:
    """``wrk:c4``, ``h2load:h1:c2:r1000``, ``h2load:h2:c16:r1000``, ``h2load:h2:c4`` (closed loop); ValueError
    names the bad part."""
    parts = spec.strip().split(":")
    tool = parts[0]
    if tool not in TOOLS:
        raise ValueError(f"{spec!r}: unknown client {tool!r}; choose from {', '.join(TOOLS)}")
    http, connections, rate = "1.1", 4, None
    for part in parts[1:]:
        if part in ("h1", "h2") and tool == "h2load":
            http = "1.1" if part == "h1" else "2"
        elif re.fullmatch(r"c\d+", part) and 1 <= int(part[1:]) <= 64:
            connections = int(part[1:])
        elif re.fullmatch(r"r\d+", part) and tool == "h2load" and 1 <= int(part[1:]) <= 100_000:
            rate = int(part[1:])
        else:
            raise ValueError(
                f"{spec!r}: bad part {part!r} (h1|h2 and rN for h2load only; cN with N in 1..64; rN in 1..100000)"
            )
    if rate is not None and rate < connections:
        raise ValueError(f"{spec!r}: a rate of {rate}/s over {connections} connections is under 1/s each")
    return ClientLoad(tool, http, connections, rate)


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(text: str) -> dict:
    """wrk --latency output: percentiles, max, requests and req/s; errors counted."""
    pct = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M)}
    latency = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    done = re.search(r"(\d+) requests in", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not (pct.keys() >= {50, 90, 99} and latency and done and rps):
        raise RuntimeError(f"cannot read wrk's output: {text[-500:]!r}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "p50_ms": pct[50],
        "p90_ms": pct[90],
        "p99_ms": pct[99],
        "max_ms": _ms(latency.group(3)),
        "requests": int(done.group(1)),
        "req_per_s": float(rps.group(1)),
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def parse_h2load(text: str, log: str) -> dict:
    """h2load's summary (requests, req/s) and its per-request log (microseconds per request) for percentiles."""
    finished = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", text)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) err", text
    )
    durations = sorted(int(line.split("\t")[2]) / 1000 for line in log.splitlines() if line.count("\t") >= 2)
    if not (finished and counts and durations):
        raise RuntimeError(f"cannot read h2load's output: {text[-500:]!r}")
    return {
        "p50_ms": _percentile(durations, 0.50),
        "p90_ms": _percentile(durations, 0.90),
        "p99_ms": _percentile(durations, 0.99),
        "max_ms": durations[-1],
        "requests": int(counts.group(4)),
        "req_per_s": float(finished.group(3)),
        "errors": int(counts.group(5)) + int(counts.group(6)),
    }


def client_argv(load: ClientLoad, url: str, duration_s: int, size: int, log: Path) -> list[str]:
    header = f"x-response-size: {size}"
    if load.tool == "wrk":
        return ["wrk", "-t1", f"-c{load.connections}", f"-d{duration_s}s", "--latency", "-H", header, url]
    argv = ["h2load", f"-c{load.connections}", f"-D{duration_s}", "-H", header, f"--log-file={log}"]
    if load.http == "1.1":
        argv.append("--h1")
    if load.rate:
        argv.append(f"--rps={max(1, round(load.rate / load.connections))}")
    return [*argv, url]


@contextlib.contextmanager
def cpu_hog(cores: int, seconds: float) -> Iterator[None]:
    """Keep ``cores`` CPUs busy (bounded in time, killed with their process group on exit) to show a loaded node."""
    procs = [
        subprocess.Popen(["timeout", str(int(seconds) + 1), "sh", "-c", "while :; do :; done"], start_new_session=True)
        for _ in range(cores)
    ]
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the group: `timeout` does not pass SIGKILL on to its child
            p.wait()


MIN_RUNS_FOR_SPREAD = 3  # runs a sample needs before its spread means anything


def spread(values: list[float]) -> float | None:
    """The spread of repeated runs: the median absolute deviation scaled to a standard deviation (robust to one
    wild run); None with fewer than MIN_RUNS_FOR_SPREAD runs."""
    if len(values) < MIN_RUNS_FOR_SPREAD:
        return None
    mid = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - mid) for v in values)


def _noise(values: list[float]) -> float:
    """The spread of repeated baseline runs, 0 when too few to tell."""
    return spread(values) or 0.0


def within(runs: list[dict], bases: list[dict]) -> dict:
    """The do-no-harm verdict of one mode against baseline in the same run, paired repeat by repeat (a mode's
    run and the baseline run next to it share the machine's mood) and judged by the median over the pairs, so
    that one noisy pair decides nothing. Pairs where the hypervisor stole more than STEAL_DISTORTS of the CPU in
    either run measure the host, not DAPB: they are left out while at least MIN_PAIRS others remain.

    Allowed: p90 and p99 within base x 1.1 + 1 ms, req/s within 5 % of base, each widened by NOISE_SIGMAS times
    the baseline's own spread over the repeats (0 on a calm machine: then the criterion is exactly the target;
    on a noisy one the machine, not DAPB, sets how finely a run can judge). Each check's value is the median
    excess over what is allowed: <= 0 passes. The noise added is reported beside.
    """
    pairs = list(zip(runs, bases, strict=True))
    calm = [(m, b) for m, b in pairs if max(m["cpu_steal"], b["cpu_steal"]) <= STEAL_DISTORTS]
    used = calm if len(calm) >= MIN_PAIRS else pairs
    frac, ms = LATENCY_SLACK
    noise = {q: NOISE_SIGMAS * _noise([b[q] for _, b in used]) for q in ("p90_ms", "p99_ms")}
    rps = [b["req_per_s"] for _, b in used]
    noise["req_per_s"] = NOISE_SIGMAS * _noise(rps) / max(statistics.median(rps), 1e-9)
    excess = {
        f"{q}_excess": statistics.median(m[q] - (b[q] * (1 + frac) + ms + noise[q]) for m, b in used)
        for q in ("p90_ms", "p99_ms")
    }
    excess["req_per_s_excess"] = statistics.median(
        (1 - RATE_SLACK - noise["req_per_s"]) - m["req_per_s"] / max(b["req_per_s"], 1e-9) for m, b in used
    )
    # h2load counts streams cut at its deadline as failed, in baseline too
    excess["errors_excess"] = statistics.median(
        m["errors"] - (b["errors"] + 0.005 * max(m["requests"], 1)) for m, b in used
    )
    return {
        "ok": all(v <= 0 for v in excess.values()),
        "pairs": len(used),
        "pairs_left_out": len(pairs) - len(used),
        "noise_allowance": noise,
        **excess,
    }


def validate_client_modes(modes: list[str]) -> list[str]:
    unknown = [m for m in modes if m not in CLIENT_MODES]
    if unknown or not modes:
        raise ValueError(f"mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(CLIENT_MODES)}")
    return modes


def run_clients(
    loads: list[ClientLoad],
    modes: list[str],
    settings: Settings,
    *,
    duration_s: int = 3,
    repeats: int = 3,
    size: int = 1024,
    load_cores: int = 0,
    plaintext: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict:
    validate_client_modes(modes)
    for tool in {ld.tool for ld in loads}:
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (Debian: apt-get install {TOOLS[tool]})")
    progress("bringing up the inter-pod mesh")
    # Keep-alive connections, no class routes and no DSCP marks: every socket falls into the default class. Idle
    # sidecar-to-sidecar connections close after UPSTREAM_IDLE_S, so that each mode's run opens its own while the mode
    # is in force (as after a deployment), not one a previous mode opened.
    mesh = Mesh(
        "inter-pod",
        plaintext=plaintext,
        kernel=settings.kernel,
        requests_per_connection=0,
        upstream_idle_timeout_s=UPSTREAM_IDLE_S,
    )
    expected_s = (duration_s + 2) * len(loads) * len(modes) * repeats + 60
    runs: dict[str, dict[str, list[dict]]] = {ld.label: {m: [] for m in modes} for ld in loads}
    with mesh, libbpf.run_time_stats(), cpu_hog(load_cores, expected_s), tempfile.TemporaryDirectory() as tmp:
        dp = Datapath.load(f"bench-{uuid.uuid4().hex[:8]}", settings.kernel)
        try:
            for pod in mesh.pods:
                dp.attach_tc(pod.ifname, netns=pod.netns)
            url = f"http://{mesh.server_service.addresses[0]}:{APP_PORT}/"
            for load in loads:
                for rep in range(repeats):
                    order = modes[rep % len(modes) :] + modes[: rep % len(modes)]
                    for mode in order:
                        progress(f"{load.label} [{rep + 1}/{repeats}] {mode}")
                        run = _one(mesh, dp, settings, mode, load, url, duration_s, size, Path(tmp))
                        runs[load.label][mode].append(run)
        finally:
            dp.destroy()
    results = {}
    for label, per_mode in runs.items():
        med = {m: _median(rs) for m, rs in per_mode.items()}
        if "baseline" in med:
            for m, r in med.items():
                if m != "baseline":
                    r["verdict"] = within(per_mode[m], per_mode["baseline"])
        results[label] = med
    return {
        "scenario": "clients",
        "arch": "inter-pod",
        "workload": {
            "loads": [ld.label for ld in loads],
            "response_bytes": size,
            "duration_s": duration_s,
            "repeats": repeats,
            "load_cores": load_cores,
            "mtls": not plaintext,
        },
        "clients": results,
    }


def _median(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["errors"] = sum(r["errors"] for r in runs)
    out["runs"] = len(runs)
    out["per_run"] = {q: [r[q] for r in runs] for q in ("p90_ms", "p99_ms", "req_per_s", "cpu_steal")}
    return out


def _agent(settings: Settings, mesh: Mesh, sensitivity: str) -> Agent:
    a = settings.agent.model_copy(
        update={
            "cgroups": [p.cgroup for p in mesh.pods],  # whole pods, as the DaemonSet attaches
            "instance": f"agent-clients-{mesh.run_id}",
            "store": mesh.workdir / "history.db",
            "default_sensitivity": sensitivity,
            "receiver_ports": [ec.INBOUND_PORT],
            "hold_uid": ec.SIDECAR_UID,
            "bounded_peers": mesh.pod_networks,
            "companion_target": "",
            "filter_config_file": None,
            "wasm_plugin": "",
        }
    )
    return Agent(settings.model_copy(update={"agent": a}))


def _segments(dp: Datapath) -> int:
    return sum(dp.tc_stats("egress", dscp).data_packets for dscp in range(64))


def _one(
    mesh: Mesh,
    dp: Datapath,
    settings: Settings,
    mode: str,
    load: ClientLoad,
    url: str,
    duration_s: int,
    size: int,
    tmp: Path,
) -> dict:
    agent = None
    if mode == "nagle":  # the bench's forced-Nagle mode, on every socket of the pods
        forced = plan("nagle", Sensitivity.THROUGHPUT, IDLE_CONDITIONS, settings)
        for pod in mesh.pods:
            dp.attach_cgroup(pod.cgroup)
        dp.write_policy(forced.policies, default_class=forced.default_class, unguarded=forced.unguarded)
    elif mode.startswith("agent-"):
        agent = start_agent(lambda: _agent(settings, mesh, mode.removeprefix("agent-")))
    log = tmp / f"h2load-{uuid.uuid4().hex[:6]}.log"
    log.touch()
    log.chmod(0o666)
    seg0, cpu0, own0 = _segments(dp), node_cpu_sample(), time.process_time()
    try:
        proc = mesh.client_pod.popen(
            client_argv(load, url, duration_s, size, log),
            container="app",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            out, _ = proc.communicate(timeout=duration_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"{load.label} did not finish within {duration_s + 30} s") from None
        result = parse_wrk(out) if load.tool == "wrk" else parse_h2load(out, log.read_text())
    finally:
        if agent is not None:
            writes, tick_cpu_s = agent.writes, agent.tick_cpu_s
            agent.tick()  # the last telemetry: what the guard did during the run
            releases = sum(st.guard_releases_total for st in agent.aggregator.classes.values())
            agent.stop()
        if mode == "nagle":
            dp.write_policy({}, default_class=L.CLASS_DEFAULT, unguarded=False)
            for pod in mesh.pods:
                dp.detach_cgroup(pod.cgroup)
    result["segments_per_request"] = (_segments(dp) - seg0) / max(result["requests"], 1)
    # this process only waits for the client: its CPU is the agent's (0 without one) with its start and stop, as a
    # share of one core
    result["agent_core_share"] = (time.process_time() - own0) / duration_s
    if agent is not None:
        result["agent_policy_writes"] = writes
        result["agent_tick_core_share"] = tick_cpu_s / duration_s  # the steady cost, without start and stop
        result["guard_releases"] = releases
    result.update(node_cpu_sample().since(cpu0))
    time.sleep(UPSTREAM_IDLE_S + 0.5)  # the sidecars close this run's upstream connections before the next mode
    return result


def client_report(result: dict) -> str:
    """A Markdown page of a --client run, verdicts first: per load, each mode's do-no-harm verdict against baseline
    in plain words (what passed or failed and by how much, median over the pairs), the machine (CPU busy and
    steal) and the spread of the runs; then one table per load. Works from the JSON alone, older results too."""
    w = result["workload"]
    frac, ms = LATENCY_SLACK

    def n(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:,.3g}{unit}" if abs(value) < 1000 else f"{value:,.0f}{unit}"

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}" if abs(value) >= 0.095 else f"{value:.1%}"

    def checks(v: dict) -> str:
        """Each check's median excess over what is allowed, in words (<= 0: within, with what is to spare)."""
        words = []
        for key, what, fmt, past in (
            ("p90_ms_excess", "p90", lambda x: n(x, " ms"), "over"),
            ("p99_ms_excess", "p99", lambda x: n(x, " ms"), "over"),
            ("req_per_s_excess", "req/s", share, "short"),
            ("errors_excess", "errors", n, "over"),
        ):
            if key in v:
                excess = v[key]
                words.append(
                    f"{what} **{past} by {fmt(excess)}**" if excess > 0 else f"{what} within ({fmt(-excess)} to spare)"
                )
        return ", ".join(words)

    def spread(m: dict, key: str, unit: str) -> str:
        values = (m.get("per_run") or {}).get(key) or []
        return f"{n(min(values))}-{n(max(values), unit)}" if len(values) > 1 else "-"

    lines = [
        "# Request/response with real clients",
        "",
        f"Inter-pod through two Envoy sidecars ({'mutual TLS' if w.get('mtls', True) else 'plaintext'}), keep-alive "
        f"connections, {w['response_bytes']:,} B responses, {w['duration_s']} s per run, {w['repeats']} interleaved "
        f"repeat(s), {w['load_cores']} core(s) kept busy. Medians of the repeats.",
        "",
        "## Verdicts",
    ]
    for label, per_mode in result["clients"].items():
        base = per_mode.get("baseline", {})
        lines += ["", f"### {label}", ""]
        for mode, m in per_mode.items():
            v = m.get("verdict")
            machine = f"node CPU {share(m.get('node_cpu_busy'))} busy, {share(m.get('cpu_steal'))} steal"
            if m.get("agent_core_share") is not None and mode.startswith("agent"):
                machine += f", the agent {share(m['agent_core_share'])} of a core"
            if v is None:
                lines.append(
                    f"- **{mode}**: p50 {n(m['p50_ms'], ' ms')}, p99 {n(m['p99_ms'], ' ms')}, "
                    f"{n(m['req_per_s'])} req/s, {m['errors']} errors; {machine}."
                )
                continue
            pairs = f"median over {v['pairs']} pairs" if "pairs" in v else "median over the pairs"
            if v.get("pairs_left_out"):
                pairs += f", {v['pairs_left_out']} left out for CPU steal"
            lines.append(
                f"- **{mode}**: {'**no harm**' if v['ok'] else '**harm**'} ({pairs}): {checks(v)}. p99 "
                f"{n(m['p99_ms'], ' ms')} against the baseline's {n(base.get('p99_ms'), ' ms')}, "
                f"{n(m['req_per_s'])} req/s against {n(base.get('req_per_s'))}, {m['errors']} errors; {machine}."
            )
        runs = [
            f"{mode} p99 {spread(m, 'p99_ms', ' ms')}, req/s {spread(m, 'req_per_s', '')}"
            for mode, m in per_mode.items()
        ]
        lines.append(f"- Spread over the runs (lowest-highest): {'; '.join(runs)}.")
        steals = [s for m in per_mode.values() for s in (m.get("per_run") or {}).get("cpu_steal") or []]
        if steals and max(steals) > STEAL_DISTORTS:
            lines.append(
                f"- **Check:** the hypervisor stole up to {share(max(steals))} of the node's CPU in some runs "
                f"(over the {STEAL_DISTORTS:.0%} that distorts a run)."
            )
    lines += [
        "",
        f"No harm: p90 and p99 within {frac:.0%} + {ms:g} ms of baseline, req/s within {RATE_SLACK:.0%}, errors no "
        f"more than baseline's + 0.5 %, judged pair by pair (median), each slack widened by {NOISE_SIGMAS:g} "
        f"standard deviations of the baseline's own spread (the noise allowance: 0 on a calm machine); pairs with "
        f"more than {STEAL_DISTORTS:.0%} CPU steal left out while {MIN_PAIRS} others remain. An excess is the "
        "median over the pairs of (mode - what is allowed): within when at most 0.",
        "",
        "## Measured",
    ]
    for label, per_mode in result["clients"].items():
        lines += [
            "",
            f"### {label}",
            "",
            "| mode | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | requests/s | segments per request | errors | "
            "node CPU busy | CPU steal | no harm |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for mode, m in per_mode.items():
            verdict = m.get("verdict")
            ok = "-" if verdict is None else ("yes" if verdict["ok"] else "**no**")
            lines.append(
                f"| {mode} | {m['p50_ms']:.2f} | {m['p90_ms']:.2f} | {m['p99_ms']:.2f} | {m['max_ms']:.2f} | "
                f"{m['req_per_s']:,.0f} | {m['segments_per_request']:.2f} | {m['errors']} | "
                f"{share(m.get('node_cpu_busy'))} | {share(m.get('cpu_steal'))} | {ok} |"
            )
        verdicts = [m["verdict"] for m in per_mode.values() if "verdict" in m]
        allowance = verdicts[0].get("noise_allowance") if verdicts else None
        if allowance:
            lines += [
                "",
                f"Noise allowance from the baseline's spread: p90 +{allowance['p90_ms']:.2f} ms, p99 "
                f"+{allowance['p99_ms']:.2f} ms, req/s -{allowance['req_per_s']:.1%}.",
            ]
    return "\n".join(lines) + "\n"
