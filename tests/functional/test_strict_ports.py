"""strict-ports with real packets: inside an allowed network only the listed ports pass.

The cloud is examples/microstack-maas.yaml cut down to five machines (a control node, two
compute nodes, a storage node in each rack) with `strict-ports: true` and `extra-ports`.
Every machine runs echo servers on every probed port, on every address, so a probe that
fails was stopped by a firewall, never by a closed port. The oracle takes its ports from
its own table, not from the charm's catalogue.

What it shows: a port not in the catalogue is dropped on an allowed network, a declared one
passes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from network_isolation_interface import (
    Declarations,
    NetworkIsolationData,
    PortDeclaration,
    parse_databag,
)

from network_isolation.planner import plan_machine
from network_isolation.ports import declared_ports, machine_ports
from network_isolation.render import render
from network_isolation.topology import load_topology

from .conftest import MAAS, variant
from .matrix import (
    Matrix,
    assert_matches,
    by_port,
    check,
    flows_on_ports,
    got,
    management_addresses,
)
from .oracle import FAILSAFE_PORT, Flow, Oracle
from .testbed import Bed, Cloud, cloud_of, running_bed

ip = ipaddress.ip_address
Report = Callable[[Matrix], None]
Renders = Callable[..., Path]

MACHINES = ("control-1", "compute-1", "compute-2", "storage-1", "storage-3")
EXTRA_PORTS = "data=udp:4789 management=tcp:9100"
# Probed ports of the oracle's port table (the charm calls its own the catalogue), by network.
# Every entry the catalogue corrects from Sunbeam's sources has a probe: what it now opens and
# what it now closes.
TABLE_PORTS = [
    ("tcp", 80),  # storage on storage (RGW); not on control's public or internal (VIPs)
    ("tcp", 443),  # nowhere now: Traefik is a VIP, MicroCeph's RGW serves 80 only
    ("tcp", 5672),  # nowhere now: RabbitMQ is a VIP
    ("tcp", 6800),  # storage and storage-cluster on storage (Ceph OSD)
    ("tcp", 7000),  # clusterd: only on `sunbeam` machines now; within Ceph's 6800-7568
    ("tcp", 7500),  # Ceph's daemons up to ms_bind_port_max 7568, beyond the old 7300
    ("tcp", 2049),  # NFS-Ganesha on storage's storage NIC
    ("tcp", 4244),  # Cilium Hubble on control's internal
    ("udp", 6081),  # data on compute (Geneve)
    ("tcp", 6641),  # OVN NB on control: management (MicroOVN's address) only now
    ("tcp", 6643),  # OVN raft on control: management only now
    ("tcp", 7946),  # MetalLB memberlist on control's internal
    ("udp", 7946),
    ("tcp", 2379),  # etcd on control's internal
    ("tcp", 8775),  # Nova metadata: no longer on compute's internal (reached over lo)
    ("tcp", 5900),  # SPICE consoles on compute's management
    ("udp", 8301),  # Consul serf: compute's management, data (8311) and storage (8321)
    ("tcp", 8311),
    ("udp", 8321),
]
EXTRA = [("udp", 4789), ("tcp", 9100)]  # from EXTRA_PORTS
UNLISTED = [("tcp", 5899), ("udp", 5899)]  # in no table, no option, no declaration
PORTS = [("tcp", FAILSAFE_PORT), *TABLE_PORTS, *EXTRA, *UNLISTED]
# What the principal on compute-1 declares through the interface library: a range of an
# exporter's ports on internal, which the scrapers on the control nodes reach.
DECLARED = PortDeclaration.tcp("internal", 9500, 9599, description="exporters")
DECLARED_PROBES = [("tcp", 9500), ("tcp", 9599), ("udp", 9599)]
TIMEOUT = 0.5


@dataclass
class Strict:
    """The strict-ports bed: the topology file, its cloud, the bed and the render."""

    topology: Path
    cloud: Cloud
    bed: Bed
    render: Path


def strict_topology(path: Path) -> Path:
    """The example cloud, five machines of it, with strict-ports and extra-ports."""
    options: dict[str, str | bool] = {"strict-ports": True, "extra-ports": EXTRA_PORTS}
    return variant(MAAS, path, machines=MACHINES, **options)


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory, renders: Renders, prerequisites: None
) -> Iterator[Strict]:
    """The bed, built once, with echo servers on every probed port of every machine."""
    topology = strict_topology(tmp_path_factory.mktemp("strict") / "strict-ports.yaml")
    cloud = cloud_of(load_topology(topology))
    probed = {*PORTS, *DECLARED_PROBES}
    with running_bed(cloud) as bed:
        bed.listen(
            MACHINES,
            tcp=sorted(p for proto, p in probed if proto == "tcp"),
            udp=sorted(p for proto, p in probed if proto == "udp"),
        )
        yield Strict(topology, cloud, bed, renders(topology))


def test_oracle_spot_checks_strict(tmp_path: Path) -> None:
    """The oracle's strict-ports verdicts, written by hand (no bed needed)."""
    cloud = cloud_of(load_topology(strict_topology(tmp_path / "strict.yaml")))
    oracle = Oracle(cloud)

    def verdict(src: str, a: str, dst: str, b: str, proto: str, port: int) -> str:
        return oracle.expect(Flow(src, ip(a), dst, ip(b), proto, port)).verdict

    # MetalLB memberlist on control's internal NIC, from internal; not on compute's.
    assert verdict("compute-1", "10.20.0.21", "control-1", "10.20.0.11", "udp", 7946) == "pass"
    assert verdict("control-1", "10.20.0.11", "compute-1", "10.20.0.21", "udp", 7946) == "drop"
    # RabbitMQ is a VIP: not on the control node's own internal address.
    assert verdict("compute-1", "10.20.0.21", "control-1", "10.20.0.11", "tcp", 5672) == "drop"
    # Unlisted: dropped even from the NIC's own subnet.
    assert verdict("compute-2", "10.40.0.22", "compute-1", "10.40.0.21", "udp", 5899) == "drop"
    assert verdict("compute-2", "10.40.0.22", "compute-1", "10.40.0.21", "udp", 6081) == "pass"
    # extra-ports: only on its network.
    assert verdict("compute-2", "10.40.0.22", "compute-1", "10.40.0.21", "udp", 4789) == "pass"
    assert verdict("compute-2", "10.20.0.22", "compute-1", "10.20.0.21", "udp", 4789) == "drop"
    # Public: any source, listed ports only (none: the APIs are VIPs); management: clients
    # too, listed ports only.
    assert verdict("outsider", "203.0.113.2", "control-1", "10.30.0.11", "tcp", 443) == "drop"
    assert verdict("outsider", "203.0.113.2", "control-1", "10.30.0.11", "tcp", 22) == "drop"
    assert verdict("client", "10.99.0.2", "control-1", "10.10.0.11", "tcp", 9100) == "pass"
    assert verdict("client", "10.99.0.2", "control-1", "10.10.0.11", "tcp", 5899) == "drop"
    # The failsafe is for management and clients, not for the other networks' sources.
    assert verdict("client", "10.99.0.2", "storage-1", "10.60.0.31", "tcp", 22) == "pass"
    assert verdict("compute-1", "10.50.0.21", "storage-1", "10.50.0.31", "tcp", 22) == "drop"
    # A declaration opens its port on its network of its machine only.
    declared = Oracle(cloud, declared={"compute-1": {"internal": ["tcp:9500-9599"]}})
    flow = Flow("control-1", ip("10.20.0.11"), "compute-1", ip("10.20.0.21"), "tcp", 9599)
    assert (oracle.expect(flow).verdict, declared.expect(flow).verdict) == ("drop", "pass")
    flow = replace(flow, dst="compute-2", dst_addr=ip("10.20.0.22"))
    assert declared.expect(flow).verdict == "drop"


