"""bpf/dapb.h is the one definition: the ctypes mirror and the libbpf enum values must match it exactly."""

import ctypes
import re
import subprocess
from pathlib import Path

import pytest

from dapb_mesh.kernel import layout
from dapb_mesh.kernel.libbpf import AttachType, FuncId, MapType, ProgType
from dapb_mesh.policy import urgency

BPF = Path(__file__).resolve().parents[1] / "bpf"


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> dict[str, int]:
    """Compile a program that prints sizeof/offsetof of every mirrored field and every constant, and run it."""
    lines = []
    for struct, mirror in layout.STRUCTS.items():
        lines.append(f'printf("{struct} %zu\\n", sizeof(struct {struct}));')
        for name, _ in mirror._fields_:
            lines.append(f'printf("{struct}.{name} %zu\\n", offsetof(struct {struct}, {name}));')
    for const in layout.CONSTANTS:
        lines.append(f'printf("{const} %lld\\n", (long long)({const}));')
    src = tmp_path_factory.mktemp("layout") / "layout.c"
    src.write_text(
        '#include <stdio.h>\n#include <stddef.h>\n#include "dapb.h"\nint main(void) {\n'
        + "\n".join(lines)
        + "\nreturn 0;\n}\n"
    )
    exe = src.with_suffix("")
    subprocess.run(["clang", "-I", str(BPF), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_struct_sizes_and_offsets_match(c_layout):
    for struct, mirror in layout.STRUCTS.items():
        assert ctypes.sizeof(mirror) == c_layout[struct], struct
        for name, _ in mirror._fields_:
            assert getattr(mirror, name).offset == c_layout[f"{struct}.{name}"], f"{struct}.{name}"


def test_constants_match(c_layout):
    for const, value in layout.CONSTANTS.items():
        assert value == c_layout[const], const


def test_policy_dscp_values_are_the_kernel_ones():
    assert urgency.DSCP_LATENCY == layout.DSCP_LATENCY
    assert urgency.DSCP_THROUGHPUT == layout.DSCP_THROUGHPUT


def test_libbpf_enum_values_match_this_kernels_btf():
    vmlinux = (BPF / ".output" / "vmlinux.h").read_text()
    checks = {f"BPF_PROG_TYPE_{e.name}": e.value for e in ProgType}
    checks |= {f"BPF_MAP_TYPE_{e.name}": e.value for e in MapType}
    checks |= {f"BPF_FUNC_{e.name.lower()}": e.value for e in FuncId}
    checks |= {f"BPF_{e.name}": e.value for e in AttachType}
    for name, value in checks.items():
        match = re.search(rf"\b{name} = (\d+),", vmlinux)
        assert match, name
        assert int(match.group(1)) == value, name
