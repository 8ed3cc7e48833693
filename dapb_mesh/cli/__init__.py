"""The `dapb` command line: doctor, policy, and (as they land) agent, bench, train, render, testbed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dapb_mesh import __version__
from dapb_mesh.config import ConfigError, PolicyConfig, Settings, load_settings
from dapb_mesh.mesh.virtualservice import plugin_config
from dapb_mesh.policy import Conditions, Prediction, Sensitivity, decide

app = typer.Typer(
    help="Dynamic Adaptive Packet Buffering (DAPB) for Istio/Envoy service meshes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Inspect the DAPB policy: what it decides and why.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
render_app = typer.Typer(help="Render install manifests.", no_args_is_help=True)
app.add_typer(render_app, name="render")
filter_app = typer.Typer(help="The DSCP-tagging Wasm filter, run in the Python proxy-wasm host.", no_args_is_help=True)
app.add_typer(filter_app, name="filter")
train_app = typer.Typer(
    help="The predictor: collect measured outcomes, fit the model, export ONNX.", no_args_is_help=True
)
app.add_typer(train_app, name="train")
testbed_app = typer.Typer(
    help="The embedded mesh: pods with real Envoy sidecars, on this machine.", no_args_is_help=True
)
app.add_typer(testbed_app, name="testbed")
config_app = typer.Typer(help="Configuration: reference and validation.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# Wide tables stay readable when output goes to a file or CI log instead of a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML configuration file; DAPB_SECTION__FIELD environment variables override it.",
        envvar="DAPB_CONFIG",
        dir_okay=False,
    ),
]


def _settings(path: Path | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as error:
        err_console.print(f"[red]invalid configuration[/red]\n{escape(str(error))}", highlight=False)
        raise typer.Exit(2) from None


def _finite(name: str, lower: float, upper: float = math.inf):
    def check(value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and lower <= value <= upper):
            bound = f"[{lower}, {upper}]" if math.isfinite(upper) else f">= {lower}"
            raise typer.BadParameter(f"{value!r} is not a finite number {bound}", param_hint=name)
        return value

    return check


def _version(value: bool) -> None:
    if value:
        console.print(f"dapb-mesh {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Dynamic Adaptive Packet Buffering (DAPB) for Istio/Envoy service meshes."""


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: {ok, checks: [{name, ok, detail}]}.")] = False,
    config: ConfigOption = None,
) -> None:
    """Check that this host has every kernel feature DAPB uses (BPF, bpffs, BTF, cgroup v2, sock_ops, ...).

    Each feature is probed for real (a map is created, a program type is loaded, a clsact qdisc is made in a
    scratch network namespace). Exits 1 when any check fails.
    """
    from dapb_mesh.doctor import report, run_checks

    settings = _settings(config)
    result = report(run_checks(settings.kernel))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        table = Table(title="dapb doctor")
        table.add_column("feature")
        table.add_column("ok")
        table.add_column("detail")
        for check in result["checks"]:
            table.add_row(check["name"], "[green]yes[/green]" if check["ok"] else "[red]NO[/red]", check["detail"])
        console.print(table)
        console.print("[green]all checks passed[/green]" if result["ok"] else "[red]some checks failed[/red]")
    raise typer.Exit(0 if result["ok"] else 1)


