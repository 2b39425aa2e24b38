"""Real packets through the rendered rulesets, checked against the oracle.

Each machine's `nftables.conf` comes from `plan TOPOLOGY --render-dir DIR`, the code path of
the charm, and is loaded into that machine's namespace. Probes: TCP and UDP from every
address of every sender (bound explicitly) to every address of every other machine, IPv4 and
IPv6, the failsafe tcp/22, the client, an outsider (internet user) and spoofed sources.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from network_isolation.host.nftables import counters_of
from network_isolation.topology import load_topology

from . import kubernetes
from .conftest import MAAS, SINGLE, variant
from .kubernetes import Services, services_of
from .matrix import (
    TCP_PORT,
    UDP_PORT,
    Matrix,
    Row,
    Stray,
    assert_matches,
    by_port,
    check,
    flows_between,
    misdirected_flows,
    plug_strays,
    spare_address,
    spoofed_flows,
    strays,
)
from .oracle import FAILSAFE_PORT, Flow, Oracle
from .testbed import OUTSIDER, Bed, Cloud, IPAddress, cloud_of, running_bed, space_of

ip = ipaddress.ip_address
SERVICE_PORTS = (("tcp", TCP_PORT), ("udp", UDP_PORT))
# Probed on the VIPs with and without strict-ports: Services whose port the DNAT changes
# (443 -> 8443, 80 -> 8080) or keeps (5672), a public one (DNS), one of storage's (Consul's
# HTTP API), and ports of the hosts' own services (the Kubernetes API, clusterd's 7000), which
# no Service offers.
VIP_PORTS = (
    ("tcp", 443),
    ("tcp", 80),
    ("tcp", 5672),
    ("udp", 53),
    ("tcp", 8500),
    ("tcp", 6443),
    ("tcp", TCP_PORT),
    ("udp", UDP_PORT),
)
MISDIRECTED_PORTS = (("tcp", FAILSAFE_PORT), ("tcp", TCP_PORT), ("udp", UDP_PORT))
SWEEP_TIMEOUT = 0.3  # unexpected drops are re-probed with patience anyway
Report = Callable[[Matrix], None]
Renders = Callable[..., Path]

DENIED_NIC_TOPOLOGY = """
# A compute node that MAAS also gave a NIC on the storage-cluster space, which its role
# does not allow, and a provider-network NIC (br-ex) that is on no cloud network; storage
# nodes in two racks and a control node beside it.
spaces:
  oam: [10.1.0.0/24, 'fd01:1::/64']
  internal: [10.2.0.0/24, 'fd01:2::/64']
  public: [10.3.0.0/24, 'fd01:3::/64']
  tenant: [10.4.0.0/24, 'fd01:4::/64']
  ceph: [10.5.0.0/24, 'fd01:5::/64']
  repl: [10.6.0.0/24, 'fd01:6::/64', 10.6.1.0/24, 'fd01:61::/64']
bindings:
  management: oam
  internal: internal
  public: public
  data: tenant
  storage: ceph
  storage-cluster: repl
config:
  client-cidrs: "10.99.0.0/24,fd00:99::/64"
machines:
  compute-x:
    roles: [compute]
    interfaces:
      eth0: [10.1.0.21/24, 'fd01:1::21/64']
      eth1: [10.2.0.21/24, 'fd01:2::21/64']
      eth2: [10.4.0.21/24, 'fd01:4::21/64']
      eth3: [10.5.0.21/24, 'fd01:5::21/64']
      eth4: [10.6.0.21/24, 'fd01:6::21/64']
      br-ex: [192.168.50.21/24, 'fd01:50::21/64']
  storage-1:
    roles: [storage]
    interfaces:
      eth0: [10.1.0.31/24, 'fd01:1::31/64']
      eth3: [10.5.0.31/24, 'fd01:5::31/64']
      eth4: [10.6.0.31/24, 'fd01:6::31/64']
  storage-2:
    roles: [storage]
    interfaces:
      eth0: [10.1.0.32/24, 'fd01:1::32/64']
      eth3: [10.5.0.32/24, 'fd01:5::32/64']
      eth4: [10.6.1.32/24, 'fd01:61::32/64']
  control-1:
    roles: [control]
    interfaces:
      eth0: [10.1.0.11/24, 'fd01:1::11/64']
      eth1: [10.2.0.11/24, 'fd01:2::11/64']
      eth5: [10.3.0.11/24, 'fd01:3::11/64']
      eth3: [10.5.0.11/24, 'fd01:5::11/64']
