"""The connectivity matrix: which flows to probe, probing them, and the table of results.

Laid out like Calico's connectivity checker: one line per flow with source, destination,
protocol/port, expected and actual verdict, mismatches marked, then a summary.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .oracle import FAILSAFE_PORT, Expectation, Flow, Oracle
from .testbed import Bed, Cloud, Host, Iface, IPAddress, ProbeResult, space_of

TCP_PORT = 7000
UDP_PORT = 6081
DROP_TIMEOUT = 0.75  # seconds a probe waits: a pass takes milliseconds
CONFIRM_TIMEOUT = 3.0  # an unexpected drop is probed again, with this patience
SEEN_WAIT = 0.5  # how long one-way (spoofed) probes get to arrive

# Every matrix checked in this session, for the summary at the end of the run.
SUMMARIES: list[str] = []


def management_addresses(cloud: Cloud, machine: str) -> set[IPAddress]:
    """A machine's addresses in its management space."""
    space = cloud.management_space()
    return {
        a.ip for i in cloud.machines[machine].ifaces if i.segment == space for a in i.addresses
    }


def flows_between(
    cloud: Cloud,
    machines: Sequence[str],
    tcp_port: int = TCP_PORT,
    udp_port: int = UDP_PORT,
    externals: bool = True,
) -> list[Flow]:
    """The flows of the matrix.

    Between every two machines (every source address, bound explicitly, to every destination
    address of the same IP version) one TCP and one UDP flow; tcp/22 from every management
    address and from one other address per sender and version; and from the client and the
    outsider to every address, on all three ports.
    """
    flows: list[Flow] = []
    senders = [*machines, *(cloud.externals if externals else ())]
    for src in senders:
        src_host = cloud.hosts[src]
        external = src in cloud.externals
        mgmt = management_addresses(cloud, src) if not external else set()
        ssh_from: set[IPAddress] = (
            set(mgmt) if not external else {a.ip for a in src_host.addresses}
        )
        for version in (4, 6):
            other = [a.ip for a in src_host.addresses if a.version == version and a.ip not in mgmt]
            if not external and other:
                ssh_from.add(other[0])
        for dst in machines:
            if dst == src:
                continue
            for a in src_host.addresses:
                for b in cloud.machines[dst].addresses:
                    if a.version != b.version:
                        continue
                    flows.append(Flow(src, a.ip, dst, b.ip, "tcp", tcp_port))
                    flows.append(Flow(src, a.ip, dst, b.ip, "udp", udp_port))
                    if a.ip in ssh_from:
                        flows.append(Flow(src, a.ip, dst, b.ip, "tcp", FAILSAFE_PORT))
    return flows


def flows_on_ports(
    cloud: Cloud,
    machines: Sequence[str],
    ports: Sequence[tuple[str, int]],
    externals: bool = True,
) -> list[Flow]:
    """Every port from every address to every other host's addresses of the same IP version.

    Senders: the machines and (with `externals`) the client and the outsider; destinations:
    the machines. For strict-ports, where the verdict depends on the port as well.
    """
    senders = [*machines, *(cloud.externals if externals else ())]
    return [
        Flow(src, a.ip, dst, b.ip, proto, port)
        for src in senders
        for dst in machines
        if dst != src
        for a in cloud.hosts[src].addresses
        for b in cloud.machines[dst].addresses
        if a.version == b.version
        for proto, port in ports
    ]


def spoofed_flows(
    cloud: Cloud,
    sender: str,
    sources: Iterable[IPAddress],
    targets: Sequence[str],
    port: int = UDP_PORT,
) -> list[Flow]:
    """UDP from `sender` with source addresses it does not own, to every address of targets."""
    flows = []
    for spoof in sources:
        for dst in targets:
            for b in cloud.machines[dst].addresses:
                if dst != sender and b.version == spoof.version:
                    flows.append(Flow(sender, spoof, dst, b.ip, "udp", port, spoofed=True))
    return flows


def spare_address(cloud: Cloud, network: str) -> list[IPAddress]:
    """Per IP version, an address of the network's first subnet that nobody in the bed uses."""
    topology = cloud.topology
    space = space_of(topology, network)
    used = {a.ip for h in cloud.machines.values() for a in h.addresses}
    used |= {r for s in cloud.segments.values() for r in s.router.values()}
    spare = []
    for version in (4, 6):
        subnet = next(s for s in topology.spaces[space].subnets if s.version == version)
        last = subnet.broadcast_address - (1 if version == 4 else 0)
        candidate = next(a for a in (last - k for k in range(16)) if a not in used)
        spare.append(ipaddress.ip_address(candidate))
    return spare


STRAY_OFFSET = 20  # strays take the address this far below the top of a subnet