def test_strict_ports(strict: Strict, report: Report) -> None:
    """Listed ports pass inside their networks, unlisted ones are dropped, SSH stays open."""
    bed, cloud = strict.bed, strict.cloud
    bed.load_dir(strict.render)
    oracle = Oracle(cloud)
    flows = flows_on_ports(cloud, MACHINES, PORTS)
    matrix = check(bed, oracle, flows, "strict-ports (five machines)", timeout=TIMEOUT)
    matrix.notes += by_port(matrix)
    report(matrix)
    assert_matches(matrix)

    # By hand, whatever the oracle says: catalogue ports in their networks...
    assert got(matrix, "fd00:61::33", "fd00:60::31", "tcp", 6800) == "pass"  # OSD, two racks
    assert got(matrix, "10.50.0.21", "10.50.0.31", "tcp", 6800) == "pass"  # OSD public side
    assert got(matrix, "10.40.0.22", "10.40.0.21", "udp", 6081) == "pass"  # Geneve
    # ... and every corrected entry: what now passes ...
    assert got(matrix, "10.50.0.21", "10.50.0.31", "tcp", 80) == "pass"  # RGW on 80
    assert got(matrix, "10.10.0.21", "10.10.0.11", "tcp", 6643) == "pass"  # OVN raft, mgmt
    assert got(matrix, "10.10.0.21", "10.10.0.11", "tcp", 6641) == "pass"  # OVN NB, mgmt
    assert got(matrix, "10.50.0.21", "10.50.0.31", "tcp", 7500) == "pass"  # Ceph daemons
    assert got(matrix, "fd00:61::33", "fd00:60::31", "tcp", 7500) == "pass"
    assert got(matrix, "10.50.0.21", "10.50.0.31", "tcp", 2049) == "pass"  # NFS
    assert got(matrix, "10.20.0.21", "10.20.0.11", "tcp", 4244) == "pass"  # Hubble
    assert got(matrix, "10.20.0.22", "10.20.0.11", "tcp", 7946) == "pass"  # MetalLB
    assert got(matrix, "fd00:20::21", "fd00:20::11", "udp", 7946) == "pass"
    assert got(matrix, "10.20.0.21", "10.20.0.11", "tcp", 2379) == "pass"  # etcd
    assert got(matrix, "10.10.0.11", "10.10.0.21", "tcp", 5900) == "pass"  # SPICE
    assert got(matrix, "10.10.0.22", "10.10.0.21", "udp", 8301) == "pass"  # Consul serf
    assert got(matrix, "10.40.0.22", "10.40.0.21", "tcp", 8311) == "pass"
    assert got(matrix, "fd00:50::22", "fd00:50::21", "udp", 8321) == "pass"
    # ... and what is now dropped.
    assert got(matrix, "10.20.0.21", "10.20.0.11", "tcp", 5672) == "drop"  # RabbitMQ: VIP
    assert got(matrix, "203.0.113.2", "10.30.0.11", "tcp", 443) == "drop"  # Traefik: VIP
    assert got(matrix, "203.0.113.2", "10.30.0.11", "tcp", 80) == "drop"
    assert got(matrix, "10.20.0.21", "10.20.0.11", "tcp", 80) == "drop"
    assert got(matrix, "10.10.0.21", "10.10.0.31", "tcp", 7000) == "drop"  # clusterd
    assert got(matrix, "10.10.0.21", "10.10.0.11", "tcp", 7000) == "drop"
    assert got(matrix, "10.20.0.11", "10.20.0.21", "tcp", 8775) == "drop"  # Nova metadata
    assert got(matrix, "10.20.0.21", "10.20.0.11", "tcp", 6643) == "drop"  # raft: not internal
    assert got(matrix, "10.20.0.21", "10.20.0.11", "tcp", 6641) == "drop"  # NB: not internal
    assert got(matrix, "10.50.0.31", "10.50.0.11", "tcp", 2049) == "drop"  # NFS: storage only
    assert got(matrix, "10.60.0.31", "10.60.1.33", "tcp", 2049) == "drop"
    assert got(matrix, "10.20.0.11", "10.20.0.21", "tcp", 4244) == "drop"  # Hubble: control
    assert got(matrix, "10.50.0.21", "10.50.0.31", "tcp", 443) == "drop"  # RGW: 80 only
    # extra-ports ...
    assert got(matrix, "fd00:40::22", "fd00:40::21", "udp", 4789) == "pass"
    assert got(matrix, "10.99.0.2", "10.10.0.11", "tcp", 9100) == "pass"
    # ... but not elsewhere: a port of one role or network is not opened on another.
    assert got(matrix, "10.20.0.11", "10.20.0.21", "udp", 7946) == "drop"
    assert got(matrix, "10.10.0.33", "10.10.0.31", "tcp", 6800) == "drop"
    assert got(matrix, "10.20.0.22", "10.20.0.21", "udp", 4789) == "drop"
    assert got(matrix, "10.99.0.2", "10.30.0.11", "tcp", 9100) == "drop"
    assert got(matrix, "10.10.0.21", "10.10.0.11", "tcp", 5900) == "drop"  # SPICE: compute only

    # Unlisted ports: every NIC here is on an allowed network, and nothing gets through.
    unlisted = [r for r in matrix.rows if (r.flow.proto, r.flow.port) in UNLISTED]
    assert {r.got.got for r in unlisted} == {"drop"}
    # Without strict-ports the same flows from each NIC's own subnet would pass.
    lenient = Oracle(cloud)
    lenient.policy = replace(lenient.policy, strict_ports=False)
    own = [r for r in unlisted if lenient.expect(r.flow).verdict == "pass"]
    assert own and all("strict-ports:" in r.expected.reason for r in own)

    # The failsafe: tcp/22 from the client to every address, and between management
    # addresses. (From a management address to, say, a data address, the sender's own output
    # rules may stop it first: control-1 may not send into data at all.)
    ssh = [r for r in matrix.rows if r.flow.port == FAILSAFE_PORT and r.flow.proto == "tcp"]
    managers = {a for m in MACHINES for a in management_addresses(cloud, m)}
    from_client = [r for r in ssh if r.flow.src == "client"]
    between_managers = [r for r in ssh if {r.flow.src_addr, r.flow.dst_addr} <= managers]
    assert len(from_client) == 36 and len(between_managers) == 40
    assert {r.got.got for r in from_client + between_managers} == {"pass"}
    # From another network's own subnet it is just an unlisted port.
    assert got(matrix, "10.50.0.21", "10.50.0.31", "tcp", 22) == "drop"


