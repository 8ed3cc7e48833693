"""`dapb render istio`: the Istio install manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dapb_mesh.cli.common import console, err_console, output_dir

app = typer.Typer(help="Render install manifests.", no_args_is_help=True)


def _reference(option: str):
    """An option callback: an image reference (None passes: the placeholder default)."""

    def check(value: str | None) -> str | None:
        from dapb_mesh.mesh.manifests import image_reference

        if value is None:
            return None
        try:
            return image_reference(value)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint=option) from None

    return check


def _digest(option: str):
    """An option callback: a sha256 digest, returned as its 64 hex digits."""

    def check(value: str | None) -> str | None:
        from dapb_mesh.mesh.manifests import image_digest

        if value is None:
            return None
        try:
            return image_digest(value)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint=option) from None

    return check


@app.command("istio")
def render_istio(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the manifests to.")] = Path("istio"),
    agent_image: Annotated[
        str | None,
        typer.Option(
            "--agent-image",
            help="The agent image the DaemonSet runs, REGISTRY/PATH:TAG (default: a placeholder, named in the file).",
            callback=_reference("--agent-image"),
        ),
    ] = None,
    agent_digest: Annotated[
        str | None,
        typer.Option(
            "--agent-digest",
            help="sha256:HEX of the agent image's manifest: the DaemonSet pulls it by digest.",
            callback=_digest("--agent-digest"),
        ),
    ] = None,
    filter_image: Annotated[
        str | None,
        typer.Option(
            "--filter-image",
            help="The filter's OCI image, REGISTRY/PATH:TAG, as the WasmPlugin's oci:// url (default: a placeholder).",
            callback=_reference("--filter-image"),
        ),
    ] = None,
    filter_digest: Annotated[
        str | None,
        typer.Option(
            "--filter-digest",
            help="sha256:HEX of the filter image's manifest: the WasmPlugin's sha256 (Istio checks it on pull).",
            callback=_digest("--filter-digest"),
        ),
    ] = None,
) -> None:
    """Write the Istio install: IstioOperator overlay, WasmPlugin, EnvoyFilter, agent DaemonSet with RBAC, and an
    annotated example VirtualService with its DestinationRule. Without --agent-image / --filter-image the
    manifests name placeholder images (said in the files and here); a digest needs the image it belongs to."""
    from dapb_mesh.mesh.manifests import DEFAULT_IMAGES, Images, write

    for digest, image, role in ((agent_digest, agent_image, "agent"), (filter_digest, filter_image, "filter")):
        if digest is not None and image is None:
            raise typer.BadParameter(
                f"a digest of the placeholder {role} image: give the image it belongs to with --{role}-image",
                param_hint=f"--{role}-digest",
            )
    images = Images(
        agent=agent_image or DEFAULT_IMAGES.agent,
        agent_digest=agent_digest,
        filter=filter_image or DEFAULT_IMAGES.filter,
        filter_digest=filter_digest,
    )
    output_dir(out, "--out")
    try:
        paths = write(out, images)
    except OSError as error:
        where = error.filename if error.filename is not None else out
        raise typer.BadParameter(f"cannot write {where}: {error.strerror or error}", param_hint="--out") from None
    for path in paths:
        console.print(f"wrote {path}")
    for ref in images.placeholders():
        err_console.print(f"[yellow]placeholder image {ref}: nothing is published there[/yellow]", highlight=False)
