"""Runs compared (`dapb bench compare A.json B.json ...`): every metric of every mode the runs share, the difference
from the first run with the spread of each side, and whether that difference is within the machine's noise.

A side is one result JSON or several pooled under one label (``before=a1.json before=a2.json``): each file is
one run (its median when it repeated), and a file that recorded every repeat (``per_run``, as --client results
do) gives those runs. A side's noise is the spread of its runs as the do-no-harm verdict measures it (the median
absolute deviation scaled to a standard deviation, clients.NOISE_SIGMAS of them); with fewer than MIN_RUNS runs
on either side nobody can tell noise from a difference, and the comparison says so instead of guessing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from dapb_mesh.bench.clients import MIN_RUNS_FOR_SPREAD as MIN_RUNS
from dapb_mesh.bench.clients import NOISE_SIGMAS, spread
from dapb_mesh.bench.report import cpu_us_per_message, load_result, num, pyplot

SCENARIO_METRICS = (
    ("segments_per_message", "segments per message", ""),
    ("latency_p50_ms", "p50 delay", " ms"),
    ("latency_p99_ms", "p99 delay", " ms"),
    ("latency_max_ms", "worst delay", " ms"),
    ("lost_bytes", "bytes lost", " B"),
    ("throughput_mbps", "throughput", " Mb/s"),
    ("cpu_us_per_message", "CPU per message, pods", " us"),
    ("proxy_cpu_us_per_message", "CPU per message, sidecars", " us"),
    ("rr_latency_p99_ms", "requests beside, p99", " ms"),
)
CLIENT_METRICS = (
    ("p50_ms", "p50", " ms"),
    ("p90_ms", "p90", " ms"),
    ("p99_ms", "p99", " ms"),
    ("max_ms", "max", " ms"),
    ("req_per_s", "requests/s", ""),
    ("segments_per_request", "segments per request", ""),
    ("errors", "errors", ""),
    ("cpu_steal", "CPU steal", ""),
)
UNITS = {key: unit for key, _, unit in (*SCENARIO_METRICS, *CLIENT_METRICS)}
LABELS = {key: label for key, label, _ in (*SCENARIO_METRICS, *CLIENT_METRICS)}


@dataclass
class Side:
    """One side of a comparison: a label and the runs pooled under it, as (section, mode, metric) -> values."""

    label: str
    files: list[Path] = field(default_factory=list)
    runs: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    workloads: dict[str, dict] = field(default_factory=dict)  # section -> workload, of the first file that has it
    medians: set[tuple[str, str, str]] = field(default_factory=set)  # keys some file gave only its median of


@dataclass(frozen=True)
class Stat:
    """A side's runs of one metric: their median, range and scaled spread (None: too few runs to know)."""

    median: float
    low: float
    high: float
    runs: int
    sigma: float | None
    medians: bool = False  # some values are a file's median of its repeats, not single runs

    @classmethod
    def of(cls, values: list[float], medians: bool = False) -> Stat:
        return cls(statistics.median(values), min(values), max(values), len(values), spread(values), medians)

    def text(self, unit: str = "") -> str:
        spread = f" [{num(self.low)}-{num(self.high)}]" if self.runs > 1 else ""
        what = ("file's median" if self.runs == 1 else "files' medians") if self.medians else "run"
        return (
            f"{num(self.median)}{unit}{spread} ({self.runs} {what}{'s' if self.runs > 1 and not self.medians else ''})"
        )


@dataclass(frozen=True)
class Difference:
    """One metric of one mode: the other side's median minus the reference's, and the noise it is judged by."""

    section: str
    mode: str
    metric: str
    reference: Stat
    other: Stat
    diff: float
    relative: float | None  # diff / |reference median|; None when the reference is 0
    noise: float | None  # NOISE_SIGMAS x the two sides' spreads combined; None: a side has too few runs
    verdict: str  # "within noise", "beyond noise", "spread unknown"


@dataclass
class Comparison:
    """Everything one side differs by from the reference side."""

    reference: str
    other: str
    differences: list[Difference]
    only_reference: list[str]  # "section: mode" found in the reference only
    only_other: list[str]
    workload_notes: list[str]  # what the workloads of shared sections differ in


def sections(result: dict) -> dict[str, tuple[dict, dict[str, dict]]]:
    """A result's comparable parts: section name -> (workload, mode -> metrics). A --client result has one
    section per load; a scenario, one per rate swept (or its one rate)."""
    workload = result.get("workload", {})
    if "clients" in result:
        return {label: (workload, per_mode) for label, per_mode in result["clients"].items()}
    where = f"{result.get('scenario', '?')} {result.get('arch', '?')}"
    size = f", {workload['msg_size']:,} B" if "msg_size" in workload else ""
    rates = result.get("sweep") or {}
    if rates:
        return {f"{where}{size} at {float(r):,.0f}/s": (workload, per_mode) for r, per_mode in rates.items()}
    rate = f" at {workload['rate']:,.0f}/s" if workload.get("rate") else ""
    return {f"{where}{size}{rate}": (workload, result["modes"])}


