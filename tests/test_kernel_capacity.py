"""Bounded kernel state and upgrades, on the real kernel: pins of another map layout are replaced without a gap,
pins of a wrong shape are never reused, a full socket table and too many port rules are named errors while
traffic flows. Uses the `pair` fixture (two network namespaces, cgroups) from conftest."""

import ctypes
import time
import uuid

import pytest

from dapb_mesh.agent import Aggregator, columns_from_kernel
from dapb_mesh.config import Settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.kernel import libbpf
from dapb_mesh.kernel.datapath import MAPS_DIR, Datapath, DatapathError
from dapb_mesh.policy import Conditions, Sensitivity, decide
from dapb_mesh.testbed.hop import run_hop

SETTINGS = Settings()
VETH = Conditions(rtt_ms=0.05, loss=0.0, jitter_ms=0.01)
COUNT = 10_000


def hold_everything(dp: Datapath, pair) -> float:
    """Every socket of the pods in the throughput class, holding towards the server pod; returns T_eff."""
    decision = decide(VETH, Sensitivity.THROUGHPUT, SETTINGS.policy, SETTINGS.kernel)
    dp.set_guard(L.ANY_UID, [f"{pair.server.address}/32"])
    dp.write_policy({L.CLASS_THROUGHPUT: L.class_policy(decision, SETTINGS.kernel)}, default_class=L.CLASS_THROUGHPUT)
    return decision.enforced_timeout_ms


def assert_complete(result, expected_bytes: int) -> None:
    assert result.server["bytes"] == expected_bytes and result.server["in_order"] is True


@pytest.fixture
def instance():
    name = f"test-cap-{uuid.uuid4().hex[:8]}"
    yield name
    Datapath.purge(name)


def test_an_older_layout_is_replaced_mid_stream_without_a_gap(pair, instance):
    """An agent of an older map layout left its instance pinned (maps under the untagged `maps/`, as before
    layouts were tagged) and attached to both pods. A new agent loads beside it: fresh maps in its own layout,
    policy written first, its programs swapped into the same links while a stream runs, the old pins removed.
    Nothing is lost, no message waits past the bound, and new sockets are accounted in the new maps."""
    old = Datapath.load(instance)
    t_eff = hold_everything(old, pair)
    for pod in pair.pods:
        old.attach_cgroup(pod.cgroup)
    links = old.links()
    (tagged,) = [d for d in old.root.iterdir() if d.name.startswith(f"{MAPS_DIR}-")]
    tagged.rename(old.root / MAPS_DIR)  # what an older agent pinned
    old.close()

    def upgrade(_client):
        time.sleep(0.4)
        new = Datapath.load(instance)
        upgrade.adopted, upgrade.older = new.adopted, [d.name for d in new.older_layouts]
        hold_everything(new, pair)  # the policy is in the new maps before a program reads them
        for pod in pair.pods:
            new.attach_cgroup(pod.cgroup)
        upgrade.retired = [d.name for d in new.retire_older_layouts()]
        upgrade.dp = new

    r = run_hop(pair, "stream", rate=10_000, count=COUNT, size=64, during=upgrade)
    new = upgrade.dp
    try:
        assert_complete(r, COUNT * 64)
        assert upgrade.adopted is False and upgrade.older == [MAPS_DIR] and upgrade.retired == [MAPS_DIR]
        assert r.server["delay_ms"]["max"] <= 5 + t_eff + SETTINGS.kernel.tick_ms
        assert new.links() == links  # the same pinned links, now running the new programs
        assert not (new.root / MAPS_DIR).exists()
        after = run_hop(pair, "stream", rate=10_000, count=3_000, size=64)
        assert_complete(after, 3_000 * 64)
        assert after.client["data_segs_out"] <= 0.3 * 3_000  # the new programs hold
        assert any(s.class_id == L.CLASS_THROUGHPUT and s.data_segs_out > 0 for s in new.sock_stats())
        reopened = Datapath.open(instance)
        assert reopened.read_config().version == new.read_config().version
        reopened.close()
    finally:
        new.destroy()


