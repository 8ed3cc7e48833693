"""A thin ctypes binding over libbpf.so.1: only the calls dapb-mesh uses, each checked and turned into OSError.

libbpf returns negative errno values (libbpf 1.x mode); pointers come back NULL with errno set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from enum import IntEnum
from functools import cache


class ProgType(IntEnum):
    """enum bpf_prog_type values used here (checked against the kernel's BTF in tests)."""

    SCHED_CLS = 3
    SOCK_OPS = 13
    SK_MSG = 16
    CGROUP_SOCKOPT = 25
    STRUCT_OPS = 27


class MapType(IntEnum):
    """enum bpf_map_type values used here."""

    HASH = 1
    ARRAY = 2
    LRU_HASH = 9
    SOCKHASH = 18
    SK_STORAGE = 24
    RINGBUF = 27


class FuncId(IntEnum):
    """enum bpf_func_id values of the helpers the programs call."""

    SETSOCKOPT = 49
    SOCK_OPS_CB_FLAGS_SET = 59
    MSG_CORK_BYTES = 62
    SOCK_HASH_UPDATE = 70


class AttachType(IntEnum):
    """enum bpf_attach_type values used here."""

    CGROUP_SOCK_OPS = 3
    SK_MSG_VERDICT = 7
    CGROUP_GETSOCKOPT = 21
    CGROUP_SETSOCKOPT = 22


class LibbpfError(OSError):
    pass


@cache
def lib() -> ctypes.CDLL:
    """The loaded libbpf.so.1, with the signatures dapb-mesh calls declared."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        so = ctypes.CDLL(name, use_errno=True)
    except OSError as error:
        raise LibbpfError(errno.ENOENT, f"cannot load libbpf ({name}): {error}; install libbpf1") from None
    c_int, c_uint, c_void_p = ctypes.c_int, ctypes.c_uint, ctypes.c_void_p
    signatures: dict[str, tuple[list, type | None]] = {
        "libbpf_major_version": ([], c_uint),
        "libbpf_minor_version": ([], c_uint),
        "libbpf_probe_bpf_prog_type": ([c_int, c_void_p], c_int),
        "libbpf_probe_bpf_map_type": ([c_int, c_void_p], c_int),
        "libbpf_probe_bpf_helper": ([c_int, c_int, c_void_p], c_int),
    }
    for fn, (args, res) in signatures.items():
        getattr(so, fn).argtypes = args
        getattr(so, fn).restype = res
    return so


def version() -> str:
    so = lib()
    return f"{so.libbpf_major_version()}.{so.libbpf_minor_version()}"


def _probe_result(rc: int, what: str) -> bool:
    if rc < 0:
        raise LibbpfError(-rc, f"probing {what}: {os.strerror(-rc)}")
    return rc == 1


def probe_prog_type(prog: ProgType) -> bool:
    """True if the kernel loads a program of this type."""
    return _probe_result(lib().libbpf_probe_bpf_prog_type(prog, None), f"program type {prog.name}")


def probe_map_type(kind: MapType) -> bool:
    """True if the kernel creates a map of this type."""
    return _probe_result(lib().libbpf_probe_bpf_map_type(kind, None), f"map type {kind.name}")


def probe_helper(prog: ProgType, helper: FuncId) -> bool:
    """True if programs of type ``prog`` may call ``helper``."""
    return _probe_result(lib().libbpf_probe_bpf_helper(prog, helper, None), f"helper {helper.name} in {prog.name}")
