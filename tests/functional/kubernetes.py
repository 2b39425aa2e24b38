"""Kubernetes services on the bed's control nodes, the way Sunbeam runs them, and their flows.

Every machine with the control role gets what Canonical Kubernetes gives it in Sunbeam:

- a pod namespace behind a veth (`kpod0` on the host: an interface of no cloud network), with
  an address in the node's pod CIDR (IPv4 and IPv6) and its default route through the host;
- a virtual IP per IP version on its internal, public and storage interfaces, from the
  network's own subnet, as MetalLB's L2 mode announces them (here: a /32 or /128 address on
  the interface, so the node answers ARP and neighbour discovery for it);
- a DNAT of every VIP to the pod in PREROUTING, in tables of its own (`ip kube-proxy`,
  `ip6 kube-proxy`) as kube-proxy keeps them, and a masquerade of pod egress. As a Service
  maps its port to the pod's (its targetPort), some ports change on the way (`TARGET_PORTS`:
  HTTPS 443 to 8443, HTTP 80 to 8080, AMQP 5672 kept, as Traefik's and RabbitMQ's pods
  listen); every other port is DNATed to the same port of the pod, so every packet to a VIP
  is forwarded;
- a pod network between the nodes: a VXLAN device (udp/8472 over the internal network, as
  Cilium's and flannel's tunnels) with a route to every other node's pod CIDR.

A compute node also gets two instance-like namespaces behind `tap` veths whose addresses lie
in a network the compute role may not use: the host routes between them, and that traffic
neither arrives on nor leaves by an interface of a cloud network.

Nothing here reads the ruleset under test; the flows are predicted by the oracle.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .oracle import VXLAN_PORT, Flow
from .testbed import (
    FORWARDING,
    Bed,
    BedError,
    Cloud,
    Host,
    Iface,
    IPAddress,
    IPInterface,
    IPNetwork,
    space_of,
)

VIP_NETWORKS = ("internal", "public", "storage")  # the pools Sunbeam takes from MAAS
POD_CIDRS = (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd44:244::/48"))
POD_VETH = "kpod0"
VXLAN = "vxlan.pods"
INSTANCE_TAPS = ("tap-vm1", "tap-vm2")
INSTANCE_GATEWAY = "169.254.1.1"  # the host's end of every tap, answered by proxy ARP
# A Service's port -> its pod's port (targetPort): Traefik's pod serves HTTPS on 8443 and HTTP
# on 8080 behind the Service's 443 and 80; RabbitMQ's serves AMQP on the Service's 5672.
TARGET_PORTS: Mapping[tuple[str, int], int] = {
    ("tcp", 443): 8443,
    ("tcp", 80): 8080,
    ("tcp", 5672): 5672,
}


def pod_ports(ports: Iterable[tuple[str, int]]) -> tuple[list[int], list[int]]:
    """The TCP and UDP ports a pod must listen on to answer VIP probes on these ports."""
    targets = {(proto, TARGET_PORTS.get((proto, port), port)) for proto, port in ports}
    return (
        sorted(p for proto, p in targets if proto == "tcp"),
        sorted(p for proto, p in targets if proto == "udp"),
    )


@dataclass(frozen=True)
class Vip:
    """A service VIP: the network and interface it is announced on, and its address."""

    network: str
    nic: str
    address: IPAddress


@dataclass(frozen=True)
class Node:
    """What Kubernetes adds to one control node."""

    machine: str
    index: int
    pod: Host  # the pod namespace (its addresses are the pod's)
    gateway: tuple[IPInterface, ...]  # the host's end of the pod veth
    overlay: tuple[IPInterface, ...]  # the host's address on the pod network's VXLAN
    vips: tuple[Vip, ...]

    def vip_nic(self, address: IPAddress) -> str:
        """The interface a VIP is announced on."""
        return next(v.nic for v in self.vips if v.address == address)


@dataclass(frozen=True)
class Instances:
    """Two instance-like namespaces behind taps on one compute node."""

    machine: str
    vms: tuple[Host, Host]


@dataclass(frozen=True)
class Services:
    """Everything this module adds to a bed."""

    nodes: Mapping[str, Node]  # by machine
    instances: Instances | None

    @property
    def hosts(self) -> dict[str, Host]:
        """The pods and instances, by their name in the bed."""
        found = {n.pod.name: n.pod for n in self.nodes.values()}
        if self.instances:
            found.update({vm.name: vm for vm in self.instances.vms})
        return found

    def node_of_pod(self, pod: str) -> Node:
        """The node a pod runs on."""
        return next(n for n in self.nodes.values() if n.pod.name == pod)


def pod_name(machine: str) -> str:
    """The bed's name of a node's pod."""
    return f"pod@{machine}"


def _spares(subnet: IPNetwork, used: set[IPAddress], count: int) -> list[IPAddress]:
    """Addresses nobody uses, downwards from 32 below the top of a subnet.

    The top 32 stay free for the tests' own spare addresses (spoofed sources).
    """
    top = subnet.broadcast_address - 32
    found = [a for a in (top - k for k in range(128)) if a not in used][:count]
    if len(found) < count:
        raise BedError(f"no {count} spare addresses in {subnet} for VIPs")
    return [ipaddress.ip_address(a) for a in found]


def services_of(cloud: Cloud) -> Services:
    """Pods and VIPs for every control node; instances on the first compute node."""
    topology = cloud.topology
    cloud_nets = [s for seg in cloud.segments.values() for s in seg.subnets]
    if any(p.overlaps(s) for p in POD_CIDRS for s in cloud_nets if s.version == p.version):
        raise BedError(f"the cloud's subnets overlap the pod CIDRs {POD_CIDRS}")
    controls = [m for m, h in cloud.machines.items() if "control" in h.roles]
    used = {a.ip for h in cloud.machines.values() for a in h.addresses}
    used |= {r for s in cloud.segments.values() for r in s.router.values()}
    # A pool per network and subnet; networks that share a space share its subnets' spares.
    spare: dict[IPNetwork, list[IPAddress]] = {}
    for network in VIP_NETWORKS:
        for subnet in topology.spaces[space_of(topology, network)].subnets:
            count = len(controls) * len(VIP_NETWORKS)
            spare.setdefault(subnet, _spares(subnet, used, count))
    nodes = {}
    for index, machine in enumerate(controls):
        host = cloud.machines[machine]
        vips = []
        for k, network in enumerate(VIP_NETWORKS):
            segment = space_of(topology, network)
            for iface in (i for i in host.ifaces if i.segment == segment):
                for subnet in sorted({a.network for a in iface.addresses}, key=str):
                    address = spare[subnet][index * len(VIP_NETWORKS) + k]
                    vips.append(Vip(network, iface.name, address))
        nodes[machine] = _node(machine, index, tuple(vips))
    return Services(nodes, _instances(cloud))


def _node(machine: str, index: int, vips: tuple[Vip, ...]) -> Node:
    v4, v6 = POD_CIDRS
    cidrs = (
        ipaddress.ip_network(f"{v4.network_address + 256 * (index + 1)}/24"),
        ipaddress.ip_network(f"{v6.network_address + ((index + 1) << 64)}/64"),
    )
    gateway = tuple(
        ipaddress.ip_interface(f"{c.network_address + 1}/{c.prefixlen}") for c in cidrs
    )
    pod_addresses = tuple(
        ipaddress.ip_interface(f"{c.network_address + 2}/{c.prefixlen}") for c in cidrs
    )
    overlay = (
        ipaddress.ip_interface(f"{v4.network_address + 255 * 256 + index + 1}/24"),
        ipaddress.ip_interface(f"{v6.network_address + (255 << 64) + index + 1}/64"),
    )
    pod = Host(
        pod_name(machine),
        (),
        (Iface("eth0", pod_addresses, f"~pod-{machine}"),),
        {g.version: g.ip for g in gateway},
    )
    return Node(machine, index, pod, gateway, overlay, vips)


def _instances(cloud: Cloud) -> Instances | None:
    """Two VMs on the first compute node, addressed in a network the node may not use."""
    compute = next((m for m, h in cloud.machines.items() if h.roles == ("compute",)), None)
    if compute is None:
        return None
    subnet = next(s for s in cloud.topology.spaces[space_of(cloud.topology, "public")].subnets)
    used = {a.ip for h in cloud.machines.values() for a in h.addresses}
    used |= {r for s in cloud.segments.values() for r in s.router.values()}
    addresses = _spares(subnet, used, 128)[-2:]  # below the VIPs
    vms = tuple(
        Host(
            f"vm{k + 1}@{compute}",
            (),
            (Iface("eth0", (ipaddress.ip_interface(f"{a}/32"),), f"~{tap}"),),
            {4: ipaddress.ip_address(INSTANCE_GATEWAY)},
        )
        for k, (a, tap) in enumerate(zip(addresses, INSTANCE_TAPS, strict=True))
    )
    return Instances(compute, (vms[0], vms[1]))


# ---------------------------------------------------------------------------------------------
# Building


def build(bed: Bed, services: Services) -> None:
    """Make the pods, VIPs, DNAT, pod network and instances in a built bed."""
    underlay = {m: _internal_v4(bed.cloud, m) for m in services.nodes}
    bed.add_hosts(services.hosts.values())
    for machine in services.nodes:
        bed.set_sysctls(machine, FORWARDING)
    for node in services.nodes.values():
        _build_node(bed, node, services, underlay)
    if services.instances:
        _build_instances(bed, services.instances)


def _internal_v4(cloud: Cloud, machine: str) -> IPAddress:
    """A node's internal IPv4 address: the pod network's VXLAN runs over it."""
    space = space_of(cloud.topology, "internal")
    addresses = [
        a.ip
        for i in cloud.machines[machine].ifaces
        if i.segment == space
        for a in i.addresses
        if a.version == 4
    ]
    if not addresses:
        raise BedError(f"{machine} has no internal IPv4 address for the pod network")
    return addresses[0]


def _nodad(address: IPAddress) -> str:
    return " nodad" if address.version == 6 else ""


def _build_node(
    bed: Bed, node: Node, services: Services, underlay: Mapping[str, IPAddress]
) -> None:
    ns, pod_ns = bed.ns[node.machine], bed.ns[node.pod.name]
    lines = [f"link add {POD_VETH} type veth peer name eth0 netns {pod_ns}"]
    lines += [f"addr add {g} dev {POD_VETH}{_nodad(g.ip)}" for g in node.gateway]
    lines.append(f"link set {POD_VETH} up")
    prefix = {4: 32, 6: 128}
    lines += [
        f"addr add {v.address}/{prefix[v.address.version]} dev {v.nic}{_nodad(v.address)}"
        for v in node.vips
    ]
    # The pod network: one VXLAN over internal, flooding to every other node.
    lines.append(
        f"link add {VXLAN} type vxlan id 1 dstport {VXLAN_PORT} local {underlay[node.machine]}"
        " nolearning"
    )
    lines += [f"addr add {o} dev {VXLAN}{_nodad(o.ip)}" for o in node.overlay]
    lines.append(f"link set {VXLAN} up")
    for other in services.nodes.values():
        if other is node:
            continue
        for subnet, via in zip(_pod_subnets(other), other.overlay, strict=True):
            lines.append(f"route add {subnet} via {via.ip} dev {VXLAN}")
    bed.ip_batch(ns, lines)
    fdb = [
        f"fdb append 00:00:00:00:00:00 dev {VXLAN} dst {underlay[o.machine]}"
        for o in services.nodes.values()
        if o is not node
    ]
    if fdb:
        bed.sandbox.run(["ip", "netns", "exec", ns, "bridge", "-batch", "-"], stdin="\n".join(fdb))
    pod_lines = ["link set lo up"]
    pod_lines += [f"addr add {a} dev eth0{_nodad(a.ip)}" for a in node.pod.addresses]
    pod_lines.append("link set eth0 up")
    pod_lines += [f"route add default via {g.ip}" for g in node.gateway]
    bed.ip_batch(pod_ns, pod_lines)
    bed.nft(node.machine, "-f", "/dev/stdin", stdin=kube_proxy_tables(node))


def _pod_subnets(node: Node) -> tuple[IPNetwork, ...]:
    return tuple(a.network for a in node.pod.addresses)


def kube_proxy_tables(node: Node) -> str:
    """kube-proxy's part, in tables of its own: VIP -> pod DNAT, pod egress masquerade.

    The Services' ports that map to another port of the pod first, then every other port to
    the same port of the pod.
    """
    text = []
    for family, version in (("ip", 4), ("ip6", 6)):
        pod = next(a.ip for a in node.pod.addresses if a.version == version)
        pods = next(c for c in POD_CIDRS if c.version == version)
        vips = [str(v.address) for v in node.vips if v.address.version == version]
        target = str(pod) if version == 4 else f"[{pod}]"
        dnat = "".join(
            f"\t\t{family} daddr {{ {', '.join(vips)} }} {proto} dport {port}"
            f" dnat to {target}:{to}\n"
            for (proto, port), to in TARGET_PORTS.items()
            if vips
        )
        dnat += f"\t\t{family} daddr {{ {', '.join(vips)} }} dnat to {pod}\n" if vips else ""
        text.append(
            f"table {family} kube-proxy {{\n"
            "\tchain prerouting {\n"
            "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
            f"{dnat}"
            "\t}\n"
            "\tchain postrouting {\n"
            "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            f'\t\t{family} saddr {pods} {family} daddr != {pods} oifname != "{VXLAN}"'
            " masquerade\n"
            "\t}\n"
            "}\n"
        )
    return "".join(text)


def _build_instances(bed: Bed, instances: Instances) -> None:
    lines = []
    for vm, tap in zip(instances.vms, INSTANCE_TAPS, strict=True):
        lines += [
            f"link add {tap} type veth peer name eth0 netns {bed.ns[vm.name]}",
            f"link set {tap} up",
            *(f"route add {a.ip}/32 dev {tap}" for a in vm.addresses),
        ]
    bed.ip_batch(bed.ns[instances.machine], lines)
    for vm in instances.vms:
        vm_lines = ["link set lo up", *(f"addr add {a} dev eth0" for a in vm.addresses)]
        vm_lines += [
            "link set eth0 up",
            f"route add {INSTANCE_GATEWAY} dev eth0",
            f"route add default via {INSTANCE_GATEWAY}",
        ]
        bed.ip_batch(bed.ns[vm.name], vm_lines)
    bed.set_sysctls(
        instances.machine,
        {"net.ipv4.ip_forward": 1, **{f"net.ipv4.conf.{t}.proxy_arp": 1 for t in INSTANCE_TAPS}},
    )


# ---------------------------------------------------------------------------------------------
# Flows


def vip_flows(
    cloud: Cloud, services: Services, senders: Iterable[str], ports: Sequence[tuple[str, int]]
) -> list[Flow]:
    """From every address of every sender to every VIP of the same IP version."""
    return [
        Flow(src, a.ip, node.machine, vip.address, proto, port, kind="vip", nic=vip.nic)
        for src in senders
        for a in cloud.hosts[src].addresses
        for node in services.nodes.values()
        if node.machine != src
        for vip in node.vips
        if vip.address.version == a.version
        for proto, port in ports
    ]


def egress_flows(
    cloud: Cloud,
    services: Services,
    machine: str,
    targets: Iterable[str],
    ports: Sequence[tuple[str, int]],
) -> list[Flow]:
    """From a node's pod to every address of the targets (machines or externals)."""
    pod = services.nodes[machine].pod
    return [
        Flow(pod.name, a.ip, dst, b.ip, proto, port, kind="egress", via=machine)
        for dst in targets
        if dst != machine
        for a in pod.addresses
        for b in cloud.hosts[dst].addresses
        if a.version == b.version
        for proto, port in ports
    ]


