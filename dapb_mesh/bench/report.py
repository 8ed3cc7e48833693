"""The bench report: a Markdown page with plots (matplotlib, no display needed)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from dapb_mesh.bench.metrics import CONTRACT_FIELDS, STEAL_DISTORTS
from dapb_mesh.testbed.tcpwork import HIST_EDGES_US


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(modes: dict[str, dict], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, m in modes.items():
        hist = m.get("delay_hist_us") or []
        total = sum(hist)
        if not total:
            continue
        xs, ys, acc = [], [], 0
        for i, count in enumerate(hist):
            acc += count
            xs.append(HIST_EDGES_US[min(i, len(HIST_EDGES_US) - 1)] / 1000)
            ys.append(max(1 - acc / total, 0.5 / total))  # CCDF, floored so the log axis shows the last bin
        ax.step(xs, ys, where="post", label=mode)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("one-way delay per message (ms, log2 bins: upper edge)")
    ax.set_ylabel("fraction of messages delayed longer")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def segments(modes: dict[str, dict], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(modes)
    small = [modes[n]["small_segments"] for n in names]
    full = [max(0, modes[n]["data_segments"] - modes[n]["small_segments"]) for n in names]
    ax.bar(names, full, label="full-size segments")
    ax.bar(names, small, bottom=full, label="small segments")
    ideal = max((m.get("ideal_segments", 0) for m in modes.values()), default=0)
    if ideal:
        ax.axhline(ideal, color="k", linestyle="--", label=f"ideal: payload / MSS = {ideal:.0f}")
    ax.set_ylabel("data segments on the wire")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def segment_sizes(modes: dict[str, dict], path: Path, title: str) -> bool:
    """Bars of data segments per payload-size bin, per mode (counted by tc). False when no mode has counts."""
    from dapb_mesh.kernel.layout import size_bin_edges

    counted = {m: v["segment_size_hist"] for m, v in modes.items() if any(v.get("segment_size_hist") or [])}
    if not counted:
        return False
    plt = _plt()
    edges = size_bin_edges()
    labels = [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)] + [f">={edges[-1]}"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(counted)
    for i, (mode, hist) in enumerate(counted.items()):
        ax.bar([x + i * width for x in range(len(hist))], hist, width=width, label=mode)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=30, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("segment payload (bytes)")
    ax.set_ylabel("data segments")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def sweep(rates: dict[str, dict[str, dict]], path: Path, title: str) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = sorted(rates, key=float)
    for mode in next(iter(rates.values())):
        a1.plot([float(r) for r in xs], [rates[r][mode]["segments_per_message"] for r in xs], marker="o", label=mode)
        a2.plot([float(r) for r in xs], [rates[r][mode]["latency_max_ms"] for r in xs], marker="o", label=mode)
    ideal = [rates[r][next(iter(rates[r]))] for r in xs]
    a1.plot(
        [float(r) for r in xs],
        [m["ideal_segments"] / m["messages"] if m["messages"] else 0 for m in ideal],
        "k--",
        label="ideal (payload / MSS)",
    )
    for ax, label in ((a1, "segments per message"), (a2, "worst one-way delay (ms)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("messages per second")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SELF_COALESCED = 0.7  # baseline segments per message per hop below this: Envoy batched on its own (a busy node)


def _hops(result: dict) -> int:
    return max(result.get("workload", {}).get("hops", 1) or 1, 1)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def distortions(result: dict) -> list[str]:
    """Plain-language flags for what could distort a run: CPU steal, a busy node, a baseline that coalesced."""
    flags = []
    hops = _hops(result)
    base = result["modes"].get("baseline")
    scenario = result.get("scenario", "")
    if base and base.get("segments_per_message") and scenario in ("stream-small", "grpc-stream", "mixed"):
        per_hop = base["segments_per_message"] / hops
        if per_hop < SELF_COALESCED:
            flags.append(
                f"The baseline coalesced by itself ({per_hop:.2f} segments per message per hop; an idle node sends "
                "about one per message at these rates): the node was busy. Judge DAPB against nagle in this run "
                "and the ideal, not the baseline."
            )
    for mode, m in result["modes"].items():
        steal = m.get("cpu_steal")
        if steal is not None and steal > STEAL_DISTORTS:
            flags.append(f"{mode}: the hypervisor stole {steal:.0%} of the node's CPU during the run.")
    return flags


def write_report(result: dict, directory: Path) -> Path:
    """report.md, result.json and PNG plots in ``directory``; returns the Markdown path."""
    directory.mkdir(parents=True, exist_ok=True)
    title = f"{result['scenario']} ({result['arch']})"
    (directory / "result.json").write_text(json.dumps(result, indent=2))
    latency_cdf(result["modes"], directory / "latency_cdf.png", f"{title}: delay CCDF")
    segments(result["modes"], directory / "segments.png", f"{title}: segments per mode")
    lines = [
        f"# dapb bench: {title}",
        "",
        f"Workload: `{json.dumps(result.get('workload', {}))}`",
        "",
        *(f"- **Check:** {flag}" for flag in distortions(result)),
        "",
        "| mode | segments per message | ideal per message (payload / MSS, all hops) | node CPU busy | CPU steal |",
        "|---|---|---|---|---|",
        *(
            f"| {mode} | {m.get('segments_per_message', 0):.3f} | "
            f"{m.get('ideal_segments', 0) * _hops(result) / max(m.get('messages', 1), 1):.3f} | "
            f"{_pct(m.get('node_cpu_busy'))} | {_pct(m.get('cpu_steal'))} |"
            for mode, m in result["modes"].items()
        ),
        "",
        "| mode | " + " | ".join(CONTRACT_FIELDS) + " |",
        "|---|" + "---|" * len(CONTRACT_FIELDS),
    ]
    for mode, m in result["modes"].items():
        cells = []
        for key in CONTRACT_FIELDS:
            value = m.get(key)
            cells.append("-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += ["", "![delay CDF](latency_cdf.png)", "", "![segments](segments.png)", ""]
    if segment_sizes(result["modes"], directory / "segment_sizes.png", f"{title}: segment sizes"):
        lines += ["![segment sizes](segment_sizes.png)", ""]
    if result.get("sweep"):
        sweep(result["sweep"], directory / "sweep.png", f"{title}: against the rate")
        lines += ["![rate sweep](sweep.png)", ""]
    lines += [
        "Segments are counted by the kernel (tc at the class's DSCP, or TCP_INFO); delays are measured per",
        "message by the receiver; CPU seconds come from the pods' cgroups; C_eBPF is the run time of the DAPB",
        "programs per message as the kernel accounts it (BPF_ENABLE_STATS).",
    ]
    path = directory / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
