"""Prometheus metrics of this machine's isolation: drops, mode, plan, applies, drift.

Runs as a small service of its own (`python3 -m network_isolation.host.metrics`), which the charm
starts, enables and removes through the host module, listening on the machine's management
address only. Every scrape reads the live table through `Host.counters()`, the code behind the
`show-counters` action, so both always show the same numbers; the rest comes from the state
files the charm and `Host` keep (see `observed`).

`read` gathers one scrape's inputs (commands and files), `families` turns them into metrics
(pure), and `main` serves them with prometheus-client's HTTP server.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, get_args

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..base import Enforcement
from ..model import NETWORK_NAMES, IsolationLevel
from ..observed import HISTORY_FILE, PLAN_SUMMARY_FILE, ApplyHistory, PlanSummary, load_record
from . import Applied, Host, HostError, RejectedRecord, fingerprint, state_dir

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9479
METRICS_PATH = "/metrics"
ENFORCEMENT_MODES: tuple[str, ...] = get_args(Enforcement)
# Counter names in our table: drop_in_storage_cluster, drop_out_public, drop_fwd_public (the
# forward hook), drop_in_invalid.
_DROP_COUNTER = re.compile(r"^drop_(in|out|fwd)_(\w+)$")
# The label of the connection-tracking `invalid` drop, as the audit log prefix names it.
CT_INVALID = "ct-invalid"


class HostView(Protocol):
    """What a scrape reads of the host: the `Host` methods the charm's actions use too."""

    state: Path

    def counters(self) -> dict[str, dict[str, int]]:
        """`show-counters`: packets and bytes of every named counter of our table."""
        ...

    def drift(self) -> str | None:
        """Why the live table differs from the last confirmed apply, or None."""
        ...

    def applied(self) -> Applied:
        """The confirmed ruleset and our netplan file."""
        ...

    def rejected(self) -> RejectedRecord | None:
        """The change that failed last and is held back, if any."""
        ...


@dataclass(frozen=True)
class _AppliedArtefacts:
    nftables: str
    netplan: str | None


@dataclass(frozen=True)
class Reading:
    """One scrape's view of the machine."""

    counters: Mapping[str, Mapping[str, int]]
    drift: str | None = None
    applied_fingerprint: str | None = None
    held_back: bool = False
    summary: PlanSummary | None = None
    history: ApplyHistory = ApplyHistory()
    errors: tuple[str, ...] = ()


def drop_labels(counter: str) -> tuple[str, str] | None:
    """(network, direction) of one of our drop counters; None for any other counter."""
    match = _DROP_COUNTER.match(counter)
    if not match:
        return None
    direction, name = match.groups()
    network = name.replace("_", "-")
    if network == "invalid":
        return CT_INVALID, direction
    return (network, direction) if network in NETWORK_NAMES else None


def read(host: HostView) -> Reading:
    """Everything one scrape reports; a failing part is reported, never raised."""
    errors: list[str] = []
    try:
        counters = host.counters()
    except HostError as e:
        counters, errors = {}, [f"counters: {e}"]
    try:
        drift = host.drift()
    except HostError as e:
        drift, errors = None, [*errors, f"drift: {e}"]
    applied = host.applied()
    applied_fingerprint = (
        fingerprint(_AppliedArtefacts(applied.nftables, applied.netplan))
        if applied.nftables is not None
        else None
    )
    return Reading(
        counters=counters,
        drift=drift,
        applied_fingerprint=applied_fingerprint,
        held_back=host.rejected() is not None,
        summary=load_record(PlanSummary, _read_text(host.state / PLAN_SUMMARY_FILE)),
        history=load_record(ApplyHistory, _read_text(host.state / HISTORY_FILE)) or ApplyHistory(),
        errors=tuple(errors),
    )


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"network_isolation_{name}", documentation, value=value)


def _states(name: str, documentation: str, label: str, states: Sequence[str], current: str):
    """One series per possible state, 1 for the current one (Prometheus' state-set idiom)."""
    family = GaugeMetricFamily(f"network_isolation_{name}", documentation, labels=[label])
    for state in states:
        family.add_metric([state], 1.0 if state == current else 0.0)
    return family