def spoofed_egress_flows(
    cloud: Cloud,
    services: Services,
    machine: str,
    sources: Iterable[IPAddress],
    targets: Iterable[str],
    port: int,
) -> list[Flow]:
    """UDP from a node's pod with source addresses that are not its own, to the targets."""
    pod = services.nodes[machine].pod
    return [
        Flow(pod.name, spoof, dst, b.ip, "udp", port, "egress", machine, spoofed=True)
        for spoof in sources
        for dst in targets
        if dst != machine
        for b in cloud.hosts[dst].addresses
        if b.version == spoof.version
    ]


def pod_to_pod_flows(services: Services, ports: Sequence[tuple[str, int]]) -> list[Flow]:
    """Between the pods of every two nodes, over the pod network."""
    nodes = list(services.nodes.values())
    return [
        Flow(a.pod.name, x.ip, b.pod.name, y.ip, proto, port, "pods", a.machine, b.machine)
        for a in nodes
        for b in nodes
        if a is not b
        for x in a.pod.addresses
        for y in b.pod.addresses
        if x.version == y.version
        for proto, port in ports
    ]


def instance_flows(services: Services, ports: Sequence[tuple[str, int]]) -> list[Flow]:
    """Between the two instances of the compute node, routed by the host."""
    if services.instances is None:
        return []
    vm1, vm2 = services.instances.vms
    via = services.instances.machine
    return [
        Flow(s.name, s.addresses[0].ip, d.name, d.addresses[0].ip, proto, port, "instances", via)
        for s, d in ((vm1, vm2), (vm2, vm1))
        for proto, port in ports
    ]