def test_pins_of_another_shape_are_never_reused(instance):
    """A pin under the current layout's name whose map has another shape (made by hand, or a build that changed
    a map without changing the layout): the new load sets the whole set aside instead of failing to reuse it."""
    dp = Datapath.load(instance)
    (maps_dir,) = [d for d in dp.root.iterdir() if d.name.startswith(f"{MAPS_DIR}-")]
    (maps_dir / "dapb_policy").unlink()
    libbpf.obj_pin(dp._maps["dapb_dscp_class"], str(maps_dir / "dapb_policy"))  # 4-byte values, not 24
    dp.close()
    again = Datapath.load(instance)
    try:
        assert again.adopted is False and [d.name[:11] for d in again.older_layouts] == [f"{MAPS_DIR}-stale-"]
        assert again.write_policy({}) >= 1  # the fresh policy map takes a full slot
        assert again.retire_older_layouts() and len(list(again.root.glob(f"{MAPS_DIR}*"))) == 1
    finally:
        again.destroy()


def test_a_full_socket_table_leaves_traffic_and_the_agent_running(pair, instance):
    """The per-socket telemetry map filled to its 65,536 entries with stale sockets: a new socket's entry evicts
    the least recently updated one (an LRU table), it holds within the bound and delivers everything, and the
    agent's read of the full table still works."""
    dp = Datapath.load(instance)
    try:
        t_eff = hold_everything(dp, pair)
        for pod in pair.pods:
            dp.attach_cgroup(pod.cgroup)
        fd = dp._maps["dapb_sock_stats"]
        filler = L.SockStats()
        for cookie in range(1, L.MAX_SOCKETS + 1):
            filler.cookie = 1 << 62 | cookie  # cookies the kernel does not hand out this early
            libbpf.map_update(fd, ctypes.c_uint64(filler.cookie), filler)
        r = run_hop(pair, "stream", rate=10_000, count=3_000, size=64)
        assert_complete(r, 3_000 * 64)
        assert r.server["delay_ms"]["max"] <= 5 + t_eff + SETTINGS.kernel.tick_ms
        assert r.client["data_segs_out"] <= 0.3 * 3_000  # still held: the socket's state is not in this table
        stats = dp.sock_stats()
        assert len(stats) <= L.MAX_SOCKETS  # an LRU table: the least recently updated entries made room
        assert any(s.class_id == L.CLASS_THROUGHPUT and s.data_segs_out > 0 for s in stats)  # the live socket
        aggregator = Aggregator(SETTINGS)
        aggregator.ingest(columns_from_kernel(stats))
        assert aggregator.tracked <= L.MAX_SOCKETS
    finally:
        dp.destroy()


def test_port_rules_past_the_map_are_refused_whole_and_stale_ones_removed(instance):
    dp = Datapath.load(instance)
    try:
        dp.set_port_rules({15006: L.CLASS_RECEIVER, 8080: L.CLASS_THROUGHPUT})
        too_many = {port: L.CLASS_THROUGHPUT for port in range(1, L.MAX_PORT_RULES + 2)}
        with pytest.raises(DatapathError, match=rf"{L.MAX_PORT_RULES + 1} port rules; .* holds {L.MAX_PORT_RULES}"):
            dp.set_port_rules(too_many)
        fd = dp._maps["dapb_port_class"]
        assert sorted(libbpf.map_keys(fd, ctypes.c_uint32)) == [8080, 15006]  # refused before anything changed
        dp.set_port_rules({15006: L.CLASS_RECEIVER})
        assert libbpf.map_keys(fd, ctypes.c_uint32) == [15006]  # 8080 is no longer a rule
        dp.set_port_rules({port: L.CLASS_THROUGHPUT for port in range(1, L.MAX_PORT_RULES + 1)})  # exactly full
        assert len(libbpf.map_keys(fd, ctypes.c_uint32)) == L.MAX_PORT_RULES
    finally:
        dp.destroy()
