"""dapb-mesh: Dynamic Adaptive Packet Buffering for Istio/Envoy service meshes."""

__version__ = "0.1.0"
