"""Every setting of dapb-mesh as pydantic models, loaded from YAML and DAPB_* environment variables.

Units are part of the field name (``_bytes``, ``_ms``, ...). A number is taken in that unit; a string may carry
its own unit ("16KiB", "5ms", "250us") and is converted, and a string in the wrong kind of unit ("5ms" for a
size) is rejected. Errors name the field path and the value, as ``ConfigError`` lines.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    field_validator,
    model_validator,
)

from dapb_mesh import artifacts

# load_settings parses with the strict loader: duplicate keys, aliases, deep nesting and oversized input are refused.
from dapb_mesh import safe_yaml as yaml
from dapb_mesh.classes import DSCP_LATENCY, DSCP_THROUGHPUT, INBOUND_PORT, METRICS_PORT, SIDECAR_UID

_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
_TIME_UNITS_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
_QUANTITY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*$")


def _with_unit(units: dict[str, float], kind: str):
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a {kind}, got a boolean")
        if not isinstance(value, str):
            return value
        match = _QUANTITY.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a {kind} (examples: {', '.join(list(units)[:3])})")
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit == "":
            return number
        if unit not in units:
            raise ValueError(f"{value!r} has unit {unit!r}, which is not a {kind} unit ({', '.join(units)})")
        return number * units[unit]

    return BeforeValidator(parse)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


U32_MAX = 2**32 - 1
"""Sizes reach the kernel in u32 slots (bpf/dapb.h): a larger one would wrap."""
FILTER_MAX_PREFIX_BYTES = 16
"""Bytes of the filter's urgent_prefix in UTF-8 (MAX_PREFIX in wasm_filter/dapb_filter.c)."""
FILTER_UINT_MAX = 2**24 - 1
"""The Wasm filter refuses a configuration with a hold or buffer limit of 2^24 or more (parse_uint in
wasm_filter/dapb_filter.c)."""
FILTER_MAX_HOLD_MS = 60_000.0
"""The Wasm filter refuses a hold_ms over 60 s; T(t) in microseconds also stays far inside its u32 kernel slot."""

# After the unit parser and the type: "1e400ms", 1e309 and "inf" all become a float inf only there.
Finite = AfterValidator(_finite)
Bytes = Annotated[int, _with_unit(_SIZE_UNITS, "size"), Field(ge=0, le=U32_MAX)]
HoldBytes = Annotated[int, _with_unit(_SIZE_UNITS, "size"), Field(ge=0, le=FILTER_UINT_MAX)]
Millis = Annotated[float, _with_unit(_TIME_UNITS_MS, "duration"), Finite, Field(ge=0)]
HoldMillis = Annotated[float, _with_unit(_TIME_UNITS_MS, "duration"), Finite, Field(ge=0, le=FILTER_MAX_HOLD_MS)]
Weight = Annotated[float, Finite, Field(ge=0)]
Fraction = Annotated[float, Finite, Field(ge=0, le=1)]


_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def split_listen(listen: str) -> tuple[str, int]:
    """(host, port) of agent.listen; ValueError saying what is wrong. The host is an IPv4 address or a hostname
    (empty: 127.0.0.1), as the exporter's IPv4 HTTP server takes it; the port 0..65535 (0: any free port)."""
    host, colon, port = listen.rpartition(":")
    if not colon:
        raise ValueError("not host:port (e.g. 127.0.0.1:9464)")
    if not port.isascii() or not port.isdecimal() or int(port) > 65535:
        raise ValueError(f"port {port!r} is not a number in 0..65535")
    if host.startswith("[") or ":" in host:
        raise ValueError("IPv6 is not supported: the exporter listens on IPv4")
    if host and not _is_ipv4(host) and not _is_hostname(host):
        raise ValueError(f"host {host!r} is neither an IPv4 address nor a hostname")
    return host or "127.0.0.1", int(port)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _is_hostname(host: str) -> bool:
    labels = host.removesuffix(".").split(".")
    # a name whose last label is all digits would be a malformed IPv4 address (RFC 1123 section 2.1)
    return (
        host.isascii()
        and len(host) <= 253
        and all(_HOSTNAME_LABEL.match(label) for label in labels)
        and not labels[-1].isdecimal()
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True)


