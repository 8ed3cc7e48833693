"""The Wasm filter's plugin configuration: the contract between the agent and wasm_filter/dapb_filter.c, written
down once on this side.

The filter reads one flat JSON object:
  {"version": 1, "u_threshold": 0.5, "throughput_below": 0.3, "default_urgency": 0.4, "hold_bytes": 0,
   "hold_ms": 0, "buffer_limit_bytes": 1048576, "urgent_prefix": "!", "route:<route name>": <urgency>, ...}
and refuses an entry it cannot take alone, logging its key, a short code and the reason; a refused scalar keeps the
value in force before. The limits below are the C parser's (tests/test_filter_contract.py reads its #defines, and
feeds what `build` makes through the real .wasm). `build` refuses here first, per entry, with the filter's own
code, what the filter would refuse, so that what the agent publishes is taken whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from dapb_mesh.config import FILTER_MAX_HOLD_MS, FILTER_MAX_PREFIX_BYTES, FILTER_UINT_MAX, PolicyConfig

VERSION = 1
"""The contract's version: "version" in the configuration (CONFIG_VERSION in C)."""
MAX_ROUTES = 64
"""Route entries the filter keeps; later ones (in name order) are refused."""
MAX_ROUTE_NAME_BYTES = 96
"""Bytes of a route name in UTF-8 (MAX_NAME in C)."""
MAX_PREFIX_BYTES = FILTER_MAX_PREFIX_BYTES
"""Bytes of urgent_prefix in UTF-8 (MAX_PREFIX in C)."""
MAX_UINT = FILTER_UINT_MAX
"""hold_bytes and buffer_limit_bytes (MAX_UINT in C); a larger buffer limit is clamped to it."""
MAX_HOLD_MS = int(FILTER_MAX_HOLD_MS)
"""hold_ms (MAX_HOLD_MS in C)."""
LOG_KEY_BYTES = 60
"""Bytes of a refused key, as written in the JSON, that the filter's log line shows."""
ROUTE_KEY = "route:"
CLASS_SEPARATOR = "~"
"""Envoy route `NAME~CLASS` is the class variant of route NAME: the filter matches the part before the first '~'."""

C_DEFINES = {
    "CONFIG_VERSION": VERSION,
    "MAX_ROUTES": MAX_ROUTES,
    "MAX_NAME": MAX_ROUTE_NAME_BYTES,
    "MAX_PREFIX": MAX_PREFIX_BYTES,
    "MAX_UINT": MAX_UINT,
    "MAX_HOLD_MS": MAX_HOLD_MS,
    "LOG_KEY_BYTES": LOG_KEY_BYTES,
}
"""Each limit by the name of its #define in wasm_filter/dapb_filter.c."""


@dataclass(frozen=True)
class Refusal:
    """One entry the filter cannot take: its key, the filter's short code, and why."""

    key: str
    code: str
    reason: str

    @property
    def logged_key(self) -> str:
        """The key as the filter's log line shows it: as written in the JSON, cut to LOG_KEY_BYTES."""
        raw = json.dumps(self.key)[1:-1]
        return raw if len(raw) <= LOG_KEY_BYTES else raw[:LOG_KEY_BYTES] + "..."

    def __str__(self) -> str:
        return f'filter configuration entry "{self.logged_key}" refused ({self.code}): {self.reason}'


Problem = tuple[str, str]  # (code, reason)


def _decimal(value: int | float) -> Decimal:
    """The number exactly as JSON carries it (json.dumps writes repr of a float)."""
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


def _number_problem(value: object) -> Problem | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "not_a_number", "not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "not_json", "the value is not JSON"  # json.dumps would write NaN or Infinity
    return None