@dataclass(frozen=True)
class Stray:
    """A host on the segment of one of a machine's NICs that routes through that NIC.

    Its routes send every other address of the machine (and the `extra` destinations, VIPs)
    through the machine's own address on the shared segment: what any host on that segment
    can do, and what the firewall must drop.
    """

    host: Host
    machine: str
    nic: str  # the machine's NIC on the stray's segment
    routes: tuple[str, ...]  # `ip route add` arguments
    destinations: tuple[IPAddress, ...]  # routed through the NIC


def strays(cloud: Cloud, machine: str, extra: Iterable[IPAddress] = ()) -> list[Stray]:
    """A stray per NIC of the machine, with an address in each subnet of that NIC."""
    used = {a.ip for h in cloud.machines.values() for a in h.addresses}
    used |= {r for seg in cloud.segments.values() for r in seg.router.values()}
    host = cloud.machines[machine]
    extra = tuple(extra)
    found = []
    for iface in host.ifaces:
        addresses = []
        for a in iface.addresses:
            candidate = a.network.broadcast_address - STRAY_OFFSET
            assert candidate not in used, f"{candidate} is taken: no stray on {iface.name}"
            addresses.append(ipaddress.ip_interface(f"{candidate}/{a.network.prefixlen}"))
        own = {a.ip for a in iface.addresses}
        targets = tuple(x for x in (*(a.ip for a in host.addresses), *extra) if x not in own)
        gateway = {a.version: a.ip for a in iface.addresses}
        routes = tuple(
            f"{x}/{x.max_prefixlen} via {gateway[x.version]}"
            for x in targets
            if x.version in gateway
        )
        stray = Host(
            f"stray-{iface.name}", (), (Iface("eth0", tuple(addresses), iface.segment),), {}
        )
        found.append(
            Stray(
                stray,
                machine,
                iface.name,
                routes,
                tuple(x for x in targets if x.version in gateway),
            )
        )
    return found


def plug_strays(bed: Bed, found: Sequence[Stray]) -> None:
    """The strays' namespaces, once per bed."""
    new = [s for s in found if s.host.name not in bed.extra]
    bed.plug([s.host for s in new], {s.host.name: s.routes for s in new})


def misdirected_flows(
    cloud: Cloud,
    found: Sequence[Stray],
    ports: Sequence[tuple[str, int]],
    vips: Iterable[IPAddress] = (),
) -> list[Flow]:
    """From every stray to every other address of its machine, through the stray's NIC.

    With each, the stray to the machine's own address on its segment (the way it should go).
    VIPs among the destinations are `vip` flows arriving on the stray's NIC.
    """
    vips = set(vips)
    flows = []
    for stray in found:
        host = cloud.machines[stray.machine]
        own = [a.ip for a in next(i for i in host.ifaces if i.name == stray.nic).addresses]
        for a in stray.host.addresses:
            for proto, port in ports:
                for x in own:
                    if x.version == a.version:
                        flows.append(Flow(stray.host.name, a.ip, stray.machine, x, proto, port))
                for x in stray.destinations:
                    if x.version != a.version:
                        continue
                    kind = "vip" if x in vips else "host"
                    flows.append(
                        Flow(
                            stray.host.name,
                            a.ip,
                            stray.machine,
                            x,
                            proto,
                            port,
                            kind=kind,
                            nic=stray.nic,
                        )
                    )
    return flows


@dataclass
class Row:
    """One flow, what the oracle expected and what the probe got."""

    flow: Flow
    expected: Expectation
    got: ProbeResult

    @property
    def ok(self) -> bool:
        """The probe saw what the oracle predicted."""
        return self.expected.verdict == self.got.got


@dataclass
class Matrix:
    """The checked flows of one scenario."""

    title: str
    rows: list[Row]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> list[Row]:
        """Rows where the probe and the oracle disagree."""
        return [r for r in self.rows if not r.ok]

    def counts(self) -> Counter[str]:
        """Flows by expected verdict."""
        return Counter(r.expected.verdict for r in self.rows)

    def summary(self) -> str:
        """One line: how many flows, by verdict, how many wrong, how long."""
        by = Counter((r.flow.proto, r.expected.verdict) for r in self.rows)
        counts = self.counts()
        detail = ", ".join(f"{p} {v} {n}" for (p, v), n in sorted(by.items()))
        verdicts = ", ".join(f"{counts[v]} {v}" for v in ("pass", "drop", "no-reply") if counts[v])
        return (
            f"{self.title}: {len(self.rows)} flows checked: {verdicts or 'none'} ({detail});"
            f" {len(self.mismatches)} mismatches; {self.seconds:.1f}s"
        )

    def table(self, only_mismatches: bool = False) -> str:
        """The matrix as text; mismatches marked `<-- MISMATCH`."""
        rows = self.mismatches if only_mismatches else self.rows
        header = ("SOURCE", "DESTINATION", "PROTO/PORT", "EXPECTED", "GOT", "REASON")
        lines = [
            (
                f"{r.flow.src} {r.flow.src_addr}",
                f"{r.flow.dst} {r.flow.dst_addr}",
                r.flow.label,
                r.expected.verdict,
                r.got.got,
                ("<-- MISMATCH " if not r.ok else "")
                + r.expected.reason
                + (f" [got: {r.got.detail}]" if r.got.detail and not r.ok else ""),
            )
            for r in rows
        ]
        widths = [max(len(x[i]) for x in [header, *lines]) for i in range(5)]
        out = [f"=== connectivity matrix: {self.title}"]
        for line in [header, *lines]:
            out.append(
                "  ".join(c.ljust(w) for c, w in zip(line[:5], widths, strict=True))
                + "  "
                + line[5]
            )
        out += [*self.notes, self.summary()]
        return "\n".join(out)