class PolicyConfig(_Strict):
    """The paper's parameters (eq. 1-7) and the mitigations of its section 6."""

    b_min_bytes: HoldBytes = 0
    """B_min: buffer for latency-sensitive traffic; 0 means every write leaves at once (eq. 1)."""
    b_max_bytes: HoldBytes = 16384
    """B_max: buffer for throughput traffic and the ceiling of eq. 5 (under 16 MiB: the filter's limit)."""
    alpha_bytes_per_ms: Weight = 64.0
    """alpha: bytes of buffer added per ms of RTT (eq. 2)."""
    beta_bytes_per_loss: Weight = 20000.0
    """beta: bytes added per unit of loss rate (1.0 = every segment lost) (eq. 2)."""
    gamma_bytes_per_ms: Weight = 32.0
    """gamma: bytes added per ms of jitter (eq. 2)."""
    t_base_ms: HoldMillis = 2.0
    """T_base: the timeout with a perfect network (eq. 3)."""
    t_max_ms: HoldMillis = 50.0
    """T_max: hard ceiling on any hold; no byte waits longer than this. It bounds the enforced bound: the kernel
    path rounds T(t) down to whole ticks so that T_eff stays within it, and a T_max under the kernel's shortest
    bound (kernel.delack_floor_ms, plus delack_max_extra_ms with delack_max) is refused. At most 60 s."""
    delta: Weight = 0.5
    """delta: ms of timeout per ms of RTT (eq. 3)."""
    epsilon_ms_per_loss: Weight = 200.0
    """epsilon: ms of timeout per unit of loss rate (eq. 3)."""
    xi: Weight = 1.0
    """xi: ms of timeout per ms of jitter (eq. 3)."""
    u_threshold: Fraction = 0.5
    """U_th: flush at once when the mean urgency U(t) exceeds it (eq. 6); the filter's latency class above it."""
    throughput_below: Fraction = 0.3
    """The filter puts requests whose urgency is below this in the throughput class (held, coalesced)."""
    default_urgency: Fraction = 0.4
    """The urgency of a route no annotation or priority header speaks for (auto class between the two)."""
    eta_per_byte: Weight = 0.001
    """eta: energy cost per buffered byte (eq. 7), arbitrary energy units."""
    theta_per_ms: Weight = 0.1
    """theta: energy cost per ms of waiting (eq. 7)."""
    confidence_floor: Fraction = 0.6
    """Predictions with a lower confidence are ignored in favour of the static thresholds."""
    min_hold_bytes: Bytes = 128
    """A B(t) smaller than this is sent at once: no two small messages would fit, so holding only adds delay."""
    static_buffer_bytes: HoldBytes = 1448
    """The Nagle-like fallback buffer: one MSS on a 1500 B MTU link."""
    static_timeout_ms: HoldMillis = 8.0
    """The Nagle-like fallback timeout: the kernel's shortest delayed-ACK bound here."""
    filter_min_hold_ms: Annotated[HoldMillis, Field(ge=1)] = 8.0
    """The shortest hold the sidecar filter can keep: it releases on Envoy's timer, which fires every 4-4.5 ms
    here when asked for 1 ms (measured), so a shorter T(t) is held this long (as the kernel rounds T up to
    T_eff); t_max_ms still caps it. At least 1 ms: the filter counts whole milliseconds."""
    hysteresis_rtt_fraction: Weight = 0.2
    """A decision changes only when RTT moves by more than this fraction ..."""
    hysteresis_loss: Fraction = 0.005
    """... or the loss rate by more than this (absolute) ..."""
    hysteresis_jitter_ms: Millis = 1.0
    """... or the jitter by more than this, or the class or urgency changes."""
    hysteresis_rate_fraction: Weight = 0.2
    """The enforcer (kernel or filter) changes only when the offered load per stream moved by more than this
    fraction since the decision in force, so that a load near the crossover does not flap between them."""

    @model_validator(mode="after")
    def _ordered(self) -> PolicyConfig:
        if self.b_min_bytes > self.b_max_bytes:
            raise ValueError(f"b_min_bytes ({self.b_min_bytes}) must not exceed b_max_bytes ({self.b_max_bytes})")
        if self.t_base_ms > self.t_max_ms:
            raise ValueError(f"t_base_ms ({self.t_base_ms}) must not exceed t_max_ms ({self.t_max_ms})")
        if not self.b_min_bytes <= self.static_buffer_bytes <= self.b_max_bytes:
            raise ValueError(
                f"static_buffer_bytes ({self.static_buffer_bytes}) must lie in "
                f"[b_min_bytes, b_max_bytes] = [{self.b_min_bytes}, {self.b_max_bytes}]"
            )
        if not self.t_base_ms <= self.static_timeout_ms <= self.t_max_ms:
            raise ValueError(
                f"static_timeout_ms ({self.static_timeout_ms}) must lie in "
                f"[t_base_ms, t_max_ms] = [{self.t_base_ms}, {self.t_max_ms}]"
            )
        return self