"""


@dataclass
class Scene:
    """A built bed of a topology and the machines probed in it."""

    bed: Bed
    cloud: Cloud
    machines: list[str]
    topology: Path
    services: Services


@contextmanager
def scene(topology: Path) -> Iterator[Scene]:
    """Build a topology's bed, with echo servers on the probed machines.

    Its control nodes run Kubernetes services (pods behind VIPs, a pod network) and a compute
    node has instances, as in Sunbeam (`kubernetes`); the pods, instances and the outsider
    listen too.
    """
    cloud = cloud_of(load_topology(topology))
    machines = cloud.representatives()
    services = services_of(cloud)
    with running_bed(cloud) as bed:
        kubernetes.build(bed, services)
        bed.listen(machines, tcp=[FAILSAFE_PORT, TCP_PORT], udp=[UDP_PORT])
        tcp, udp = kubernetes.pod_ports([*VIP_PORTS, ("tcp", FAILSAFE_PORT)])
        bed.listen(services.hosts, tcp=tcp, udp=udp)
        bed.listen([o for o in [OUTSIDER] if o in cloud.externals], tcp=[TCP_PORT], udp=[UDP_PORT])
        yield Scene(bed, cloud, machines, topology, services)


@pytest.fixture(scope="module")
def maas(prerequisites: None) -> Iterator[Scene]:
    """examples/microstack-maas.yaml: every machine, six probed (one of each kind)."""
    with scene(MAAS) as built:
        yield built


def counters(bed: Bed, machine: str) -> dict[str, int]:
    """Packets per named counter of our table (`nft -j list table inet network_isolation`)."""
    data = json.loads(bed.nft(machine, "-j", "list", "table", "inet", "network_isolation"))
    return {name: c["packets"] for name, c in counters_of(data["nftables"]).items()}


def row(matrix: Matrix, src: str, dst: str, proto: str = "udp", port: int = UDP_PORT) -> Row:
    """The row of one flow, by addresses."""
    return next(
        r
        for r in matrix.rows
        if (r.flow.src_addr, r.flow.dst_addr, r.flow.proto, r.flow.port)
        == (ip(src), ip(dst), proto, port)
    )


def test_microstack_maas(maas: Scene, renders: Renders, report: Report) -> None:
    """The example cloud with maximum isolation: every flow as the guide and the rules say."""
    maas.bed.load_dir(renders(MAAS))
    flows = flows_between(maas.cloud, maas.machines)
    matrix = check(maas.bed, Oracle(maas.cloud), flows, "microstack-maas.yaml (enforce)")
    report(matrix)
    assert_matches(matrix)
    counts = matrix.counts()
    assert counts["pass"] and counts["drop"]
    # A few flows by hand, whatever the oracle says.
    assert row(matrix, "10.40.0.21", "10.60.0.31").got.got == "drop"  # compute -> storage-cluster
    assert row(matrix, "10.60.0.31", "10.60.1.33").got.got == "pass"  # replication, two racks
    assert row(matrix, "10.99.0.2", "10.20.0.11").got.got == "drop"  # client -> internal
    assert row(matrix, "10.99.0.2", "10.20.0.11", "tcp", 22).got.got == "pass"  # failsafe


def service_flows(scene: Scene, ports: Sequence[tuple[str, int]] = SERVICE_PORTS) -> list[Flow]:
    """The flows of Kubernetes services and of what must stay untouched.

    VIP probes from every probed machine's addresses, the client and the outsider; pod egress
    from the first control node to the probed machines and the outsider; pod to pod between
    the control nodes; instance to instance on a compute node.
    """
    cloud, services = scene.cloud, scene.services
    senders = [*scene.machines, *cloud.externals]
    flows = kubernetes.vip_flows(cloud, services, senders, ports)
    if services.nodes:
        first = next(iter(services.nodes))
        targets = [*scene.machines, *(o for o in [OUTSIDER] if o in cloud.externals)]
        flows += kubernetes.egress_flows(cloud, services, first, targets, ports)
    flows += kubernetes.pod_to_pod_flows(services, ports)
    return flows + kubernetes.instance_flows(services, ports)


def test_kubernetes_services(maas: Scene, renders: Renders, report: Report) -> None:
    """VIPs on every control node, DNATed to pods: forwarded, and judged like input."""
    maas.bed.load_dir(renders(MAAS))
    flows = service_flows(maas)
    matrix = check(maas.bed, Oracle(maas.cloud), flows, "microstack-maas.yaml services (enforce)")
    matrix.notes += by_kind(matrix)
    report(matrix)
    assert_matches(matrix)
    # A few flows by hand, whatever the oracle says (VIPs of control-1: the top of each subnet).
    vips = {
        v.network + str(v.address.version): v.address
        for v in maas.services.nodes["control-1"].vips
    }
    assert row(matrix, "203.0.113.2", str(vips["internal4"]), "tcp", TCP_PORT).got.got == "drop"
    assert row(matrix, "203.0.113.2", str(vips["public4"]), "tcp", TCP_PORT).got.got == "pass"
    assert row(matrix, "10.99.0.2", str(vips["storage4"]), "tcp", TCP_PORT).got.got == "drop"
    assert row(matrix, "10.20.0.21", str(vips["internal4"]), "tcp", TCP_PORT).got.got == "pass"
    assert row(matrix, "fd00:10::5", str(vips["internal6"]), "tcp", TCP_PORT).got.got == "drop"
    kinds = {r.flow.kind for r in matrix.rows if r.got.got == "pass"}
    assert kinds == {"vip", "egress", "pods", "instances"}
    assert all(r.got.got == "pass" for r in matrix.rows if r.flow.kind in ("pods", "instances"))
    egress = [r for r in matrix.rows if r.flow.kind == "egress"]
    assert {r.got.got for r in egress if r.flow.dst_addr in tenant(maas)} == {"drop"}
    assert any(r.got.got == "pass" for r in egress if r.flow.dst == OUTSIDER)


def test_without_a_forward_chain_vips_are_open(
    maas: Scene, renders: Renders, report: Report
) -> None:
    """Every machine's ruleset without its forward chain: what this cloud had before it.

    VIP traffic never meets the input hook, so the matrix must show flows that the guide's
    table forbids getting through.
    """
    render = renders(MAAS)
    for machine in maas.bed.built_machines():
        text = (render / machine / "nftables.conf").read_text()
        maas.bed.load(machine, without_chain(text, "forward"))
    try:
        flows = [f for f in service_flows(maas) if f.kind == "vip"]
        title = "services without forward chains (mismatches wanted)"
        matrix = check(maas.bed, Oracle(maas.cloud), flows, title)
    finally:
        maas.bed.load_dir(render)
    report(matrix)
    leaks = [r for r in matrix.mismatches if (r.expected.verdict, r.got.got) == ("drop", "pass")]
    assert leaks, "without forward chains no VIP flow leaked: the probes do not reach the pods"
    assert any(r.flow.src == OUTSIDER for r in leaks)


def vip_of(scene: Scene, machine: str, network: str, version: int) -> str:
    """The address of one of a node's VIPs."""
    node = scene.services.nodes[machine]
    return str(
        next(v.address for v in node.vips if (v.network, v.address.version) == (network, version))
    )


