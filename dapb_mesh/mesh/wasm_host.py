"""A proxy-wasm host (ABI v0.2.1) on wasmtime: runs the same .wasm Envoy runs, without Envoy, for unit tests and
`dapb filter test`. Enough of the ABI for HTTP filters: headers, properties, plugin configuration, body buffers,
logging, local replies, timers and the clock.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

from dapb_mesh.classes import CLASS_HEADER

OK, NOT_FOUND, BAD_ARGUMENT = 0, 1, 2
MAP_REQUEST_HEADERS, MAP_REQUEST_TRAILERS, MAP_RESPONSE_HEADERS = 0, 1, 2
BUFFER_REQUEST_BODY, BUFFER_RESPONSE_BODY, BUFFER_PLUGIN_CONFIGURATION = 0, 1, 7
ACTION_CONTINUE, ACTION_PAUSE, ACTION_PAUSE_WATERMARK = 0, 1, 2  # Continue, StopIterationAnd{Buffer,Watermark}
STREAM_REQUEST, STREAM_RESPONSE = 0, 1
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "critical")
ROOT_CONTEXT = 1


class HostError(RuntimeError):
    """The module needs something this host does not provide, or broke the ABI."""


@dataclass(frozen=True)
class FilterRefusal:
    """An entry of its configuration the filter refused, from its log: the key as written in the JSON (cut to
    LOG_KEY_BYTES), the short code, the reason."""

    key: str
    code: str
    reason: str


_REFUSED = re.compile(r'dapb: refused "(?P<key>.*)" \((?P<code>\w+)\): (?P<reason>.*)', re.DOTALL)
_REJECTED = re.compile(r"dapb: configuration rejected \((?P<reason>.*)\)", re.DOTALL)


def read_refusals(logs: list[tuple[str, str]]) -> tuple[list[FilterRefusal], str | None]:
    """What the filter logged about a configuration: the entries it refused, and why it rejected the whole text
    (None: it took it)."""
    refused, rejected = [], None
    for _level, line in logs:
        if m := _REFUSED.fullmatch(line):
            refused.append(FilterRefusal(m["key"], m["code"], m["reason"]))
        elif m := _REJECTED.match(line):
            rejected = m["reason"]
    return refused, rejected


@dataclass
class LocalReply:
    status: int
    details: str
    body: bytes
    headers: list[tuple[str, str]]


@dataclass
class Stream:
    """One HTTP request/response as the host sees it."""

    request_headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    request_body: bytearray = field(default_factory=bytearray)
    response_body: bytearray = field(default_factory=bytearray)
    properties: dict[str, bytes] = field(default_factory=dict)
    local_reply: LocalReply | None = None
    continued: list[int] = field(default_factory=list)
    forwarded: list[tuple[int, bytes]] = field(default_factory=list)  # (host time ns, one upstream write)
    returned: list[tuple[int, bytes]] = field(default_factory=list)  # (host time ns, one downstream write)
    root: int = ROOT_CONTEXT
    # Where the body the filter sees starts, per direction: after StopIterationAndBuffer it sees all that is
    # buffered; after StopIterationAndWatermark (or CONTINUE) only the newest chunk, as in Envoy.
    visible_from: dict[int, int] = field(default_factory=lambda: {STREAM_REQUEST: 0, STREAM_RESPONSE: 0})
    last_action: dict[int, int] = field(default_factory=lambda: {STREAM_REQUEST: 0, STREAM_RESPONSE: 0})

    def body(self, stream_type: int) -> bytearray:
        return self.request_body if stream_type == STREAM_REQUEST else self.response_body

    def release(self, now_ns: int, stream_type: int = STREAM_REQUEST) -> None:
        """What Envoy does on CONTINUE: everything buffered goes on as one write, in order."""
        body = self.body(stream_type)
        out = self.forwarded if stream_type == STREAM_REQUEST else self.returned
        if body:
            out.append((now_ns, bytes(body)))
            body.clear()


_COMPILED: dict[tuple[str, int, int], tuple[wasmtime.Engine, wasmtime.Module]] = {}


def _compiled(wasm: Path) -> tuple[wasmtime.Engine, wasmtime.Module]:
    """The module compiled once per file version (compiling takes ~65 ms; an instance ~1 ms)."""
    stat = wasm.stat()
    key = (str(wasm.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _COMPILED:
        engine = wasmtime.Engine()
        _COMPILED[key] = engine, wasmtime.Module.from_file(engine, str(wasm))
    return _COMPILED[key]


class ProxyWasmHost:
    def __init__(self, wasm: Path, plugin_config: bytes = b"", properties: dict[str, bytes] | None = None):
        self.engine, self.module = _compiled(wasm)
        self.store = wasmtime.Store(self.engine)  # a fresh instance: its own memory and globals
        self.plugin_config = plugin_config
        self.properties = properties or {}
        self.logs: list[tuple[str, str]] = []
        self.tick_period_ms = 0
        self.now_ns = 0
        self.stream: Stream | None = None  # the effective stream context
        self.streams: dict[int, Stream] = {}
        self.roots = [ROOT_CONTEXT]  # live root contexts; the last one configured gets new streams
        self.next_context = ROOT_CONTEXT + 1
        self.refused: list[FilterRefusal] = []  # what the filter refused of the latest configuration
        self.rejected: str | None = None  # why it rejected the latest configuration whole (None: it took it)
        linker = wasmtime.Linker(self.engine)
        table = self._imports()
        for imp in self.module.imports:
            if imp.module != "env" or imp.name not in table:
                raise HostError(f"the module imports {imp.module}.{imp.name}, which this host does not provide")
            params, fn = table[imp.name]
            ty = wasmtime.FuncType([wasmtime.ValType.i32()] * params, [wasmtime.ValType.i32()])
            linker.define(self.store, "env", imp.name, wasmtime.Func(self.store, ty, fn))
        self.instance = linker.instantiate(self.store, self.module)
        exports = self.instance.exports(self.store)
        self.memory = exports["memory"]
        self._exports = {name: exports[name] for name in (e.name for e in self.module.exports)}  # looked up once
        if "proxy_abi_version_0_2_1" not in exports:
            raise HostError("the module does not declare proxy-wasm ABI v0.2.1 (proxy_abi_version_0_2_1)")
        self._call("proxy_on_context_create", ROOT_CONTEXT, 0)

    # -- memory helpers -----------------------------------------------------------------------------------
    def _read(self, ptr: int, size: int) -> bytes:
        return bytes(self.memory.read(self.store, ptr, ptr + size))

    def _write(self, ptr: int, data: bytes) -> None:
        self.memory.write(self.store, data, ptr)

    def _give(self, data: bytes, ret_ptr: int, ret_size: int) -> int:
        """Copy data into plugin memory (its own allocator) and return pointer and size through its pointers."""
        ptr = self._call("proxy_on_memory_allocate", max(1, len(data)))
        if not ptr:
            raise HostError("proxy_on_memory_allocate returned 0")
        self._write(ptr, data)
        self._write(ret_ptr, struct.pack("<I", ptr))
        self._write(ret_size, struct.pack("<I", len(data)))
        return OK

    def _call(self, name: str, *args: int) -> int:
        fn = self._exports.get(name)
        if fn is None:
            return 0
        result = fn(self.store, *args)
        return int(result) if result is not None else 0

    # -- host functions -----------------------------------------------------------------------------------
    def _map(self, map_id: int) -> dict[str, str]:
        if self.stream is None:
            raise HostError("header maps exist only inside a stream")
        if map_id == MAP_REQUEST_HEADERS:
            return self.stream.request_headers
        if map_id == MAP_RESPONSE_HEADERS:
            return self.stream.response_headers
        return {}

    def _buffer(self, buffer_id: int) -> bytes | bytearray | None:
        if buffer_id == BUFFER_PLUGIN_CONFIGURATION:
            return self.plugin_config
        if self.stream is None or buffer_id not in (BUFFER_REQUEST_BODY, BUFFER_RESPONSE_BODY):
            return None
        body = self.stream.body(buffer_id)  # buffer ids 0 and 1 match the stream types
        start = self.stream.visible_from[buffer_id]
        return body if start == 0 else bytes(body[start:])

    def _imports(self) -> dict[str, tuple[int, Callable]]:
        def log(level, ptr, size):
            self.logs.append(
                (
                    LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS) else str(level),
                    self._read(ptr, size).decode(errors="replace"),
                )
            )
            return OK

        def get_buffer_bytes(buffer_id, start, max_size, ret_ptr, ret_size):
            buf = self._buffer(buffer_id)
            if buf is None:
                return NOT_FOUND
            return self._give(bytes(buf[start : start + max_size]), ret_ptr, ret_size)

        def get_buffer_status(buffer_id, ret_size, ret_flags):
            buf = self._buffer(buffer_id)
            if buf is None:
                return NOT_FOUND
            self._write(ret_size, struct.pack("<I", len(buf)))
            self._write(ret_flags, struct.pack("<I", 0))
            return OK

        def set_buffer_bytes(buffer_id, start, size, ptr, value_size):
            buf = self._buffer(buffer_id)
            if not isinstance(buf, bytearray):
                return NOT_FOUND
            buf[start : start + size] = self._read(ptr, value_size)
            return OK

        def get_header(map_id, kptr, ksize, ret_ptr, ret_size):
            value = self._map(map_id).get(self._read(kptr, ksize).decode().lower())
            return NOT_FOUND if value is None else self._give(value.encode(), ret_ptr, ret_size)

        def replace_header(map_id, kptr, ksize, vptr, vsize):
            self._map(map_id)[self._read(kptr, ksize).decode().lower()] = self._read(vptr, vsize).decode()
            return OK

        def remove_header(map_id, kptr, ksize):
            self._map(map_id).pop(self._read(kptr, ksize).decode().lower(), None)
            return OK

        def get_property(pptr, psize, ret_ptr, ret_size):
            path = ".".join(part.decode() for part in self._read(pptr, psize).split(b"\0") if part)
            props = {**self.properties, **(self.stream.properties if self.stream else {})}
            return NOT_FOUND if path not in props else self._give(props[path], ret_ptr, ret_size)

        def send_local_response(status, dptr, dsize, bptr, bsize, hptr, hsize, grpc_status):
            if self.stream is None:
                return BAD_ARGUMENT
            self.stream.local_reply = LocalReply(status, self._read(dptr, dsize).decode(), self._read(bptr, bsize), [])
            return OK

        def set_tick_period(ms):
            self.tick_period_ms = ms
            return OK

        def current_time(ret_ptr):
            self._write(ret_ptr, struct.pack("<Q", self.now_ns))
            return OK

        def continue_stream(stream_type):
            if self.stream is not None:
                self.stream.continued.append(stream_type)
                self.stream.release(self.now_ns, stream_type)
            return OK

        def set_effective_context(ctx):
            if ctx not in self.streams:
                return BAD_ARGUMENT
            self.stream = self.streams[ctx]
            return OK

        return {
            "proxy_log": (3, log),
            "proxy_get_buffer_bytes": (5, get_buffer_bytes),
            "proxy_get_buffer_status": (3, get_buffer_status),
            "proxy_set_buffer_bytes": (5, set_buffer_bytes),
            "proxy_get_header_map_value": (5, get_header),
            "proxy_replace_header_map_value": (5, replace_header),
            "proxy_add_header_map_value": (5, replace_header),
            "proxy_remove_header_map_value": (3, remove_header),
            "proxy_get_property": (4, get_property),
            "proxy_send_local_response": (8, send_local_response),
            "proxy_set_tick_period_milliseconds": (1, set_tick_period),
            "proxy_get_current_time_nanoseconds": (1, current_time),
            "proxy_continue_stream": (1, continue_stream),
            "proxy_set_effective_context": (1, set_effective_context),
        }

    # -- the host's side of the ABI -----------------------------------------------------------------------
    def _configure(self, root: int) -> bool:
        start = len(self.logs)
        ok = bool(self._call("proxy_on_configure", root, len(self.plugin_config)))
        self.refused, self.rejected = read_refusals(self.logs[start:])
        return ok

    def configure(self) -> bool:
        """Start the VM and configure the first root context; ``refused`` and ``rejected`` then say what the filter
        did not take."""
        self._call("proxy_on_vm_start", ROOT_CONTEXT, 0)
        return self._configure(ROOT_CONTEXT)

    def reconfigure(self, plugin_config: bytes) -> tuple[int, bool]:
        """A new plugin configuration as Envoy applies one: a new root context in the same VM; streams already
        open stay with the root they started under. Returns (root id, accepted)."""
        root = self.next_context
        self.next_context += 1
        self.plugin_config = plugin_config
        self._call("proxy_on_context_create", root, 0)
        self.roots.append(root)
        return root, self._configure(root)

    def delete_root(self, root: int) -> None:
        """Envoy drops a replaced configuration's root context."""
        self.stream = None
        self._call("proxy_on_done", root)
        self._call("proxy_on_delete", root)
        self.roots.remove(root)

    def new_stream(self, properties: dict[str, bytes] | None = None) -> tuple[int, Stream]:
        ctx = self.next_context
        self.next_context += 1
        self.stream = Stream(properties=properties or {}, root=self.roots[-1])
        self.streams[ctx] = self.stream
        self._call("proxy_on_context_create", ctx, self.stream.root)
        return ctx, self.stream

    def request_headers(self, ctx: int, headers: dict[str, str], end_of_stream: bool = False) -> int:
        self.stream = self.streams[ctx]
        self.stream.request_headers.update({k.lower(): v for k, v in headers.items()})
        return self._call("proxy_on_request_headers", ctx, len(headers), int(end_of_stream))

    def request_body(self, ctx: int, chunk: bytes, end_of_stream: bool = False) -> int:
        """A body chunk arrives; on CONTINUE the host forwards everything buffered, otherwise it keeps it."""
        return self._body(ctx, STREAM_REQUEST, chunk, end_of_stream)

    def response_headers(self, ctx: int, headers: dict[str, str], end_of_stream: bool = False) -> int:
        self.stream = self.streams[ctx]
        self.stream.response_headers.update({k.lower(): v for k, v in headers.items()})
        return self._call("proxy_on_response_headers", ctx, len(headers), int(end_of_stream))

    def response_body(self, ctx: int, chunk: bytes, end_of_stream: bool = False) -> int:
        """A response body chunk, as request_body."""
        return self._body(ctx, STREAM_RESPONSE, chunk, end_of_stream)

    def _body(self, ctx: int, stream_type: int, chunk: bytes, end_of_stream: bool) -> int:
        self.stream = stream = self.streams[ctx]
        body = stream.body(stream_type)
        # After StopIterationAndBuffer the filter sees (and is told the size of) all that is buffered;
        # otherwise only the newest chunk.
        stream.visible_from[stream_type] = 0 if stream.last_action[stream_type] == ACTION_PAUSE else len(body)
        body += chunk
        hook = "proxy_on_request_body" if stream_type == STREAM_REQUEST else "proxy_on_response_body"
        visible = len(body) - stream.visible_from[stream_type]
        action = self._call(hook, ctx, visible, int(end_of_stream))
        stream.last_action[stream_type] = action
        stream.visible_from[stream_type] = 0
        if action == ACTION_CONTINUE:
            stream.release(self.now_ns, stream_type)
        elif action not in (ACTION_PAUSE, ACTION_PAUSE_WATERMARK):
            raise HostError(f"body callback returned {action}, not CONTINUE or a buffering stop")
        return action

    def trailers(self, ctx: int, stream_type: int = STREAM_REQUEST) -> int:
        """Trailers end a body: on CONTINUE what is buffered goes on before them."""
        self.stream = stream = self.streams[ctx]
        hook = "proxy_on_request_trailers" if stream_type == STREAM_REQUEST else "proxy_on_response_trailers"
        action = self._call(hook, ctx, 0)
        if action == ACTION_CONTINUE:
            stream.release(self.now_ns, stream_type)
        return action

    def tick(self, advance_ms: float = 0, roots: list[int] | None = None) -> None:
        """Advance the clock and tick every live root context (or only ``roots``: Envoy stops the timer of a
        root whose configuration was replaced while its streams live on)."""
        self.now_ns += round(advance_ms * 1_000_000)
        for root in list(self.roots if roots is None else roots):
            self._call("proxy_on_tick", root)

    def reset(self, ctx: int) -> bytes:
        """The stream is reset (client abort, upstream failure): the host drops its buffers; returns what it held."""
        stream = self.streams[ctx]
        dropped = bytes(stream.request_body) + bytes(stream.response_body)
        stream.request_body.clear()
        stream.response_body.clear()
        self.finish(ctx)
        return dropped

    def finish(self, ctx: int) -> None:
        self.stream = self.streams.get(ctx)
        self._call("proxy_on_done", ctx)
        self._call("proxy_on_log", ctx)
        self._call("proxy_on_delete", ctx)
        self.streams.pop(ctx, None)
        self.stream = None


