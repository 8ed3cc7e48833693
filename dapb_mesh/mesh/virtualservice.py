"""VirtualServices and their DAPB urgency annotations -> an urgency per route (pure parsing, plus a YAML source).

Annotation schema (on the VirtualService's metadata):
  dapb.io/urgency:        the default for every HTTP route of this VirtualService
  dapb.io/route-urgency:  a YAML/JSON mapping {route name: value} for single routes
A value is a number in [0, 1] (1 = most urgent) or one of latency (1.0), throughput (0.0), auto (the mesh
default). Routes are the `spec.http[].name` entries, which istiod turns into Envoy route names. Problems are
reported with the resource, the route and the reason, and never stop the others from being read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from dapb_mesh.config import PolicyConfig

ANNOTATION_DEFAULT = "dapb.io/urgency"
ANNOTATION_ROUTES = "dapb.io/route-urgency"
NAMED = {"latency": 1.0, "throughput": 0.0}
DEFAULT_URGENCY = PolicyConfig().default_urgency  # "auto": the mesh default, one definition in the policy settings


@dataclass(frozen=True)
class RouteUrgency:
    virtual_service: str  # namespace/name
    route: str
    urgency: float


@dataclass(frozen=True)
class Problem:
    resource: str
    route: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.resource} route {self.route!r}" if self.route else self.resource
        return f"{where}: {self.reason}"


def parse_value(raw: object, default: float) -> float:
    """An annotation value as an urgency; ValueError says why it is not one."""
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text == "auto":
            return default
        if text in NAMED:
            return NAMED[text]
        try:
            raw = float(text)
        except ValueError:
            raise ValueError(f"{raw!r} is neither a number in [0, 1] nor latency|throughput|auto") from None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"{raw!r} is neither a number in [0, 1] nor latency|throughput|auto")
    if not math.isfinite(raw) or not 0.0 <= raw <= 1.0:
        raise ValueError(f"{raw!r} is outside [0, 1]")
    return float(raw)


def urgencies(vs: dict, default: float = DEFAULT_URGENCY) -> tuple[list[RouteUrgency], list[Problem]]:
    """Every named HTTP route of one VirtualService with its urgency, and what was wrong."""
    meta = vs.get("metadata") or {}
    name = f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    resource = f"VirtualService {name}"
    annotations = meta.get("annotations") or {}
    problems: list[Problem] = []
    base = default
    if ANNOTATION_DEFAULT in annotations:
        try:
            base = parse_value(annotations[ANNOTATION_DEFAULT], default)
        except ValueError as error:
            problems.append(Problem(resource, None, f"{ANNOTATION_DEFAULT}: {error}"))
    per_route: dict = {}
    if ANNOTATION_ROUTES in annotations:
        try:
            per_route = yaml.safe_load(annotations[ANNOTATION_ROUTES]) or {}
            if not isinstance(per_route, dict):
                raise ValueError("must be a mapping of route name to urgency")
        except (yaml.YAMLError, ValueError) as error:
            problems.append(Problem(resource, None, f"{ANNOTATION_ROUTES}: {error}"))
            per_route = {}
    routes = [r.get("name") for r in (vs.get("spec") or {}).get("http") or [] if isinstance(r, dict)]
    out = []
    for route in routes:
        if not route:
            continue
        value = base
        if route in per_route:
            try:
                value = parse_value(per_route[route], default)
            except ValueError as error:
                problems.append(Problem(resource, route, f"{ANNOTATION_ROUTES}: {error}"))
        out.append(RouteUrgency(name, route, value))
    for unknown in sorted(set(per_route) - set(routes)):
        problems.append(Problem(resource, str(unknown), f"{ANNOTATION_ROUTES} names a route this VirtualService lacks"))
    return out, problems


def load_directory(directory: Path) -> tuple[list[dict], list[Problem]]:
    """Every VirtualService in the YAML files of a directory (the embedded default source)."""
    found, problems = [], []
    for path in sorted(directory.glob("*.y*ml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as error:
            problems.append(Problem(str(path), None, f"not valid YAML: {error}"))
            continue
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "VirtualService":
                found.append(doc)
    return found, problems


def plugin_config(
    table: list[RouteUrgency] | Mapping[str, float],
    policy: PolicyConfig,
    *,
    hold: tuple[int, int] = (0, 0),
    buffer_limit_bytes: int = 0,
    urgent_prefix: str = "",
) -> str:
    """The Wasm filter's configuration: a flat JSON object (see wasm_filter/dapb_filter.c). ``table``: urgency
    per route (RouteUrgency entries or the companion's {route: urgency}); ``hold``: (B, T in ms) when the filter
    enforces the throughput class's decision (Decision.filter_hold), (0, 0) otherwise."""
    cfg: dict[str, float | int | str] = {
        "u_threshold": policy.u_threshold,
        "throughput_below": policy.throughput_below,
        "default_urgency": policy.default_urgency,
        "hold_bytes": hold[0],
        "hold_ms": hold[1],
    }
    if buffer_limit_bytes:
        cfg["buffer_limit_bytes"] = buffer_limit_bytes
    if urgent_prefix:
        cfg["urgent_prefix"] = urgent_prefix
    pairs = table.items() if isinstance(table, Mapping) else ((e.route, e.urgency) for e in table)
    for route, urgency in pairs:
        cfg[f"route:{route}"] = round(urgency, 3)
    return json.dumps(cfg)
