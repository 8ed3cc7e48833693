"""Shared fixtures: real network namespaces, cgroups and BPF instances, each uniquely named and removed after."""

import uuid

import pytest

from dapb_mesh.kernel import layout as L
from dapb_mesh.kernel.datapath import Datapath
from dapb_mesh.testbed.netns import PodPair


@pytest.fixture
def pair():
    """Two pods (netns + cgroup v2 dir) joined by veth; removed with their processes afterwards."""
    with PodPair() as p:
        yield p


@pytest.fixture
def datapath(pair):
    """A freshly loaded DAPB instance attached to both pods' cgroups (both sidecars of a hop run the agent): the
    client's sockets may hold towards the server, whose delayed ACK the instance bounds (any owner: the pods'
    processes stand in for sidecars)."""
    dp = Datapath.load(f"test-{uuid.uuid4().hex[:8]}")
    try:
        dp.set_guard(L.ANY_UID, [f"{pair.server.address}/32"])
        for pod in pair.pods:
            dp.attach_cgroup(pod.cgroup)
        yield dp
    finally:
        dp.destroy()
