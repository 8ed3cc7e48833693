"""dapb-mesh: Dynamic Adaptive Packet Buffering for Istio/Envoy service meshes."""

import os

__version__ = "0.1.0"

# grpc (the testbed control plane, the xDS companion, the gRPC apps) logs a notice on every fork of a helper
# process (iptables, nsenter, pyroute2); errors still show.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