@policy_app.command("explain")
def policy_explain(
    rtt_ms: Annotated[
        float, typer.Option("--rtt-ms", help="Smoothed round-trip time, ms.", callback=_finite("--rtt-ms", 0))
    ],
    loss: Annotated[
        float,
        typer.Option("--loss", help="Loss rate as a fraction of segments, 0..1.", callback=_finite("--loss", 0, 1)),
    ] = 0.0,
    jitter_ms: Annotated[
        float, typer.Option("--jitter-ms", help="Jitter, ms.", callback=_finite("--jitter-ms", 0))
    ] = 0.0,
    sensitivity: Annotated[
        Sensitivity, typer.Option("--sensitivity", help="L(t): latency, throughput, or auto (eq. 1).")
    ] = Sensitivity.AUTO,
    urgency: Annotated[
        float,
        typer.Option(
            "--urgency", help="Mean urgency U(t) of the traffic, 0..1 (eq. 6).", callback=_finite("--urgency", 0, 1)
        ),
    ] = 0.0,
    predicted_bytes: Annotated[
        float | None,
        typer.Option(
            "--predicted-bytes", help="Use a predictor output P(t) in bytes (eq. 4-5) instead of the formula."
        ),
    ] = None,
    confidence: Annotated[
        float,
        typer.Option(
            "--confidence", help="Confidence of --predicted-bytes, 0..1.", callback=_finite("--confidence", 0, 1)
        ),
    ] = 1.0,
    offered: Annotated[
        float | None,
        typer.Option(
            "--offered-bytes-per-s", help="Offered load of the traffic: decides the enforcer (kernel or filter)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show the decision for given conditions: B(t), T(t), the bound actually enforced, E(t), which enforcer
    (kernel Nagle + delayed-ACK bound, or the sidecar filter's timed hold) and why."""
    settings = _settings(config)
    cond = Conditions(rtt_ms=rtt_ms, loss=loss, jitter_ms=jitter_ms)
    prediction = None if predicted_bytes is None else Prediction(buffer_bytes=predicted_bytes, confidence=confidence)
    decision = decide(
        cond,
        sensitivity,
        settings.policy,
        settings.kernel,
        urgency=urgency,
        use_predictor=predicted_bytes is not None,
        prediction=prediction,
        offered_bytes_per_s=offered,
    )
    if as_json:
        print(json.dumps(decision.as_dict(), indent=2))
        return
    table = Table(title=f"DAPB decision ({decision.source.value})", show_header=False)
    table.add_row("B(t) buffer", f"{decision.buffer_bytes} B")
    table.add_row("T(t) timeout", f"{decision.timeout_ms:.2f} ms")
    enforced = decision.enforced_timeout_ms
    if enforced is None:
        bound = "none: sent at once"
    elif decision.knobs.enforcer == "filter":
        hold_bytes, hold_ms = decision.filter_hold
        bound = f"{enforced:g} ms: the sidecar filter holds up to {hold_bytes} B for {hold_ms} ms (Envoy's timer)"
    else:
        bound = f"{enforced:g} ms: Nagle + the receiver's delayed ACK (whole kernel ticks)"
    table.add_row("enforced bound", bound)
    table.add_row("U(t) urgency", f"{decision.urgency:.2f}")
    table.add_row("E(t) energy", f"{decision.energy:.3f}")
    table.add_row("fallback", "yes" if decision.fallback else "no")
    knobs = decision.knobs
    table.add_row(
        "knobs",
        f"enforcer={knobs.enforcer} nodelay={knobs.nodelay} ack_bound_ms={knobs.ack_bound_ms} dscp={knobs.dscp}",
    )
    table.add_row("why", decision.reason)
    console.print(table)


@app.command()
def bench(
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
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dapb_mesh.bench.envoy import ENVOY_SCENARIOS, run_envoy
    from dapb_mesh.bench.modes import validate_modes
    from dapb_mesh.bench.raw import RAW_SCENARIOS, run_raw
    from dapb_mesh.testbed.mesh import parse_arch

    settings = _settings(config)
    _interrupt_on_sigterm()
    if bool(client) == bool(scenario):
        raise typer.BadParameter("give either --scenario or --client", param_hint="--scenario/--client")
    if client:
        _bench_clients(client, modes, settings, msg_size, repeat, quick, plaintext, load_cores, json_path, report)
        return
    if scenario == "agent-tick":  # the control loop's own cost; modes and arch do not apply
        from dapb_mesh.bench.agent_tick import run_agent_tick

        result = run_agent_tick(settings, progress=lambda msg: err_console.print(f"[dim]{msg}[/dim]"))
        ms = result["tick_cpu_ms"]
        console.print(
            f"agent tick with {result['sockets']} sockets: p50 {ms['p50']:.2f} ms CPU, max {ms['max']:.2f} ms; "
            f"{result['core_share_at_tick_hz'] * 100:.1f}% of one core at {result['tick_hz']:g} Hz"
        )
        _write_json(json_path, result)
        return
    if scenario == "predictor":  # inference cost of the shipped model
        from dapb_mesh.bench.predictor import run_predictor_bench

        result = run_predictor_bench(settings)
        console.print(
            f"predictor: {result['rows']} rows in {result['onnx_batch_ms']['p50']:.2f} ms (ONNX batch, p50; max "
            f"{result['onnx_batch_ms']['max']:.2f}), {result['with_predictions_ms']['p50']:.2f} ms with decisions"
        )
        _write_json(json_path, result)
        return
    try:
        mode_list = validate_modes([m.strip() for m in modes.split(",") if m.strip()])
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--modes") from None
    try:
        rates = [float(r) for r in rate.split(",") if r.strip()]
    except ValueError:
        raise typer.BadParameter(f"{rate!r} is not a number or a list of numbers", param_hint="--rate") from None
    if not rates or any(not (math.isfinite(r) and r > 0) for r in rates):
        raise typer.BadParameter(f"{rate!r}: rates must be positive numbers", param_hint="--rate")
    if arch != "raw":
        try:
            parse_arch(arch)
        except ValueError as error:
            raise typer.BadParameter(f"{error} (or raw)", param_hint="--arch") from None
    known = RAW_SCENARIOS if arch == "raw" else ENVOY_SCENARIOS
    if scenario not in known:
        raise typer.BadParameter(
            f"{scenario!r} for --arch {arch}; choose from {', '.join(known)}", param_hint="--scenario"
        )
    from dapb_mesh.testbed.impair import parse as parse_impairment

    try:
        impairment = parse_impairment(impair)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--impair") from None
    repeats = repeat or (1 if quick else 3)
    duration = 1.0 if quick else 2.0
    results = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console) as bar:
        task = bar.add_task("starting", total=None)
        for r in rates:
            common = {
                "impairment": impairment,
                "rate": r,
                "msg_size": msg_size,
                "duration_s": duration,
                "repeats": repeats,
                "progress": lambda msg, r=r: bar.update(task, description=f"{r:g} msg/s: {msg}"),
            }
            if arch == "raw":
                results[r] = run_raw(scenario, mode_list, settings, **common)
            else:
                results[r] = run_envoy(
                    scenario, mode_list, settings, arch=arch, plaintext=plaintext, connections=connections, **common
                )
    result = results[rates[-1]]
    if len(rates) > 1:
        result["sweep"] = {f"{r:g}": results[r]["modes"] for r in rates}
    for r in rates:
        _print_bench(results[r], f"{r:g} msg/s")
    if json_path is not None:
        _write_json(json_path, result)
        console.print(f"wrote {json_path}")
    if report is not None:
        from dapb_mesh.bench.report import write_report

        console.print(f"wrote {write_report(result, report)}")


def _write_json(path: Path | None, result: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def _fmt(fmt: str, value: float | None) -> str:
    return "-" if value is None else fmt.format(value)


def _interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so every `with`/`finally` removes what it made: pods,
    Envoys, BPF instances, cgroups. Only in this process: pyroute2 forks helpers and stops them with SIGTERM,
    and they must simply die, not unwind the mesh."""
    import os
    import signal

    runner = os.getpid()

    def stop(signum, _frame):
        if os.getpid() != runner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _bench_clients(
    spec: str,
    modes: str,
    settings,
    msg_size: int,
    repeat: int | None,
    quick: bool,
    plaintext: bool,
    load_cores: int,
    json_path: Path | None,
    report: Path | None,
) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dapb_mesh.bench.clients import client_report, parse_client, run_clients, validate_client_modes

    try:
        loads = [parse_client(s) for s in spec.split(",") if s.strip()]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--client") from None
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    if mode_list == ["baseline", "nagle", "dapb"]:  # the scenario default: take the clients' one
        mode_list = ["baseline", "agent-auto", "agent-throughput"]
    try:
        validate_client_modes(mode_list)
    except ValueError as error:
        raise typer.BadParameter(f"{error} (with --client)", param_hint="--modes") from None
    size = 1024 if msg_size == 64 else msg_size  # --msg-size's default is the stream's; requests answer 1 KiB
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console) as bar:
        task = bar.add_task("starting", total=None)
        result = run_clients(
            loads,
            mode_list,
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
    _write_json(json_path, result)
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "report.md").write_text(client_report(result))
        console.print(f"wrote {report / 'report.md'}")


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


@app.command()
def agent(
    cgroup: Annotated[
        list[Path] | None, typer.Option("--cgroup", help="cgroup v2 directory to attach to (repeatable).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and log; touch no kernel state.")] = False,
    listen: Annotated[str | None, typer.Option("--listen", help="host:port for /metrics, /healthz, /readyz.")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="SQLite history file.")] = None,
    max_ticks: Annotated[int | None, typer.Option("--max-ticks", help="Stop after this many ticks.", min=1)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every decision change.")] = False,
    config: ConfigOption = None,
) -> None:
    """The node agent: attach to the given cgroups, read telemetry every tick, decide, write versioned policy.

    SIGTERM/SIGINT stop it gracefully (knobs off, programs detached); SIGHUP reloads the configuration; a restart
    after a crash adopts the pinned programs without a gap.
    """
    import logging

    from dapb_mesh.agent import Agent
    from dapb_mesh.config import parse_settings
    from dapb_mesh.exporter import serve

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    base = _settings(config).model_dump()
    overrides = {k: v for k, v in {"cgroups": cgroup, "listen": listen, "store": store}.items() if v}
    try:
        settings = parse_settings({**base, "agent": {**base["agent"], **overrides}}, "command line")
    except ConfigError as error:
        err_console.print(f"[red]invalid settings[/red]\n{escape(str(error))}", highlight=False)
        raise typer.Exit(2) from None
    if not settings.agent.cgroups and not dry_run:
        raise typer.BadParameter("give at least one cgroup v2 directory (or agent.cgroups)", param_hint="--cgroup")
    for path in settings.agent.cgroups:
        if not (path / "cgroup.procs").exists():
            raise typer.BadParameter(f"{path} is not a cgroup v2 directory", param_hint="--cgroup")
    the_agent = Agent(settings, dry_run=dry_run, config_path=config)
    the_agent.install_signal_handlers()
    server = serve(the_agent, settings.agent.listen)
    err_console.print(f"dapb agent: metrics on http://{settings.agent.listen}/metrics")
    try:
        the_agent.start()
        the_agent.run(max_ticks=max_ticks)
    finally:
        the_agent.stop()
        server.shutdown()


@app.command()
def history(
    table: Annotated[str, typer.Option("--table", help="decisions or outcomes.")] = "decisions",
    cls: Annotated[str | None, typer.Option("--class", help="Only this class (default, latency, throughput).")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most recent rows.", min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows.")] = False,
    store: Annotated[Path | None, typer.Option("--store", help="SQLite history file.")] = None,
    config: ConfigOption = None,
) -> None:
    """Query the agent's history: decisions and measured outcomes (the paper's knowledge persistence)."""
    from dapb_mesh.store import HistoryStore, StoreError

    path = store or _settings(config).agent.store
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist: has the agent run?", param_hint="--store")
    try:
        rows = HistoryStore(path).recent(table, limit, cls)
    except StoreError as error:
        raise typer.BadParameter(str(error), param_hint="--table") from None
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    out = Table(title=f"{table} ({path})")
    for column in rows[0] if rows else ["(empty)"]:
        out.add_column(column)
    for row in rows:
        out.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(out)


@render_app.command("istio")
def render_istio(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the manifests to.")] = Path("istio"),
) -> None:
    """Write the Istio install: IstioOperator overlay, WasmPlugin, EnvoyFilter, agent DaemonSet with RBAC, and an
    annotated example VirtualService with its DestinationRule."""
    from dapb_mesh.mesh.manifests import write

    for path in write(out):
        console.print(f"wrote {path}")


@filter_app.command("test")
def filter_test(
    route: Annotated[str | None, typer.Option("--route", help="The route name Envoy would report.")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", "-H", help="'name: value' (repeatable).")] = None,
    plugin_config: Annotated[
        str, typer.Option("--config", help="Plugin configuration JSON, or @FILE.")
    ] = plugin_config([], PolicyConfig()),
    wasm: Annotated[Path, typer.Option("--wasm", help="The filter module.")] = Path("wasm_filter/dapb_filter.wasm"),
    body: Annotated[
        str | None,
        typer.Option(
            "--body",
            help="Stream a body: SIZExCOUNT@GAP, e.g. 64x20@1 (20 chunks of 64 B, 1 ms apart), and print every "
            "write the filter lets through with the wait of its oldest byte.",
        ),
    ] = None,
    tick_ms: Annotated[
        float, typer.Option("--tick-ms", help="The host's tick (Envoy here: 4-4.5 ms when asked for 1).", min=0.1)
    ] = 4.0,
) -> None:
    """Run one request through the filter without Envoy and print the class it gives and the filter's log; with
    --body, how the filter holds and releases a streamed body under the given configuration."""
    from dapb_mesh.mesh.wasm_host import HostError, classify, simulate_body

    if not wasm.exists():
        raise typer.BadParameter(f"{wasm} not found: build it with `make -C wasm_filter`", param_hint="--wasm")
    config_bytes = Path(plugin_config[1:]).read_bytes() if plugin_config.startswith("@") else plugin_config.encode()
    headers = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not 'name: value'", param_hint="--header")
        headers[name.strip()] = value.strip()
    chunks = _parse_body(body) if body else None
    try:
        if chunks is None:
            cls, logs = classify(wasm, config_bytes, headers, route)
        else:
            cls, releases, logs = simulate_body(wasm, config_bytes, headers, route, chunks, tick_ms)
    except HostError as error:
        err_console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    for level, line in logs:
        err_console.print(f"[dim]wasm {level}: {line}[/dim]")
    console.print(f"x-dapb-class: {cls or '(none: auto)'}")
    if chunks is not None:
        table = Table(title=f"{len(chunks)} chunks -> {len(releases)} writes")
        for column in ("at ms", "bytes", "oldest waited ms"):
            table.add_column(column, justify="right")
        for r in releases:
            table.add_row(f"{r.at_ms:.1f}", str(r.size), f"{r.oldest_wait_ms:.1f}")
        console.print(table)


def _parse_body(spec: str) -> list[tuple[float, bytes]]:
    """SIZExCOUNT@GAP (bytes, chunks, ms) -> [(arrival ms, chunk)]; BadParameter names the bad part."""
    import re

    m = re.fullmatch(r"(\d+)x(\d+)@(\d+(?:\.\d+)?)", spec.strip())
    if not m:
        raise typer.BadParameter(f"{spec!r} is not SIZExCOUNT@GAP, e.g. 64x20@1", param_hint="--body")
    size, count, gap = int(m[1]), int(m[2]), float(m[3])
    if not (1 <= size <= 1 << 20 and 1 <= count <= 100_000):
        raise typer.BadParameter(f"{spec!r}: size 1..1048576 bytes, count 1..100000", param_hint="--body")
    return [(i * gap, bytes([i % 251]) * size) for i in range(count)]


@train_app.command("collect")
def train_collect(
    grid: Annotated[
        str, typer.Option("--grid", help="full, quick or held-out (contexts kept out of training).")
    ] = "full",
    store: Annotated[Path, typer.Option("--store", help="SQLite file to add the samples to.")] = Path(
        "models/training.db"
    ),
    duration: Annotated[float, typer.Option("--duration", help="Seconds per run.", min=0.2)] = 1.0,
    config: ConfigOption = None,
) -> None:
    """Run the raw hop across a grid of contexts and record every candidate decision's measured outcome."""
    from dapb_mesh.predictor.collect import FULL_GRID, HELD_OUT, QUICK_GRID, collect
    from dapb_mesh.store import HistoryStore

    grids = {"full": FULL_GRID, "quick": QUICK_GRID, "held-out": HELD_OUT}
    if grid not in grids:
        raise typer.BadParameter(f"{grid!r}; choose from {', '.join(grids)}", param_hint="--grid")
    settings = _settings(config)
    rows = collect(
        grids[grid],
        HistoryStore(store),
        settings,
        duration_s=duration,
        progress=lambda msg: err_console.print(f"[dim]{msg}[/dim]"),
    )
    console.print(f"recorded {rows} samples in {store}")


@train_app.command("fit")
def train_fit(
    store: Annotated[Path, typer.Option("--store", help="SQLite file with collected samples.")] = Path(
        "models/training.db"
    ),
    model: Annotated[Path, typer.Option("--model", help="Where to write the ONNX model.")] = Path(
        "models/dapb_predictor.onnx"
    ),
    card: Annotated[Path, typer.Option("--card", help="Where to write the model card.")] = Path("models/MODEL_CARD.md"),
) -> None:
    """Fit the ensemble on the collected samples (deterministic), export ONNX, write the model card."""
    from dapb_mesh.predictor.train import train
    from dapb_mesh.store import HistoryStore

    if not store.exists():
        raise typer.BadParameter(f"{store} does not exist: run `dapb train collect` first", param_hint="--store")
    samples = HistoryStore(store).samples()
    try:
        scores = train(samples, model, card, f"`{store}` ({len(samples)} samples).")
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--store") from None
    console.print(f"wrote {model} and {card}: {json.dumps(scores)}")


@testbed_app.command("up")
def testbed_up(
    arch: Annotated[
        str, typer.Option("--arch", help="inter-pod, intra-pod, chain:N or fan-out:N (N pods, 2 to 8).")
    ] = "inter-pod",
    plaintext: Annotated[bool, typer.Option("--plaintext", help="No mutual TLS between sidecars.")] = False,
    config: ConfigOption = None,
) -> None:
    """Bring the mesh up and keep it until Ctrl-C or SIGTERM (or `dapb testbed down`), then remove everything.

    Prints the pods and the commands to send traffic through the sidecars (curl, wrk, h2load).
    """
    import time

    from dapb_mesh import owners
    from dapb_mesh.testbed.mesh import Mesh, parse_arch

    settings = _settings(config)
    try:
        parse_arch(arch)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--arch") from None

    _interrupt_on_sigterm()
    mesh = Mesh(arch, plaintext=plaintext, kernel=settings.kernel)
    owner = f"testbed-{mesh.run_id}"  # what `testbed down` may stop
    owners.register(owner)
    try:
        mesh.up(progress=lambda msg: err_console.print(f"[dim]{msg}[/dim]"))
        print(f"testbed {mesh.run_id} is up", flush=True)
        table = Table(title=f"testbed {mesh.run_id} ({arch}, {'plaintext' if plaintext else 'mTLS'})")
        for column in ("pod", "netns", "address", "service", "Envoy admin"):
            table.add_column(column)
        for pod, svc, sidecar in zip(mesh.pods, mesh.services, mesh.sidecars, strict=True):
            table.add_row(pod.name, pod.netns, pod.address, f"{svc.name}:{svc.port}", str(sidecar.admin))
        console.print(table)
        target = mesh.targets[0]
        server, host = target.addresses[0], target.name
        ns = mesh.client_pod.netns
        console.print(
            "Send traffic through the sidecars from the client pod:\n"
            f"  nsenter --net=/run/netns/{ns} curl -s -H 'Host: {host}' http://{server}:8080/\n"
            f"  nsenter --net=/run/netns/{ns} h2load -n 1000 -c 4 -H 'Host: {host}' http://{server}:8080/\n"
            f"  nsenter --net=/run/netns/{ns} wrk -d 5 -c 4 -H 'Host: {host}' http://{server}:8080/\n"
            "Ctrl-C (or `dapb testbed down`) removes it all."
        )
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        err_console.print("removing the testbed")
    finally:
        mesh.down()
        owners.release(owner)


@testbed_app.command("down")
def testbed_down() -> None:
    """Stop every running `testbed up` (SIGTERM) and remove what crashed runs left: netns, cgroups, pins."""
    import os
    import signal
    import time

    from dapb_mesh import owners
    from dapb_mesh.kernel.datapath import cleanup_stale as stale_bpf
    from dapb_mesh.testbed.mesh import cleanup_stale_meshes
    from dapb_mesh.testbed.netns import cleanup_stale

    runners = list(owners.OWNERS.glob("testbed-*")) if owners.OWNERS.is_dir() else []
    for entry in runners:
        pid = int(entry.read_text().strip() or 0)
        if pid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGTERM)
                console.print(f"asked runner {pid} ({entry.name}) to stop")
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(e.exists() and owners._alive(int(e.read_text() or 0)) for e in runners):
        time.sleep(0.2)
    removed = cleanup_stale() + cleanup_stale_meshes() + stale_bpf()
    for name in owners.stale("testbed"):
        owners.release(name)
    for what in removed:
        console.print(f"removed {what}")
    console.print("nothing left" if not removed else f"removed {len(removed)} stale resource(s)")


@testbed_app.command("status")
def testbed_status() -> None:
    """What testbed runs and DAPB instances exist on this machine, and whether their owners are alive."""
    from pyroute2 import netns

    from dapb_mesh import owners
    from dapb_mesh.testbed.netns import PREFIX

    table = Table(title="dapb runs")
    table.add_column("owner entry")
    table.add_column("pid")
    table.add_column("alive")
    for entry in sorted(owners.OWNERS.glob("*")) if owners.OWNERS.is_dir() else []:
        pid = int(entry.read_text().strip() or 0)
        table.add_row(entry.name, str(pid), "yes" if pid and owners._alive(pid) else "[red]no (stale)[/red]")
    console.print(table)
    spaces = [n for n in netns.listnetns() if n.startswith(PREFIX)]
    console.print(f"network namespaces: {', '.join(spaces) or 'none'}")


@config_app.command("reference")
def config_reference() -> None:
    """Print the reference of every setting (Markdown), as in docs/configuration.md."""
    from dapb_mesh.config import settings_reference

    print(settings_reference(), end="")


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="YAML configuration file.", dir_okay=False)]) -> None:
    """Validate a configuration file (plus DAPB_* variables) and print the effective settings as JSON."""
    print(_settings(path).model_dump_json(indent=2))


@app.command()
def demo(config: ConfigOption = None) -> None:
    """Show what DAPB decides for typical mesh conditions, one row per class and network."""
    settings = _settings(config)
    networks = {
        "same node": Conditions(rtt_ms=0.05, loss=0.0, jitter_ms=0.01),
        "same zone": Conditions(rtt_ms=1.0, loss=0.0001, jitter_ms=0.2),
        "cross zone, lossy": Conditions(rtt_ms=20.0, loss=0.01, jitter_ms=3.0),
    }
    table = Table(title="DAPB decisions (formula policy)")
    for column in ("network", "class", "B(t) bytes", "T(t) ms", "enforced ms", "E(t)", "rule"):
        table.add_column(column)
    for label, cond in networks.items():
        for sensitivity in Sensitivity:
            d = decide(cond, sensitivity, settings.policy, settings.kernel)
            enforced = "-" if d.enforced_timeout_ms is None else f"{d.enforced_timeout_ms:g}"
            table.add_row(
                label,
                sensitivity.value,
                str(d.buffer_bytes),
                f"{d.timeout_ms:.2f}",
                enforced,
                f"{d.energy:.2f}",
                d.source.value,
            )
    console.print(table)