def runs_of(m: dict, metric: str) -> tuple[list[float], bool]:
    """A mode's runs of one metric: every repeat when recorded (per_run), else the one value it reports (a median
    when it repeated: then True)."""
    recorded = [v for v in (m.get("per_run") or {}).get(metric) or [] if v is not None]
    if recorded:
        return recorded, False
    value = cpu_us_per_message(m) if metric == "cpu_us_per_message" else m.get(metric)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return [], False
    return [value], (m.get("repeats") or m.get("runs") or 1) > 1


def parse_runs(args: list[str]) -> list[tuple[str, Path]]:
    """``path`` or ``label=path`` per argument, in order; an existing file is always a path, whatever its name.
    Files under one label pool as one side; a file named without a label is a side of its own (the same file
    twice: two sides, '#2' added to the second's label)."""
    out: list[tuple[str, Path]] = []
    for arg in args:
        if "=" in arg and not Path(arg).exists():
            label, path = arg.split("=", 1)
            if not label or not path:
                raise ValueError(f"{arg!r}: give LABEL=PATH or a path")
            out.append((label, Path(path)))
        else:
            taken = sum(1 for label, _ in out if label == arg or label.startswith(f"{arg} #"))
            out.append((arg if not taken else f"{arg} #{taken + 1}", Path(arg)))
    return out


def load_sides(args: list[str]) -> list[Side]:
    """The sides, in the order their labels first appear; ValueError names a file that is no bench result."""
    sides: dict[str, Side] = {}
    for label, path in parse_runs(args):
        if not path.is_file():
            raise ValueError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
        result = load_result(path)
        side = sides.setdefault(label, Side(label))
        side.files.append(path)
        kind = CLIENT_METRICS if "clients" in result else SCENARIO_METRICS
        for section, (workload, per_mode) in sections(result).items():
            side.workloads.setdefault(section, workload)
            for mode, m in per_mode.items():
                for metric, _, _ in kind:
                    values, median = runs_of(m, metric)
                    if values:
                        side.runs.setdefault((section, mode, metric), []).extend(values)
                    if median:
                        side.medians.add((section, mode, metric))
    if len(sides) < 2:
        raise ValueError("give at least two runs to compare (or two labels: before=A.json after=B.json)")
    return list(sides.values())


def difference(ref: Side, other: Side, key: tuple[str, str, str]) -> Difference:
    """One metric of one mode, ``other`` against ``ref``."""
    section, mode, metric = key
    a, b = Stat.of(ref.runs[key], key in ref.medians), Stat.of(other.runs[key], key in other.medians)
    diff = b.median - a.median
    relative = diff / abs(a.median) if a.median else None
    if a.sigma is None or b.sigma is None:
        return Difference(section, mode, metric, a, b, diff, relative, None, "spread unknown")
    noise = NOISE_SIGMAS * math.hypot(a.sigma, b.sigma)
    verdict = "within noise" if abs(diff) <= noise else "beyond noise"
    return Difference(section, mode, metric, a, b, diff, relative, noise, verdict)


def compare(sides: list[Side]) -> list[Comparison]:
    """Every side after the first against the first."""
    ref = sides[0]
    out = []
    for other in sides[1:]:
        shared = [key for key in ref.runs if key in other.runs]
        differences = [difference(ref, other, key) for key in shared]
        only_ref, only_other = _missing(ref, other), _missing(other, ref)
        notes = []
        for section in sorted({s for s, _, _ in shared}):
            w1, w2 = ref.workloads.get(section, {}), other.workloads.get(section, {})
            changed = [
                f"{k} {w1.get(k)} vs {w2.get(k)}" for k in sorted(w1.keys() | w2.keys()) if w1.get(k) != w2.get(k)
            ]
            if changed:
                notes.append(f"{section}: the workloads differ: {', '.join(changed)}")
        out.append(
            Comparison(
                ref.label,
                other.label,
                differences,
                only_ref,
                only_other,
                notes,
            )
        )
    return out


def _missing(side: Side, other: Side) -> list[str]:
    """'section (mode, mode)' for every mode of ``side`` that ``other`` lacks, per section."""
    theirs = {(s, m) for s, m, _ in other.runs}
    missing: dict[str, list[str]] = {}
    for s, m, _ in side.runs:
        if (s, m) not in theirs and m not in missing.setdefault(s, []):
            missing[s].append(m)
    return [f"{s} ({', '.join(modes)})" for s, modes in missing.items() if modes]


def _signed(value: float, unit: str) -> str:
    return f"{'+' if value >= 0 else '-'}{num(abs(value))}{unit}"