@pytest.mark.parametrize("strict", [True, False], ids=["strict-ports", "any-port"])
def test_vip_ports(
    maas: Scene, renders: Renders, report: Report, tmp_path: Path, strict: bool
) -> None:
    """VIPs whose DNAT changes the port (443 -> 8443, 80 -> 8080), judged by the client's port.

    The pods listen on 8443 and 8080, not on 443 and 80: a pass on a VIP's 443 went through
    the port-changing DNAT. With strict-ports only the Services' ports pass, from the VIP's
    own network (public: any source outside the cloud); without it, any port does.
    """
    options: dict[str, str | bool] = {"strict-ports": strict}
    topology = variant(MAAS, tmp_path / "vips.yaml", machines=None, **options)
    maas.bed.load_dir(renders(topology))
    oracle = Oracle(cloud_of(load_topology(topology)))
    senders = [*maas.machines, *maas.cloud.externals]
    flows = kubernetes.vip_flows(maas.cloud, maas.services, senders, VIP_PORTS)
    title = f"microstack-maas.yaml VIP ports ({'strict-ports' if strict else 'any port'})"
    matrix = check(maas.bed, oracle, flows, title)
    matrix.notes += by_port(matrix)
    report(matrix)
    assert_matches(matrix)
    # By hand, whatever the oracle says (VIPs of control-1).
    internal, public = (
        vip_of(maas, "control-1", "internal", 4),
        vip_of(maas, "control-1", "public", 4),
    )
    internal6 = vip_of(maas, "control-1", "internal", 6)
    storage = vip_of(maas, "control-1", "storage", 4)
    assert row(matrix, "10.20.0.21", internal, "tcp", 443).got.got == "pass"  # -> pod:8443
    assert row(matrix, "fd00:20::21", internal6, "tcp", 443).got.got == "pass"
    assert row(matrix, "203.0.113.2", public, "tcp", 443).got.got == "pass"
    assert row(matrix, "203.0.113.2", public, "tcp", 80).got.got == "pass"  # -> pod:8080
    assert row(matrix, "10.20.0.21", internal, "tcp", 5672).got.got == "pass"  # kept
    assert row(matrix, "203.0.113.2", public, "udp", 53).got.got == "pass"
    assert row(matrix, "10.50.0.31", storage, "tcp", 8500).got.got == "pass"
    # Never: an internal VIP from the public side; a VIP from a denied network.
    assert row(matrix, "203.0.113.2", internal, "tcp", 443).got.got == "drop"
    other_internal = vip_of(maas, "control-2", "internal", 4)
    assert row(matrix, "10.30.0.11", other_internal, "tcp", 443).got.got == "drop"
    assert row(matrix, "10.60.0.31", internal, "tcp", 443).got.got == "drop"
    assert row(matrix, "10.40.0.21", public, "tcp", 443).got.got == "drop"
    # A host-only port (the Kubernetes API) and a port of no Service, on a VIP.
    host_only = "drop" if strict else "pass"
    assert row(matrix, "10.20.0.21", internal, "tcp", 6443).got.got == host_only
    assert row(matrix, "10.20.0.21", internal, "tcp", TCP_PORT).got.got == host_only
    assert row(matrix, "203.0.113.2", public, "tcp", 5672).got.got == host_only
    assert row(matrix, "10.50.0.31", storage, "tcp", 443).got.got == host_only
    if strict:
        passed = {(r.flow.proto, r.flow.port) for r in matrix.rows if r.got.got == "pass"}
        assert passed == {("tcp", 443), ("tcp", 80), ("tcp", 5672), ("udp", 53), ("tcp", 8500)}


