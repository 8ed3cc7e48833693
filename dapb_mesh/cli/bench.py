"""`dapb bench`: modes compared side by side on this machine, through sidecars, raw, or with real clients; and,
from stored results alone, `dapb bench report` (a result's report rebuilt) and `dapb bench compare` (runs
compared, with their spread)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dapb_mesh.bench.options import BenchOptionError, ClientRun, client_run, scenario_run
from dapb_mesh.cli.common import (
    ConfigOption,
    console,
    err_console,
    interrupt_on_sigterm,
    load,
    output_dir,
    output_file,
    write_json,
)
from dapb_mesh.config import Settings

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def bench(
    ctx: typer.Context,
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario",
            "-s",
            help="stream-small, req-resp, mixed (through sidecars: every arch but raw; stream-small also raw); "
            "stream-auto, burst, write-write-read, pingpong (raw); agent-tick (the control loop); predictor "
            "(inference cost). Not with --client.",
        ),
    ] = "",
    modes: Annotated[
        str, typer.Option("--modes", "-m", help="Comma-separated: baseline, passthrough, nagle, dapb, dapb-ml, agent.")
    ] = "baseline,nagle,dapb",
    arch: Annotated[
        str,
        typer.Option(
            "--arch",
            help="Real Envoy sidecars: inter-pod, intra-pod, chain:N (N pods in a line, relays between), fan-out:N "
            "(one client, N - 1 servers at once); or raw (kernel only, no proxies).",
        ),
    ] = "inter-pod",
    rate: Annotated[
        str, typer.Option("--rate", help="Messages per second; a comma-separated list sweeps the rates.")
    ] = "10000",
    msg_size: Annotated[int, typer.Option("--msg-size", help="Message size in bytes.", min=16, max=65536)] = 64,
    connections: Annotated[
        int,
        typer.Option(
            "--connections", help="req-resp, grpc-unary: client connections (Istio's bench: 2..64).", min=1, max=64
        ),
    ] = 2,
    repeat: Annotated[int | None, typer.Option("--repeat", help="Interleaved repeats per mode.", min=1)] = None,
    quick: Annotated[bool, typer.Option("--quick", help="One-second runs, one repeat.")] = False,
    plaintext: Annotated[bool, typer.Option("--plaintext", help="No mutual TLS between sidecars.")] = False,
    impair: Annotated[
        str, typer.Option("--impair", help="Impairments, e.g. loss=1%,rate=20mbit,queue=30ms (tbf and tc drop).")
    ] = "",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every metric per mode here.")] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write report.md and plots to this directory.")
    ] = None,
    client: Annotated[
        str,
        typer.Option(
            "--client",
            help="Request/response with real clients instead of a scenario, comma-separated: wrk:cN (closed loop), "
            "h2load:h1|h2:cN[:rRATE] (RATE: total requests/s; none: closed loop). Modes: baseline, agent-auto, "
            "agent-throughput (the agent on whole pods with that default class), nagle (forced, unguarded). "
            "--msg-size is the response size (default 1024 here).",
        ),
    ] = "",
    load_cores: Annotated[
        int, typer.Option("--load-cores", help="With --client: keep this many cores busy (a loaded node).", min=0)
    ] = 0,
    config: ConfigOption = None,
) -> None:
    """Compare modes side by side in one run on this machine: segments, delays, CPU, the paper's six metrics.

    Needs root: it creates network namespaces, cgroups, Envoy sidecars and BPF programs, and removes them after.
    From stored results alone: `dapb bench report RESULT.json --out DIR` rebuilds a report, `dapb bench compare
    A.json B.json ...` compares runs.
    """
    if ctx.invoked_subcommand is not None:  # report or compare: the run's options do not apply
        given = [
            p.opts[0]
            for p in ctx.command.params
            if getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"
        ]
        if given:
            raise typer.BadParameter(
                f"an option of a bench run, not of `dapb bench {ctx.invoked_subcommand}`",
                param_hint="/".join(given),
            )
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dapb_mesh.bench.envoy import run_envoy
    from dapb_mesh.bench.raw import run_raw

    settings = load(config)
    interrupt_on_sigterm()
    if bool(client) == bool(scenario):
        raise typer.BadParameter("give either --scenario or --client", param_hint="--scenario/--client")
    output_file(json_path, "--json")
    output_dir(report, "--report")
    if client:
        _bench_clients(
            _checked(client_run, client, modes),
            settings,
            msg_size,
            repeat,
            quick,
            plaintext,
            load_cores,
            json_path,
            report,
        )
        return
    if scenario == "agent-tick":  # the control loop's own cost; modes and arch do not apply
        from dapb_mesh.bench.agent_tick import run_agent_tick

        result = run_agent_tick(settings, progress=lambda msg: err_console.print(f"[dim]{msg}[/dim]"))
        ms = result["tick_cpu_ms"]
        console.print(
            f"agent tick with {result['sockets']} sockets: p50 {ms['p50']:.2f} ms CPU, max {ms['max']:.2f} ms; "
            f"{result['core_share_at_tick_hz'] * 100:.1f}% of one core at {result['tick_hz']:g} Hz"
        )
        write_json(json_path, result)
        return
    if scenario == "predictor":  # inference cost of the shipped model
        from dapb_mesh.bench.predictor import run_predictor_bench

        result = run_predictor_bench(settings)
        console.print(
            f"predictor: {result['rows']} rows in {result['onnx_batch_ms']['p50']:.2f} ms (ONNX batch, p50; max "
            f"{result['onnx_batch_ms']['max']:.2f}), {result['with_predictions_ms']['p50']:.2f} ms with decisions"
        )
        write_json(json_path, result)
        return
    run = _checked(scenario_run, scenario, modes, arch, rate, impair)
    repeats = repeat or (1 if quick else 3)
    duration = 1.0 if quick else 2.0
    results = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console) as bar:
        task = bar.add_task("starting", total=None)
        for r in run.rates:
            common = {
                "impairment": run.impairment,
                "rate": r,
                "msg_size": msg_size,
                "duration_s": duration,
                "repeats": repeats,
                "progress": lambda msg, r=r: bar.update(task, description=f"{r:g} msg/s: {msg}"),
            }
            if arch == "raw":
                results[r] = run_raw(scenario, run.modes, settings, **common)
            else:
                results[r] = run_envoy(
                    scenario, run.modes, settings, arch=arch, plaintext=plaintext, connections=connections, **common
                )
    result = results[run.rates[-1]]
    if len(run.rates) > 1:
        result["sweep"] = {f"{r:g}": results[r]["modes"] for r in run.rates}
    for r in run.rates:
        _print_bench(results[r], f"{r:g} msg/s")
    if json_path is not None:
        write_json(json_path, result)
        console.print(f"wrote {json_path}")
    if report is not None:
        from dapb_mesh.bench.report import write_report

        console.print(f"wrote {write_report(result, report)}")


def _checked(check, *options: str):
    """The bench's own check of its options (dapb_mesh.bench.options); a bad one is a usage error naming it."""
    try:
        return check(*options)
    except BenchOptionError as error:
        raise typer.BadParameter(str(error), param_hint=error.option) from None


