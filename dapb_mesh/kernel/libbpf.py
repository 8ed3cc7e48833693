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
from pathlib import Path


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
    c_int, c_uint, c_void_p, c_char_p = ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_char_p
    signatures: dict[str, tuple[list, type | None]] = {
        "libbpf_major_version": ([], c_uint),
        "libbpf_minor_version": ([], c_uint),
        "libbpf_probe_bpf_prog_type": ([c_int, c_void_p], c_int),
        "libbpf_probe_bpf_map_type": ([c_int, c_void_p], c_int),
        "libbpf_probe_bpf_helper": ([c_int, c_int, c_void_p], c_int),
        "libbpf_num_possible_cpus": ([], c_int),
        "bpf_enable_stats": ([c_int], c_int),
        "bpf_object__open_file": ([c_char_p, c_void_p], c_void_p),
        "bpf_object__load": ([c_void_p], c_int),
        "bpf_object__close": ([c_void_p], None),
        "bpf_object__find_program_by_name": ([c_void_p, c_char_p], c_void_p),
        "bpf_object__find_map_by_name": ([c_void_p, c_char_p], c_void_p),
        "bpf_program__fd": ([c_void_p], c_int),
        "bpf_program__attach_cgroup": ([c_void_p, c_int], c_void_p),
        "bpf_map__fd": ([c_void_p], c_int),
        "bpf_map__reuse_fd": ([c_void_p, c_int], c_int),
        "bpf_map__type": ([c_void_p], c_int),
        "bpf_map__key_size": ([c_void_p], c_uint),
        "bpf_map__value_size": ([c_void_p], c_uint),
        "bpf_map__max_entries": ([c_void_p], c_uint),
        "bpf_map__map_flags": ([c_void_p], c_uint),
        "bpf_link__pin": ([c_void_p, c_char_p], c_int),
        "bpf_link__fd": ([c_void_p], c_int),
        "bpf_link__destroy": ([c_void_p], c_int),
        "bpf_link_detach": ([c_int], c_int),
        "bpf_link_update": ([c_int, c_int, c_void_p], c_int),
        "bpf_prog_attach": ([c_int, c_int, c_int, c_uint], c_int),
        "bpf_prog_detach2": ([c_int, c_int, c_int], c_int),
        "bpf_obj_pin": ([c_int, c_char_p], c_int),
        "bpf_obj_get": ([c_char_p], c_int),
        "bpf_map_update_elem": ([c_int, c_void_p, c_void_p, ctypes.c_uint64], c_int),
        "bpf_map_lookup_elem": ([c_int, c_void_p, c_void_p], c_int),
        "bpf_map_delete_elem": ([c_int, c_void_p], c_int),
        "bpf_map_get_next_key": ([c_int, c_void_p, c_void_p], c_int),
        "bpf_map_lookup_batch": ([c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p], c_int),
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


def check(rc: int, what: str) -> int:
    """Raise LibbpfError for a negative libbpf return code; return it otherwise."""
    if rc < 0:
        code = -rc if rc != -1 else (ctypes.get_errno() or errno.EIO)
        raise LibbpfError(code, f"{what}: {os.strerror(code)}")
    return rc


def check_ptr(ptr: int | None, what: str) -> int:
    """Raise LibbpfError when libbpf returned NULL (errno tells why)."""
    if not ptr:
        code = ctypes.get_errno() or errno.EIO
        raise LibbpfError(code, f"{what}: {os.strerror(code)}")
    return ptr


def num_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "counting possible CPUs")


def obj_get(path: str) -> int:
    """An fd for a pinned object, or LibbpfError (ENOENT if nothing is pinned there)."""
    return check(lib().bpf_obj_get(path.encode()), f"opening pin {path}")


def map_shape(fd: int) -> tuple[int, int, int, int, int]:
    """(type, key size, value size, max entries, flags) of a map fd, from /proc/self/fdinfo."""
    lines = Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
    info = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    return tuple(int(info[k].strip(), 0) for k in ("map_type", "key_size", "value_size", "max_entries", "map_flags"))


def obj_pin(fd: int, path: str) -> None:
    check(lib().bpf_obj_pin(fd, path.encode()), f"pinning at {path}")


def map_update(fd: int, key: ctypes._SimpleCData | ctypes.Structure, value, flags: int = 0) -> None:
    check(lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), flags), "updating a map element")


def map_lookup(fd: int, key, value) -> bool:
    """Fill ``value`` for ``key``; False if the key is absent."""
    rc = lib().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if rc == -errno.ENOENT or (rc == -1 and ctypes.get_errno() == errno.ENOENT):
        return False
    check(rc, "looking up a map element")
    return True


def map_delete(fd: int, key) -> bool:
    rc = lib().bpf_map_delete_elem(fd, ctypes.byref(key))
    if rc == -errno.ENOENT or (rc == -1 and ctypes.get_errno() == errno.ENOENT):
        return False
    check(rc, "deleting a map element")
    return True


def map_keys(fd: int, key_type: type, limit: int = 1 << 20) -> list:
    """Every key of a hash map (bounded by ``limit`` so a racing writer cannot make this loop forever)."""
    keys = []
    key = None
    next_key = key_type()
    while len(keys) < limit:
        rc = lib().bpf_map_get_next_key(fd, None if key is None else ctypes.byref(key), ctypes.byref(next_key))
        if rc == -errno.ENOENT or (rc == -1 and ctypes.get_errno() == errno.ENOENT):
            break
        check(rc, "iterating a map")
        if issubclass(key_type, ctypes.Structure):
            key = key_type.from_buffer_copy(next_key)
            keys.append(key)
        else:
            keys.append(next_key.value)
            key = key_type(next_key.value)
    return keys


class run_time_stats:
    """Keep the kernel's per-program run-time accounting on while open (BPF_ENABLE_STATS; off again on close)."""

    def __enter__(self) -> run_time_stats:
        self.fd = check(lib().bpf_enable_stats(0), "enabling BPF run-time statistics")  # BPF_STATS_RUN_TIME
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def prog_run_time(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program fd, from /proc/self/fdinfo (counted only while stats are on)."""
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    return int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0))


def map_read_all(fd: int, key_type: type, value_type: type, capacity: int, chunk: int = 4096):
    """Every value of a hash map, as one ctypes array, in BPF_MAP_LOOKUP_BATCH calls of ``chunk`` entries."""
    parts = []
    keys = (key_type * chunk)()
    in_batch = ctypes.c_uint64(0)
    out_batch = ctypes.c_uint64(0)
    first, total = True, 0
    while total <= capacity:
        values = (value_type * chunk)()
        count = ctypes.c_uint32(chunk)
        rc = lib().bpf_map_lookup_batch(
            fd,
            None if first else ctypes.byref(in_batch),
            ctypes.byref(out_batch),
            keys,
            values,
            ctypes.byref(count),
            None,
        )
        err = -rc if rc < -1 else (ctypes.get_errno() if rc == -1 else 0)
        if count.value:
            parts.append((values, count.value))
            total += count.value
        if err == errno.ENOENT:
            break
        if rc < 0:
            check(rc, "batch lookup")
        in_batch.value = out_batch.value
        first = False
    out = (value_type * total)()
    offset = 0
    for values, n in parts:
        ctypes.memmove(ctypes.byref(out, offset * ctypes.sizeof(value_type)), values, n * ctypes.sizeof(value_type))
        offset += n
    return out
