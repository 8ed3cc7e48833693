"""`dapb train collect` and `dapb train fit`: the predictor's data and model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dapb_mesh.cli.common import ConfigOption, console, err_console, fail, finite, load, output_file
from dapb_mesh.store import HistoryStore, StoreError

app = typer.Typer(help="The predictor: collect measured outcomes, fit the model, export ONNX.", no_args_is_help=True)


@app.command("collect")
def train_collect(
    grid: Annotated[
        str, typer.Option("--grid", help="full, quick or held-out (contexts kept out of training).")
    ] = "full",
    store: Annotated[Path, typer.Option("--store", help="SQLite file to add the samples to.")] = Path(
        "models/training.db"
    ),
    duration: Annotated[
        float, typer.Option("--duration", help="Seconds per run.", min=0.2, callback=finite("--duration", 0.2))
    ] = 1.0,
    config: ConfigOption = None,
) -> None:
    """Run the raw hop across a grid of contexts and record every candidate decision's measured outcome."""
    from dapb_mesh.bench.collect import FULL_GRID, HELD_OUT, QUICK_GRID, collect

    grids = {"full": FULL_GRID, "quick": QUICK_GRID, "held-out": HELD_OUT}
    if grid not in grids:
        raise typer.BadParameter(f"{grid!r}; choose from {', '.join(grids)}", param_hint="--grid")
    settings = load(config)
    samples = _open(store)
    rows = collect(
        grids[grid],
        samples,
        settings,
        duration_s=duration,
        progress=lambda msg: err_console.print(f"[dim]{msg}[/dim]"),
    )
    console.print(f"recorded {rows} samples in {store}")


@app.command("fit")
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

    if not store.exists():
        raise typer.BadParameter(f"{store} does not exist: run `dapb train collect` first", param_hint="--store")
    output_file(model, "--model")
    output_file(card, "--card")
    try:
        samples = _open(store).samples()
    except StoreError as error:
        raise typer.BadParameter(str(error), param_hint="--store") from None
    try:
        scores = train(samples, model, card, f"`{store}` ({len(samples)} samples).")
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--store") from None
    except OSError as error:
        fail("cannot write the model or its card", f"{error.filename}: {error.strerror or error}", code=1)
    console.print(f"wrote {model} and {card}: {json.dumps(scores)}")


def _open(store: Path) -> HistoryStore:
    """The samples' store; BadParameter names --store and why it cannot be used."""
    try:
        return HistoryStore(store)
    except StoreError as error:
        raise typer.BadParameter(str(error), param_hint="--store") from None
