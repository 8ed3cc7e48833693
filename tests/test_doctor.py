"""`dapb doctor` probes the real kernel of this machine (root, BPF-capable, as CI runs)."""

import json
import subprocess
import sys

from dapb_mesh.config import KernelConfig
from dapb_mesh.doctor import Check, check_bpffs, kernel_version, report

EXPECTED = {
    "kernel",
    "privileges",
    "libbpf",
    "bpf_syscall",
    "bpffs",
    "btf",
    "cgroup2",
    "sock_ops",
    "sk_msg",
    "cgroup_sockopt",
    "tc_bpf",
    "sockhash",
    "lru_hash",
    "sk_storage",
    "ringbuf",
    "bpf_setsockopt",
    "sock_hash_update",
    "msg_cork_bytes",
    "clsact",
    "dapb_programs",
    "socket_knobs",
}


def test_doctor_json_reports_every_feature_ok_on_this_machine():
    out = subprocess.run(
        [sys.executable, "-m", "dapb_mesh.cli", "doctor", "--json"], capture_output=True, text=True, timeout=120
    )
    result = json.loads(out.stdout)
    names = {c["name"] for c in result["checks"]}
    assert names == EXPECTED
    assert all({"name", "ok", "detail"} <= c.keys() for c in result["checks"])
    failed = [c for c in result["checks"] if not c["ok"]]
    assert result["ok"] is True, failed
    assert out.returncode == 0


def test_a_missing_bpffs_is_reported_with_the_fix(tmp_path):
    check = check_bpffs(KernelConfig(bpffs=tmp_path))
    assert not check.ok and "mount -t bpf" in check.detail
    assert report([check, Check("x", True, "")])["ok"] is False


def test_kernel_version_parsing():
    assert kernel_version("6.18.44-fc-v669") == (6, 18)
    assert kernel_version("5.10.0") == (5, 10)