def test_misdirected_packets(maas: Scene, renders: Renders, report: Report) -> None:
    """To one of control-1's networks through its NIC on another: dropped, every pair.

    A stray host on each of control-1's segments routes every other address of control-1,
    and its VIPs, through control-1's address on that segment (`ip route add X/32 via Y`):
    Linux would take them all. Only the failsafe (tcp/22 from management) comes first; the
    stray's packets to the address of its own segment pass as they should.
    """
    cloud, bed = maas.cloud, maas.bed
    vips = [v.address for v in maas.services.nodes["control-1"].vips]
    found = strays(cloud, "control-1", vips)
    plug_strays(bed, found)
    bed.load_dir(renders(MAAS))
    before = counters(bed, "control-1")
    flows = misdirected_flows(cloud, found, MISDIRECTED_PORTS, vips)
    matrix = check(bed, Oracle(cloud), flows, "control-1: misdirected packets (enforce)")
    matrix.notes += by_nic(matrix, found)
    report(matrix)
    assert_matches(matrix)
    after = counters(bed, "control-1")
    assert after["drop_in_misdirected"] > before["drop_in_misdirected"]
    assert after["drop_fwd_misdirected"] > before["drop_fwd_misdirected"]
    # By hand: every pair of NICs, each way, except the failsafe, is dropped.
    host = cloud.machines["control-1"]
    nic_of = {a.ip: i.name for i in host.ifaces for a in i.addresses}
    nic_of.update({v.address: v.nic for v in maas.services.nodes["control-1"].vips})
    across = [r for r in matrix.rows if r.flow.nic and nic_of[r.flow.dst_addr] != r.flow.nic]
    pairs = {(r.flow.nic, nic_of[r.flow.dst_addr]) for r in across}
    assert len(pairs) == len(host.ifaces) * (len(host.ifaces) - 1)
    failsafe = [
        r
        for r in across
        if (r.flow.proto, r.flow.port, r.flow.src) == ("tcp", FAILSAFE_PORT, "stray-enp1s0")
        and r.flow.kind == "host"
    ]
    assert failsafe and {r.got.got for r in failsafe} == {"pass"}
    assert {r.got.got for r in across if r not in failsafe} == {"drop"}
    public = next(s for s in found if s.nic == "enp3s0").host.addresses[0].ip
    assert row(matrix, str(public), "10.30.0.11", "tcp", TCP_PORT).got.got == "pass"
    internal_vip = vip_of(maas, "control-1", "internal", 4)
    assert row(matrix, str(public), internal_vip, "tcp", TCP_PORT).got.got == "drop"
    assert (
        row(matrix, str(public), vip_of(maas, "control-1", "public", 4), "tcp", TCP_PORT).got.got
        == "pass"
    )


def test_misdirected_packets_in_audit_are_counted_once(
    maas: Scene, renders: Renders, report: Report
) -> None:
    """Audit: a packet through the wrong NIC passes, counted as misdirected and nothing else.

    Its drop is in the network's chain, which the hook's chain jumps to: an audit chain that
    handed it back would let the hook's later rules count it again under the NIC's network.
    """
    cloud, bed = maas.cloud, maas.bed
    vips = [v.address for v in maas.services.nodes["control-1"].vips]
    found = strays(cloud, "control-1", vips)
    plug_strays(bed, found)
    bed.load_dir(renders(MAAS, enforcement="audit"))
    host = cloud.machines["control-1"]
    nic_of = {a.ip: i.name for i in host.ifaces for a in i.addresses}
    nic_of.update({v.address: v.nic for v in maas.services.nodes["control-1"].vips})
    flows = [
        f
        for f in misdirected_flows(cloud, found, MISDIRECTED_PORTS, vips)
        if f.nic and nic_of[f.dst_addr] != f.nic and f.port != FAILSAFE_PORT
    ]
    before = counters(bed, "control-1")
    audit = Oracle(cloud, modes=dict.fromkeys(cloud.machines, "audit"))
    matrix = check(bed, audit, flows, "control-1: misdirected packets (audit)")
    report(matrix)
    assert_matches(matrix)
    assert {r.got.got for r in matrix.rows} == {"pass"}
    after = counters(bed, "control-1")
    moved = {c: after[c] - before[c] for c in after if after[c] != before[c]}
    assert moved.keys() == {"drop_in_misdirected", "drop_fwd_misdirected"}, moved


