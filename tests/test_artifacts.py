"""The artifacts an operator installs (issue 16), built here and used as an operator would use them: the wheel
installed into a fresh venv outside the repository, the agent image built from deploy/Containerfile on a base
made locally with mmdebstrap and run with only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, and the filter's Wasm OCI
image pushed to a real registry (Debian's docker-registry on loopback) and pulled back with skopeo.

Everything is built by deploy/images.sh, the script docs/install.md tells operators to run. Dependency wheels and
the base image are cached in $DAPB_IMAGE_CACHE (/var/cache/dapb-test-images) under a key of what made them; the
first build on a fresh machine downloads them from Debian's and Python's registries.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import uuid
from contextlib import suppress
from pathlib import Path

import pytest
import yaml

from dapb_mesh import artifacts
from dapb_mesh.mesh.manifests import PLACEHOLDER_REGISTRY, Images, render

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "deploy" / "images.sh"
CAPS = ("CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON")


def run(argv: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run argv; a failure fails the test with the command and the tail of its output."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} -> {done.returncode}\n{done.stderr[-3000:]}"
    return done


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    assert not missing, f"{', '.join(missing)} missing: bash bootstrap.sh setup installs them"


def user_env() -> dict[str, str]:
    """The environment of a user outside the repository: no DAPB_* settings, no PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DAPB_") and k != "PYTHONPATH"}


def wasm_istio_would_load(layout: Path, tag: str) -> tuple[str, bytes]:
    """(manifest digest, module) of TAG in an OCI layout, read as Istio's fetcher reads the compat variant
    (pkg/wasm/imagefetcher.go): the last layer must be an OCI tar+gzip layer holding a plugin.wasm."""
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    blob = lambda digest: (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()  # noqa: E731
    raw = blob(entry["digest"])
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == entry["digest"]
    manifest = json.loads(raw)
    assert manifest["annotations"] == {"module.wasm.image/variant": "compat"}
    layer = manifest["layers"][-1]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"])))) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"], "the .wasm must be the layer's only file"
        module = tar.extractfile(members[0]).read()
    assert module[:4] == b"\0asm"
    return entry["digest"], module


# ---- the package finds its artifacts -------------------------------------------------------------------------


def test_the_wheel_build_packs_every_artifact_the_package_looks_for():
    tree = ast.parse((ROOT / "setup.py").read_text())
    (packed,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ARTIFACTS"
    ]
    assert packed == {a.filename: (a.source, a.build) for a in artifacts.ARTIFACTS}


def test_in_a_checkout_the_artifacts_are_its_build_outputs():
    assert artifacts.source_tree() == ROOT
    for artifact in artifacts.ARTIFACTS:
        assert artifacts.path(artifact) == ROOT / artifact.source
        assert artifacts.path(artifact).is_file(), artifacts.missing(artifact)


def test_a_package_reference_names_a_shipped_file_or_is_refused():
    from dapb_mesh.config import AgentConfig, ConfigError, load_settings

    assert AgentConfig().model == artifacts.path(artifacts.MODEL)
    assert AgentConfig(model="/srv/m.onnx").model == Path("/srv/m.onnx")
    with pytest.raises(ConfigError, match=r"package:nope\.onnx.*known: .*package:dapb_predictor\.onnx"):
        load_settings(None, environ={"DAPB_AGENT__MODEL": "package:nope.onnx"})


# ---- the filter's OCI image and the manifests that name it ---------------------------------------------------


def test_filter_image_is_deterministic_and_in_the_compat_layout_istio_reads(tmp_path):
    wasm = artifacts.path(artifacts.WASM_FILTER)
    first = artifacts.write_filter_image(wasm, tmp_path / "a", "0.1.0")
    again = artifacts.write_filter_image(wasm, tmp_path / "b", "0.1.0")
    assert first == again, "the same module must give the same digest on every build"
    digest, module = wasm_istio_would_load(tmp_path / "a", "0.1.0")
    assert digest == first and module == wasm.read_bytes()
    (tmp_path / "not.wasm").write_bytes(b"hello")
    with pytest.raises(artifacts.ArtifactError, match="not a WebAssembly module"):
        artifacts.write_filter_image(tmp_path / "not.wasm", tmp_path / "d", "x")


