"""`dapb policy explain` and `dapb demo`: what the policy decides and why."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from dapb_mesh.cli.common import ConfigOption, console, finite, load
from dapb_mesh.policy import Conditions, Prediction, Sensitivity, decide

app = typer.Typer(help="Inspect the DAPB policy: what it decides and why.", no_args_is_help=True)


@app.command("explain")
def policy_explain(
    rtt_ms: Annotated[
        float, typer.Option("--rtt-ms", help="Smoothed round-trip time, ms.", callback=finite("--rtt-ms", 0))
    ],
    loss: Annotated[
        float,
        typer.Option("--loss", help="Loss rate as a fraction of segments, 0..1.", callback=finite("--loss", 0, 1)),
    ] = 0.0,
    jitter_ms: Annotated[
        float, typer.Option("--jitter-ms", help="Jitter, ms.", callback=finite("--jitter-ms", 0))
    ] = 0.0,
    sensitivity: Annotated[
        Sensitivity, typer.Option("--sensitivity", help="L(t): latency, throughput, or auto (eq. 1).")
    ] = Sensitivity.AUTO,
    urgency: Annotated[
        float,
        typer.Option(
            "--urgency", help="Mean urgency U(t) of the traffic, 0..1 (eq. 6).", callback=finite("--urgency", 0, 1)
        ),
    ] = 0.0,
    predicted_bytes: Annotated[
        float | None,
        typer.Option(
            "--predicted-bytes",
            help="Use a predictor output P(t) in bytes (eq. 4-5) instead of the formula.",
            callback=finite("--predicted-bytes", 0),
        ),
    ] = None,
    confidence: Annotated[
        float,
        typer.Option(
            "--confidence", help="Confidence of --predicted-bytes, 0..1.", callback=finite("--confidence", 0, 1)
        ),
    ] = 1.0,
    offered: Annotated[
        float | None,
        typer.Option(
            "--offered-bytes-per-s",
            help="Offered load of the traffic: decides the enforcer (kernel or filter).",
            callback=finite("--offered-bytes-per-s", 0),
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show the decision for given conditions: B(t), T(t), the bound actually enforced, E(t), which enforcer
    (kernel Nagle + delayed-ACK bound, or the sidecar filter's timed hold) and why."""
    settings = load(config)
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


def demo(config: ConfigOption = None) -> None:
    """Show what DAPB decides for typical mesh conditions, one row per class and network."""
    settings = load(config)
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
