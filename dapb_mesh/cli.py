"""The `dapb` command line: doctor, policy, and (as they land) agent, bench, train, render, testbed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dapb_mesh import __version__
from dapb_mesh.config import ConfigError, Settings, load_settings
from dapb_mesh.policy import Conditions, Prediction, Sensitivity, decide

app = typer.Typer(
    help="Dynamic Adaptive Packet Buffering (DAPB) for Istio/Envoy service meshes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Inspect the DAPB policy: what it decides and why.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
config_app = typer.Typer(help="Configuration: reference and validation.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console()
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
        err_console.print(f"[red]invalid configuration[/red]\n{error}", highlight=False)
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
    ],
    jitter_ms: Annotated[float, typer.Option("--jitter-ms", help="Jitter, ms.", callback=_finite("--jitter-ms", 0))],
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show the decision for given conditions: B(t), T(t), the bound the kernel enforces, E(t), and why."""
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
    )
    if as_json:
        print(json.dumps(decision.as_dict(), indent=2))
        return
    table = Table(title=f"DAPB decision ({decision.source.value})", show_header=False)
    table.add_row("B(t) buffer", f"{decision.buffer_bytes} B")
    table.add_row("T(t) timeout", f"{decision.timeout_ms:.2f} ms")
    enforced = decision.enforced_timeout_ms
    table.add_row("enforced bound", "none: sent at once" if enforced is None else f"{enforced:g} ms (kernel ticks)")
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


if __name__ == "__main__":
    app()