def _configured(wasm: Path, config: bytes) -> ProxyWasmHost:
    """A host whose filter took ``config``; HostError with the filter's reason if it rejected the whole text
    (entries it refused alone are in ``host.refused`` and its log)."""
    host = ProxyWasmHost(wasm, config)
    if not host.configure() or host.rejected is not None:
        raise HostError(f"the filter rejected its configuration: {host.rejected or host.logs}")
    return host


def classify(wasm: Path, config: bytes, headers: dict[str, str], route: str | None) -> tuple[str | None, list]:
    """Run one request through the filter; returns the x-dapb-class it set (None: auto) and the log lines."""
    host = _configured(wasm, config)
    ctx, stream = host.new_stream({"xds.route_name": route.encode()} if route else {})
    host.request_headers(ctx, headers, end_of_stream=True)
    cls = stream.request_headers.get(CLASS_HEADER)
    host.finish(ctx)
    return cls, host.logs


@dataclass(frozen=True)
class Release:
    at_ms: float  # host time of the write
    size: int  # bytes in the write
    oldest_wait_ms: float  # how long its oldest byte was held


def simulate_body(
    wasm: Path,
    config: bytes,
    headers: dict[str, str],
    route: str | None,
    chunks: list[tuple[float, bytes]],
    tick_ms: float = 4.0,
) -> tuple[str | None, list[Release], list]:
    """One streamed request through the filter: ``chunks`` arrive at their times (ms), the host ticks every
    ``tick_ms`` (Envoy: 4-4.5 ms here when asked for 1), and the body ends after the last chunk. Returns the class
    the filter gave, every upstream write with the wait of its oldest byte, and the filter's log."""
    host = _configured(wasm, config)
    ctx, stream = host.new_stream({"xds.route_name": route.encode()} if route else {})
    host.request_headers(ctx, headers, end_of_stream=False)
    arrivals: list[tuple[int, int]] = []  # (arrival ns, end offset)
    offset, next_tick = 0, tick_ms
    for at_ms, data in sorted(chunks, key=lambda c: c[0]):
        while next_tick <= at_ms:
            host.tick(next_tick - host.now_ns / 1e6)
            next_tick += tick_ms
        host.now_ns = round(at_ms * 1e6)
        arrivals.append((host.now_ns, offset + len(data)))
        offset += len(data)
        host.request_body(ctx, data)
    host.request_body(ctx, b"", end_of_stream=True)
    releases, sent = [], 0
    for t, write in stream.forwarded:
        first = next(ns for ns, end in arrivals if end > sent)
        releases.append(Release(t / 1e6, len(write), (t - first) / 1e6))
        sent += len(write)
    return stream.request_headers.get(CLASS_HEADER), releases, host.logs
