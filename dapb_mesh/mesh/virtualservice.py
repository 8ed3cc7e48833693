"""VirtualServices and their DAPB urgency annotations -> an urgency per route (pure parsing, plus a YAML source).

Annotation schema (on the VirtualService's metadata):
  dapb.io/urgency:        the default for every HTTP route of this VirtualService
  dapb.io/route-urgency:  a YAML/JSON mapping {route name: value} for single routes
A value is a number in [0, 1] (1 = most urgent) or one of latency (1.0), throughput (0.0), auto (the mesh
default). Routes are the `spec.http[].name` entries, which istiod turns into Envoy route names. Problems are
reported with the resource, the route and the reason, and never stop the others from being read.
"""

from __future__ import annotations

import logging
import math
import reprlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from dapb_mesh.classes import NAMED_URGENCY
from dapb_mesh.config import PolicyConfig
from dapb_mesh.mesh import filter_config
from dapb_mesh.mesh.filter_config import Refusal

log = logging.getLogger("dapb.virtualservice")

ANNOTATION_DEFAULT = "dapb.io/urgency"
ANNOTATION_ROUTES = "dapb.io/route-urgency"
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
    source: str = "annotation"  # what was rejected: annotation, virtualservice, file or source
    code: str = "invalid"  # why, as a short stable label (the key the companion counts rejections by)

    def __str__(self) -> str:
        where = f"{self.resource} route {short(self.route)}" if self.route else self.resource
        return f"{where}: {self.reason}"


MAX_ANNOTATION_CHARS = 16 * 1024
"""An urgency annotation names a few routes; a larger value is refused before YAML reads it."""
MAX_ANNOTATION_DEPTH = 4
"""A mapping of route to value is two levels deep; deeper nesting is refused (a bomb, never a table)."""
MAX_FILE_BYTES = 4 * 1024 * 1024
"""A YAML file of VirtualServices larger than this is refused unread."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def short(value: object, limit: int = 80) -> str:
    """repr of a tenant's value for a message, bounded in time and length: the full repr of an alias bomb would
    never finish, and a megabyte route name has no place in a log line."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails (an int past the digit limit, ...) still names the type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(error: BaseException | str, limit: int = 200) -> str:
    """An error message, cut to a log line's size."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Refused(ValueError):
    """Tenant input refused; ``code`` is the short reason the companion counts it by."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class _AnnotationLoader(yaml.SafeLoader):
    """Safe YAML without aliases and with bounded nesting: an annotation needs neither, and a few hundred bytes of
    nested aliases expand to billions of nodes wherever the value is walked or printed."""

    _depth = 0

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            raise Refused("alias", f"aliases (*name) are not allowed (line {mark.line + 1}, column {mark.column + 1})")
        if self._depth >= MAX_ANNOTATION_DEPTH:
            raise Refused("too_deep", f"nested deeper than {MAX_ANNOTATION_DEPTH} levels (line {mark.line + 1})")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_value(raw: object, default: float) -> float:
    """An annotation value as an urgency; ValueError says why it is not one."""
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text == "auto":
            return default
        if text in NAMED_URGENCY:
            return NAMED_URGENCY[text]
        try:
            raw = float(text)
        except ValueError:
            raise ValueError(f"{short(raw)} is neither a number in [0, 1] nor latency|throughput|auto") from None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"{short(raw)} is neither a number in [0, 1] nor latency|throughput|auto")
    if not math.isfinite(raw) or not 0.0 <= raw <= 1.0:
        raise ValueError(f"{short(raw)} is outside [0, 1]")
    return float(raw)


