"""The bench report, made from the result JSON alone: verdicts in plain words first, then the table with units, a
glossary of the paper's six metrics, and one plot per question (matplotlib, no display needed).

Anyone can rebuild a stored report from its JSON (`dapb bench report RESULT.json --out DIR`); every number and
every plotted point comes from the JSON, so a report cited in docs/ can be checked.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dapb_mesh.bench.metrics import STEAL_DISTORTS
from dapb_mesh.testbed.tcpwork import HIST_EDGES_US

SELF_COALESCED = 0.7  # baseline segments per message per hop below this: Envoy batched on its own (a busy node)
BACKLOGGED = 0.9  # a stream that carried less than this share of what it offered was queued behind the link
DPI = 90

STREAM_SCENARIOS = ("stream-small", "grpc-stream", "mixed", "bulk", "stream-auto", "burst")
"""Scenarios whose messages flow one way on a stream: judged by segments per message against the achievable."""
COALESCING_SCENARIOS = ("stream-small", "grpc-stream", "mixed")
"""Small messages at a rate an idle node sends about one segment each: a baseline under that coalesced by itself."""

MODE_WORDS = {
    "baseline": "Envoy's defaults, nothing held",
    "passthrough": "programs attached, no knobs",
    "nagle": "Nagle forced, no bound",
    "dapb": "the formula's decision",
    "dapb-ml": "the predictor's decision",
    "agent": "the node agent, live",
}

GLOSSARY = (
    (
        "N_reduced",
        "8",
        "small packets not sent: messages minus data segments on the wire (counted by tc). Higher is better; "
        "negative when a message needs several segments (bulk).",
    ),
    (
        "eta (buffer efficiency)",
        "9",
        "payload bytes per data segment over the MSS: how full the segments leave, 0 to 1. Higher is better.",
    ),
    (
        "L_P (end-to-end latency)",
        "10",
        "one-way delay of every message from the sending app to the receiving app, across every hop, as the "
        "receiver measured it (p50, p99, worst; the plot shows its whole distribution). Lower is better; a held "
        "message may wait up to the bound T_eff on each hop.",
    ),
    (
        "L_added (added delay)",
        "11",
        "the mean one-way delay minus the baseline's in the same run (0 when lower): what the holding costs on "
        "average. Lower is better.",
    ),
    (
        "T_gain (throughput gain)",
        "12",
        "the relative change of payload throughput against the baseline (the paper names eq. 12 without printing "
        "it). Near 0 for a paced stream, whose rate the app sets; higher is better.",
    ),
    (
        "C_eBPF (eBPF overhead)",
        "13",
        "the run time of the DAPB programs per message, as the kernel accounts it (BPF_ENABLE_STATS). Lower is better.",
    ),
)


# ---------------------------------------------------------------------------------------------------------------
# Numbers for a reader


def num(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, thousands separated, never in exponent form; '-' if unknown."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def pct(value: float | None) -> str:
    """A share as a percentage: whole percents from 10 %, one decimal under, 0 % under 0.05 %."""
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) < 0.0005:
        return "0%"
    return f"{value:.0%}" if abs(value) >= 0.095 else f"{value:.1%}"


def count(value: float | None) -> str:
    """A count (segments, bytes): whole, thousands separated."""
    return "-" if value is None or not math.isfinite(value) else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    return f"{num(value)} ms"


# ---------------------------------------------------------------------------------------------------------------
# Reading a result


def _hops(result: dict) -> int:
    return max(result.get("workload", {}).get("hops", 1) or 1, 1)


def is_stream(result: dict) -> bool:
    """Messages flowing one way on a stream (not request/response): segments per message is the question."""
    if result.get("arch") == "raw":
        return result.get("workload", {}).get("mode") in ("stream", "burst")
    return result.get("scenario") in STREAM_SCENARIOS


def cpu_us_per_message(m: dict) -> float | None:
    """The pods' CPU (apps and sidecars) per message, in microseconds."""
    if m.get("cpu_seconds") is None or not m.get("messages"):
        return None
    return m["cpu_seconds"] / m["messages"] * 1e6


def achievable_per_message(result: dict, m: dict) -> float | None:
    """The fewest segments per message the payload allows: payload / MSS on every hop."""
    if not m.get("messages") or "ideal_segments" not in m:
        return None
    return m["ideal_segments"] * _hops(result) / m["messages"]