def test_render_pins_the_images_given_and_names_placeholders(tmp_path):
    import kubernetes_validate
    from cloudcoil.models.istio.extensions.v1alpha1 import WasmPlugin

    hex_agent, hex_filter = "a" * 64, "b" * 64
    images = Images("registry.local:5000/dapb/agent:1", hex_agent, "registry.local:5000/dapb/filter:1", hex_filter)
    docs = render(images=images)
    plugin = docs["wasmplugin.yaml"][0]
    assert plugin["spec"]["url"] == "oci://registry.local:5000/dapb/filter:1"
    assert plugin["spec"]["sha256"] == hex_filter
    WasmPlugin.model_validate(plugin)
    daemonset = next(d for d in docs["agent.yaml"] if d["kind"] == "DaemonSet")
    assert daemonset["spec"]["template"]["spec"]["containers"][0]["image"] == f"{images.agent}@sha256:{hex_agent}"
    kubernetes_validate.validate(daemonset, "1.37.0", strict=True)
    assert "sha256" not in render()["wasmplugin.yaml"][0]["spec"], "no digest is invented for a placeholder"

    out = subprocess.run(
        [sys.executable, "-m", "dapb_mesh.cli", "render", "istio", "--out", tmp_path / "default"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for name, role in (("agent.yaml", "agent"), ("wasmplugin.yaml", "filter")):
        text = (tmp_path / "default" / name).read_text()
        assert f"# PLACEHOLDER image {PLACEHOLDER_REGISTRY}/dapb-{role}:" in text and f"--{role}-image" in text
    assert " ".join(out.stderr.split()).count("placeholder image") == 2


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry on a free loopback port, its storage under tmp_path; stopped after."""
    need("docker-registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "registry")}},
                "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
            }
        )
    )
    log = (tmp_path / "registry.log").open("w")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as answer:
                    assert answer.status == 200
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "registry.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the registry did not answer in 15 s"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_filter_image_pushed_and_pulled_back_has_the_digest_the_wasmplugin_carries(registry, tmp_path):
    need("skopeo")
    tag = "0.1.0"
    built = run(["bash", IMAGES, "filter", tmp_path / "built", tag], timeout=60).stdout.strip()
    ref = f"{registry}/dapb/dapb-filter:{tag}"
    run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp_path / 'built'}:{tag}", f"docker://{ref}"], 60)
    inspect = json.loads(run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], 60).stdout)
    assert inspect["Digest"] == built, "the registry must serve the manifest as built"
    run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'pulled'}:{tag}"], 60)
    pulled, module = wasm_istio_would_load(tmp_path / "pulled", tag)
    assert pulled == built
    assert module == artifacts.path(artifacts.WASM_FILTER).read_bytes()

    out = tmp_path / "istio"
    run([sys.executable, "-m", "dapb_mesh.cli", "render", "istio", "--out", out, "--filter-image", ref,
         "--filter-digest", pulled], timeout=60)  # fmt: skip
    plugin = yaml.safe_load((out / "wasmplugin.yaml").read_text())
    assert plugin["spec"]["url"] == f"oci://{ref}"
    assert "sha256:" + plugin["spec"]["sha256"] == pulled
    assert "PLACEHOLDER" not in (out / "wasmplugin.yaml").read_text()


# ---- the wheel, outside the repository -----------------------------------------------------------------------


WHERE = """
import json, dapb_mesh
from dapb_mesh import artifacts as a
print(json.dumps([dapb_mesh.__file__, str(a.source_tree()), {x.name: str(a.path(x)) for x in a.ARTIFACTS}]))
"""


@pytest.fixture(scope="module")
def installed():
    """A fresh venv outside the repository with the wheel and its dependencies installed from wheels only;
    removed afterwards (it is about 900 MB)."""
    scratch = Path(tempfile.mkdtemp(prefix="dapb-wheel-test-"))
    try:
        wheels, venv = scratch / "wheels", scratch / "venv"
        assert not venv.is_relative_to(ROOT)
        run(["bash", IMAGES, "wheels", wheels], timeout=900)
        run([sys.executable, "-m", "venv", venv], timeout=120)
        run([venv / "bin" / "pip", "install", "-q", "--no-index", "--find-links", wheels, "dapb-mesh"], timeout=900)
        yield venv
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_the_wheel_installed_outside_the_repository_runs_on_its_own_artifacts(installed, tmp_path):
    bin_dir, env = installed / "bin", user_env()
    where = json.loads(run([bin_dir / "python", "-c", WHERE], timeout=60, cwd=tmp_path, env=env).stdout)
    package, source_tree, paths = where
    assert Path(package).is_relative_to(installed) and source_tree == "None"
    for artifact in artifacts.ARTIFACTS:
        shipped = Path(paths[artifact.name])
        assert shipped.is_relative_to(installed), shipped
        assert shipped.read_bytes() == (ROOT / artifact.source).read_bytes(), f"{artifact.name} is not the build's"

    explain = run(
        [bin_dir / "dapb", "policy", "explain", "--rtt-ms", "20", "--loss", "0.01", "--jitter-ms", "3",
         "--sensitivity", "auto", "--json"],
        timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    decision = json.loads(explain.stdout)
    assert decision["buffer_bytes"] > 0 and decision["timeout_ms"] > 0

    classified = run(
        [bin_dir / "dapb", "filter", "test", "-H", "priority: u=0", "--route", "telemetry"],
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert "x-dapb-class: latency" in classified.stdout

    doctor = subprocess.run(
        [bin_dir / "dapb", "doctor", "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    report = json.loads(doctor.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert doctor.returncode == 0 and report["ok"], f"doctor outside the repository: {failed}"
    programs = next(c for c in report["checks"] if c["name"] == "dapb_programs")
    assert "dapb.bpf.o" in programs["detail"]


# ---- the agent image -----------------------------------------------------------------------------------------


def seccomp_profile(out: Path) -> Path:
    """podman's default seccomp profile, with bpf(2) allowed to CAP_BPF and perf_event_open(2) to CAP_PERFMON as
    containerd's RuntimeDefault allows them (podman 4.3's allows both only to CAP_SYS_ADMIN)."""
    profile = json.loads(Path("/usr/share/containers/seccomp.json").read_text())
    granted = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
    for rule in profile["syscalls"]:
        if rule["action"] != "SCMP_ACT_ALLOW" and rule.get("excludes", {}).get("caps") == ["CAP_SYS_ADMIN"]:
            rule["names"] = [name for name in rule["names"] if name not in granted]
    profile["syscalls"] += [
        {"names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}} for name, cap in granted.items()
    ]
    out.write_text(json.dumps(profile))
    return out


def test_agent_image_passes_doctor_with_only_bpf_net_admin_and_perfmon(tmp_path):
    """Built from deploy/Containerfile with buildah and run with podman, with these and nothing else:
    - capabilities: all dropped, then CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON added (the DaemonSet's);
    - /sys/fs/bpf: the host's bpffs, read-write (the agent pins there);
    - /sys/fs/cgroup/unified: a cgroup v2 directory of the host made for this run, read-write: the doctor's knob
      probe makes a scratch cgroup in it, and without CAP_DAC_OVERRIDE root may not write the root cgroup (0555);
    - --network none: the container's own network namespace (lo only), where the doctor makes its scratch veth
      and connection, since without CAP_SYS_ADMIN it cannot make a namespace;
    - seccomp: podman's default profile plus bpf(2) for CAP_BPF and perf_event_open(2) for CAP_PERFMON;
    - rlimits no higher than this process's: this sandbox has no CAP_SYS_RESOURCE to raise them;
    - runc: crun 1.8 refuses this host's hybrid cgroup layout (its v2 tree holds the hugetlb controller)."""
    need("podman", "buildah", "mmdebstrap", "runc")
    tag = f"localhost/dapb-agent:test-{uuid.uuid4().hex[:8]}"
    cgroup = Path("/sys/fs/cgroup/unified") / f"dapb-image-test-{uuid.uuid4().hex[:8]}"
    try:
        started = time.monotonic()
        run(["bash", IMAGES, "agent", tag], timeout=1500)
        print(f"agent image built in {time.monotonic() - started:.0f} s", file=sys.stderr)
        cgroup.mkdir()
        argv = [
            "podman", "run", "--rm", "--runtime", "runc", "--network", "none",
            "--cap-drop", "all", "--cap-add", ",".join(CAPS),
            "--security-opt", f"seccomp={seccomp_profile(tmp_path / 'seccomp.json')}",
            "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
            "-v", "/sys/fs/bpf:/sys/fs/bpf", "-v", f"{cgroup}:/sys/fs/cgroup/unified",
            tag, "doctor", "--json",
        ]  # fmt: skip
        doctor = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert doctor.stdout.strip(), f"no report from the container: {doctor.stderr[-3000:]}"
        report = json.loads(doctor.stdout)
        failed = [c for c in report["checks"] if not c["ok"]]
        assert doctor.returncode == 0 and report["ok"], f"doctor in the agent image: {failed}"
        privileges = next(c for c in report["checks"] if c["name"] == "privileges")
        held = set(privileges["detail"].split("capabilities: ")[1].split(", "))
        assert held == set(CAPS), f"the container held {held}"
    finally:
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True, timeout=120)
        with suppress(OSError):
            cgroup.rmdir()