def milli(value: int | float) -> int:
    """Thousandths, rounded as the filter rounds them: half up, on the decimal text."""
    with localcontext(prec=400):  # any float exactly (1e308 has 309 digits)
        return int(_decimal(value).scaleb(3).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def fraction_problem(value: object) -> Problem | None:
    """Why the filter refuses this as an urgency or threshold (a number in [0, 1]), or None."""
    if problem := _number_problem(value):
        return problem
    if value < 0 or _decimal(value) >= Decimal("1.0005"):  # type: ignore[arg-type,operator]
        return "out_of_range", "outside [0, 1]"  # 1.0005 and more round to 1.001
    return None


def uint_problem(value: object, limit: int, unit: str) -> Problem | None:
    """Why the filter refuses this as an integer in [0, limit], or None."""
    if problem := _number_problem(value):
        return problem
    if value < 0:  # type: ignore[operator]
        return "out_of_range", "negative"
    exact = _decimal(value)  # type: ignore[arg-type]
    if exact >= limit + Decimal("0.5"):  # rounded half up, over the limit
        return "out_of_range", f"over {limit} {unit}"
    if exact != exact.to_integral_value():
        return "not_an_integer", "not an integer"
    return None


def _string_problem(value: str) -> Problem | None:
    try:
        value.encode()
    except UnicodeEncodeError:
        return "bad_string", "a lone surrogate"
    return None


def route_name_problem(name: str) -> Problem | None:
    """Why the filter refuses this route name, or None."""
    if problem := _string_problem(name):
        return problem
    size = len(name.encode())
    if size == 0:
        return "name_empty", "no route name"
    if size > MAX_ROUTE_NAME_BYTES:
        return "name_too_long", f"route name over {MAX_ROUTE_NAME_BYTES} bytes"
    if CLASS_SEPARATOR in name:
        return "name_has_tilde", "'~' separates a route from its class variant: the name never matches"
    return None


def prefix_problem(prefix: object) -> Problem | None:
    """Why the filter refuses this urgent_prefix, or None."""
    if not isinstance(prefix, str):
        return "not_a_string", "not a string"
    if problem := _string_problem(prefix):
        return problem
    if len(prefix.encode()) > MAX_PREFIX_BYTES:
        return "too_long", f"over {MAX_PREFIX_BYTES} bytes"
    return None


def _valid(check, *args):
    """An AfterValidator from a problem function: the value, or ValueError with its code and reason."""

    def validate(value):
        if problem := check(value, *args):
            raise ValueError(f"{problem[0]}: {problem[1]}")
        return value

    return AfterValidator(validate)


def _quantized(value: int | float) -> float:
    return milli(value) / 1000  # the thousandths the filter uses, written with at most 3 decimals


Urgency = Annotated[float, _valid(fraction_problem), AfterValidator(_quantized)]
RouteName = Annotated[str, _valid(route_name_problem)]
HoldBytes = Annotated[int, _valid(uint_problem, MAX_UINT, "bytes")]
HoldMillis = Annotated[int, _valid(uint_problem, MAX_HOLD_MS, "ms")]


class FilterConfig(BaseModel):
    """One configuration the filter takes whole: every value within the C parser's limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = VERSION
    u_threshold: Urgency = 0.5
    throughput_below: Urgency = 0.3
    default_urgency: Urgency = 0.4
    hold_bytes: HoldBytes = 0
    hold_ms: HoldMillis = 0
    buffer_limit_bytes: HoldBytes = 0
    urgent_prefix: Annotated[str, _valid(prefix_problem)] = ""
    routes: Annotated[dict[RouteName, Urgency], Field(max_length=MAX_ROUTES)] = {}

    @model_validator(mode="after")
    def _bounded_hold(self) -> FilterConfig:
        if self.hold_bytes and not self.hold_ms:
            raise ValueError("unbounded_hold: a hold needs hold_ms > 0")
        return self

    def to_json(self) -> str:
        """The flat JSON object the filter reads (routes in name order)."""
        return json.dumps(dict(entries(self)))


def entries(config: FilterConfig | None = None, **fields) -> list[tuple[str, object]]:
    """The configuration's entries in the order they are written: from a FilterConfig, or unchecked from the
    fields (what would be written if nothing were refused)."""
    f = config.model_dump() if config is not None else fields
    out: list[tuple[str, object]] = [("version", f.get("version", VERSION))]
    for key in ("u_threshold", "throughput_below", "default_urgency", "hold_bytes", "hold_ms"):
        out.append((key, f[key]))
    if f.get("buffer_limit_bytes"):
        out.append(("buffer_limit_bytes", f["buffer_limit_bytes"]))
    if f.get("urgent_prefix"):
        out.append(("urgent_prefix", f["urgent_prefix"]))
    out += [(ROUTE_KEY + name, urgency) for name, urgency in sorted(f.get("routes", {}).items())]
    return out


def unchecked(
    table: Mapping[str, float],
    policy: PolicyConfig,
    *,
    hold: tuple[int, int] = (0, 0),
    buffer_limit_bytes: int = 0,
    urgent_prefix: str = "",
) -> dict[str, object]:
    """The fields of a configuration as given, before any check."""
    return {
        "u_threshold": policy.u_threshold,
        "throughput_below": policy.throughput_below,
        "default_urgency": policy.default_urgency,
        "hold_bytes": hold[0],
        "hold_ms": hold[1],
        "buffer_limit_bytes": buffer_limit_bytes,
        "urgent_prefix": urgent_prefix,
        "routes": dict(table),
    }


def build(
    table: Mapping[str, float],
    policy: PolicyConfig,
    *,
    hold: tuple[int, int] = (0, 0),
    buffer_limit_bytes: int = 0,
    urgent_prefix: str = "",
) -> tuple[FilterConfig, list[Refusal]]:
    """The configuration for ``table`` (urgency per route), the policy's thresholds, the throughput class's hold
    (B, T in ms; (0, 0) for none), the proxy's buffer limit and the urgent prefix; and every entry refused, in the
    order the filter would refuse it and with its code. A refused route is left out; a refused hold is no hold; a
    buffer limit over MAX_UINT is clamped to it (holding under half of it is still safe); a refused threshold
    or prefix is left out (the filter's default)."""
    fields = unchecked(table, policy, hold=hold, buffer_limit_bytes=buffer_limit_bytes, urgent_prefix=urgent_prefix)
    refused: list[Refusal] = []
    good: dict[str, object] = {}
    routes: dict[str, float] = {}
    hold_refused = False
    for key, value in entries(**fields):
        problem: Problem | None = None
        if key in ("u_threshold", "throughput_below", "default_urgency"):
            problem = fraction_problem(value)
        elif key in ("hold_bytes", "hold_ms"):
            limit, unit = (MAX_HOLD_MS, "ms") if key == "hold_ms" else (MAX_UINT, "bytes")
            problem = uint_problem(value, limit, unit)
            hold_refused |= problem is not None
        elif key == "buffer_limit_bytes":
            problem = uint_problem(value, MAX_UINT, "bytes")
            if problem and problem[0] == "out_of_range" and value > 0:  # type: ignore[operator]
                problem, value = ("clamped", f"over {MAX_UINT} bytes: taken as {MAX_UINT}"), MAX_UINT
                good[key] = value
        elif key == "urgent_prefix":
            problem = prefix_problem(value)
        elif key.startswith(ROUTE_KEY):
            name = key[len(ROUTE_KEY) :]
            problem = route_name_problem(name) or fraction_problem(value)
            if not problem and len(routes) == MAX_ROUTES:
                problem = "too_many_routes", f"more than {MAX_ROUTES} routes"
            if not problem:
                routes[name] = value  # type: ignore[assignment]
        if problem:
            refused.append(Refusal(key, *problem))
        elif not key.startswith(ROUTE_KEY):
            good[key] = value
    if hold_refused:
        good["hold_bytes"] = good["hold_ms"] = 0
    elif good["hold_bytes"] and not good["hold_ms"]:
        refused.append(Refusal("hold_bytes", "unbounded_hold", "a hold needs hold_ms > 0"))
        good["hold_bytes"] = 0
    good["routes"] = routes
    return FilterConfig.model_validate(good), refused