def offered_mbps(result: dict) -> float | None:
    """What a paced stream offered, in Mb/s (None: not a paced stream)."""
    w = result.get("workload", {})
    if not is_stream(result) or not w.get("rate") or not w.get("msg_size"):
        return None
    return w["rate"] * w["msg_size"] * (w.get("streams") or 1) * 8 / 1e6


def per_run(m: dict, key: str) -> list[float]:
    """A metric's value in every repeat, when the result recorded them ([] when it kept medians only)."""
    values = (m.get("per_run") or {}).get(key) or []
    return [v for v in values if v is not None]


# ---------------------------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class BoundVerdict:
    """A mode's worst delay against the bound it enforces. ``state``: kept, broken, unbounded, none (holds
    nothing) or unknown (no bound recorded)."""

    state: str
    text: str
    excess_ms: float | None = None  # how far the worst delay is past what the bound allows (broken only)


def bound_verdict(result: dict, mode: str) -> BoundVerdict:
    """Whether ``mode`` kept its bound: its worst delay against hops x T_eff, or, where the path itself is slower
    than that, against the baseline's worst delay in the same run (holding nothing) plus hops x T_eff."""
    m = result["modes"][mode]
    worst = m.get("latency_max_ms")
    base = result["modes"].get("baseline") if mode != "baseline" else None
    base_worst = base.get("latency_max_ms") if base else None
    hops = _hops(result)
    beside = f" (baseline: {_ms(base_worst)})" if base_worst is not None else ""
    if "enforced_bound_ms" not in m:
        return BoundVerdict("unknown", f"worst delay {_ms(worst)}{beside}; no bound recorded in this result")
    bound = m["enforced_bound_ms"]
    if bound is None:
        return BoundVerdict("unbounded", f"**no bound**: worst delay {_ms(worst)}{beside}")
    if bound == 0:
        return BoundVerdict("none", f"holds nothing (no bound needed): worst delay {_ms(worst)}{beside}")
    allowed = hops * bound
    per_hop = f"T_eff {num(bound)} ms" + (f" on each of {hops} hops = {num(allowed)} ms" if hops > 1 else "")
    enforcer = m.get("enforcer")
    by = f", enforced by the {enforcer}" if enforcer in ("kernel", "filter") else ""
    if worst is None:
        return BoundVerdict("unknown", f"bound {per_hop}{by}; no worst delay recorded")
    if worst <= allowed:
        return BoundVerdict(
            "kept",
            f"**bound kept**: worst delay {_ms(worst)} against {per_hop}{by} ({num(allowed - worst)} ms to spare)",
        )
    if base_worst is not None and worst <= base_worst + allowed:
        return BoundVerdict(
            "kept",
            f"**bound kept**: worst delay {_ms(worst)} is {num(worst - allowed)} ms past {per_hop}{by}, but within "
            f"the path's own worst delay (baseline, holding nothing: {_ms(base_worst)}) plus the bound",
        )
    limit = allowed + (base_worst or 0.0)
    against = f"the baseline's worst {_ms(base_worst)} + {per_hop}" if base_worst is not None else per_hop
    text = f"**bound broken** by {num(worst - limit)} ms: worst delay {_ms(worst)} against {against}{by}"
    offered = offered_mbps(result)
    carried = m.get("throughput_mbps")
    if offered and carried is not None and carried < BACKLOGGED * offered:
        text += (
            f"; the stream was backlogged (offered {num(offered)} Mb/s, carried {num(carried)} Mb/s), so its "
            "delays are the queue's, not only the hold's"
        )
    return BoundVerdict("broken", text, worst - limit)


def _against(value: float, base: float) -> str:
    """'80% fewer than the baseline's 0.834': ``value`` against the baseline's ``base``."""
    if base == 0:
        return f"the baseline's {num(base)}"
    change = value / base - 1
    if abs(change) < 0.005:
        return f"as many as the baseline's {num(base)}"
    return f"{pct(abs(change))} {'fewer' if change < 0 else 'more'} than the baseline's {num(base)}"