def by_nic(matrix: Matrix, found: Sequence[Stray]) -> list[str]:
    """Flow counts per stray (the NIC it comes in on) and verdict, a line each."""
    counts = Counter((r.flow.src, r.expected.verdict) for r in matrix.rows)
    return [
        f"  {s.host.name} (in on {s.machine}'s {s.nic}): "
        + ", ".join(
            f"{counts[s.host.name, v]} {v}"
            for v in ("pass", "drop", "no-reply")
            if counts[s.host.name, v]
        )
        for s in found
    ]


def without_chain(ruleset: str, name: str) -> str:
    """A ruleset without one of its chains."""
    start = ruleset.index(f"\tchain {name} {{\n")
    end = ruleset.index("\t}\n", start) + len("\t}\n")
    return ruleset[:start] + ruleset[end:]


def tenant(scene: Scene) -> set[IPAddress]:
    """Every address of the probed machines in the data network's space."""
    subnets = scene.cloud.topology.spaces[space_of(scene.cloud.topology, "data")].subnets
    return {
        a.ip
        for m in scene.machines
        for a in scene.cloud.machines[m].addresses
        if any(a.ip in s for s in subnets)
    }


def by_kind(matrix: Matrix) -> list[str]:
    """Flow counts per kind and expected verdict, a line each (for the notes)."""
    counts = Counter((r.flow.kind, r.expected.verdict) for r in matrix.rows)
    kinds = sorted({kind for kind, _ in counts})
    return [
        f"  {kind}: "
        + ", ".join(
            f"{counts[kind, v]} {v}" for v in ("pass", "drop", "no-reply") if counts[kind, v]
        )
        for kind in kinds
    ]


def test_kubernetes_services_audit(maas: Scene, renders: Renders, report: Report) -> None:
    """enforcement=audit: every service flow passes; forward counters count would-be drops."""
    maas.bed.load_dir(renders(MAAS, enforcement="audit"))
    audit = Oracle(maas.cloud, modes=dict.fromkeys(maas.cloud.machines, "audit"))
    matrix = check(maas.bed, audit, service_flows(maas), "microstack-maas.yaml services (audit)")
    report(matrix)
    assert {r.got.got for r in matrix.rows} == {"pass"}
    assert_matches(matrix)
    forwarded = Counter(
        h.machine for r in matrix.rows for h in r.expected.hits if h.direction == "fwd"
    )
    assert forwarded, "no flow would have been dropped on a forward hook"
    for machine in maas.services.nodes:
        packets = sum(
            n for c, n in counters(maas.bed, machine).items() if c.startswith("drop_fwd_")
        )
        assert (packets > 0) == (forwarded[machine] > 0), (machine, counters(maas.bed, machine))


def test_single_space_drops_nothing(renders: Renders, report: Report, prerequisites: None) -> None:
    """One space for everything: no isolation possible, and nothing may break."""
    with scene(SINGLE) as single:
        single.bed.load_dir(renders(SINGLE))
        flows = flows_between(single.cloud, single.machines) + service_flows(single)
        matrix = check(single.bed, Oracle(single.cloud), flows, "single-space.yaml (enforce)")
    report(matrix)
    assert matrix.counts()["drop"] == 0
    assert {r.got.got for r in matrix.rows} == {"pass"}
    assert_matches(matrix)


def test_audit_drops_nothing_and_counts(maas: Scene, renders: Renders, report: Report) -> None:
    """enforcement=audit: every flow passes; counters show what enforce would have dropped."""
    maas.bed.load_dir(renders(MAAS, enforcement="audit"))
    audit = Oracle(maas.cloud, modes=dict.fromkeys(maas.cloud.machines, "audit"))
    flows = flows_between(maas.cloud, maas.machines)
    matrix = check(maas.bed, audit, flows, "microstack-maas.yaml (enforcement=audit)")
    report(matrix)
    assert {r.got.got for r in matrix.rows} == {"pass"}
    assert_matches(matrix)
    would_drop = {h.machine for r in matrix.rows for h in r.expected.hits}
    enforce = Oracle(maas.cloud)
    assert sum(enforce.expect(r.flow).verdict == "drop" for r in matrix.rows) > 0
    for machine in maas.machines:
        packets = sum(counters(maas.bed, machine).values())
        assert (packets > 0) == (machine in would_drop), (machine, counters(maas.bed, machine))


