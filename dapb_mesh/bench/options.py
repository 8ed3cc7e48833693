"""The bench's options, checked before anything is made: a bad one is a BenchOptionError naming the option."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CLIENT_DEFAULT_MODES = ["baseline", "agent-auto", "agent-throughput"]
SCENARIO_DEFAULT_MODES = ["baseline", "nagle", "dapb"]


class BenchOptionError(ValueError):
    """A bad bench option; ``option`` is its command-line name, the message says what is wrong with the value."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class ScenarioRun:
    """A scenario bench as asked for: the modes, the rates to sweep and the impairment, all checked."""

    scenario: str
    arch: str
    modes: list[str]
    rates: list[float]
    impairment: Any


@dataclass(frozen=True)
class ClientRun:
    """A real-client bench as asked for: the client loads and the modes, checked."""

    loads: list[Any]
    modes: list[str]


def split(spec: str) -> list[str]:
    """A comma-separated option's items, stripped; empty items dropped."""
    return [item.strip() for item in spec.split(",") if item.strip()]


def parse_rates(spec: str) -> list[float]:
    """--rate: one positive, finite number of messages per second, or a comma-separated list to sweep."""
    try:
        rates = [float(r) for r in spec.split(",") if r.strip()]
    except ValueError:
        raise BenchOptionError("--rate", f"{spec!r} is not a number or a list of numbers") from None
    if not rates or any(not (math.isfinite(r) and r > 0) for r in rates):
        raise BenchOptionError("--rate", f"{spec!r}: rates must be positive numbers")
    return rates


def scenario_run(scenario: str, modes: str, arch: str, rate: str, impair: str) -> ScenarioRun:
    """--scenario, --modes, --arch, --rate and --impair of a scenario bench; BenchOptionError names the bad one."""
    from dapb_mesh.bench.envoy import ENVOY_SCENARIOS
    from dapb_mesh.bench.modes import validate_modes
    from dapb_mesh.bench.raw import RAW_SCENARIOS
    from dapb_mesh.testbed.impair import parse as parse_impairment
    from dapb_mesh.testbed.mesh import parse_arch

    try:
        mode_list = validate_modes(split(modes))
    except ValueError as error:
        raise BenchOptionError("--modes", str(error)) from None
    rates = parse_rates(rate)
    if arch != "raw":
        try:
            parse_arch(arch)
        except ValueError as error:
            raise BenchOptionError("--arch", f"{error} (or raw)") from None
    known = RAW_SCENARIOS if arch == "raw" else ENVOY_SCENARIOS
    if scenario not in known:
        raise BenchOptionError("--scenario", f"{scenario!r} for --arch {arch}; choose from {', '.join(known)}")
    try:
        impairment = parse_impairment(impair)
    except ValueError as error:
        raise BenchOptionError("--impair", str(error)) from None
    return ScenarioRun(scenario, arch, mode_list, rates, impairment)


def client_run(spec: str, modes: str) -> ClientRun:
    """--client and --modes of a real-client bench; the scenarios' default modes mean the clients' defaults."""
    from dapb_mesh.bench.clients import parse_client, validate_client_modes

    try:
        loads = [parse_client(s) for s in spec.split(",") if s.strip()]
    except ValueError as error:
        raise BenchOptionError("--client", str(error)) from None
    if not loads:
        raise BenchOptionError("--client", f"{spec!r} names no client (e.g. wrk:c4)")
    mode_list = split(modes)
    if mode_list == SCENARIO_DEFAULT_MODES:
        mode_list = list(CLIENT_DEFAULT_MODES)
    try:
        validate_client_modes(mode_list)
    except ValueError as error:
        raise BenchOptionError("--modes", f"{error} (with --client)") from None
    return ClientRun(loads, mode_list)
