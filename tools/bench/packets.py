"""The packet path: connection rate and throughput between namespaces, per ruleset."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from network_isolation.model import Network

from .cloud import NICS, machine_address, taught_peer
from .forward import CONNTRACK_FORWARD, build_forwarded
from .ruleset import (
    CONNTRACK_ONLY,
    MeasurementError,
    Namespaces,
    count_rules,
    dropped_packets,
    must,
    naive_ruleset,
)

LISTENER = """\
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=4096)
print("ready", flush=True)
while True:
    try:
        c, _ = s.accept()
        c.close()
    except OSError:
        pass
"""

# Opens and resets connections as fast as it can: SO_LINGER 0 sends RST on close, so no
# TIME_WAIT exhausts the ports. Every connection is new to conntrack: its SYN walks the rules.
CONNECTOR = """\
import json, os, socket, struct, sys, time
host, port, seconds, workers = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
cpus = [int(sys.argv[5])] if len(sys.argv) > 5 else []
linger = struct.pack("ii", 1, 0)
pipes = []
for _ in range(workers):
    r, w = os.pipe()
    if os.fork() == 0:
        if cpus:
            os.sched_setaffinity(0, cpus)
        ok = failed = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.settimeout(1)
            try:
                s.connect((host, port))
                ok += 1
            except OSError:
                failed += 1
            s.close()
        os.write(w, json.dumps([ok, failed]).encode())
        os._exit(0)
    os.close(w)
    pipes.append(r)
ok = failed = 0
for r in pipes:
    a, b = json.loads(os.read(r, 100))
    ok, failed = ok + a, failed + b
for _ in pipes:
    os.wait()
print(json.dumps({"connections": ok, "failed": failed, "seconds": seconds}))
"""

LISTEN_PORT = 7000


@dataclass
class PacketSettings:
    """How long and how often each packet-path measurement runs."""

    connect_seconds: float = 1.0
    connect_rounds: int = 5
    workers: int = 2
    iperf_seconds: int = 3
    iperf_omit: int = 1
    iperf_rounds: int = 6


def measuring_cpu() -> int:
    """The one CPU every measuring process runs on.

    Clients and servers share one core: the cost of a ruleset is then CPU time taken from the
    same budget, and rounds repeat within 1-2 %. Spread over two cores, the client starves or
    races the server and the same measurement swings by 10-20 %.
    """
    return min(os.sched_getaffinity(0))


@dataclass
class PathResult:
    """One ruleset on the packet path."""

    label: str
    kind: str  # none, conntrack, ours, naive; forwarded: conntrack-fwd, ours-fwd
    peers: int | None
    rules: int
    rates: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)
    failed_connections: int = 0

    @property
    def rate(self) -> float:
        """Median new connections per second."""
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def throughput(self) -> float:
        """Median TCP throughput in bit/s."""
        return statistics.median(self.throughputs) if self.throughputs else 0.0


@dataclass
class Pair:
    """A server namespace (ruleset on its input hook) and a client namespace, on one veth."""

    result: PathResult
    server: str
    client: str
    server_ip: str


def build_pair(
    spaces: Namespaces, index: int, result: PathResult, ruleset: str | None, client_unit: int
) -> Pair:
    """The measured machine (unit 0) as server, `client_unit` as client."""
    server_if = machine_address(Network.INTERNAL, 0)
    client_if = machine_address(Network.INTERNAL, client_unit)
    server, client = spaces.add(f"s{index}"), spaces.add(f"c{index}")
    nic = NICS[Network.INTERNAL]
    veth = ["type", "veth", "peer", "eth0", "netns", client]
    must(["ip", "-n", server, "link", "add", nic, *veth])
    for ns, dev, address, other in (
        (server, nic, server_if, client_if),
        (client, "eth0", client_if, server_if),
    ):
        must(["ip", "-n", ns, "addr", "add", str(address), "dev", dev])
        must(["ip", "-n", ns, "link", "set", dev, "up"])
        if other.network != address.network:
            must(["ip", "-n", ns, "route", "add", str(other.network), "dev", dev])
    spaces.run(server, "sysctl", "-qw", "net.core.somaxconn=4096")
    spaces.run(client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
    if ruleset is not None:
        spaces.load(server, ruleset)
    server_ip = str(server_if.ip)
    listener = spaces.spawn(server, sys.executable, "-c", LISTENER, server_ip, str(LISTEN_PORT))
    if listener.stdout is None or listener.stdout.readline().strip() != "ready":
        raise MeasurementError(f"the listener in {server} did not start")
    iperf = spaces.spawn(server, "iperf3", "-s", "-B", server_ip)
    for process in (listener, iperf):
        os.sched_setaffinity(process.pid, {measuring_cpu()})
    return Pair(result, server, client, server_ip)


def measure_rate(spaces: Namespaces, pair: Pair, settings: PacketSettings) -> None:
    """New connections per second from the client to the server's listener."""
    out = spaces.run(
        pair.client,
        sys.executable,
        "-c",
        CONNECTOR,
        pair.server_ip,
        str(LISTEN_PORT),
        str(settings.connect_seconds),
        str(settings.workers),
        str(measuring_cpu()),
    )
    found = json.loads(out)
    if not found["connections"]:
        raise MeasurementError(f"no connection got through {pair.result.label}")
    pair.result.rates.append(found["connections"] / found["seconds"])
    pair.result.failed_connections += found["failed"]


