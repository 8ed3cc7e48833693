"""The node agent: telemetry -> C(t) per class -> decision (hysteresis, fallback) -> versioned policy in the maps.

One tick reads the kernel's per-socket telemetry, turns counter deltas and RTT samples into per-class conditions,
asks the policy (and the predictor, when configured), and writes a new snapshot only when a decision changed and
the rate limit allows. Every decision and every outcome goes to the history store; the Prometheus exporter
shows them live. The pure parts (aggregation, decisions) take plain values so they are tested without a kernel.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dapb_mesh.classes import CLASS_NAMES, DECIDED, SENSITIVITY
from dapb_mesh.config import ConfigError, Settings, load_settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.policy import (
    ConditionEstimator,
    Conditions,
    Decision,
    Prediction,
    Sensitivity,
    decide,
    with_hysteresis,
)
from dapb_mesh.predictor.features import as_matrix, feature_row
from dapb_mesh.store import HistoryStore, Outcome

log = logging.getLogger("dapb.agent")

TCP_CLOSE = 7
IDLE_CONDITIONS = Conditions(rtt_ms=0.0, loss=0.0, jitter_ms=0.0)


RESTART_ONLY = {
    "kernel": ("bpffs",),
    "agent": (
        "instance",
        "store",
        "cgroups",
        "msg_accounting",
        "listen",
        "tick_hz",
        "use_predictor",
        "model",
        "companion_target",
        "companion_node_id",
        "virtual_services",
        "filter_config_file",
        "wasm_plugin",
    ),
}
"""Settings read once at start (the pinned instance, its bpffs, attached cgroups, the open history, the exporter's
address, the loaded model, the companion and publisher, the loop's interval): a reload keeps their running value."""


@dataclass(frozen=True)
class SocketSample:
    """One socket's telemetry (floats, so that tests can represent bad values the kernel never sends)."""

    cookie: int
    class_id: int
    srtt_ms: float
    data_segs_out: float
    total_retrans: float
    bytes_acked: float
    state: int
    updated_ns: int
    applied_flags: int = 0
    guard_releases: float = 0.0


TELEMETRY_FIELDS = (
    "cookie",
    "class_id",
    "srtt_ms",
    "data_segs_out",
    "total_retrans",
    "bytes_acked",
    "state",
    "updated_ns",
    "applied_flags",
    "guard_releases",
)


def columns_from_kernel(stats) -> dict[str, np.ndarray]:
    """The kernel's SockStats array as columns, without a Python object per socket."""
    if len(stats) == 0:
        return columns_from_samples([])
    arr = np.ctypeslib.as_array(stats)
    return {
        "cookie": arr["cookie"].astype(np.uint64),
        "class_id": arr["class_id"].astype(np.int64),
        "srtt_ms": arr["srtt_us"] / 1000.0,
        "data_segs_out": arr["data_segs_out"].astype(np.float64),
        "total_retrans": arr["total_retrans"].astype(np.float64),
        "bytes_acked": arr["bytes_acked"].astype(np.float64),
        "state": arr["state"].astype(np.int64),
        "updated_ns": arr["last_update_ns"].astype(np.uint64),
        "applied_flags": arr["applied_flags"].astype(np.int64),
        "guard_releases": arr["guard_releases"].astype(np.float64),
    }


def columns_from_samples(samples: list[SocketSample]) -> dict[str, np.ndarray]:
    return {
        name: np.array(
            [getattr(s, name) for s in samples],
            dtype=np.uint64
            if name in ("cookie", "updated_ns")
            else np.int64
            if name in ("class_id", "state", "applied_flags")
            else np.float64,
        )
        for name in TELEMETRY_FIELDS
    }


@dataclass
class ClassState:
    """What the agent knows about one class between ticks."""

    estimator: ConditionEstimator = field(default_factory=ConditionEstimator)
    sent_total: int = 0
    retrans_total: int = 0
    decision: Decision | None = None
    segments: int = 0
    bytes: int = 0
    retrans: int = 0
    sockets: int = 0
    active: int = 0  # sockets that sent in the last tick
    held: int = 0  # sockets holding now (Nagle applied)
    interactive: int = 0  # sockets that may hold but carry request/response now: the guard keeps them sending
    unbounded: int = 0  # sockets the guard never lets hold (a local app, an unmanaged peer, not the sidecar's)
    guard_releases: int = 0  # holds the guard released in the last tick because replies came
    guard_releases_total: int = 0


@dataclass
class TickReport:
    changed: list[str]
    written_version: int | None
    rejected: int
    sockets: int
    cpu_s: float


class Aggregator:
    """Per-socket counter deltas into per-class totals, and the class's mean RTT into its estimator.

    Vectorised (numpy), so a tick over 10,000 sockets stays cheap. Pure: no kernel access.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.prev_cookie = np.zeros(0, dtype=np.uint64)  # sorted
        self.prev = {
            name: np.zeros(0)
            for name in ("data_segs_out", "total_retrans", "bytes_acked", "updated_ns", "guard_releases")
        }
        self.classes: dict[int, ClassState] = {c: ClassState() for c in CLASS_NAMES}
        self.rejected: dict[str, int] = {"absurd_rtt": 0, "counter_backwards": 0, "not_finite": 0, "bad_class": 0}

    @property
    def tracked(self) -> int:
        return len(self.prev_cookie)

    def ingest(self, cols: dict[str, np.ndarray]) -> list[int]:
        """Account one tick; return cookies of closed sockets (to forget in the kernel map)."""
        n_classes = max(CLASS_NAMES) + 1
        for st in self.classes.values():
            st.segments = st.bytes = st.retrans = st.sockets = st.active = 0
            st.held = st.interactive = st.unbounded = st.guard_releases = 0
        cls = cols["class_id"]
        known = (cls >= 0) & (cls < n_classes) & np.isin(cls, list(CLASS_NAMES))
        self.rejected["bad_class"] += int((~known).sum())
        values = np.stack([cols[k] for k in ("srtt_ms", "data_segs_out", "total_retrans", "bytes_acked")])
        finite = np.isfinite(values).all(axis=0)
        self.rejected["not_finite"] += int((known & ~finite).sum())
        ok = known & finite
        cookie, cls = cols["cookie"][ok], cls[ok]
        cur = {k: cols[k][ok] for k in self.prev}
        srtt, state = cols["srtt_ms"][ok], cols["state"][ok]

        if len(self.prev_cookie):
            idx = np.minimum(np.searchsorted(self.prev_cookie, cookie), len(self.prev_cookie) - 1)
            seen = self.prev_cookie[idx] == cookie
            prev = {k: v[idx] for k, v in self.prev.items()}
        else:
            seen = np.zeros(len(cookie), dtype=bool)
            prev = {k: np.zeros(len(cookie)) for k in self.prev}
        deltas = {
            k: np.where(seen, cur[k] - prev[k], cur[k] if k == "guard_releases" else 0.0)
            for k in ("data_segs_out", "total_retrans", "bytes_acked", "guard_releases")
        }
        backwards = (np.stack(list(deltas.values())) < 0).any(axis=0)
        self.rejected["counter_backwards"] += int(backwards.sum())
        good = ~backwards
        fresh = ~seen | (cur["updated_ns"] != prev["updated_ns"])
        absurd = fresh & (srtt > self.settings.estimator.max_rtt_ms)
        self.rejected["absurd_rtt"] += int(absurd.sum())
        rtt_ok = fresh & (srtt > 0) & ~absurd

        sums = {k: np.bincount(cls[good], weights=v[good], minlength=n_classes) for k, v in deltas.items()}
        count = np.bincount(cls, minlength=n_classes)
        flags = cols["applied_flags"][ok]
        held = np.bincount(cls[(flags & L.F_NAGLE) != 0], minlength=n_classes)
        interactive = np.bincount(cls[(flags & L.S_INTERACTIVE) != 0], minlength=n_classes)
        unbounded = np.bincount(cls[(flags & L.S_UNBOUNDED_PEER) != 0], minlength=n_classes)
        active = np.bincount(cls[good & (deltas["bytes_acked"] > 0)], minlength=n_classes)
        rtt_sum = np.bincount(cls[rtt_ok], weights=srtt[rtt_ok], minlength=n_classes)
        rtt_n = np.bincount(cls[rtt_ok], minlength=n_classes)
        cfg = self.settings.estimator
        for c, st in self.classes.items():
            st.sockets = int(count[c])
            st.active = int(active[c])
            st.segments = int(sums["data_segs_out"][c])
            st.retrans = int(sums["total_retrans"][c])
            st.bytes = int(sums["bytes_acked"][c])
            st.held, st.interactive, st.unbounded = int(held[c]), int(interactive[c]), int(unbounded[c])
            st.guard_releases = int(sums["guard_releases"][c])
            st.guard_releases_total += st.guard_releases
            st.sent_total += st.segments
            st.retrans_total += st.retrans
            mean_rtt = rtt_sum[c] / rtt_n[c] if rtt_n[c] else None
            st.estimator = st.estimator.observe(
                cfg, rtt_ms=mean_rtt, sent_total=st.sent_total, retrans_total=st.retrans_total
            )

        open_ = state != TCP_CLOSE
        order = np.argsort(cookie[open_], kind="stable")
        self.prev_cookie = cookie[open_][order]
        self.prev = {k: v[open_][order] for k, v in cur.items()}
        return [int(c) for c in cookie[~open_]]

    def conditions(self, cls: int) -> Conditions:
        return self.classes[cls].estimator.conditions() or IDLE_CONDITIONS


def sensitivity_of(cls: int, settings: Settings) -> Sensitivity:
    """The sensitivity a class is decided with: its own (latency, throughput), else the configured default."""
    if cls != L.CLASS_DEFAULT and cls in SENSITIVITY:
        return Sensitivity(SENSITIVITY[cls])
    return Sensitivity(settings.agent.default_sensitivity)


def snapshot(decisions: dict[int, Decision], settings: Settings) -> dict[int, L.ClassPolicy]:
    """The kernel slots for a set of class decisions, with the receiving half bounded for all of them."""
    slots = {cls: L.class_policy(d, settings.kernel) for cls, d in decisions.items()}
    slots[L.CLASS_RECEIVER] = L.receiver_policy(list(slots.values()))
    return slots


class Agent:
    """The control loop. ``datapath`` is None in dry-run mode: decide and log, touch no kernel state."""

    def __init__(self, settings: Settings, *, dry_run: bool = False, config_path: Path | None = None):
        self.settings = settings
        self.config_path = config_path
        self.dry_run = dry_run
        self.aggregator = Aggregator(settings)
        self.datapath = None
        self.store: HistoryStore | None = None
        self.version: int | None = None
        self.last_write = -math.inf
        self.ready = threading.Event()
        self.last_tick = 0.0
        self.suppressed_writes = 0
        self.writes = 0
        self.tick_cpu_s = 0.0  # CPU of every tick so far: the agent's steady cost
        self.reloads = {"ok": 0, "rejected": 0}
        self.predictor = None
        self.companion = None
        self.publisher = None
        self._publish_lock = threading.Lock()
        self.decision_counts: Counter[tuple[str, str]] = Counter()
        self.rejected_inputs: Counter[tuple[str, str]] = Counter()  # (source, reason) the agent itself refused
        self._filter_refusals: set = set()  # the last publication's refused filter entries (logged once)
        self.fallback_counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._stats = None

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        from dapb_mesh.kernel import libbpf
        from dapb_mesh.kernel.datapath import Datapath

        a = self.settings.agent
        self.store = HistoryStore(a.store)
        if a.use_predictor:
            from dapb_mesh.predictor import load_predictor

            self.predictor = load_predictor(a.model)
        self.publisher = self._make_publisher()
        if a.companion_target:
            self.companion = self._start_companion()
        if self.dry_run:
            self._write(self._decide_all(force=True))
            self.ready.set()
            return
        self.datapath = Datapath.load(a.instance, self.settings.kernel)  # reuses pinned maps when adopting
        self._stats = libbpf.run_time_stats().__enter__()
        self._apply_rules()
        if self.datapath.adopted:
            log.info("adopted pinned instance %s: the last policy stays in force until the next write", a.instance)
            self.version = self.datapath.read_config().version
        else:
            if self.datapath.older_layouts:
                log.warning(
                    "instance %s was pinned by an agent of another map layout (%s): fresh maps, policy written, "
                    "then the new programs are swapped into its links",
                    a.instance,
                    ", ".join(d.name for d in self.datapath.older_layouts),
                )
            self.version = self._write(self._decide_all(force=True))  # before attaching: never an empty policy
        for cgroup in a.cgroups:
            self.datapath.attach_cgroup(cgroup)  # adopted links get the new programs atomically
        self.datapath.retire_older_layouts()
        if a.msg_accounting:
            self.datapath.enable_msg_accounting()
        self.ready.set()

    def _start_companion(self):
        """The xDS companion keeps the per-route urgency table (exported as metrics; the filter's source)."""
        from dapb_mesh.mesh.companion import Companion
        from dapb_mesh.mesh.sources import KubernetesSource

        a = self.settings.agent
        if a.virtual_services == "kubernetes":
            from kubernetes import client, config

            config.load_incluster_config()
            source = KubernetesSource(client.ApiClient()).start()
        else:
            source = Path(a.virtual_services)
        return Companion(
            a.companion_target,
            a.companion_node_id,
            source,
            default_urgency=self.settings.policy.default_urgency,
            on_change=lambda _table: self.publish_filter_config(),
        ).start()

    def _make_publisher(self):
        from dapb_mesh.mesh.publish import FilterConfigPublisher

        a = self.settings.agent
        if a.filter_config_file is None and not a.wasm_plugin:
            return None
        custom_objects = None
        if a.wasm_plugin:
            from kubernetes import client, config

            config.load_incluster_config()
            custom_objects = client.CustomObjectsApi()
        return FilterConfigPublisher(a.filter_config_file, a.wasm_plugin, custom_objects)

    def filter_config(self) -> str:
        """The filter's plugin configuration now: the companion's route urgencies, and the throughput class's
        hold when the policy names the filter as its enforcer."""
        from dapb_mesh.mesh.virtualservice import plugin_config

        a = self.settings.agent
        table = dict(self.companion.state.table) if self.companion is not None else {}
        decision = self.aggregator.classes[L.CLASS_THROUGHPUT].decision
        return plugin_config(
            table,
            self.settings.policy,
            hold=decision.filter_hold if decision is not None else (0, 0),
            buffer_limit_bytes=a.proxy_buffer_limit_bytes,
            urgent_prefix=a.urgent_prefix,
            rejected=self.rejected_inputs,
            seen=self._filter_refusals,
        )

    def publish_filter_config(self) -> bool:
        if self.publisher is None:
            return False
        with self._publish_lock:
            return self.publisher.publish(self.filter_config())

    def _apply_rules(self) -> None:
        a, dp = self.settings.agent, self.datapath
        ports = {port: L.CLASS_RECEIVER for port in a.receiver_ports}
        for cls, rule in ((L.CLASS_THROUGHPUT, a.throughput), (L.CLASS_LATENCY, a.latency)):
            ports |= dict.fromkeys(rule.ports, cls)  # configuration validation refuses a port in two places
            for dscp in rule.dscp:
                dp.set_dscp_class(dscp, cls)
        dp.set_port_rules(ports)
        dp.set_guard(a.hold_uid, a.bounded_peers)
        if not a.bounded_peers:
            log.warning(
                "agent.bounded_peers is empty: no peer's delayed ACK is known to be bounded, so the kernel "
                "holds no socket (the filter still may); set it to the pod CIDRs of the DAPB nodes"
            )

    def stop(self) -> None:
        """Graceful stop: write a snapshot with no knobs (live sockets return to baseline on their next ACK),
        then detach and remove the instance. Nothing is held by the programs, so nothing can be stranded."""
        self._stop.set()
        if self.companion is not None:
            self.companion.stop()
            self.companion = None
        if self.datapath is not None:
            self.datapath.write_policy({})
            time.sleep(0.2)  # let busy sockets take the empty snapshot on their next RTT callback
            self.datapath.destroy()
            self.datapath = None
        if self._stats is not None:
            self._stats.__exit__(None, None, None)
            self._stats = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def reload(self) -> bool:
        """SIGHUP: re-read the configuration; a bad file is reported and nothing of it is applied. Fields read only
        at start keep their running value (a warning names them: a restart applies them). Nothing a reload meets
        stops the agent: any failure keeps the running configuration and counts as rejected."""
        running = self.settings
        try:
            new = load_settings(self.config_path)
            kept = []
            for section, names in RESTART_ONLY.items():
                old_part, new_part = getattr(running, section), getattr(new, section)
                changed = {n: getattr(old_part, n) for n in names if getattr(new_part, n) != getattr(old_part, n)}
                if changed:
                    new = new.model_copy(update={section: new_part.model_copy(update=changed)})
                    kept += [f"{section}.{n}" for n in changed]
            self.settings = new
            self.aggregator.settings = new
            if self.datapath is not None:
                self._apply_rules()
        except Exception as error:  # a bad file (ConfigError), or anything else: the running configuration stays
            self.settings = running
            self.aggregator.settings = running
            self.reloads["rejected"] += 1
            if isinstance(error, ConfigError):
                log.error("configuration reload rejected, keeping the running one:\n%s", error)
            else:
                log.error("configuration reload failed, keeping the running one: %s: %s", type(error).__name__, error)
                if self.datapath is not None:
                    try:
                        self._apply_rules()  # the new rules may be half written: the running ones again
                    except Exception as again:
                        log.error("restoring the running class rules failed: %s", again)
            return False
        for st in self.aggregator.classes.values():
            st.decision = None  # decide afresh under the new parameters
        self.reloads["ok"] += 1
        if kept:
            log.warning(
                "configuration reloaded, except %s: read only at start, the running value stays until a restart",
                ", ".join(kept),
            )
        else:
            log.info("configuration reloaded")
        return True

    # -- the loop -----------------------------------------------------------------------------------------
    def _predictions(self) -> dict[int, Prediction | None]:
        """One batched inference for every class this tick (features: C(t) and the class's byte rate)."""
        if self.predictor is None:
            return dict.fromkeys(DECIDED)
        interval = 1.0 / self.settings.agent.tick_hz
        rows = [
            feature_row(self.aggregator.conditions(c), self.aggregator.classes[c].bytes / interval) for c in DECIDED
        ]
        try:
            predictions = self.predictor.predict(as_matrix(rows), self.settings.policy)
            if len(predictions) != len(rows):
                raise ValueError(f"{len(predictions)} predictions for {len(rows)} classes")
            return dict(zip(DECIDED, predictions, strict=True))
        except Exception as error:  # a model that fails at run time is no model: the formula decides
            log.error("predictor failed: %s", error)
            return dict.fromkeys(DECIDED)

    def _offered_per_stream(self, cls: int) -> float | None:
        """Bytes per second one sending socket of the class offered in the last tick (the mean over the sockets
        that sent); None when none sent, so that an idle class keeps the kernel as its enforcer."""
        st = self.aggregator.classes[cls]
        if not st.active:
            return None
        return st.bytes * self.settings.agent.tick_hz / st.active

    def _decide_all(self, force: bool = False) -> dict[int, Decision]:
        out = {}
        predictions = self._predictions()
        # With no usable model the formula decides (the fallback for a missing or broken predictor); a model
        # that serves but is unsure gets the static thresholds inside decide().
        use_predictor = self.settings.agent.use_predictor and self.predictor is not None
        for cls in DECIDED:
            st = self.aggregator.classes[cls]
            cond = self.aggregator.conditions(cls)
            sens = sensitivity_of(cls, self.settings)
            candidate = decide(
                cond,
                sens,
                self.settings.policy,
                self.settings.kernel,
                use_predictor=use_predictor,
                prediction=predictions[cls],
                offered_bytes_per_s=self._offered_per_stream(cls),
            )
            kept, _ = with_hysteresis(None if force else st.decision, candidate, self.settings.policy)
            out[cls] = kept
            self.decision_counts[(CLASS_NAMES[cls], candidate.source.value)] += 1
            if candidate.fallback:
                self.fallback_counts[CLASS_NAMES[cls]] += 1
        return out

    def _write(self, decisions: dict[int, Decision]) -> int | None:
        """Make ``decisions`` the ones in force: the kernel snapshot (unless dry-run) and the history."""
        for cls, d in decisions.items():
            self.aggregator.classes[cls].decision = d
        version = None
        if self.datapath is not None:
            version = self.datapath.write_policy(snapshot(decisions, self.settings))
        self.last_write = time.monotonic()
        self.writes += 1
        if self.store is not None:
            for cls, d in decisions.items():
                self.store.record_decision(CLASS_NAMES[cls], d, version)
        self.publish_filter_config()
        return version

    def tick(self, telemetry: dict | None = None) -> TickReport:
        """One round: telemetry (from the kernel unless given, as columns), decisions, and a write if they
        changed and the rate limit allows."""
        cpu0 = time.thread_time()  # this tick's own CPU, not the other threads' (exporter, companion)
        cols = telemetry
        if cols is None:
            cols = columns_from_kernel(self.datapath.sock_stats() if self.datapath is not None else [])
        closed = self.aggregator.ingest(cols)
        if closed and self.datapath is not None:
            self.datapath.forget_sockets(closed)
        decisions = self._decide_all()
        changed = [CLASS_NAMES[c] for c, d in decisions.items() if d is not self.aggregator.classes[c].decision]
        written = None
        if changed:
            if time.monotonic() - self.last_write >= self.settings.agent.min_write_interval_s:
                written = self._write(decisions)
                self.version = written if written is not None else self.version
            else:
                self.suppressed_writes += 1
        interval = 1.0 / self.settings.agent.tick_hz
        if self.store is not None:
            for cls, st in self.aggregator.classes.items():
                if st.sockets:
                    cond = self.aggregator.conditions(cls)
                    self.store.record_outcome(
                        Outcome(
                            CLASS_NAMES[cls],
                            interval,
                            st.sockets,
                            st.segments,
                            st.bytes,
                            st.retrans,
                            rtt_ms=cond.rtt_ms,
                            held=st.held,
                            interactive=st.interactive,
                            unbounded=st.unbounded,
                            guard_releases=st.guard_releases,
                        )
                    )
        self.last_tick = time.monotonic()
        cpu = time.thread_time() - cpu0
        self.tick_cpu_s += cpu
        return TickReport(changed, written, sum(self.aggregator.rejected.values()), len(cols["cookie"]), cpu)

    def run(self, max_ticks: int | None = None) -> None:
        interval = 1.0 / self.settings.agent.tick_hz
        ticks = 0
        next_prune = time.monotonic()
        while not self._stop.is_set() and (max_ticks is None or ticks < max_ticks):
            started = time.monotonic()
            report = self.tick()
            if report.changed:
                log.info("decisions changed for %s (version %s)", ", ".join(report.changed), report.written_version)
            if self.store is not None and started >= next_prune:
                a = self.settings.agent
                self.store.prune(a.retention_s, a.retention_rows)
                next_prune = started + 60
            ticks += 1
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def install_signal_handlers(self) -> None:
        agent_pid = os.getpid()

        def only_here(action):
            def handler(signum, _frame):
                if os.getpid() != agent_pid:  # a helper process forked by a library: die as it expects
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)
                    return
                action()

            return handler

        signal.signal(signal.SIGTERM, only_here(self._stop.set))
        signal.signal(signal.SIGINT, only_here(self._stop.set))
        signal.signal(signal.SIGHUP, only_here(self.reload))