def test_spoofed_source(maas: Scene, renders: Renders, report: Report) -> None:
    """A storage-cluster host sends UDP with internal-subnet sources it does not own."""
    maas.bed.load_dir(renders(MAAS))
    spoofs = spare_address(maas.cloud, "internal")
    flows = spoofed_flows(maas.cloud, "storage-1", spoofs, maas.machines)
    matrix = check(maas.bed, Oracle(maas.cloud), flows, "microstack-maas.yaml spoofed sources")
    report(matrix)
    assert_matches(matrix)
    # storage-1 may not send to internal at all; every other NIC refuses an internal source.
    assert matrix.counts()["pass"] == 0

    # The same host with its own table gone (root on it can do that): the receivers still
    # drop what arrives on NICs of other networks. On an internal NIC an internal source
    # is plausible and is accepted: only the routers can stop such a spoof.
    maas.bed.nft("storage-1", "delete", "table", "inet", "network_isolation")
    try:
        oracle = Oracle(maas.cloud, modes={"storage-1": "off"})
        title = "microstack-maas.yaml spoofed sources, sender's table removed"
        bare = check(maas.bed, oracle, flows, title)
    finally:
        maas.bed.load_dir(renders(MAAS), ["storage-1"])
    report(bare)
    assert_matches(bare)
    internal = maas.cloud.topology.spaces["internal"].subnets
    on_internal = {f.dst_addr for f in flows if any(f.dst_addr in s for s in internal)}
    assert {r.flow.dst_addr for r in bare.rows if r.got.got == "pass"} == on_internal


def test_denied_nic(tmp_path: Path, renders: Renders, report: Report, prerequisites: None) -> None:
    """A compute node with a NIC on storage-cluster: nothing in or out there but SSH.

    Its provider-network NIC (br-ex) is on no cloud network: left alone, except for
    sources in denied networks, which are dropped on any NIC.

    The failsafe reaches the denied NIC's IPv4 address only: for IPv6 the node would have
    to send a neighbour advertisement out of the denied NIC, which the output chain drops.
    """
    topology = tmp_path / "denied-nic.yaml"
    topology.write_text(DENIED_NIC_TOPOLOGY)
    with scene(topology) as denied:
        assert denied.machines == ["compute-x", "storage-1", "storage-2", "control-1"]
        denied.bed.load_dir(renders(topology))
        flows = flows_between(denied.cloud, denied.machines) + service_flows(denied)
        matrix = check(denied.bed, Oracle(denied.cloud), flows, "denied NIC (compute-x eth4)")
    report(matrix)
    assert_matches(matrix)
    assert row(matrix, "10.6.0.31", "10.6.0.21").got.got == "drop"  # into the denied NIC
    assert row(matrix, "10.6.0.21", "10.6.0.31").got.got == "drop"  # out of it
    assert row(matrix, "10.1.0.31", "10.6.0.21", "tcp", 22).got.got == "pass"  # failsafe v4
    assert row(matrix, "10.5.0.21", "10.5.0.31").got.got == "pass"  # its storage NIC works
    assert row(matrix, "10.3.0.11", "192.168.50.21").got.got == "drop"  # public: denied
    assert row(matrix, "10.1.0.11", "192.168.50.21").got.got == "pass"  # br-ex: not ours


def test_broken_ruleset_is_caught(maas: Scene, renders: Renders, report: Report) -> None:
    """Remove one drop rule from a rendered ruleset: the matrix must show the hole."""
    render = renders(MAAS)
    original = (render / "control-1" / "nftables.conf").read_text()
    broken, removed = remove_first_source_drop(original)
    maas.bed.load_dir(render)
    maas.bed.load("control-1", broken)
    try:
        flows = [
            f for f in flows_between(maas.cloud, maas.machines) if "control-1" in (f.src, f.dst)
        ]
        title = "broken ruleset on control-1 (mismatches wanted)"
        matrix = check(maas.bed, Oracle(maas.cloud), flows, title)
    finally:
        maas.bed.load("control-1", original)
    matrix.notes.append(f"removed from control-1's ruleset: {removed}")
    report(matrix)
    assert matrix.mismatches, f"removing `{removed}` went unnoticed"
    # The hole shows as requests that reach the server (the reply may still be stopped on
    # the way out: a one-way UDP flow gets through all the same).
    assert {(r.expected.verdict, r.got.got) for r in matrix.mismatches} <= {
        ("drop", "pass"),
        ("drop", "no-reply"),
    }


def test_every_drop_rule_of_control_1_is_needed(
    maas: Scene, renders: Renders, report: Report
) -> None:
    """Mutation test: the matrix notices the removal of any one drop rule of control-1."""
    assert_every_drop_rule_needed(
        maas, "control-1", renders(MAAS), renders(MAAS, enforcement="off"), report
    )


def test_every_drop_rule_of_a_denied_nic_machine_is_needed(
    tmp_path: Path, renders: Renders, report: Report, prerequisites: None
) -> None:
    """The same for compute-x and its denied NIC (rule 5 and the output's NIC rule)."""
    topology = tmp_path / "denied-nic.yaml"
    topology.write_text(DENIED_NIC_TOPOLOGY)
    with scene(topology) as denied:
        enforce, off = renders(topology), renders(topology, enforcement="off")
        assert_every_drop_rule_needed(denied, "compute-x", enforce, off, report)


