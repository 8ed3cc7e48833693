"""Where the built artifacts are: the BPF object, the Wasm filter and the predictor model, found in one place.

An installed wheel carries them as package data (``dapb_mesh/_artifacts/``, put there by setup.py's build step);
a source checkout (an editable install, or ``python -m dapb_mesh.cli`` in the repository) uses its own build
outputs, which ``make -C bpf`` and ``make -C wasm_filter`` keep current, so a rebuilt object is never shadowed by
an older packaged copy. This module also packs the filter as an OCI image that Istio's Wasm fetcher accepts.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

PACKAGE_DIR = "_artifacts"
"""The package-data directory inside dapb_mesh that a wheel carries the artifacts in."""
PACKAGED_PREFIX = "package:"
"""A configured path ``package:FILE`` names the artifact FILE shipped with dapb (see ``resolve``)."""
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Artifact:
    """One built file that dapb needs at run time."""

    name: str
    filename: str
    source: str
    """Its build output, relative to the repository."""
    build: str
    """The command that makes it in a checkout."""


BPF_OBJECT = Artifact("bpf_object", "dapb.bpf.o", "bpf/.output/dapb.bpf.o", "make -C bpf")
WASM_FILTER = Artifact("wasm_filter", "dapb_filter.wasm", "wasm_filter/dapb_filter.wasm", "make -C wasm_filter")
MODEL = Artifact("model", "dapb_predictor.onnx", "models/dapb_predictor.onnx", "dapb train fit")
ARTIFACTS = (BPF_OBJECT, WASM_FILTER, MODEL)


class ArtifactError(RuntimeError):
    """An artifact that is not where it should be, or a reference to one that does not exist."""


def source_tree() -> Path | None:
    """The repository dapb_mesh is imported from, if it is imported from one (not from an installed wheel)."""
    root = REPO_ROOT
    return root if (root / "pyproject.toml").is_file() and (root / "bpf" / "Makefile").is_file() else None


def packaged(artifact: Artifact) -> Path:
    """Where an installed wheel keeps the artifact (whether or not it is there)."""
    resource = files("dapb_mesh") / PACKAGE_DIR / artifact.filename
    if not isinstance(resource, Path):  # a zipped install: libbpf and wasmtime need a real file
        raise ArtifactError(f"dapb_mesh is not installed as files ({resource}); install the wheel with pip")
    return resource


def path(artifact: Artifact) -> Path:
    """The artifact's file: the checkout's build output when running from one, else the packaged copy. The path
    is returned even when the file is missing, so that the caller's error names it (see ``missing``)."""
    root = source_tree()
    return root / artifact.source if root is not None else packaged(artifact)


def missing(artifact: Artifact) -> str:
    """Why ``path(artifact)`` is absent, with what makes it."""
    where = path(artifact)
    if source_tree() is not None:
        return f"{where} not found: build it with `{artifact.build}`"
    return f"{where} not found: this dapb installation lacks its {artifact.name}; reinstall the wheel"


def resolve(value: Path) -> Path:
    """A configured path: ``package:FILE`` becomes the shipped artifact FILE, anything else stays as it is."""
    text = str(value)
    if not text.startswith(PACKAGED_PREFIX):
        return value
    name = text[len(PACKAGED_PREFIX) :]
    for artifact in ARTIFACTS:
        if name == artifact.filename:
            return path(artifact)
    known = ", ".join(f"{PACKAGED_PREFIX}{a.filename}" for a in ARTIFACTS)
    raise ValueError(f"{text!r} names no artifact shipped with dapb (known: {known})")


# ---- the filter as an OCI image ------------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
WASM_VARIANT = {"module.wasm.image/variant": "compat"}
"""Istio's fetcher (pkg/wasm/imagefetcher.go) reads the *compat* variant of the Wasm image specification: one
``tar+gzip`` layer holding ``plugin.wasm``, marked by this manifest annotation."""
PLUGIN_FILE = "plugin.wasm"


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


def _layer(wasm: bytes) -> tuple[Blob, str]:
    """The one layer (plugin.wasm alone, fixed owner, mode and time) and its uncompressed diff id: the same
    bytes for the same module on every machine."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(PLUGIN_FILE)
        info.size, info.mode, info.mtime, info.uname, info.gname = len(wasm), 0o444, 0, "", ""
        tar.addfile(info, io.BytesIO(wasm))
    raw = tar_bytes.getvalue()
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    return Blob(OCI_LAYER, packed), "sha256:" + hashlib.sha256(raw).hexdigest()


def filter_image(wasm: bytes) -> tuple[Blob, list[Blob]]:
    """The filter's OCI image: its manifest and the blobs it names (config, layer). Deterministic: the digest
    of the manifest, which Istio compares with a WasmPlugin's ``sha256``, depends on the module's bytes only."""
    if wasm[:4] != b"\0asm":
        raise ArtifactError("not a WebAssembly module (no \\0asm header)")
    layer, diff_id = _layer(wasm)
    config = {
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {},
    }
    config_blob = Blob(OCI_CONFIG, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor()],
        "annotations": WASM_VARIANT,
    }
    return Blob(OCI_MANIFEST, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()), [
        config_blob,
        layer,
    ]


def write_filter_image(wasm: Path, layout: Path, tag: str) -> str:
    """Write the filter's image into an OCI image layout directory (created, or added to) under ``tag``, as
    skopeo reads it (``oci:LAYOUT:TAG``); returns the manifest digest, ``sha256:HEX``."""
    manifest, blobs = filter_image(wasm.read_bytes())
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for blob in (manifest, *blobs):
        (layout / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["mediaType"] = OCI_INDEX
    ref = "org.opencontainers.image.ref.name"
    kept = [m for m in index.get("manifests", []) if m.get("annotations", {}).get(ref) != tag]
    index["manifests"] = [*kept, {**manifest.descriptor(), "annotations": {ref: tag}}]
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return manifest.digest


def main(argv: list[str] | None = None) -> int:
    """``python -m dapb_mesh.artifacts filter-image LAYOUT [TAG]``: pack the filter this installation uses into
    an OCI layout and print its digest (push it with ``skopeo copy oci:LAYOUT:TAG docker://REGISTRY/...``);
    ``python -m dapb_mesh.artifacts paths``: where each artifact is."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["paths"] and len(args) == 1:
        for artifact in ARTIFACTS:
            where = path(artifact)
            print(f"{artifact.name}\t{where}\t{'ok' if where.is_file() else 'MISSING'}")
        return 0
    if args[:1] == ["filter-image"] and len(args) in (2, 3):
        wasm = path(WASM_FILTER)
        if not wasm.is_file():
            print(f"error: {missing(WASM_FILTER)}", file=sys.stderr)
            return 1
        tag = args[2] if len(args) == 3 else "latest"
        print(write_filter_image(wasm, Path(args[1]), tag))
        return 0
    print("usage: python -m dapb_mesh.artifacts paths | filter-image LAYOUT [TAG]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