def segments_sentence(result: dict, mode: str) -> str:
    m = result["modes"][mode]
    spm = m.get("segments_per_message")
    if spm is None:
        return "segments not recorded"
    base = result["modes"].get("baseline") if mode != "baseline" else None
    if not is_stream(result):
        text = f"{num(spm)} segments per request"
        if base and base.get("segments_per_message") is not None:
            text += f", {_against(spm, base['segments_per_message'])}"
        return text
    text = f"{num(spm)} segments per message"
    ideal = achievable_per_message(result, m)
    if ideal:
        over = "all hops" if _hops(result) > 1 else "payload / MSS"
        text += f", {num(spm / ideal)}x the achievable {num(ideal)} ({over})"
    if base and base.get("segments_per_message") is not None:
        text += f", {_against(spm, base['segments_per_message'])}"
    return text


def lost_sentence(m: dict) -> str:
    lost = m.get("lost_bytes")
    parts = []
    if lost is None:
        parts.append("losses not recorded")
    elif lost == 0:
        parts.append("nothing lost")
    else:
        parts.append(f"**{lost:,.0f} bytes lost**")
    rr_lost = m.get("rr_lost_bytes")
    if rr_lost:
        parts.append(f"**{rr_lost:,.0f} bytes of the requests lost**")
    return ", ".join(parts)


def cpu_sentence(result: dict, mode: str) -> str:
    m = result["modes"][mode]
    cpu = cpu_us_per_message(m)
    if cpu is None:
        return "CPU not recorded"
    unit = "message" if is_stream(result) else "request"
    text = f"CPU {num(cpu)} us per {unit} in the pods"
    base = result["modes"].get("baseline") if mode != "baseline" else None
    base_cpu = cpu_us_per_message(base) if base else None
    if base_cpu:
        diff = cpu - base_cpu
        text += f" ({'+' if diff >= 0 else '-'}{num(abs(diff))} us, {'+' if diff >= 0 else '-'}"
        text += f"{pct(abs(diff) / base_cpu)} against baseline)"
    if m.get("proxy_cpu_us_per_message") is not None:
        text += f", {num(m['proxy_cpu_us_per_message'])} us of it in the sidecars"
    if m.get("ebpf_overhead_us"):
        text += f", {num(m['ebpf_overhead_us'])} us in the DAPB programs"
    return text


def requests_sentence(result: dict, mode: str) -> str | None:
    """Request latency: the requests beside the stream (mixed), or the requests themselves (req-resp, unary)."""
    m = result["modes"][mode]
    base = result["modes"].get("baseline") if mode != "baseline" else None
    if "rr_latency_p99_ms" in m:
        keys, what = ("rr_latency_p50_ms", "rr_latency_p99_ms", "rr_latency_max_ms"), "requests beside the stream"
    elif not is_stream(result):
        keys, what = ("latency_p50_ms", "latency_p99_ms", "latency_max_ms"), "request latency"
    else:
        return None
    text = f"{what}: p50 {num(m.get(keys[0]))}, p99 {num(m.get(keys[1]))}, worst {_ms(m.get(keys[2]))}"
    if base:
        text += f" (baseline {num(base.get(keys[0]))} / {num(base.get(keys[1]))} / {_ms(base.get(keys[2]))})"
    return text


def mode_verdict(result: dict, mode: str) -> str:
    """One line per mode, in plain words: the bound, segments, losses, requests beside, CPU."""
    m = result["modes"][mode]
    bound = bound_verdict(result, mode)
    requests = requests_sentence(result, mode)
    held = bound.text
    if bound.state == "none" and not is_stream(result):  # the request latency below says the rest
        held = "holds nothing (no bound needed)"
    parts = [held, segments_sentence(result, mode), lost_sentence(m)]
    if requests:
        parts.append(requests)
    parts.append(cpu_sentence(result, mode))
    words = MODE_WORDS.get(mode)
    return f"- **{mode}**{f' ({words})' if words else ''}: " + "; ".join(parts) + "."


def distortions(result: dict) -> list[str]:
    """Plain-language flags for what could distort a run: CPU steal, a busy node, a baseline that coalesced."""
    flags = []
    hops = _hops(result)
    base = result["modes"].get("baseline")
    scenario = result.get("scenario", "")
    if base and base.get("segments_per_message") and scenario in COALESCING_SCENARIOS:
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