def by_port(matrix: Matrix) -> list[str]:
    """Flow counts per protocol/port and expected verdict, a line each (for the notes)."""
    counts = Counter((r.flow.proto, r.flow.port, r.expected.verdict) for r in matrix.rows)
    lines = []
    for proto, port in sorted({(proto, port) for proto, port, _ in counts}):
        verdicts = [(v, counts[proto, port, v]) for v in ("pass", "drop", "no-reply")]
        lines.append(f"  {proto}/{port}: " + ", ".join(f"{n} {v}" for v, n in verdicts if n))
    return lines


def assert_matches(matrix: Matrix) -> None:
    """No flow may differ from the oracle's prediction."""
    assert not matrix.mismatches, (
        f"{len(matrix.mismatches)} flows differ from the oracle:\n"
        + matrix.table(only_mismatches=True)
    )


def got(matrix: Matrix, src: str, dst: str, proto: str, port: int) -> str:
    """What the probe of one flow, by its addresses, saw."""
    key = (ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, port)
    found = [
        r
        for r in matrix.rows
        if (r.flow.src_addr, r.flow.dst_addr, r.flow.proto, r.flow.port) == key
    ]
    assert len(found) == 1, key
    return found[0].got.got


def check(
    bed: Bed, oracle: Oracle, flows: Sequence[Flow], title: str, timeout: float = DROP_TIMEOUT
) -> Matrix:
    """Probe every flow; re-probe unexpected drops with more patience before calling them."""
    start = time.monotonic()
    bed.forget_neighbours()
    expected = [oracle.expect(f) for f in flows]
    normal = [i for i, f in enumerate(flows) if not f.spoofed]
    spoofed = [i for i, f in enumerate(flows) if f.spoofed]
    results: list[ProbeResult | None] = [None] * len(flows)
    first = _delivered(bed, flows, normal, bed.probe([_wire(flows[i], timeout) for i in normal]))
    for i, result in zip(normal, first, strict=True):
        results[i] = result
    retry = [
        i
        for i, r in zip(normal, first, strict=True)
        if r.got != "pass" and expected[i].verdict == "pass"
    ]
    if retry:
        again = bed.probe([_wire(flows[i], CONFIRM_TIMEOUT) for i in retry])
        for i, result in zip(retry, _delivered(bed, flows, retry, again), strict=True):
            results[i] = result
    if spoofed:
        sent = bed.probe([_wire(flows[i], timeout, oneway=True) for i in spoofed])
        time.sleep(SEEN_WAIT)
        seen = bed.seen([r.token for r in sent])
        for i, r in zip(spoofed, sent, strict=True):
            if r.got == "sent":
                got = "pass" if r.token in seen else "drop"
                results[i] = ProbeResult(
                    got, "received" if got == "pass" else "not received", r.token
                )
            else:
                results[i] = r
    rows = [
        Row(f, e, r) for f, e, r in zip(flows, expected, results, strict=True) if r is not None
    ]
    matrix = Matrix(title, rows, time.monotonic() - start)
    if retry:
        matrix.notes.append(f"({len(retry)} unexpected drops re-probed with {CONFIRM_TIMEOUT}s)")
    return matrix


def _delivered(
    bed: Bed, flows: Sequence[Flow], indexes: Sequence[int], results: list[ProbeResult]
) -> list[ProbeResult]:
    """A UDP probe without a reply whose request reached its server is `no-reply`."""
    lost = [
        r.token
        for i, r in zip(indexes, results, strict=True)
        if flows[i].proto == "udp" and r.got == "drop"
    ]
    seen = bed.seen(lost) if lost else set()
    return [
        ProbeResult("no-reply", "the server got it; the reply was lost", r.token, r.ms)
        if r.token in seen
        else r
        for r in results
    ]


def _wire(flow: Flow, timeout: float, oneway: bool = False) -> dict[str, object]:
    return {
        "host": flow.src,
        "src": str(flow.src_addr),
        "dst": str(flow.dst_addr),
        "proto": flow.proto,
        "port": flow.port,
        "timeout": timeout,
        "transparent": flow.spoofed,
        "oneway": oneway,
    }
