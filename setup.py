"""The wheel carries the built artifacts (BPF object, Wasm filter, predictor model) as package data.

Everything else is in pyproject.toml. Building a wheel copies the repository's build outputs into
dapb_mesh/_artifacts/ of the build directory (never into the source tree); a missing one stops the build with the
command that makes it. An editable install copies nothing: dapb_mesh/artifacts.py then finds the checkout's files.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
ARTIFACTS = {  # mirrors dapb_mesh/artifacts.py ARTIFACTS (tests/test_artifacts.py checks that they agree)
    "dapb.bpf.o": ("bpf/.output/dapb.bpf.o", "make -C bpf"),
    "dapb_filter.wasm": ("wasm_filter/dapb_filter.wasm", "make -C wasm_filter"),
    "dapb_predictor.onnx": ("models/dapb_predictor.onnx", "dapb train fit"),
}


class BuildPyWithArtifacts(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "dapb_mesh" / "_artifacts"
        target.mkdir(parents=True, exist_ok=True)
        for name, (source, build) in ARTIFACTS.items():
            path = ROOT / source
            if not path.is_file():
                raise SystemExit(f"cannot build the wheel: {source} is missing; build it with `{build}`")
            shutil.copyfile(path, target / name)


setup(cmdclass={"build_py": BuildPyWithArtifacts})
