"""Reachability on the host: the default gateways, and the TCP probe of every target."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_fixed

from ..reachability import ProbeTarget
from .system import System


class Probe(Protocol):
    """Checks targets within `budget` seconds; returns the unreachable ones and why."""

    def __call__(self, targets: Sequence[ProbeTarget], budget: float) -> Mapping[ProbeTarget, str]:
        """Probe every target; the result maps each unreachable one to the reason."""
        ...


def default_gateways(system: System) -> list[str]:
    """The gateways of the host's default routes (IPv4 and IPv6), read-only."""
    gateways: list[str] = []
    for family in ("-4", "-6"):
        result = system.run(system.tools.ip, "-j", family, "route", "show", "default")
        try:
            routes = json.loads(result.stdout) if result.returncode == 0 else []
        except ValueError:
            routes = []
        for route in routes if isinstance(routes, list) else []:
            gateway = route.get("gateway") if isinstance(route, dict) else None
            if isinstance(gateway, str) and gateway not in gateways:
                gateways.append(gateway)
    return gateways


def _probe_one(target: ProbeTarget, deadline: float, connect_timeout: float, interval: float):
    def attempt() -> None:
        timeout = max(0.05, min(connect_timeout, deadline - time.monotonic()))
        try:
            socket.create_connection((target.host, target.port), timeout=timeout).close()
        except ConnectionRefusedError:
            if not target.refused_ok:
                raise

    def out_of_time(_: RetryCallState) -> bool:
        return time.monotonic() + interval >= deadline

    try:
        Retrying(
            stop=out_of_time,
            wait=wait_fixed(interval),
            retry=retry_if_exception_type(OSError),
            reraise=True,
        )(attempt)
    except OSError as e:
        return str(e) or type(e).__name__
    return None


def tcp_probe(
    targets: Sequence[ProbeTarget],
    budget: float,
    *,
    connect_timeout: float = 2.0,
    interval: float = 0.5,
) -> dict[ProbeTarget, str]:
    """TCP-connect to every target in parallel, retrying each until it answers or time is up.

    The whole probe takes at most about `budget` seconds (plus one `interval`), however many
    targets there are and however they fail.
    """
    if not targets:
        return {}
    deadline = time.monotonic() + budget
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        outcomes = list(
            pool.map(lambda t: _probe_one(t, deadline, connect_timeout, interval), targets)
        )
    return {t: why for t, why in zip(targets, outcomes, strict=True) if why is not None}