def assert_every_drop_rule_needed(
    scene: Scene, machine: str, enforce: Path, off: Path, report: Report
) -> None:
    """Each drop rule's removal shows in the matrix."""
    found, baseline = sweep(scene, machine, enforce, off)
    report(baseline)
    assert_matches(baseline)
    ruleset = (enforce / machine / "nftables.conf").read_text().splitlines()
    print("\n".join(f"{n:4} mismatches without: {ruleset[i].strip()}" for i, n in found.items()))
    # On a cloud network's interface the drop map behind them drops denied sources too (under
    # the interface's counter): only what comes in on an interface of no cloud network shows
    # their removal: br-ex on input; on forward, the spoofed pod traffic of the sweep.
    other = "" if foreign_interface(scene, machine) else "from a denied network's subnets"
    # A drop of what is addressed to a denied network where the machine has no address: no
    # packet for such an address reaches the input hook (it is not the machine's).
    addresses = [a.ip for a in scene.cloud.machines[machine].addresses]
    unreachable = {i for i in found if not_its_own(ruleset, i, addresses)}
    # A denied interface's chain: the drop map drops all TCP and UDP on that interface anyway;
    # only ICMP, which the matrix does not send, shows it (test_icmp_on_a_denied_nic...).
    icmp_only = {i for i in found if in_chain_without_accepts(ruleset, i)}
    unnoticed = [
        ruleset[i].strip()
        for i, n in found.items()
        if not n
        and not (other and other in section_of(ruleset, i))
        and i not in unreachable | icmp_only
    ]
    assert found and not unnoticed, f"drop rules whose removal no probe noticed: {unnoticed}"
    noticed = [ruleset[i].strip() for i, n in found.items() if n and "misdirected" in ruleset[i]]
    assert noticed, "no probe noticed the removal of a misdirected packets' drop"


def not_its_own(ruleset: list[str], index: int, addresses: Sequence[IPAddress]) -> bool:
    """Whether a rule drops by a destination set that holds none of the machine's addresses."""
    found = re.match(r"^ip6? daddr @(\S+) counter name \S+ drop$", ruleset[index].strip())
    if not found:
        return False
    start = ruleset.index(f"\tset {found.group(1)} {{")
    end = ruleset.index("\t}", start)
    subnets = [
        ipaddress.ip_network(line.strip().rstrip(","))
        for line in ruleset[start:end]
        if re.match(r"^[0-9a-f:.]+/\d+,?$", line.strip())
    ]
    return not any(a in n for a in addresses for n in subnets if a.version == n.version)


def foreign_interface(scene: Scene, machine: str) -> bool:
    """Whether the machine has an interface of no cloud network in the topology (br-ex)."""
    cloud = scene.cloud
    return any(i.segment.startswith("~") for i in cloud.machines[machine].ifaces)


def in_chain_without_accepts(ruleset: list[str], index: int) -> bool:
    """Whether a rule is in a regular chain that accepts nothing (a denied interface's)."""
    start = next(i for i in range(index, -1, -1) if ruleset[i].strip().startswith("chain "))
    end = next(i for i in range(index, len(ruleset)) if ruleset[i] == "\t}")
    if " hook " in "".join(ruleset[start:end]):
        return False
    return not any(line.rstrip().endswith((" accept", " return")) for line in ruleset[start:end])


# An ICMP echo from inside a namespace: prints whether an echo reply came back within a second.
ECHO = """
import os, select, socket, struct, sys, time
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
ident = os.getpid() & 0xFFFF
body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"network-isolation!"
packet = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.sendto(packet, (sys.argv[1], 0))
end = time.monotonic() + 1.0
while (left := end - time.monotonic()) > 0:
    if not select.select([s], [], [], left)[0]:
        break
    data, (source, _) = s.recvfrom(2048)
    icmp = data[(data[0] & 0x0F) * 4:]
    if source == sys.argv[1] and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
        print("reply")
        break
else:
    print("none")
"""


def echo(bed: Bed, host: str, address: str) -> bool:
    """Whether `host` gets an answer to an ICMP echo it sends to `address`."""
    argv = ["nsenter", f"--net=/run/netns/{bed.ns[host]}", "python3", "-c", ECHO, address]
    return bed.sandbox.run(argv).strip() == "reply"


def test_icmp_on_a_denied_nic_to_an_allowed_address_is_dropped(
    tmp_path: Path, renders: Renders, prerequisites: None
) -> None:
    """An echo through compute-x's denied NIC to its internal address: dropped as misdirected.

    Essential ICMP is accepted on every interface before the drop map; only the denied
    interface's own chain keeps an echo for another network's address out. With that chain's
    rules removed, the same echo is answered.
    """
    topology = tmp_path / "denied-nic.yaml"
    topology.write_text(DENIED_NIC_TOPOLOGY)
    with scene(topology) as denied:
        bed, enforce = denied.bed, renders(topology)
        bed.load_dir(enforce)
        found = strays(denied.cloud, "compute-x")
        plug_strays(bed, found)
        on_nic = {s.nic: s.host.name for s in found}
        internal = "10.2.0.21"
        before = counters(bed, "compute-x")["drop_in_misdirected"]
        assert echo(bed, on_nic["eth1"], internal), "no answer on the internal NIC itself"
        assert not echo(bed, on_nic["eth4"], internal), "answered through the denied NIC"
        assert counters(bed, "compute-x")["drop_in_misdirected"] > before
        ruleset = (enforce / "compute-x" / "nftables.conf").read_text().splitlines()
        chain = ruleset.index("\tchain net_storage_cluster {")
        end = ruleset.index("\t}", chain)
        guard = [i for i in range(chain, end) if ruleset[i].strip().endswith(" drop")]
        assert guard
        bed.load("compute-x", "\n".join(x for i, x in enumerate(ruleset) if i not in guard))
        assert echo(bed, on_nic["eth4"], internal), "the chain's drops were not what kept it out"