class EstimatorConfig(_Strict):
    """Windows of the condition estimators that make C(t)."""

    rtt_gain: Annotated[float, Finite, Field(gt=0, le=1)] = 0.125
    """Weight of a new RTT sample in the smoothed RTT (RFC 6298 alpha)."""
    jitter_gain: Annotated[float, Finite, Field(gt=0, le=1)] = 1 / 16
    """Weight of a new deviation in the jitter (RFC 3550 uses 1/16)."""
    loss_window_segments: Annotated[int, Field(ge=1)] = 1000
    """Loss is retransmits over segments sent within this many recent segments."""
    max_rtt_ms: Millis = 10_000.0
    """RTT samples above this are absurd telemetry: ignored and counted."""


class KernelConfig(_Strict):
    """What the kernel can enforce: the delayed-ACK bound moves in ticks above a floor (CONFIG_HZ=250 here)."""

    ack_bound: Literal["rto_min", "delack_max"] = "delack_max"
    """How the receiver bounds its delayed ACK: TCP_BPF_DELACK_MAX (no side effect; coalesces from 5k msg/s on)
    or TCP_BPF_RTO_MIN (one tick tighter, but also lowers the socket's retransmit floor). See docs/kernel.md."""
    delack_floor_ms: HoldMillis = 8.0
    """Shortest delayed-ACK bound the kernel enforces (a 5 ms request, the least accepted, rounds up to 8 ms); at
    least one tick."""
    delack_max_extra_ms: HoldMillis = 4.0
    """TCP_BPF_DELACK_MAX measured one tick looser than TCP_BPF_RTO_MIN for the same request here."""
    tick_ms: Annotated[float, _with_unit(_TIME_UNITS_MS, "duration"), Finite, Field(ge=1, le=1000)] = 4.0
    """One jiffy: bounds are enforced in these steps (1 ms at CONFIG_HZ=1000, the highest the kernel offers)."""
    mss_bytes: Annotated[int, _with_unit(_SIZE_UNITS, "size"), Field(ge=536, le=65535)] = 1448
    """Segment payload on the mesh's links (1500 B MTU with TCP timestamps); 536 (RFC 9293's default) to 65535."""
    bpffs: Path = Path("/sys/fs/bpf")
    cgroup2_root: Path = Path("/sys/fs/cgroup/unified")

    @model_validator(mode="after")
    def _floor_in_ticks(self) -> KernelConfig:
        if self.delack_floor_ms < self.tick_ms:
            raise ValueError(
                f"delack_floor_ms ({self.delack_floor_ms}) must be at least one tick_ms ({self.tick_ms}): "
                "the kernel counts its bounds in whole jiffies"
            )
        return self

    @property
    def shortest_bound_ms(self) -> float:
        """The smallest T_eff the kernel can enforce: the floor, plus the extra tick of TCP_BPF_DELACK_MAX."""
        return self.delack_floor_ms + (self.delack_max_extra_ms if self.ack_bound == "delack_max" else 0.0)


class ClassRule(_Strict):
    """Which sockets belong to a class, besides the DSCP the sidecar marks them with."""

    ports: list[Annotated[int, Field(ge=1, le=65535)]] = []
    """Local or remote TCP ports whose sockets take this class (e.g. 15006, the inbound sidecar port)."""
    dscp: list[Annotated[int, Field(ge=0, le=63)]] = []
    """DSCP code points whose sockets take this class."""