def _fmt(fmt: str, value: float | None) -> str:
    return "-" if value is None else fmt.format(value)


def _bench_clients(
    run: ClientRun,
    settings: Settings,
    msg_size: int,
    repeat: int | None,
    quick: bool,
    plaintext: bool,
    load_cores: int,
    json_path: Path | None,
    report: Path | None,
) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dapb_mesh.bench.clients import run_clients

    size = 1024 if msg_size == 64 else msg_size  # --msg-size's default is the stream's; requests answer 1 KiB
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console) as bar:
        task = bar.add_task("starting", total=None)
        result = run_clients(
            run.loads,
            run.modes,
            settings,
            duration_s=2 if quick else 3,
            repeats=repeat or (1 if quick else 3),
            size=size,
            load_cores=load_cores,
            plaintext=plaintext,
            progress=lambda msg: bar.update(task, description=msg),
        )
    for label, per_mode in result["clients"].items():
        table = Table(title=f"{label}, {size} B responses, {load_cores} busy core(s)")
        for title in ("mode", "p50 ms", "p90 ms", "p99 ms", "max ms", "req/s", "seg/req", "errors", "no harm"):
            table.add_column(title, justify="left" if title == "mode" else "right")
        for mode, m in per_mode.items():
            verdict = m.get("verdict")
            table.add_row(
                mode,
                *(f"{m[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
                f"{m['req_per_s']:.0f}",
                f"{m['segments_per_request']:.2f}",
                str(m["errors"]),
                "-" if verdict is None else ("yes" if verdict["ok"] else "NO"),
            )
        console.print(table)
    write_json(json_path, result)
    if report is not None:
        from dapb_mesh.bench.report import write_report

        console.print(f"wrote {write_report(result, report)}")


def _print_bench(result: dict, label: str = "") -> None:
    table = Table(title=f"{result['scenario']} ({result['arch']}) {label}")
    columns = {
        "segments": ("data_segments", "{:.0f}"),
        "seg/msg": ("segments_per_message", "{:.3f}"),
        "small": ("small_segments", "{:.0f}"),
        "lost B": ("lost_bytes", "{:.0f}"),
        "p50 ms": ("latency_p50_ms", "{:.3f}"),
        "p99 ms": ("latency_p99_ms", "{:.3f}"),
        "max ms": ("latency_max_ms", "{:.2f}"),
        "Mb/s": ("throughput_mbps", "{:.2f}"),
        "CPU s": ("cpu_seconds", "{:.3f}"),
        "proxy us/msg": ("proxy_cpu_us_per_message", "{:.1f}"),
        "eff": ("buffer_efficiency", "{:.2f}"),
        "+lat ms": ("added_latency_ms", "{:.3f}"),
        "C_eBPF us": ("ebpf_overhead_us", "{:.3f}"),
    }
    if any("rr_latency_p99_ms" in m for m in result["modes"].values()):  # mixed: the requests beside the stream
        columns["req p99 ms"] = ("rr_latency_p99_ms", "{:.3f}")
    table.add_column("mode")
    for title in columns:
        table.add_column(title, justify="right")
    for mode, metrics in result["modes"].items():
        table.add_row(mode, *(_fmt(fmt, metrics.get(key)) for key, fmt in columns.values()))
    console.print(table)


@app.command("report")
def report_command(
    result_path: Annotated[
        Path, typer.Argument(metavar="RESULT", help="A result written by `dapb bench --json` (a scenario or --client).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Write report.md, result.json and the plots here.")],
) -> None:
    """Rebuild a report from a stored result alone: verdicts first, the table, the glossary, the plots."""
    from dapb_mesh.bench.report import load_result, write_report

    result = _load(load_result, result_path, "RESULT")
    output_dir(out, "--out")
    try:
        console.print(f"wrote {write_report(result, out)}")
    except (KeyError, TypeError) as error:  # a result with fields of another shape than the bench writes
        raise typer.BadParameter(f"{result_path}: cannot read field {error}", param_hint="RESULT") from None


@app.command("compare")
def compare_command(
    runs: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN...",
            help="Result JSONs; the first is the reference. LABEL=PATH pools several files as one side's runs "
            "(before=a1.json before=a2.json after=b1.json ...).",
        ),
    ],
    report: Annotated[
        Path | None, typer.Option("--report", help="Write compare.md and one plot per compared side here.")
    ] = None,
) -> None:
    """Compare runs: every metric the runs share, its difference from the first run with the spread of both
    sides, and which differences are within noise."""
    from dapb_mesh.bench import compare

    sides = _load(compare.load_sides, runs, "RUN...")
    output_dir(report, "--report")
    comparisons = compare.compare(sides)
    for c in comparisons:
        head = compare.summary(c)
        console.print(f"[bold]{escape(head[0])}[/bold]")
        for line in head[1:]:
            console.print(escape(line), highlight=False)
        if c.differences:
            table = Table()
            for title in ("section", "mode", "metric", c.reference, c.other, "difference", "noise", "verdict"):
                table.add_column(title, justify="right" if title in ("difference", "noise") else "left")
            for d in c.differences:
                unit = compare.UNITS.get(d.metric, "")
                style = {"beyond noise": "red", "within noise": "green"}.get(d.verdict, "dim")
                table.add_row(
                    d.section,
                    d.mode,
                    compare.LABELS[d.metric],
                    d.reference.text(unit),
                    d.other.text(unit),
                    compare.diff_text(d),
                    compare.noise_text(d),
                    f"[{style}]{d.verdict}[/{style}]",
                )
            console.print(table)
    if report is not None:
        console.print(f"wrote {compare.write_report(comparisons, report)}")
    if not any(c.differences for c in comparisons):
        raise typer.Exit(1)


def _load(read, what, hint: str):
    """Read stored results; a file that is missing or no bench result is a usage error naming it."""
    try:
        return read(what)
    except (ValueError, OSError) as error:
        raise typer.BadParameter(str(error), param_hint=hint) from None