def machine_lines(result: dict) -> list[str]:
    """The machine's part: a baseline that coalesced by itself, CPU busy and steal, repeats and spread."""
    lines = [f"- **Check:** {flag}" for flag in distortions(result)]
    modes = result["modes"]
    base = modes.get("baseline")
    if base and base.get("segments_per_message") and result.get("scenario") in COALESCING_SCENARIOS:
        per_hop = base["segments_per_message"] / _hops(result)
        if per_hop >= SELF_COALESCED:
            lines.append(
                f"- **Machine:** the baseline did not coalesce by itself ({per_hop:.2f} segments per message per "
                "hop): a ratio to baseline means what it says."
            )
    steals = {mode: m.get("cpu_steal") for mode, m in modes.items()}
    if all(v is None for v in steals.values()):
        lines.append("- **Machine:** node CPU busy and CPU steal were not recorded in this result (an older bench).")
    else:
        cells = ", ".join(
            f"{mode} {pct(m.get('node_cpu_busy'))} busy / {pct(m.get('cpu_steal'))} steal" for mode, m in modes.items()
        )
        worst = max(v for v in steals.values() if v is not None)
        calm = "under" if worst <= STEAL_DISTORTS else "**over**"
        lines.append(
            f"- **Machine:** node CPU {cells}; the most stolen, {pct(worst)}, is {calm} the {STEAL_DISTORTS:.0%} "
            "that distorts a run."
        )
    repeats = sorted({m.get("repeats", 1) for m in modes.values()})
    spread = _spread_text(modes)
    runs = "/".join(str(r) for r in repeats)
    if repeats == [1]:
        lines.append(
            "- **Repeats:** 1 run per mode, so no spread: a difference of a few percent between modes may be the "
            "machine's noise. Repeat (`--repeat 3`) or compare runs (`dapb bench compare`)."
        )
    else:
        lines.append(
            f"- **Repeats:** {runs} interleaved runs per mode; medians reported (the worst delay too: the median "
            f"of the runs' worst; the delay plot adds up every run's messages). {spread}"
        )
    return lines


SPREAD_KEYS = (
    ("segments_per_message", "segments per message"),
    ("latency_p99_ms", "p99 delay (ms)"),
    ("latency_max_ms", "worst delay (ms)"),
)


def _spread_text(modes: dict) -> str:
    found = [
        f"{mode} {label} {num(min(values))}-{num(max(values))}"
        for mode, m in modes.items()
        for key, label in SPREAD_KEYS
        if len(values := per_run(m, key)) > 1
    ]
    if not found:
        return "Spread: not recorded in this result (it keeps medians only)."
    return "Spread over the runs: " + "; ".join(found) + "."


def workload_line(result: dict) -> str:
    w = result.get("workload", {})
    parts = []
    if "messages" in w:
        size = f" of {w['msg_size']:,} B" if "msg_size" in w else ""
        rate = f" at {w['rate']:,.0f} msg/s" if w.get("rate") else ""
        streams = w.get("streams", 1) or 1
        on = (f" on {streams} streams" if streams > 1 else " on one stream") if is_stream(result) else ""
        noun = "messages" if is_stream(result) else "requests"
        parts.append(f"{w['messages']:,} {noun}{size}{rate}{on}")
    if w.get("connections", 1) > 1:
        parts.append(f"{w['connections']} connections")
    if "mtls" in w:
        parts.append("mutual TLS" if w["mtls"] else "plaintext")
    impairment = result.get("impairment")
    parts.append(f"impairment: {impairment}" if impairment and impairment != "none" else "no impairment")
    if result.get("sensitivity"):
        parts.append(f"traffic class {result['sensitivity']}")
    hop = result.get("hop")
    if hop and hop.get("rtt_ms") is not None:
        parts.append(f"hop RTT {num(hop['rtt_ms'])} ms, jitter {num(hop.get('jitter_ms'))} ms")
    hops = _hops(result)
    if hops > 1:
        parts.append(f"{hops} network hops")
    return "Workload: " + ", ".join(parts) + "."


# ---------------------------------------------------------------------------------------------------------------
# Tables