def _drop_families(counters: Mapping[str, Mapping[str, int]]) -> list[Metric]:
    labels = ["network", "direction"]
    packets = CounterMetricFamily(
        "network_isolation_dropped_packets",
        "Packets dropped by the isolation table (in audit mode: that it would drop).",
        labels=labels,
    )
    size = CounterMetricFamily(
        "network_isolation_dropped_bytes",
        "Bytes dropped by the isolation table (in audit mode: that it would drop).",
        labels=labels,
    )
    for name, counter in sorted(counters.items()):
        found = drop_labels(name)
        if found is not None:
            packets.add_metric(list(found), counter.get("packets", 0))
            size.add_metric(list(found), counter.get("bytes", 0))
    return [packets, size]


def _plan_families(summary: PlanSummary, reading: Reading) -> list[Metric]:
    allowed = GaugeMetricFamily(
        "network_isolation_network_allowed",
        "1 when the machine's roles allow it to use the network, 0 when it must stay off.",
        labels=["network"],
    )
    for network in NETWORK_NAMES:
        allowed.add_metric([network], 1.0 if summary.networks.get(network) else 0.0)
    planned = bool(summary.wanted) and summary.wanted == reading.applied_fingerprint
    return [
        _states(
            "enforcement_mode",
            "The enforcement option in effect: enforce, audit (count only) or off.",
            "mode",
            ENFORCEMENT_MODES,
            summary.enforcement,
        ),
        _states(
            "isolation_level",
            "The cloud's degree of isolation: none, partial or maximum.",
            "level",
            [level.value for level in IsolationLevel],
            summary.isolation,
        ),
        _gauge(
            "isolation_domains",
            "Traffic domains (networks sharing a space count once).",
            summary.domains,
        ),
        _gauge(
            "plan_blocked",
            "1 when the machine's plan is blocked (its status names the problem).",
            1.0 if summary.status == "blocked" else 0.0,
        ),
        _gauge(
            "strict_ports",
            "1 when strict-ports accepts only catalogued ports.",
            1.0 if summary.strict_ports else 0.0,
        ),
        allowed,
        _gauge(
            "ruleset_planned",
            "1 when what is applied is what the current plan renders, 0 when it is not.",
            1.0 if planned else 0.0,
        ),
    ]


def families(reading: Reading) -> list[Metric]:
    """The metrics of one reading (pure)."""
    metrics: list[Metric] = _drop_families(reading.counters)
    metrics += [
        _gauge(
            "table_present",
            "1 when the table inet network_isolation is loaded in the kernel.",
            # every ruleset we render has named counters: none listed means no table
            1.0 if reading.counters else 0.0,
        ),
        _gauge(
            "drift",
            "1 when the live table differs from the last confirmed apply (changed or missing).",
            1.0 if reading.drift else 0.0,
        ),
        _gauge(
            "change_held_back",
            "1 while a change that was rolled back is held back until the inputs change.",
            1.0 if reading.held_back else 0.0,
        ),
        CounterMetricFamily(
            "network_isolation_rollbacks",
            "Applies the charm undid (a failed load, netplan apply or probe; an unconfirmed one).",
            value=reading.history.rollbacks,
        ),
        _gauge(
            "scrape_errors",
            "Parts of this scrape that could not be read (see the exporter's log).",
            len(reading.errors),
        ),
    ]
    if reading.history.last_apply is not None:
        metrics.append(
            _gauge(
                "last_apply_timestamp_seconds",
                "Unix time of the last confirmed apply.",
                reading.history.last_apply,
            )
        )
    if reading.summary is not None:
        metrics += _plan_families(reading.summary, reading)
    return metrics


class HostCollector(Collector):
    """Reads the host on every scrape (no cache: a scrape is a few milliseconds of nft)."""

    def __init__(self, host: HostView):
        self.host = host

    def collect(self) -> Iterator[Metric]:
        """The metrics of this very moment."""
        reading = read(self.host)
        for error in reading.errors:
            logger.warning("%s", error)
        yield from families(reading)


def build_parser() -> argparse.ArgumentParser:
    """The service's command line (the host module writes it into the unit)."""
    parser = argparse.ArgumentParser(
        prog="network-isolation-exporter",
        description="Serve this machine's network isolation metrics for Prometheus.",
    )
    parser.add_argument("--address", required=True, help="address to listen on (management)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--state-dir", type=Path, default=None)
    return parser


def registry_for(host: HostView) -> CollectorRegistry:
    """A registry with only our collector (no process or platform metrics of the exporter)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(host))
    return registry


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    host = Host(state=args.state_dir or state_dir())
    server, thread = start_http_server(args.port, addr=args.address, registry=registry_for(host))
    logger.info("serving metrics on %s port %s", args.address, args.port)

    def stop(_signal: int, _frame: object) -> None:
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while thread.is_alive():
        thread.join(timeout=1.0)
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