def section_of(ruleset: list[str], index: int) -> str:
    """The comment of the section a rule is in."""
    return next(
        (line.strip() for line in reversed(ruleset[:index]) if line.strip().startswith("#")), ""
    )


def remove_first_source_drop(ruleset: str) -> tuple[str, str]:
    """The ruleset without its first rule that drops by source subnet alone.

    That is the public network's `return` of other cloud networks' subnets (what returns from
    a network's chain is dropped).
    """
    lines = ruleset.splitlines(keepends=True)
    for i, line in enumerate(lines):
        text = line.strip()
        if re.match(r"^ip6? saddr @cross_\S+ return$", text):
            return "".join(lines[:i] + lines[i + 1 :]), text
    raise AssertionError("no rule hands back by source subnet: nothing to remove")


def drop_rules(ruleset: str, forward: bool = True) -> list[int]:
    """Line numbers of the rules that make a drop happen.

    In the base chains: drops and the lookup of the drop map; in the networks' chains: the
    drops of misdirected packets and the `return`s (what returns is dropped). `ct state
    invalid` is left out: no probe makes an invalid packet; so are the forward hook's chains
    without `forward` (no probe goes through them).
    """
    found = []
    chain = ""
    for i, line in enumerate(ruleset.splitlines()):
        text = line.strip()
        if text.startswith("chain "):
            chain = text.split()[1]
        rule = not text.startswith("#") and "ct state invalid" not in text
        base = chain in ("input", "output") or (forward and chain in ("forward", "fwd_to_denied"))
        network = chain.startswith("net_") or (
            forward and chain.startswith("fwd_") and chain != "fwd_to_denied"
        )
        drops = text.endswith(" drop") or text.startswith("iifname vmap @drop_")
        if rule and ((base or network) and drops or (network and text.endswith(" return"))):
            found.append(i)
    return found


def sweep(scene: Scene, machine: str, enforce: Path, off: Path) -> tuple[dict[int, int], Matrix]:
    """Remove each drop rule of one machine's ruleset in turn; count the mismatches each makes.

    Only that machine enforces (the others load the enforcement=off render), so no other
    host's rules hide a hole. Probes: every UDP flow and the tcp/22 flows to or from it, and
    the UDP service flows through it (VIPs and pod egress).
    """
    cloud, bed = scene.cloud, scene.bed
    bed.load_dir(off)
    original = (enforce / machine / "nftables.conf").read_text()
    lines = original.splitlines(keepends=True)
    oracle = Oracle(cloud, modes={m: "enforce" if m == machine else "off" for m in cloud.machines})
    flows = [
        f
        for f in flows_between(cloud, scene.machines)
        if machine in (f.src, f.dst) and (f.proto == "udp" or f.port == FAILSAFE_PORT)
    ]
    flows += [
        f
        for f in service_flows(scene, [("udp", UDP_PORT)])
        if machine in (f.src, f.dst, f.via) and f.kind in ("vip", "egress")
    ]
    if machine in scene.services.nodes:
        # The pod sends from denied networks' addresses: forwarded in on a pod's interface.
        spoofs = [*spare_address(cloud, "data"), *spare_address(cloud, "storage-cluster")]
        flows += kubernetes.spoofed_egress_flows(
            cloud, scene.services, machine, spoofs, scene.machines, UDP_PORT
        )
    # Strays on each of its segments, routing its other addresses (and its VIPs) through it.
    vips = [
        v.address for n in scene.services.nodes.values() if n.machine == machine for v in n.vips
    ]
    stray = strays(cloud, machine, vips)
    plug_strays(bed, stray)
    flows += [
        f
        for f in misdirected_flows(cloud, stray, [("udp", UDP_PORT), ("tcp", FAILSAFE_PORT)], vips)
        if f.nic is not None
    ]
    found: dict[int, int] = {}
    try:
        bed.load(machine, original)
        baseline = check(bed, oracle, flows, f"only {machine} enforces", timeout=SWEEP_TIMEOUT)
        for i in drop_rules(original, forward=machine in scene.services.nodes):
            bed.load(machine, "".join(lines[:i] + lines[i + 1 :]))
            mutant = check(bed, oracle, flows, f"without line {i + 1}", timeout=SWEEP_TIMEOUT)
            found[i] = len(mutant.mismatches)
    finally:
        bed.load_dir(enforce)
    return found, baseline
