"""Network impairments for benches, with what this kernel has (no netem): a tbf bandwidth bottleneck, whose queue
also adds delay, and random loss of data segments on the receiver's ingress by the DAPB tc program (a drop on
the sender's egress would cause no retransmission)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
_RATE_SCALE = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


@dataclass(frozen=True)
class Impairment:
    loss: float = 0.0  # fraction of data segments dropped on the receiver's ingress
    rate_bps: int = 0  # tbf bottleneck on the sender's egress; 0: none
    queue_ms: int = 20  # tbf latency: how long a packet may queue (the added delay's ceiling)

    @property
    def drop_per_million(self) -> int:
        return round(self.loss * 1_000_000)

    def describe(self) -> str:
        parts = []
        if self.loss:
            parts.append(f"loss {self.loss:.2%}")
        if self.rate_bps:
            parts.append(f"bottleneck {self.rate_bps / 1e6:g} Mbit/s, queue {self.queue_ms} ms")
        return ", ".join(parts) or "none"


def parse(text: str) -> Impairment:
    """'loss=1%,rate=20mbit,queue=30ms' -> Impairment; ValueError names the bad item."""
    values: dict = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected key=value (loss=1%, rate=20mbit, queue=30ms)")
        if key == "loss":
            number = float(raw.rstrip("%")) / (100 if raw.endswith("%") else 1)
            if not 0 <= number < 1:
                raise ValueError(f"loss={raw}: must be in [0, 1) (or 0%..99%)")
            values["loss"] = number
        elif key == "rate":
            m = _RATE.match(raw.lower())
            if not m:
                raise ValueError(f"rate={raw}: expected a number with bit, kbit, mbit or gbit")
            values["rate_bps"] = int(float(m.group(1)) * _RATE_SCALE[m.group(2)])
        elif key == "queue":
            if not raw.endswith("ms") or not raw[:-2].isdigit():
                raise ValueError(f"queue={raw}: expected milliseconds, e.g. 30ms")
            values["queue_ms"] = int(raw[:-2])
        else:
            raise ValueError(f"unknown impairment {key!r}: loss, rate or queue")
    return Impairment(**values)


def apply_bottleneck(netns: str, ifname: str, imp: Impairment) -> None:
    """A tbf qdisc as the root of the interface (replaces the default)."""
    if not imp.rate_bps:
        return
    from pyroute2 import NetNS

    with NetNS(netns) as ns:
        index = ns.link_lookup(ifname=ifname)[0]
        burst = max(3000, imp.rate_bps // 8 // 250)  # at least two full frames, or one tick's worth at HZ=250
        ns.tc("replace", "tbf", index, rate=imp.rate_bps // 8, burst=burst, latency=imp.queue_ms * 1000)


NO_IMPAIRMENT = Impairment()