def declared_render(strict: Strict, machine: str, declarations: list[PortDeclaration]) -> str:
    """A machine's ruleset with what its principal declared over the interface library.

    The declarations go through the wire format: the principal's databag as the provider
    writes it, read back by the requirer's parser, then `render(plan, machine_ports(plan,
    declared))` as the charm does.
    """
    bag = NetworkIsolationData(ports=tuple(declarations)).dump()
    found, problems = parse_databag(bag)
    assert not problems
    declared = declared_ports(Declarations(ports=tuple(found)).by_network())
    plan = plan_machine(load_topology(strict.topology).plan_input(machine))
    return render(plan, machine_ports(plan, declared)).nftables


def test_declared_port_passes(strict: Strict, report: Report) -> None:
    """A port a principal declares passes on its network; without the declaration, dropped."""
    bed, cloud = strict.bed, strict.cloud
    bed.load_dir(strict.render)
    flows = [f for f in flows_on_ports(cloud, MACHINES, DECLARED_PROBES) if f.dst == "compute-1"]
    before = check(bed, Oracle(cloud), flows, "compute-1 without declarations", timeout=TIMEOUT)
    report(before)
    assert_matches(before)
    assert {r.got.got for r in before.rows} == {"drop"}

    bed.load("compute-1", declared_render(strict, "compute-1", [DECLARED]))
    try:
        oracle = Oracle(cloud, declared={"compute-1": {"internal": ["tcp:9500-9599"]}})
        title = "compute-1 with a declared tcp/9500-9599 on internal"
        after = check(bed, oracle, flows, title, timeout=TIMEOUT)
    finally:
        bed.load_dir(strict.render, ["compute-1"])
    report(after)
    assert_matches(after)
    # By hand: from internal sources to compute-1's internal addresses, declared TCP only.
    internal = [ipaddress.ip_network(n) for n in ("10.20.0.0/24", "fd00:20::/64")]

    def on_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in n for n in internal)

    wanted = {
        r.flow
        for r in after.rows
        if r.flow.proto == "tcp" and on_internal(r.flow.src_addr) and on_internal(r.flow.dst_addr)
    }
    assert len(wanted) == 8  # control-1 and compute-2, two ports, IPv4 and IPv6
    assert {r.flow for r in after.rows if r.got.got == "pass"} == wanted