def measured_table(result: dict) -> list[str]:
    stream = is_stream(result)
    noun = "message" if stream else "request"
    modes = result["modes"]
    columns: list[tuple[str, Callable[[dict], str]]] = [
        (f"segments per {noun}", lambda m: num(m.get("segments_per_message"))),
    ]
    if stream:
        columns.append((f"achievable per {noun}", lambda m: num(achievable_per_message(result, m))))
    columns += [
        ("small segments", lambda m: count(m.get("small_segments"))),
        ("p50 delay (ms)", lambda m: num(m.get("latency_p50_ms"))),
        ("p99 delay (ms)", lambda m: num(m.get("latency_p99_ms"))),
        ("worst delay (ms)", lambda m: num(m.get("latency_max_ms"))),
        ("bound (ms)", lambda m: _bound_cell(result, m)),
        ("lost (bytes)", lambda m: count(m.get("lost_bytes"))),
        ("throughput (Mb/s)", lambda m: num(m.get("throughput_mbps"))),
        (f"CPU per {noun}, pods (us)", lambda m: num(cpu_us_per_message(m))),
        (f"CPU per {noun}, sidecars (us)", lambda m: num(m.get("proxy_cpu_us_per_message"))),
    ]
    if any("rr_latency_p99_ms" in m for m in modes.values()):
        columns += [
            ("requests p50 (ms)", lambda m: num(m.get("rr_latency_p50_ms"))),
            ("requests p99 (ms)", lambda m: num(m.get("rr_latency_p99_ms"))),
        ]
    if any(m.get("cpu_steal") is not None for m in modes.values()):
        columns += [
            ("node CPU busy", lambda m: pct(m.get("node_cpu_busy"))),
            ("CPU steal", lambda m: pct(m.get("cpu_steal"))),
        ]
    lines = [
        "| mode | " + " | ".join(title for title, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [f"| {mode} | " + " | ".join(cell(m) for _, cell in columns) + " |" for mode, m in modes.items()]
    return lines


def _bound_cell(result: dict, m: dict) -> str:
    if "enforced_bound_ms" not in m:
        return "-"
    bound = m["enforced_bound_ms"]
    if bound is None:
        return "none"
    hops = _hops(result)
    return num(bound) + (f" x {hops} hops" if hops > 1 and bound else "")


def six_metrics_table(result: dict) -> list[str]:
    noun = "message" if is_stream(result) else "request"
    columns: list[tuple[str, Callable[[dict], str]]] = [
        ("N_reduced, eq. 8 (segments)", lambda m: count(m.get("n_reduced"))),
        ("eta, eq. 9", lambda m: num(m.get("buffer_efficiency"), 2)),
        ("L_P, eq. 10: mean delay (ms)", lambda m: num(m.get("latency_mean_ms"))),
        ("L_added, eq. 11 (ms)", lambda m: num(m.get("added_latency_ms"))),
        ("T_gain, eq. 12", lambda m: pct(m.get("throughput_gain"))),
        (f"C_eBPF, eq. 13 (us per {noun})", lambda m: num(m.get("ebpf_overhead_us"))),
    ]
    lines = [
        "| mode | " + " | ".join(title for title, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [f"| {mode} | " + " | ".join(cell(m) for _, cell in columns) + " |" for mode, m in result["modes"].items()]
    return lines


def glossary_lines() -> list[str]:
    return [f"- **{name}** (eq. {eq}): {text}" for name, eq, text in GLOSSARY]


# ---------------------------------------------------------------------------------------------------------------
# Plot data: what each figure draws, from the JSON alone (tested without pixels)


def ccdf_series(m: dict) -> tuple[list[float], list[float]] | None:
    """The delay CCDF of one mode, as drawn: (delay in ms, fraction of messages delayed at least that long).

    Built from the receiver's log2 histogram (bin i holds delays under HIST_EDGES_US[i] and at least the edge
    below). It starts at 1 at the lower edge of the first occupied bin, steps at every bin edge under the worst
    delay, and ends at the worst delay itself at 1 / messages: nothing is drawn past what was measured. With
    repeats the worst delay is the median of the runs' worst; where the histogram holds a message past it, the
    series ends at that bin's lower edge instead. None when the result has no histogram."""
    hist = m.get("delay_hist_us") or []
    total = sum(hist)
    if not total:
        return None
    edges_ms = [0.0] + [e / 1000 for e in HIST_EDGES_US]  # lower edge of bin i: edges_ms[i]
    occupied = [i for i, count in enumerate(hist) if count]
    first, last = occupied[0], occupied[-1]
    floor = edges_ms[1] / 2  # delays under the first edge (1 us) are drawn at 0.5 us: a log axis has no 0
    worst = m.get("latency_max_ms")
    measured = worst is not None and worst >= edges_ms[last]
    end = max(worst if measured else edges_ms[last], floor)
    start = min(edges_ms[first] if first else floor, end)
    xs, ys = [start], [1.0]
    at_least = total
    for i in range(first, last):
        at_least -= hist[i]
        edge = edges_ms[i + 1]
        if start < edge < end:
            xs.append(edge)
            ys.append(at_least / total)
    xs.append(end)
    ys.append((1 if measured else hist[last]) / total)  # at the worst delay: the worst message alone
    return xs, ys


def bound_lines(result: dict) -> dict[str, float]:
    """Per bounded mode, the bound its delays are judged against in the plot: hops x T_eff (ms)."""
    hops = _hops(result)
    return {
        mode: hops * m["enforced_bound_ms"]
        for mode, m in result["modes"].items()
        if m.get("enforced_bound_ms") not in (None, 0, 0.0)
    }


def sweep_series(result: dict, key: str) -> dict[str, tuple[list[float], list[float]]]:
    """For a rate sweep, one line per mode across the rates: (rates, the metric at each rate). ``key`` may be
    'achievable' for the payload / MSS line or 'cpu_us_per_message'."""
    sweep = result.get("sweep") or {}
    rates = sorted(sweep, key=float)
    modes = list(sweep[rates[0]]) if rates else []
    out: dict[str, tuple[list[float], list[float]]] = {}
    for mode in modes:
        xs, ys = [], []
        for r in rates:
            m = sweep[r].get(mode)
            if m is None:
                continue
            value = cpu_us_per_message(m) if key == "cpu_us_per_message" else m.get(key)
            if value is not None:
                xs.append(float(r))
                ys.append(value)
        out[mode] = (xs, ys)
    if key == "segments_per_message" and rates:
        first = modes[0]
        pairs = [(float(r), achievable_per_message(result, sweep[r][first])) for r in rates]
        kept = [(x, y) for x, y in pairs if y]
        out["achievable (payload / MSS)"] = ([x for x, _ in kept], [y for _, y in kept])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Figures


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(names) -> dict[str, str]:
    cycle = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)


def delays_figure(result: dict, path: Path, title: str) -> bool:
    """Delays against the bound: each mode's CCDF up to its worst delay (a dot), each bound a dashed line."""
    series = {mode: s for mode, m in result["modes"].items() if (s := ccdf_series(m)) is not None}
    if not series:
        return False
    plt = pyplot()
    colors = _colors(result["modes"])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for mode, (xs, ys) in series.items():
        ax.step(xs, ys, where="post", color=colors[mode], label=f"{mode}: worst {num(xs[-1])} ms")
        ax.plot([xs[-1]], [ys[-1]], "o", color=colors[mode])
    hops = _hops(result)
    for mode, bound in bound_lines(result).items():
        what = f"T_eff x {hops} hops" if hops > 1 else "T_eff"
        ax.axvline(bound, color=colors[mode], linestyle="--", label=f"{mode} bound: {what} = {num(bound)} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("one-way delay per message (ms)")
    ax.set_ylabel("share of messages delayed at least this long")
    ax.set_title(f"{title}: delays against the bound")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def segments_figure(result: dict, path: Path, title: str) -> bool:
    """Segments per message (request) per mode, the achievable drawn as a line for streams."""
    modes = {mode: m for mode, m in result["modes"].items() if m.get("segments_per_message") is not None}
    if not modes:
        return False
    plt = pyplot()
    colors = _colors(result["modes"])
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(modes)
    values = [modes[n]["segments_per_message"] for n in names]
    bars = ax.bar(names, values, color=[colors[n] for n in names])
    ax.bar_label(bars, labels=[num(v) for v in values], fontsize=8)
    noun = "message" if is_stream(result) else "request"
    if is_stream(result):
        ideal = achievable_per_message(result, next(iter(modes.values())))
        if ideal:
            ax.axhline(ideal, color="k", linestyle="--", label=f"achievable: payload / MSS = {num(ideal)}")
            ax.legend(fontsize=8)
    ax.set_ylabel(f"data segments per {noun}")
    ax.set_title(f"{title}: segments against the achievable")
    ax.grid(True, axis="y", alpha=0.25)
    _save(fig, path)
    return True


def segment_sizes(modes: dict[str, dict], path: Path, title: str) -> bool:
    """Bars of data segments per payload-size bin, per mode (counted by tc). False when no mode has counts."""
    from dapb_mesh.kernel.layout import size_bin_edges

    counted = {m: v["segment_size_hist"] for m, v in modes.items() if any(v.get("segment_size_hist") or [])}
    if not counted:
        return False
    plt = pyplot()
    colors = _colors(modes)
    edges = size_bin_edges()
    labels = [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)] + [f">={edges[-1]}"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(counted)
    for i, (mode, hist) in enumerate(counted.items()):
        ax.bar([x + i * width for x in range(len(hist))], hist, width=width, label=mode, color=colors[mode])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=30, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("segment payload (bytes)")
    ax.set_ylabel("data segments")
    ax.set_title(f"{title}: segment sizes")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def cpu_figure(result: dict, path: Path, title: str) -> bool:
    """CPU per message per mode: the pods' and the sidecars', the baseline's as a line."""
    modes = {mode: m for mode, m in result["modes"].items() if cpu_us_per_message(m) is not None}
    if not modes:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(modes)
    pods = [cpu_us_per_message(modes[n]) for n in names]
    sidecars = [modes[n].get("proxy_cpu_us_per_message") for n in names]
    xs = range(len(names))
    bars = ax.bar([x - 0.2 for x in xs], pods, width=0.4, label="pods (apps and sidecars)")
    ax.bar_label(bars, labels=[num(v) for v in pods], fontsize=8)
    if any(v is not None for v in sidecars):
        bars = ax.bar([x + 0.2 for x in xs], [v or 0 for v in sidecars], width=0.4, label="sidecars alone")
        ax.bar_label(bars, labels=[num(v) for v in sidecars], fontsize=8)
    if "baseline" in modes:
        ax.axhline(cpu_us_per_message(modes["baseline"]), color="k", linestyle=":", label="baseline, pods")
    noun = "message" if is_stream(result) else "request"
    ax.set_xticks(list(xs), names)
    ax.set_ylabel(f"CPU per {noun} (us)")
    ax.set_title(f"{title}: CPU per {noun}")
    ax.grid(True, axis="y", alpha=0.25)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def sweep_figure(result: dict, path: Path, title: str) -> bool:
    """For a rate sweep, one line per mode across the rates: segments per message (with the achievable), worst
    delay (with each bound) and CPU per message."""
    if not result.get("sweep"):
        return False
    plt = pyplot()
    colors = _colors([*result["modes"], "achievable (payload / MSS)"])
    colors["achievable (payload / MSS)"] = "k"
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in (
        (axes[0], "segments_per_message", "segments per message"),
        (axes[1], "latency_max_ms", "worst one-way delay (ms)"),
        (axes[2], "cpu_us_per_message", "CPU per message, pods (us)"),
    ):
        for mode, (xs, ys) in sweep_series(result, key).items():
            style = "--" if mode.startswith("achievable") else "-"
            ax.plot(xs, ys, style, marker="o", color=colors.get(mode), label=mode)
        if key == "latency_max_ms":
            for mode, bound in bound_lines(result).items():
                ax.axhline(bound, color=colors.get(mode), linestyle=":", label=f"{mode} bound {num(bound)} ms")
        ax.set_xscale("log")
        ax.set_xlabel("messages per second")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: across the rates")
    _save(fig, path)
    return True


def spread_series(modes: dict[str, dict], key: str) -> dict[str, list[float]]:
    """Per mode, a metric's value in every repeat (modes without recorded runs left out)."""
    return {mode: values for mode, m in modes.items() if len(values := per_run(m, key)) > 1}


def spread_figure(panels: list[tuple[str, dict[str, list[float]]]], path: Path, title: str) -> bool:
    """One panel per (label, per-mode runs): every run a dot, the median a bar."""
    panels = [(label, runs) for label, runs in panels if runs]
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (label, runs) in zip(axes[0], panels, strict=True):
        colors = _colors(runs)
        for i, (mode, values) in enumerate(runs.items()):
            ax.plot([i] * len(values), values, "o", alpha=0.6, color=colors[mode])
            ax.hlines(statistics.median(values), i - 0.25, i + 0.25, color=colors[mode])
        ax.set_xticks(range(len(runs)), list(runs), fontsize=8)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.25)
    fig.suptitle(f"{title}: every run (dots) and the median (bar)")
    _save(fig, path)
    return True


# ---------------------------------------------------------------------------------------------------------------
# The report


def _title(result: dict) -> str:
    return f"{result.get('scenario', '?')} ({result.get('arch', '?')})"


def scenario_markdown(result: dict, figures: list[tuple[str, str]]) -> str:
    """The Markdown page of a scenario run; ``figures`` are (caption, file) of the plots made beside it."""
    modes = result["modes"]
    lines = [
        f"# dapb bench: {_title(result)}",
        "",
        workload_line(result),
        "",
        "## Verdicts",
        "",
        *(mode_verdict(result, mode) for mode in modes),
        "",
        *machine_lines(result),
        "",
        "A bound is kept when the worst delay stays within T_eff on every hop, or within the baseline's own worst "
        "delay in the same run (the path, holding nothing) plus that. The achievable is payload / MSS: every "
        "segment full.",
        "",
        "## Measured",
        "",
        *measured_table(result),
        "",
        "## The paper's six metrics",
        "",
        *six_metrics_table(result),
        "",
        *glossary_lines(),
        "",
    ]
    if result.get("sweep"):
        rates = ", ".join(f"{float(r):,.0f}" for r in sorted(result["sweep"], key=float))
        lines += [f"Rates swept (msg/s): {rates}; the tables above are the last rate's.", ""]
    if figures:
        lines += ["## Plots", ""]
        for caption, name in figures:
            lines += [f"![{caption}]({name})", ""]
    lines += [
        "Segments are counted by the kernel (tc at the class's DSCP where they leave each sending pod, or",
        "TCP_INFO); delays are measured per message by the receiver; CPU seconds come from the pods' cgroups;",
        "C_eBPF is the run time of the DAPB programs as the kernel accounts it (BPF_ENABLE_STATS).",
        "Rebuild this page from its JSON: `dapb bench report result.json --out DIR`.",
    ]
    return "\n".join(lines) + "\n"


def write_figures(result: dict, directory: Path) -> list[tuple[str, str]]:
    """Every plot a scenario result supports, in ``directory``; returns (caption, file name) of those made."""
    title = _title(result)
    made = []
    if delays_figure(result, directory / "latency_cdf.png", title):
        made.append(("delays against the bound", "latency_cdf.png"))
    if segments_figure(result, directory / "segments.png", title):
        made.append(("segments against the achievable", "segments.png"))
    if segment_sizes(result["modes"], directory / "segment_sizes.png", title):
        made.append(("segment sizes", "segment_sizes.png"))
    if cpu_figure(result, directory / "cpu.png", title):
        made.append(("CPU per message", "cpu.png"))
    if sweep_figure(result, directory / "sweep.png", title):
        made.append(("across the rates", "sweep.png"))
    panels = [(label, spread_series(result["modes"], key)) for key, label in SPREAD_KEYS]
    if spread_figure(panels, directory / "spread.png", title):
        made.append(("spread over the repeats", "spread.png"))
    return made


def is_clients(result: dict) -> bool:
    return "clients" in result


def write_report(result: dict, directory: Path) -> Path:
    """report.md, result.json and PNG plots in ``directory``, from ``result`` alone; returns the Markdown path.
    A --client result gets its own page (clients.client_report) and the spread of its runs."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "result.json").write_text(json.dumps(result, indent=2))
    if is_clients(result):
        from dapb_mesh.bench.clients import client_report

        text = client_report(result)
        panels = [
            (f"{load}: {label}", spread_series(per_mode, key))
            for load, per_mode in result["clients"].items()
            for key, label in (("p99_ms", "p99 (ms)"), ("req_per_s", "requests/s"))
        ]
        if spread_figure(panels, directory / "spread.png", "real clients"):
            text += "\n![every run's p99 and requests/s](spread.png)\n"
    else:
        text = scenario_markdown(result, write_figures(result, directory))
    path = directory / "report.md"
    path.write_text(text)
    return path


def load_result(path: Path) -> dict:
    """A bench result from its JSON; ValueError names the file and what is wrong with it."""
    try:
        result = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(result, dict) or not (
        isinstance(result.get("modes"), dict) or isinstance(result.get("clients"), dict)
    ):
        raise ValueError(f"{path} is not a dapb bench result (no 'modes' or 'clients')")
    bad = [
        mode
        for per_mode in ([result["modes"]] if "modes" in result else result["clients"].values())
        for mode, m in (per_mode.items() if isinstance(per_mode, dict) else [("?", None)])
        if not isinstance(m, dict)
    ]
    if bad:
        raise ValueError(f"{path}: mode(s) {', '.join(bad)} are not objects of metrics")
    return result