def route_table(raw: object) -> dict:
    """The dapb.io/route-urgency value as a mapping (keys not yet checked); Refused says why it is not one."""
    if not isinstance(raw, str):
        raise Refused("not_a_string", f"must be a string, got {type(raw).__name__}")
    if len(raw) > MAX_ANNOTATION_CHARS:
        raise Refused("too_large", f"{len(raw)} characters, more than the {MAX_ANNOTATION_CHARS} allowed")
    try:
        loaded = yaml.load(raw, Loader=_AnnotationLoader)  # a SafeLoader, minus aliases and deep nesting
    except Refused:
        raise
    except Exception as error:  # PyYAML raises YAMLError, and ValueError for e.g. an impossible date or a huge int
        raise Refused("not_yaml", clip(error)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise Refused("not_a_mapping", "must be a mapping of route name to urgency")
    return loaded


def resource_name(vs: object) -> str:
    """namespace/name of a VirtualService, whatever shape its metadata has."""
    meta = vs.get("metadata") if isinstance(vs, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    parts = (meta.get("namespace", "default"), meta.get("name", "?"))
    # Kubernetes names are at most 253 characters; anything else is shown, bounded, as what it is
    return "/".join(p if isinstance(p, str) and len(p) <= 253 else short(p) for p in parts)


def urgencies(vs: object, default: float = DEFAULT_URGENCY) -> tuple[list[RouteUrgency], list[Problem]]:
    """Every named HTTP route of one VirtualService with its urgency, and what was wrong. Any shape of input gives
    an answer: a part that is not what the schema says is reported and left out, never raised."""
    name = resource_name(vs)
    resource = f"VirtualService {name}"
    problems: list[Problem] = []

    def malformed(what: str, value: object, expected: str = "a mapping") -> None:
        reason = f"{what} must be {expected}, got {type(value).__name__}"
        problems.append(Problem(resource, None, reason, "virtualservice", "malformed"))

    if not isinstance(vs, dict):
        malformed("the resource", vs)
        return [], problems
    meta = vs.get("metadata") or {}
    if not isinstance(meta, dict):
        malformed("metadata", meta)
        meta = {}
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        malformed("metadata.annotations", annotations)
        annotations = {}
    base = default
    if ANNOTATION_DEFAULT in annotations:
        try:
            base = parse_value(annotations[ANNOTATION_DEFAULT], default)
        except ValueError as error:
            problems.append(Problem(resource, None, f"{ANNOTATION_DEFAULT}: {error}", "annotation", "bad_value"))
    per_route: dict[str, object] = {}
    if ANNOTATION_ROUTES in annotations:
        try:
            table = route_table(annotations[ANNOTATION_ROUTES])
        except Refused as error:
            problems.append(Problem(resource, None, f"{ANNOTATION_ROUTES}: {error}", "annotation", error.code))
            table = {}
        for key, value in table.items():
            if isinstance(key, str) and key:
                per_route[key] = value
            else:  # `1: 0.5` or `~: 0.5`: YAML made the key a number or null; only the value of a name counts
                problems.append(
                    Problem(
                        resource,
                        None,
                        f"{ANNOTATION_ROUTES}: route name {short(key)} is not a string (quote it)",
                        "annotation",
                        "bad_route_name",
                    )
                )
    spec = vs.get("spec") or {}
    if not isinstance(spec, dict):
        malformed("spec", spec)
        spec = {}
    http = spec.get("http") or []
    if not isinstance(http, list):
        malformed("spec.http", http, "a list")
        http = []
    routes: list[str] = []
    for i, entry in enumerate(http):
        route = entry.get("name") if isinstance(entry, dict) else None
        if route is None or route == "":
            continue  # an unnamed route (or not a route): no name for an annotation to give an urgency to
        if not isinstance(route, str):
            problems.append(
                Problem(
                    resource,
                    None,
                    f"spec.http[{i}].name must be a string, got {short(route)}; that route is skipped",
                    "virtualservice",
                    "bad_route_name",
                )
            )
            continue
        routes.append(route)
    out = []
    for route in routes:
        value = base
        if route in per_route:
            try:
                value = parse_value(per_route[route], default)
            except ValueError as error:
                problems.append(Problem(resource, route, f"{ANNOTATION_ROUTES}: {error}", "annotation", "bad_value"))
        out.append(RouteUrgency(name, route, value))
    for unknown in sorted(set(per_route) - set(routes)):
        problems.append(
            Problem(
                resource,
                unknown,
                f"{ANNOTATION_ROUTES} names a route this VirtualService lacks",
                "annotation",
                "unknown_route",
            )
        )
    return out, problems


def load_file(path: Path) -> tuple[list[dict], list[Problem]]:
    """The VirtualServices of one YAML file. A file that cannot be read whole (unreadable, too large, not UTF-8,
    not YAML) gives none, and one Problem that says why."""

    def refused(code: str, reason: str) -> tuple[list[dict], list[Problem]]:
        return [], [Problem(str(path), None, reason, "file", code)]

    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        return refused("unreadable", f"cannot read: {error.strerror or clip(error)}")
    if len(data) > MAX_FILE_BYTES:
        return refused("too_large", f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return refused("not_utf8", f"not UTF-8 text (undecodable byte at offset {error.start})")
    try:
        docs = list(yaml.safe_load_all(text))
    except RecursionError:
        return refused("too_deep", "not valid YAML: nested too deeply")
    except Exception as error:  # PyYAML raises YAMLError, and ValueError for e.g. an impossible date or a huge int
        return refused("not_yaml", f"not valid YAML: {clip(error)}")
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == "VirtualService"], []


def load_directory(directory: Path) -> tuple[list[dict], list[Problem]]:
    """Every VirtualService in the YAML files of a directory (the embedded default source)."""
    found: list[dict] = []
    problems: list[Problem] = []
    for path in sorted(directory.glob("*.y*ml")):
        docs, more = load_file(path)
        found += docs
        problems += more
    return found, problems


def plugin_config(
    table: list[RouteUrgency] | Mapping[str, float],
    policy: PolicyConfig,
    *,
    hold: tuple[int, int] = (0, 0),
    buffer_limit_bytes: int = 0,
    urgent_prefix: str = "",
    rejected: Counter[tuple[str, str]] | None = None,
    seen: set[Refusal] | None = None,
) -> str:
    """The Wasm filter's configuration as it is published: the JSON of a FilterConfig (mesh/filter_config.py, the
    contract with wasm_filter/dapb_filter.c). ``table``: urgency per route (RouteUrgency entries or the companion's
    {route: urgency}); ``hold``: (B, T in ms) when the filter enforces the throughput class's decision
    (Decision.filter_hold), (0, 0) otherwise. An entry the filter could not take is left out (or clamped) and
    logged with its reason (and counted in ``rejected`` as ("filter_config", code)); the rest is published.
    ``seen``: the caller's refusals of its last publication, logged and counted once while they last (updated)."""
    pairs = table.items() if isinstance(table, Mapping) else ((e.route, e.urgency) for e in table)
    config, refused = filter_config.build(
        dict(pairs), policy, hold=hold, buffer_limit_bytes=buffer_limit_bytes, urgent_prefix=urgent_prefix
    )
    for refusal in refused:
        if seen is None or refusal not in seen:
            log.warning("%s", refusal)
            if rejected is not None:
                rejected[("filter_config", refusal.code)] += 1
    if seen is not None:
        seen.clear()
        seen.update(refused)
    return config.to_json()