class AgentConfig(_Strict):
    """The node agent (`dapb agent`)."""

    cgroups: list[Path] = []
    """cgroup v2 directories to attach to (the node's pods, or a testbed pod's sidecar container)."""
    instance: str = "agent"
    """Name of the pinned BPF instance under <bpffs>/dapb/; a restart adopts it."""
    tick_hz: Annotated[float, Finite, Field(gt=0, le=100)] = 10.0
    """Telemetry reads and decisions per second."""
    min_write_interval_s: Annotated[float, Finite, Field(ge=0)] = 1.0
    """Rate limit: at most one policy snapshot per this many seconds (kernel state churn is bounded)."""
    default_sensitivity: Literal["latency", "throughput", "auto"] = "auto"
    """Class of sockets no rule names."""
    throughput: ClassRule = ClassRule(dscp=[DSCP_THROUGHPUT])
    """Sockets in the throughput class (AF11 by default)."""
    latency: ClassRule = ClassRule(dscp=[DSCP_LATENCY])
    """Sockets in the latency class (EF by default)."""
    receiver_ports: list[Annotated[int, Field(ge=1, le=65535)]] = [INBOUND_PORT]
    """Ports of accepted sidecar-to-sidecar sockets: they bound their delayed ACK (the receiving half)."""
    hold_uid: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = SIDECAR_UID
    """Only sockets owned by this uid may hold (Istio's sidecar runs as 1337; 4294967295: any owner). An
    application's own sockets are never held, whatever their class (docs/kernel.md, "Which sockets DAPB holds")."""
    bounded_peers: list[IPvAnyNetwork] = []
    """Prefixes (CIDR) of pods whose sidecars DAPB manages, so whose delayed ACK it bounds: the pod CIDRs of the
    nodes that run the agent. A sidecar socket holds only towards these peers; empty: the kernel holds nothing."""
    msg_accounting: bool = False
    """Attach sk_msg for per-message counts (needed for N_reduced); adds a per-message cost."""
    store: Path = Path("/var/lib/dapb/history.db")
    """SQLite history of decisions and outcomes (WAL)."""
    retention_s: Annotated[float, Finite, Field(gt=0)] = 7 * 24 * 3600.0
    """History older than this is deleted."""
    retention_rows: Annotated[int, Field(ge=100)] = 1_000_000
    """At most this many decision rows are kept."""
    listen: str = f"127.0.0.1:{METRICS_PORT}"
    """host:port of /metrics (Prometheus), /healthz and /readyz: an IPv4 address or a hostname, port 0..65535."""
    companion_target: str = ""
    """xDS server of the companion (istiod, e.g. istiod.istio-system.svc:15010, or unix:PATH); empty: off."""
    companion_node_id: str = "sidecar~0.0.0.0~dapb-companion.istio-system~istio-system.svc.cluster.local"
    """The node id the companion presents, as a sidecar of the proxies it serves would."""
    virtual_services: str = "kubernetes"
    """Where VirtualServices come from: "kubernetes" (in-cluster API, watch) or a directory of YAML."""
    use_predictor: bool = False
    """Ask the ONNX predictor for B(t) (eq. 4-5); otherwise the formula (eq. 2)."""
    model: Annotated[Path, AfterValidator(artifacts.resolve)] = Path("package:dapb_predictor.onnx")
    """The predictor model file; `package:NAME` names a file shipped with dapb (in a checkout: its build output)."""
    filter_config_file: Path | None = None
    """Write the Wasm filter's plugin configuration (JSON) here whenever it changes: the route urgencies and,
    when the filter enforces the throughput class, its hold (B, T). For a control plane that serves it."""
    wasm_plugin: str = ""
    """namespace/name of the Istio WasmPlugin whose pluginConfig the agent keeps current (RBAC in istio/);
    empty: none."""
    proxy_buffer_limit_bytes: HoldBytes = 1 << 20
    """The sidecars' per-connection buffer limit (Envoy's default 1 MiB): the filter's hold stays under half."""
    urgent_prefix: str = ""
    """A message (body chunk) starting with these bytes is urgent: the filter sends what it holds at once."""

    @model_validator(mode="after")
    def _one_class_per_port(self) -> AgentConfig:
        named: dict[int, str] = {}
        for field, ports in (
            ("throughput.ports", self.throughput.ports),
            ("latency.ports", self.latency.ports),
            ("receiver_ports", self.receiver_ports),
        ):
            for port in ports:
                if named.setdefault(port, field) != field:
                    raise ValueError(f"port {port} is in both agent.{named[port]} and agent.{field}: one class each")
        return self

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        split_listen(v)
        return v

    @field_validator("wasm_plugin")
    @classmethod
    def _namespace_name(cls, v: str) -> str:
        if v and (v.count("/") != 1 or not all(v.split("/"))):
            raise ValueError(f"{v!r} is not namespace/name")
        return v

    @field_validator("urgent_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if len(v.encode()) > FILTER_MAX_PREFIX_BYTES:
            raise ValueError(f"{v!r}: at most {FILTER_MAX_PREFIX_BYTES} bytes of UTF-8 (the filter's limit)")
        return v


class Settings(_Strict):
    """The whole configuration file."""

    policy: PolicyConfig = PolicyConfig()
    estimator: EstimatorConfig = EstimatorConfig()
    kernel: KernelConfig = KernelConfig()
    agent: AgentConfig = AgentConfig()

    @model_validator(mode="after")
    def _t_max_is_enforceable(self) -> Settings:
        # T_max caps the enforced bound, and the kernel enforces nothing shorter than its floor.
        k = self.kernel
        if self.policy.t_max_ms < k.shortest_bound_ms:
            extra = f" + kernel.delack_max_extra_ms ({k.delack_max_extra_ms})" if k.ack_bound == "delack_max" else ""
            raise ValueError(
                f"policy.t_max_ms ({self.policy.t_max_ms}) is below the shortest bound the kernel enforces: "
                f"kernel.delack_floor_ms ({k.delack_floor_ms}){extra} = {k.shortest_bound_ms} ms "
                f"with kernel.ack_bound {k.ack_bound}"
            )
        return self


class ConfigError(ValueError):
    """Configuration rejected; each line names a field path, the bad value and why."""


ENV_PREFIX = "DAPB_"


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """DAPB_POLICY__B_MAX_BYTES=32KiB becomes {"policy": {"b_max_bytes": "32KiB"}}. A variable whose path goes
    below a field that holds a value (DAPB_POLICY__B_MAX_BYTES__X), or that another variable already set as a
    value, is a ConfigError naming it; unknown names are left to validation, which reports them."""
    tree: dict[str, Any] = {}
    for key, value in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        model: type[BaseModel] | None = Settings
        node = tree
        for depth, part in enumerate(path[:-1]):
            field = model.model_fields.get(part) if model is not None else None
            sub = field.annotation if field is not None else None
            model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
            child = node.setdefault(part, {})
            where, variable = ".".join(path[: depth + 1]), ENV_PREFIX + "__".join(path[: depth + 1]).upper()
            if field is not None and model is None:
                raise ConfigError(
                    f"environment ({ENV_PREFIX}*): {key} = {_shown(value)}: {where} is a value, not a section "
                    f"(set {variable} instead)"
                )
            if not isinstance(child, dict):
                raise ConfigError(
                    f"environment ({ENV_PREFIX}*): {key} = {_shown(value)}: {where} is already set as a whole "
                    f"by {variable}"
                )
            node = child
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _shown(value: Any, limit: int = 200) -> str:
    """repr of a bad value, cut short: hostile input must not make a megabyte error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _describe(error: ValidationError, source: str) -> ConfigError:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        if item["type"] == "value_error" and isinstance(item.get("input"), dict):
            # a check across fields names them and their values itself; the whole section is noise
            lines.append(f"{source}: {where}: {message}")
        else:
            lines.append(f"{source}: {where} = {_shown(item.get('input'))}: {message}")
    return ConfigError("\n".join(lines))


def parse_settings(data: dict[str, Any], source: str = "configuration") -> Settings:
    """Validate a mapping into Settings or raise ConfigError naming each bad field."""
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        raise _describe(error, source) from None


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Settings from an optional YAML file, then DAPB_SECTION__FIELD environment variables on top."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text (undecodable byte at offset {error.start})") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    env = _env_overrides(dict(os.environ if environ is None else environ))
    if env:
        source = f"{source} + environment ({ENV_PREFIX}*)"
    return parse_settings(_merge(data, env), source)


def settings_reference() -> str:
    """docs/configuration.md, generated from the models so that the reference cannot drift from the code."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `dapb config reference` from `dapb_mesh/config.py`. A YAML file (`--config`) holds the",
        "sections below; `DAPB_SECTION__FIELD=value` environment variables override it. Numbers are in the unit",
        "of the field name; strings may carry a unit (`16KiB`, `5ms`, `250us`).",
    ]
    for section, field in Settings.model_fields.items():
        model = field.annotation
        lines += [
            "",
            f"## `{section}`",
            "",
            (model.__doc__ or "").strip(),
            "",
            "| field | default | meaning |",
            "|---|---|---|",
        ]
        for name, info in model.model_fields.items():
            lines.append(f"| `{name}` | `{info.default}` | {(info.description or '').strip()} |")
    return "\n".join(lines) + "\n"