def diff_text(d: Difference) -> str:
    unit = UNITS.get(d.metric, "")
    rel = f" ({'+' if d.relative >= 0 else '-'}{abs(d.relative):.1%})" if d.relative is not None else ""
    return _signed(d.diff, unit) + rel


def noise_text(d: Difference) -> str:
    return "-" if d.noise is None else f"±{num(d.noise)}{UNITS.get(d.metric, '')}"


def summary(c: Comparison) -> list[str]:
    """The plain-words head of a comparison: what is beyond noise, how much is within, what cannot be told."""
    beyond = [d for d in c.differences if d.verdict == "beyond noise"]
    within = [d for d in c.differences if d.verdict == "within noise"]
    unknown = [d for d in c.differences if d.verdict == "spread unknown"]
    lines = [f"{c.other} against {c.reference}:"]
    if not c.differences:
        lines.append("- nothing in common to compare (no section and mode in both)")
    elif beyond:
        lines.append(
            f"- beyond noise ({len(beyond)}): "
            + "; ".join(f"{d.section}, {d.mode}: {LABELS[d.metric]} {diff_text(d)}" for d in beyond)
        )
    else:
        lines.append("- beyond noise: none")
    if c.differences:
        lines.append(f"- within noise: {len(within)}")
    if unknown:
        lines.append(
            f"- spread unknown ({len(unknown)}): a side has fewer than {MIN_RUNS} runs of these, so a difference "
            "cannot be told from noise; repeat the run (--repeat) or pool files under a label (before=a.json ...)"
        )
    lines += [f"- only in {c.reference}: {', '.join(c.only_reference)}"] if c.only_reference else []
    lines += [f"- only in {c.other}: {', '.join(c.only_other)}"] if c.only_other else []
    lines += [f"- note: {note}" for note in c.workload_notes]
    return lines


def markdown(comparisons: list[Comparison], figures: list[str]) -> str:
    lines = ["# dapb bench compare", ""]
    for c, figure in zip(comparisons, figures, strict=True):
        head = summary(c)
        lines += [f"## {head[0].rstrip(':')}", "", *head[1:], ""]
        if c.differences:
            lines += [
                f"| section | mode | metric | {c.reference} | {c.other} | difference | noise | verdict |",
                "|---|---|---|---|---|---:|---:|---|",
            ]
            for d in c.differences:
                unit = UNITS.get(d.metric, "")
                lines.append(
                    f"| {d.section} | {d.mode} | {LABELS[d.metric]} | {d.reference.text(unit)} | {d.other.text(unit)} "
                    f"| {diff_text(d)} | {noise_text(d)} | {d.verdict} |"
                )
            lines.append("")
        if figure:
            lines += [f"![{c.other} against {c.reference}]({figure})", ""]
    lines += [
        f"Difference: the median of the second side minus the first's. Noise: {NOISE_SIGMAS:g} x the two sides' "
        "spreads combined (each the median absolute deviation of its runs, scaled to a standard deviation); a side "
        f"needs {MIN_RUNS} runs to have one. Values in brackets: the lowest and highest run.",
    ]
    return "\n".join(lines) + "\n"


def figure_series(c: Comparison) -> list[tuple[str, float, float | None, str]]:
    """What the comparison plot draws: (row label, relative difference, relative noise or None, verdict), for
    every difference whose reference is not 0."""
    rows = []
    for d in c.differences:
        if d.relative is None:
            continue
        noise = None if d.noise is None else d.noise / abs(d.reference.median)
        rows.append((f"{d.section} | {d.mode} | {LABELS[d.metric]}", d.relative, noise, d.verdict))
    return rows


def write_figure(c: Comparison, path: Path) -> bool:
    rows = figure_series(c)
    if not rows:
        return False
    plt = pyplot()
    colors = {"within noise": "#2ca02c", "beyond noise": "#d62728", "spread unknown": "#7f7f7f"}
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.6))
    for i, (_, rel, noise, verdict) in enumerate(rows):
        ax.errorbar(
            [rel * 100],
            [i],
            xerr=None if noise is None else [[noise * 100], [noise * 100]],
            fmt="o",
            color=colors[verdict],
            capsize=3,
        )
    for verdict, color in colors.items():
        ax.plot([], [], "o", color=color, label=verdict)
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [label for label, *_ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{c.other} against {c.reference}: difference (% of {c.reference}), bars: the noise")
    ax.grid(True, axis="x", alpha=0.25)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(comparisons: list[Comparison], directory: Path) -> Path:
    """compare.md and one plot per compared side in ``directory``; returns the Markdown path."""
    directory.mkdir(parents=True, exist_ok=True)
    figures = []
    for i, c in enumerate(comparisons, start=1):
        name = f"compare-{i}.png"
        figures.append(name if write_figure(c, directory / name) else "")
    path = directory / "compare.md"
    path.write_text(markdown(comparisons, figures))
    return path
