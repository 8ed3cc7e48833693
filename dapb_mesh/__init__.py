"""dapb-mesh: Dynamic Adaptive Packet Buffering for Istio/Envoy service meshes."""

import os

__version__ = "0.1.0"

# grpc (the testbed control plane, the xDS companion, the gRPC apps) logs a notice on every fork of a helper
# process (iptables, nsenter, pyroute2); errors still show.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# Every child the testbed starts execs at once and none uses grpc: grpc's fork handlers only add risk there.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