def measure_throughput(spaces: Namespaces, pair: Pair, settings: PacketSettings) -> None:
    """TCP throughput of one established flow (iperf3)."""
    argv = ["iperf3", "-c", pair.server_ip, "-J", "-t", str(settings.iperf_seconds)]
    argv += ["-A", str(measuring_cpu())]
    if settings.iperf_omit:
        argv += ["-O", str(settings.iperf_omit)]
    out = ""
    for attempt in range(3):  # the server may still be starting
        try:
            out = spaces.run(pair.client, *argv, timeout=settings.iperf_seconds + 30)
            break
        except MeasurementError:
            if attempt == 2:
                raise
            time.sleep(0.5)
    report = json.loads(out)
    pair.result.throughputs.append(float(report["end"]["sum_received"]["bits_per_second"]))


def _rotated(pairs: Sequence[Pair], turn: int) -> list[Pair]:
    """Each round starts with another configuration, so drift spreads over all of them."""
    shift = turn % len(pairs)
    return [*pairs[shift:], *pairs[:shift]]


def packet_path(
    rulesets: dict[int, str], settings: PacketSettings, log: Callable[[str], None]
) -> list[PathResult]:
    """Every ruleset side by side: rounds interleave the configurations.

    The host path (to a listener on the server) for each ruleset, and the forwarded path (to
    a VIP the node DNATs to a pod) under a conntrack-only forward chain and under our table
    at the largest N.
    """
    largest = max(rulesets)
    client = taught_peer(largest)
    configs: list[tuple[PathResult, str | None, int]] = [
        (PathResult("no ruleset", "none", None, 0), None, client),
        (PathResult("conntrack only", "conntrack", None, 1), CONNTRACK_ONLY, client),
    ]
    for peers, ours in sorted(rulesets.items()):
        naive = naive_ruleset(peers)
        configs += [
            (PathResult("ours", "ours", peers, count_rules(ours)), ours, taught_peer(peers)),
            (PathResult("naive", "naive", peers, count_rules(naive)), naive, taught_peer(peers)),
        ]
    forwarded = [
        (PathResult("conntrack only + DNAT", "conntrack-fwd", None, 1), CONNTRACK_FORWARD),
        (
            PathResult("ours + DNAT", "ours-fwd", largest, count_rules(rulesets[largest])),
            rulesets[largest],
        ),
    ]
    with Namespaces("p") as spaces:
        pairs = [
            build_pair(spaces, i, result, ruleset, client)
            for i, (result, ruleset, client) in enumerate(configs)
        ]
        for i, (result, ruleset) in enumerate(forwarded):
            node, source, vip = build_forwarded(
                spaces, i, ruleset, client, LISTENER, LISTEN_PORT, measuring_cpu()
            )
            pairs.append(Pair(result, node, source, vip))
        log(f"packet path: {len(pairs)} namespace pairs ready")
        # Throughput first: the connection storms leave conntrack entries whose expiry would
        # take CPU from the flows.
        for turn in range(settings.iperf_rounds):
            for pair in _rotated(pairs, turn):
                measure_throughput(spaces, pair, settings)
        log("packet path: throughput measured")
        for turn in range(settings.connect_rounds):
            for pair in _rotated(pairs, turn):
                measure_rate(spaces, pair, settings)
        for pair in pairs:
            if pair.result.kind.startswith("ours"):
                _check_accepted(spaces, pair)
    return [c[0] for c in configs] + [f[0] for f in forwarded]


def _check_accepted(spaces: Namespaces, pair: Pair) -> None:
    """The measured connections were accepted by a rule, not let through by audit or policy.

    A client the table does not admit would time the path of a dropped packet: every rule
    walked, then a counter. No drop counter of our table may have moved.
    """
    moved = {name: n for name, n in dropped_packets(spaces, pair.server).items() if n}
    if moved:
        raise MeasurementError(
            f"{pair.result.label} at {pair.result.peers} peers measured dropped packets: {moved}"
        )


def packet_settings(quick: bool) -> PacketSettings:
    """Short runs with --quick."""
    if quick:
        return PacketSettings(connect_rounds=1, iperf_seconds=1, iperf_omit=0, iperf_rounds=1)
    return PacketSettings()
