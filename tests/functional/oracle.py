"""The expected verdict of every probe, worked out without looking at the ruleset under test.

Three sources only:

- the role table the topology's `role-table` names: the "Node roles" table of Canonical's
  "Network traffic isolation with MAAS" page (the guide), or Sunbeam's own (snap-openstack's
  ROLE_NETWORK_MAPPING), both written out by hand in tests/role_tables.py, not imported from
  the charm;
- the firewall's rules as the README states them, restated below and encoded step by step;
- for `strict-ports`, two tables written out by hand below from the services' own sources
  (Juju, Ceph and MicroCeph, MicroOVN, Sunbeam, Kubernetes, the charms Sunbeam deploys): the
  ports the hosts' own services listen on, and the ports of the Services behind Kubernetes
  VIPs; the charm's own catalogue (network_isolation.ports) is never read for expected
  values.

The rules, as encoded here. A *domain* is a set of networks that resolve to the same subnets
(one space); it is *allowed* on a machine when any of its networks is allowed for the
machine's roles, else *denied*. A NIC is *denied* when every domain it carries is denied.

Input, first match wins:
  1. ct state established,related: accept (replies);
  2. failsafe: tcp/22 from the management domain's subnets or client-cidrs: accept; on a Juju
     controller tcp 22 and 17022 (its SSH server, which serves operators like sshd) from those
     sources only, and tcp/17070 (the API) from any source arriving on a NIC of the
     management domain: accept (its agents live in every rack, in subnets it does not know);
  3. misdirected: arriving on a NIC of a cloud network, addressed (before any DNAT: the
     address the client used) to the subnets of an allowed domain that has NICs on the
     machine, but not arriving on one of that domain's NICs: drop; addressed to a denied
     domain's subnets (and no allowed one's), arriving anywhere: drop. (Linux takes a packet
     for any of its addresses on any interface: without this a host on one segment reaches
     the machine's address on another through the NIC it shares with it.) NICs of no cloud
     network (pods' veths, taps, lo) are not judged by the first part;
  4. essential ICMP/ICMPv6 (neighbour discovery among them): accept;
  5. from a denied domain's subnets, on any interface: drop;
  6. on a denied NIC: drop;
  7. on an allowed domain's NIC: from its own subnets accept; from another cloud domain's
     subnets drop; from any other source: accept on public, accept from client-cidrs on
     management, drop elsewhere;
  8. anything else (NICs of no cloud network): not decided here (accept).
(The ruleset looks the interface up before it drops denied sources, so that an accepted
packet meets one set lookup; since no NIC's own subnets, public's other sources or the
clients include a denied domain's subnets, the verdicts are the same as in this order.)
The NIC a packet arrives on is the one holding its destination address, unless the sender
routes it through another of the machine's addresses (`Flow.nic`).
With strict-ports, rule 7 accepts only the ports listed for the NIC: per network of
its allowed domains that the machine's roles allow, the port table's ports of those roles,
plus `extra-ports` for that network, plus what the machine's principals declared for it.
Every other packet arriving on that NIC is dropped; rules 1-6 and 8 do not change (tcp/22
from a source that is neither management nor a client is therefore dropped on such a NIC).
Output: replies to connections the input chain let in are let out first (so the failsafe's
replies too); otherwise, to a denied domain's subnets, or out of a denied NIC: drop.
Forward (what a host routes: a Kubernetes VIP DNATed to a pod, pod egress), first match wins:
  F1. ct state established,related: accept (replies);
  F2. arriving on and leaving by NICs of no cloud network: accept (pods, instances: not ours);
  F3. misdirected: rule 3's first part, judged by the original destination (a VIP, before
      DNAT) and the NIC the packet arrives on: a VIP of the internal network is reached only
      through an internal NIC, even by a host that routes through another of the node's
      addresses;
  F4. from a denied domain's subnets: drop;
  F5. leaving by a NIC of a cloud network: to a denied domain's subnets (after DNAT: where
      it really goes), or out of a denied NIC: drop, as for output;
  F6. arriving on a denied NIC: drop;
  F7. arriving on an allowed domain's NIC: rule 7 above, as if addressed to the host (there is
      no failsafe for forwarded packets); with strict-ports, by the port the client used
      (before DNAT: the Service's port, not the pod's) against the VIP table below, not the
      port table, plus `extra-ports` and declarations;
  F8. anything else: accept.
Audit: the same, but a drop only counts; the packet goes on. Off: no table.

Consequences the bed makes visible (the kernel's, not a choice of ours):
- IPv6 needs neighbour discovery: a host answers a neighbour solicitation with an
  advertisement sent out of the NIC that holds the address. Out of a denied NIC that
  advertisement is dropped, so nothing reaches an IPv6 address on a denied NIC, not even
  the failsafe. (ARP is not IP: nftables' inet family never sees it, so IPv4 is unaffected.)
- Replies (ct established) pass input, and replies leave by the output chain's first rules:
  only a new packet this host sends meets the output drops.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from network_isolation.ports import PortRange  # parsing only: no expected values from it
from network_isolation.topology import Topology
from tests.role_tables import GUIDE_ROLE_TABLE, SUNBEAM_ROLE_TABLE

from .testbed import Cloud, Host, IPAddress, IPNetwork, space_of

ROLE_TABLES = {"guide": GUIDE_ROLE_TABLE, "sunbeam": SUNBEAM_ROLE_TABLE}
CLOUD_NETWORKS = ("data", "internal", "management", "public", "storage", "storage-cluster")

# Ports per cloud network, from the services' own sources: (role, network) -> the inbound
# ports the role's services listen on with the host's own addresses there. tcp/22 is the
# failsafe's, not listed; outbound-only traffic (DNS, DHCP, NTP, MAAS) is left out. What
# clients reach on load-balancer VIPs (Traefik for every API, RabbitMQ, Consul) is DNATed to a
# pod and forwarded: it never reaches the host's input, so it is not here either.
# The charm's catalogue opens a little more than this table (udp/68 for DHCP offers on
# management): no probe of the bed uses it; probing it would (rightly) show up as a mismatch
# to settle between this table and the catalogue, not be hidden by copying the catalogue here.
_KUBERNETES_INTERNAL = (
    # k8s-snap (release-1.32) ports-and-services: API, k8sd, k8s-dqlite, etcd (when it is the
    # datastore), kubelet, Cilium health, Cilium VXLAN; MetalLB speakers' memberlist, TCP and
    # UDP 7946. Sunbeam binds the Kubernetes `cluster` endpoint to internal.
    "tcp:6443",
    "tcp:6400",
    "tcp:9000",
    "tcp:2379",
    "tcp:2380",
    "tcp:10250",
    "tcp:4240",
    "udp:8472",
    "tcp:7946",
    "udp:7946",
    # Cilium 1.17 as k8s-snap release-1.32 bundles it: Hubble's server on every node, :4244,
    # which Hubble Relay reaches at the node's Kubernetes (internal) address.
    "tcp:4244",
)
# Ceph's daemons (OSD, MGR, MDS) bind from ms_bind_port_min to ms_bind_port_max: 6800-7568
# (ceph src/common/options/global.yaml.in).
_CEPH_DAEMONS = "tcp:6800-7568"
PORT_TABLE: dict[tuple[str, str], tuple[str, ...]] = {
    # management: Juju controller API, SSH server and HA.
    ("juju-controller", "management"): ("tcp:17070", "tcp:17022", "tcp:37017", "tcp:17666"),
    # Sunbeam clusterd runs only on the infra machines (the `sunbeam` role) in MAAS mode.
    ("sunbeam", "management"): ("tcp:7000",),
    # Kubernetes API; MicroOVN's cluster API; OVN central (NB 6641, SB 6642, raft 6643/6644) on
    # the address MicroOVN bootstraps on: the first interface's, management in these clouds.
    ("control", "management"): ("tcp:6443", "tcp:6686", "tcp:6641-6644"),
    ("region-controller", "management"): ("tcp:6443",),
    # MicroOVN on every chassis; on compute also SPICE consoles (from 5900, on the
    # default-route address: management here) and Consul's serf for management (8301).
    ("compute", "management"): ("tcp:6686", "tcp:5900-6099", "tcp:8301", "udp:8301"),
    ("network", "management"): ("tcp:6686",),
    ("storage", "management"): ("tcp:7443",),
    # internal: the Kubernetes members. OVN NB/SB listen on every address, but MicroOVN
    # publishes them at the central nodes' cluster address (management, above): nobody
    # connects to them on internal.
    ("control", "internal"): _KUBERNETES_INTERNAL,
    ("region-controller", "internal"): _KUBERNETES_INTERNAL,
    # data: Geneve on every chassis; live migration and Consul's serf for data (8311) on
    # compute.
    ("compute", "data"): (
        "udp:6081",
        "tcp:16509",
        "tcp:16514",
        "tcp:49152-49215",
        "tcp:10099",
        "tcp:8311",
        "udp:8311",
    ),
    ("control", "data"): ("udp:6081",),
    ("network", "data"): ("udp:6081",),
    # storage: Ceph MON, OSD/MGR/MDS public side, RGW (MicroCeph: port 80), mgr prometheus,
    # NFS-Ganesha (MicroCeph's NFS for Manila, NFSv4 only: tcp/2049); Consul's serf for
    # storage (8321) on compute.
    ("storage", "storage"): (
        "tcp:3300",
        "tcp:6789",
        _CEPH_DAEMONS,
        "tcp:80",
        "tcp:9283",
        "tcp:2049",
    ),
    ("compute", "storage"): ("tcp:8321", "udp:8321"),
    # storage-cluster: OSD back side (replication, heartbeats).
    ("storage", "storage-cluster"): (_CEPH_DAEMONS,),
}
# The Services behind Kubernetes load-balancer VIPs (MetalLB, announced by the control nodes)
# or NodePorts, by the port the client uses (the Service's port: the pod's own port, the
# targetPort, may differ). (role, network) -> ports; the network is the pool's. Sources:
# snap-openstack provider/maas/steps.py and core/steps.py (the pools: internal-api, public-api,
# storage-ippool), steps/openstack.py (traefik and traefik-public, traefik-rgw pinned to
# their pools) and the charms' own Service definitions.
_VIP_INTERNAL = (
    # traefik-k8s src/charm.py: HTTP 80, HTTPS 443 (the internal API endpoints).
    "tcp:80",
    "tcp:443",
    # rabbitmq-k8s src/charm.py: AMQP 5672, management API 15672.
    "tcp:5672",
    "tcp:15672",
    # mysql-router-k8s src/charm.py (cinder-volume's and manila-data's routers, exposed by a
    # load balancer in sunbeam-terraform): read-write 6446, read-only 6447.
    "tcp:6446-6447",
    # ovn-relay-k8s src/charm.py: the southbound relay, 6642 (OVN in Kubernetes).
    "tcp:6642",
    # ironic-conductor-k8s src/charm.py: HTTP 8080, TFTP 69 (the baremetal feature).
    "tcp:8080",
    "udp:69",
    # snap-openstack features/instance_recovery/consul.py: consul-k8s serf NodePorts 30301
    # (management) and 30311 (data) at the node's Kubernetes address, HTTP API 8500.
    "tcp:30301",
    "udp:30301",
    "tcp:30311",
    "udp:30311",
    "tcp:8500",
)
_VIP_PUBLIC = (
    # traefik-public and traefik-rgw (and COS's Traefik): 80 and 443.
    "tcp:80",
    "tcp:443",
    # features/dns: designate-bind-k8s serves DNS on 53 (its rndc 953 is Designate's only).
    "tcp:53",
    "udp:53",
)
# features/instance_recovery/feature.py: consul-storage-lb in the storage pool, serf 30321
# and HTTP API 8500.
_VIP_STORAGE = ("tcp:30321", "udp:30321", "tcp:8500")
VIP_TABLE: dict[tuple[str, str], tuple[str, ...]] = {
    (role, network): ports
    for role in ("control", "region-controller")  # the Kubernetes nodes
    for network, ports in (
        ("internal", _VIP_INTERNAL),
        ("public", _VIP_PUBLIC),
        ("storage", _VIP_STORAGE),
    )
}
FAILSAFE_PORT = 22
VXLAN_PORT = 8472  # the pod network's tunnel (Cilium, flannel)
# Juju's controller configuration: api-port 17070, what every agent connects to, from every
# rack; the controller's SSH server 17022, for operators (`juju ssh` through it), like sshd.
JUJU_API_PORT = 17070
JUJU_SSH_SERVER_PORT = 17022
CONTROLLER_AGENT_PORTS = (JUJU_API_PORT,)
CONTROLLER_FAILSAFE_PORTS = (FAILSAFE_PORT, JUJU_SSH_SERVER_PORT)
Mode = str  # "enforce" | "audit" | "off"


@dataclass(frozen=True)
class Flow:
    """One probe: from an address of a host to an address of another, one protocol/port."""

    src: str  # host name (a machine, "client" or "outsider")
    src_addr: IPAddress
    dst: str
    dst_addr: IPAddress
    proto: str  # "tcp" | "udp"
    port: int
    # What the flow is: between hosts ("host"); to a Kubernetes VIP on `dst`, DNATed to a pod
    # ("vip"; `port` is the client's, the Service's, whatever port the pod listens on); from a
    # pod on node `via` out to a host ("egress"); between pods on nodes `via` and `to_node`,
    # over the pod network ("pods"); between two instances on the compute node `via`
    # ("instances").
    kind: str = "host"
    via: str | None = None
    to_node: str | None = None
    # The NIC of `dst` the request arrives on: for a VIP, the NIC that announces it; for a
    # host flow, None (the NIC holding dst_addr) unless the sender routes it through the
    # machine's address on another NIC (a misdirected packet).
    nic: str | None = None
    spoofed: bool = False  # src_addr is not the sender's: one-way, seen at the server

    @property
    def label(self) -> str:
        """proto/port (and the kind when not between hosts), for the matrix."""
        kind = "" if self.kind == "host" else f" {self.kind}"
        through = f" via {self.nic}" if self.nic and self.kind == "host" else ""
        spoofed = " spoofed" if self.spoofed else ""
        return f"{self.proto}/{self.port}{kind}{through}{spoofed}"


@dataclass(frozen=True)
class Hit:
    """A drop rule that the flow meets, on a machine, in one direction."""

    machine: str
    direction: str  # "in" | "out" | "fwd"
    reason: str


@dataclass(frozen=True)
class Expectation:
    """The predicted verdict, why, and every drop rule met (for audit counters)."""

    verdict: str  # "pass" | "drop" | "no-reply"
    reason: str
    hits: tuple[Hit, ...] = ()


@dataclass(frozen=True)
class Domain:
    """Networks bound to the same subnets."""

    networks: frozenset[str]
    subnets: tuple[IPNetwork, ...]

    @property
    def name(self) -> str:
        """The networks, in a fixed order."""
        return "+".join(n for n in CLOUD_NETWORKS if n in self.networks)

    def has(self, address: IPAddress) -> bool:
        """Whether an address is in one of the domain's subnets."""
        return any(address in s for s in self.subnets)


@dataclass
class Policy:
    """The cloud-wide inputs of the rules: domains, role table, client-cidrs."""

    domains: tuple[Domain, ...]
    role_table: Mapping[str, frozenset[str]]
    client_cidrs: tuple[IPNetwork, ...]
    roles: Mapping[str, tuple[str, ...]]
    enforcement: Mode
    strict_ports: bool = False
    port_table: Mapping[tuple[str, str], tuple[PortRange, ...]] = field(default_factory=dict)
    vip_table: Mapping[tuple[str, str], tuple[PortRange, ...]] = field(default_factory=dict)
    extra_ports: Mapping[str, tuple[PortRange, ...]] = field(default_factory=dict)

    @classmethod
    def from_topology(cls, topology: Topology) -> Policy:
        """Read the topology's raw fields; the charm's parsers are not used."""
        config = {k: str(v) for k, v in topology.config.items()}
        bindings = {str(k): v for k, v in topology.bindings.items()}
        subnets: dict[str, set[IPNetwork]] = {}
        for network in CLOUD_NETWORKS:
            space = bindings.get(network, topology.default_space)
            assert space is not None, f"{network} is not bound"
            subnets[network] = set(topology.spaces[space].subnets)
        for key, values in _entries(config.get("network-cidrs", "")):
            subnets[key] |= {ipaddress.ip_network(v) for v in values}
        groups: dict[frozenset[IPNetwork], set[str]] = {}
        for network in CLOUD_NETWORKS:
            groups.setdefault(frozenset(subnets[network]), set()).add(network)
        domains = tuple(
            Domain(frozenset(nets), tuple(sorted(key, key=_net_key)))
            for key, nets in groups.items()
        )
        table = dict(ROLE_TABLES[config.get("role-table", "guide")])
        for role, networks in _entries(config.get("role-networks", "")):
            table[role] = frozenset(networks)
        clients = tuple(
            ipaddress.ip_network(c)
            for c in config.get("client-cidrs", "").replace(",", " ").split()
        )
        return cls(
            domains=domains,
            role_table=table,
            client_cidrs=clients,
            roles={name: tuple(m.roles) for name, m in topology.machines.items()},
            enforcement=config.get("enforcement", "enforce"),
            strict_ports=config.get("strict-ports", "false").lower() == "true",
            port_table={k: _ports(v) for k, v in PORT_TABLE.items()},
            vip_table={k: _ports(v) for k, v in VIP_TABLE.items()},
            extra_ports={
                net: _ports(ports) for net, ports in _entries(config.get("extra-ports", ""))
            },
        )

    def domain_with(self, network: str) -> Domain:
        """The domain that carries a network."""
        return next(d for d in self.domains if network in d.networks)

    def domain_of(self, address: IPAddress) -> Domain | None:
        """The cloud domain an address belongs to, if any."""
        return next((d for d in self.domains if d.has(address)), None)

    def allowed(self, machine: str) -> frozenset[str]:
        """The networks a machine's roles need (the union of the roles' rows)."""
        return frozenset(n for role in self.roles[machine] for n in self.role_table[role])

    def is_allowed(self, machine: str, domain: Domain) -> bool:
        """A domain is allowed when any of its networks is."""
        return bool(domain.networks & self.allowed(machine))

    def in_clients(self, address: IPAddress) -> bool:
        """Whether an address is in client-cidrs."""
        return any(address in c for c in self.client_cidrs)


def _covers(ports: PortRange, proto: str, port: int) -> bool:
    return ports.protocol == proto and ports.first <= port <= ports.last


def _net_key(net: IPNetwork) -> tuple[int, int, int]:
    return net.version, int(net.network_address), net.prefixlen


def _ports(texts: Iterable[str]) -> tuple[PortRange, ...]:
    return tuple(PortRange.parse(t) for t in texts)


def _entries(text: str) -> Iterable[tuple[str, list[str]]]:
    for entry in text.split():
        key, _, values = entry.partition("=")
        yield key, [v for v in values.split(",") if v]


class _Tally:
    """The drop rules a flow meets, and the first that enforces."""

    def __init__(self, modes: Mapping[str, Mode]):
        self.modes = modes
        self.hits: list[Hit] = []
        self.first_drop: Hit | None = None

    def meet(self, machine: str, direction: str, reason: str | None) -> None:
        """A rule of `machine` in `direction` drops the flow for `reason` (None: no rule)."""
        if reason is None or self.modes.get(machine, "off") == "off":
            return
        hit = Hit(machine, direction, reason)
        self.hits.append(hit)
        if self.first_drop is None and self.modes[machine] == "enforce":
            self.first_drop = hit


class Oracle:
    """Predicts each flow's verdict from the policy and the bed's routing."""

    def __init__(
        self,
        cloud: Cloud,
        modes: Mapping[str, Mode] | None = None,
        declared: Mapping[str, Mapping[str, Iterable[str]]] | None = None,
    ):
        """The oracle of a built cloud.

        `modes`: machine -> enforcement, where it differs from the topology's config.
        `declared` (strict-ports only): machine -> network -> ports ("tcp:5672",
        "udp:6800-7300") that the machine's principals declared over the interface library.
        """
        self.cloud = cloud
        self.policy = Policy.from_topology(cloud.topology)
        default = self.policy.enforcement
        self.modes = {m: (modes or {}).get(m, default) for m in cloud.machines}
        self.declared = {
            machine: {net: _ports(ports) for net, ports in by_network.items()}
            for machine, by_network in (declared or {}).items()
        }

    def listed(
        self, machine: str, domains: Iterable[Domain], forwarded: bool = False
    ) -> tuple[PortRange, ...]:
        """strict-ports: the ports accepted on a NIC carrying these (allowed) domains.

        Per network of the domains that the machine's roles allow: the entries of its roles
        in the port table (`forwarded`: in the VIP table), extra-ports and the declarations
        of its principals.
        """
        p = self.policy
        table = p.vip_table if forwarded else p.port_table
        networks = {n for d in domains for n in d.networks} & p.allowed(machine)
        declared = self.declared.get(machine, {})
        found: list[PortRange] = []
        for network in sorted(networks):
            for role in p.roles[machine]:
                found += table.get((role, network), ())
            found += [*p.extra_ports.get(network, ()), *declared.get(network, ())]
        return tuple(found)

    # -- per machine ---------------------------------------------------------------------------

    def _nic_domains(self, host: Host, nic: str) -> list[Domain]:
        iface = next(i for i in host.ifaces if i.name == nic)
        found = {self.policy.domain_of(a.ip) for a in iface.addresses}
        return [d for d in self.policy.domains if d in found]

    def denied_nic(self, machine: str, nic: str) -> bool:
        """A NIC whose every cloud domain is denied to the machine."""
        domains = self._nic_domains(self.cloud.machines[machine], nic)
        return bool(domains) and not any(self.policy.is_allowed(machine, d) for d in domains)

    def _output(self, machine: str, dst: IPAddress) -> str | None:
        """The output rule a packet from this machine to dst meets, if any."""
        host = self.cloud.machines[machine]
        domain = self.policy.domain_of(dst)
        if domain is not None and not self.policy.is_allowed(machine, domain):
            return f"to denied {domain.name}"
        egress = host.egress(dst)
        if egress is not None and self.denied_nic(machine, egress.name):
            return f"out of denied NIC {egress.name}"
        return None

    def _neighbour(self, machine: str, address: IPAddress, nic: str | None = None) -> str | None:
        """IPv6 only: the advertisement for an address on a denied NIC is dropped."""
        if address.version != 6:
            return None
        nic = nic or self.cloud.machines[machine].iface_of(address).name
        if self.denied_nic(machine, nic):
            return f"IPv6 neighbour advertisement out of denied NIC {nic}"
        return None

    def arrival(self, flow: Flow) -> str:
        """The NIC of the destination machine that the request arrives on."""
        return flow.nic or self.cloud.machines[flow.dst].iface_of(flow.dst_addr).name

    def _misdirected(self, machine: str, dst: IPAddress, nic: str, forwarded: bool) -> str | None:
        """Rule 3 (F3 when `forwarded`): why a packet to dst arriving on nic is dropped."""
        p, host = self.policy, self.cloud.machines[machine]
        arriving = self._nic_domains(host, nic)
        if arriving:  # a NIC of a cloud network
            for domain in p.domains:
                if not (p.is_allowed(machine, domain) and domain.has(dst)):
                    continue
                nics = [i.name for i in host.ifaces if domain in self._nic_domains(host, i.name)]
                if nics and nic not in nics:
                    return f"misdirected: to {domain.name} in on {nic}"
        if not forwarded:
            denied = [d for d in p.domains if d.has(dst) and not p.is_allowed(machine, d)]
            allowed = [d for d in p.domains if d.has(dst) and p.is_allowed(machine, d)]
            if denied and not allowed:
                return f"misdirected: to denied {denied[0].name}"
        return None

    def _input(self, machine: str, flow: Flow, forwarded: bool = False) -> tuple[str, str]:
        """Rules 2-8 for a new packet: (accept|drop, why).

        `forwarded`: F3-F7 for a packet forwarded from the NIC it arrives on (no failsafe).
        """
        p, src = self.policy, flow.src_addr
        src_domain = p.domain_of(src)
        management = p.domain_with("management")
        host = self.cloud.machines[machine]
        nic = self.arrival(flow)
        controller = "juju-controller" in p.roles[machine]
        if not forwarded and flow.proto == "tcp":
            failsafe = CONTROLLER_FAILSAFE_PORTS if controller else (FAILSAFE_PORT,)
            if flow.port in failsafe and (management.has(src) or p.in_clients(src)):
                return "accept", f"failsafe tcp/{flow.port}"
            if (
                controller
                and flow.port in CONTROLLER_AGENT_PORTS
                and management in self._nic_domains(host, nic)
            ):
                return "accept", f"Juju agents to their controller, tcp/{flow.port}"
        misdirected = self._misdirected(machine, flow.dst_addr, nic, forwarded)
        if misdirected is not None:
            return "drop", misdirected
        if src_domain is not None and not p.is_allowed(machine, src_domain):
            return "drop", f"from denied {src_domain.name}"
        domains = self._nic_domains(host, nic)
        allowed = [d for d in domains if p.is_allowed(machine, d)]
        if domains and not allowed:
            return "drop", f"on denied NIC {nic}"
        if not allowed:
            return "accept", f"{nic} is on no cloud network"
        verdict, why = self._allowed_nic(flow, src_domain, allowed)
        if verdict == "accept" and p.strict_ports:
            listed = self.listed(machine, allowed, forwarded)
            if not any(_covers(r, flow.proto, flow.port) for r in listed):
                names = "+".join(d.name for d in allowed)
                which = "VIP port" if forwarded else "port"
                return (
                    "drop",
                    f"strict-ports: {which} {flow.proto}/{flow.port} not listed on {names}",
                )
            why += f", {flow.proto}/{flow.port} listed"
        return verdict, why

    def _allowed_nic(
        self, flow: Flow, src_domain: Domain | None, allowed: list[Domain]
    ) -> tuple[str, str]:
        """Rule 7, by source only (strict-ports narrows its accepts afterwards)."""
        p, src = self.policy, flow.src_addr
        names = "+".join(d.name for d in allowed)
        if src_domain in allowed:
            return "accept", f"own network {names}"
        if src_domain is not None:
            return "drop", f"{src_domain.name} source on {names} NIC"
        if any("public" in d.networks for d in allowed):
            return "accept", f"non-cloud source on public ({names})"
        if any("management" in d.networks for d in allowed) and p.in_clients(src):
            return "accept", f"client on management ({names})"
        return "drop", f"non-cloud source on {names} NIC"

    # -- per flow ------------------------------------------------------------------------------

    def expect(self, flow: Flow) -> Expectation:
        """The verdict of the whole round trip (one way for spoofed flows).

        `pass`: the reply came back; `drop`: the request never reached the server;
        `no-reply` (UDP only): the server got the request but its reply was dropped. A TCP
        connection whose SYN-ACK is dropped is simply `drop`: the server never sees it.
        """
        if flow.kind == "pods":
            return self._pods(flow)
        if flow.kind == "instances":
            return Expectation(
                "pass", f"F2: routed by {flow.via} between NICs of no cloud network"
            )
        tally = _Tally(self.modes)
        flow, why = self._request(flow, tally)
        request_dropped = tally.first_drop is not None
        if not flow.spoofed and not request_dropped:
            # The reply: out of the destination (replies to what the input chain let in are
            # always let out), then into the source (established: accepted); only the
            # source's neighbour advertisement can still be lost.
            if flow.src in self.cloud.machines:
                tally.meet(flow.src, "out", self._neighbour(flow.src, flow.src_addr))
        hits = tuple(tally.hits)
        if tally.first_drop is not None:
            drop: Hit = tally.first_drop
            lost = "drop" if request_dropped or flow.proto == "tcp" else "no-reply"
            return Expectation(lost, f"{drop.machine} {drop.direction}: {drop.reason}", hits)
        if hits:
            where = "; ".join(f"{h.machine} {h.direction}: {h.reason}" for h in hits)
            return Expectation("pass", f"audit only ({where})", hits)
        return Expectation("pass", why if self.modes.get(flow.dst) != "off" else "no ruleset")

    def _request(self, flow: Flow, tally: _Tally) -> tuple[Flow, str]:
        """The rules the request meets on its way; the flow as it arrives, and why it passes."""
        if flow.src in self.cloud.machines:
            tally.meet(flow.src, "out", self._output(flow.src, flow.dst_addr))
        if flow.kind == "vip":
            assert flow.nic is not None
            tally.meet(flow.dst, "out", self._neighbour(flow.dst, flow.dst_addr, flow.nic))
            verdict, why = self._input(flow.dst, flow, forwarded=True)
            tally.meet(flow.dst, "fwd", why if verdict == "drop" else None)
            return flow, f"VIP on {flow.nic}, forwarded to a pod: {why}"
        if flow.kind == "egress":
            assert flow.via is not None
            tally.meet(flow.via, "fwd", self._forwarded_out(flow.via, flow))
            if not flow.spoofed:  # the node masquerades its pods' own addresses only
                flow = self._masqueraded(flow)
        if flow.dst not in self.cloud.machines:
            return flow, f"{flow.dst} is outside the cloud"
        tally.meet(flow.dst, "out", self._neighbour(flow.dst, flow.dst_addr, self.arrival(flow)))
        verdict, why = self._input(flow.dst, flow)
        tally.meet(flow.dst, "in", why if verdict == "drop" else None)
        return flow, why

    def _forwarded_out(self, machine: str, flow: Flow) -> str | None:
        """F4-F5 for a packet in on a NIC of no cloud network and out by the node's routing.

        In the bed every cloud subnet is reached by a NIC of a cloud network, so F5 is the
        output rule.
        """
        reason = self._output(machine, flow.dst_addr)
        if reason is not None:
            return reason
        domain = self.policy.domain_of(flow.src_addr)
        if domain is not None and not self.policy.is_allowed(machine, domain):
            return f"from denied {domain.name}"
        return None

    def _masqueraded(self, flow: Flow) -> Flow:
        """A pod's packet as it leaves its node: from the node's address on the way out."""
        assert flow.via is not None
        node = self.cloud.machines[flow.via]
        egress = node.egress(flow.dst_addr)
        assert egress is not None, f"{flow.via} has no route to {flow.dst_addr}"
        source = next(a.ip for a in egress.addresses if a.version == flow.dst_addr.version)
        return Flow(flow.via, source, flow.dst, flow.dst_addr, flow.proto, flow.port)

    def _pods(self, flow: Flow) -> Expectation:
        """Pod to pod: F2 on both nodes; the VXLAN packets between them are host flows.

        Each way is a new udp/8472 flow from one node's internal IPv4 address to the other's.
        """
        assert flow.via is not None and flow.to_node is not None
        ends = (self._underlay(flow.via), self._underlay(flow.to_node))
        ways = [
            self.expect(Flow(a, x, b, y, "udp", VXLAN_PORT, spoofed=True))
            for (a, x), (b, y) in (ends, ends[::-1])
        ]
        hits = tuple(h for w in ways for h in w.hits)
        if ways[0].verdict == "drop":
            return Expectation("drop", f"pod network: {ways[0].reason}", hits)
        if ways[1].verdict == "drop":
            lost = "drop" if flow.proto == "tcp" else "no-reply"
            return Expectation(lost, f"pod network, way back: {ways[1].reason}", hits)
        return Expectation("pass", "F2 on both nodes; pod network on internal udp/8472", hits)

    def _underlay(self, machine: str) -> tuple[str, IPAddress]:
        """A node's internal IPv4 address, which carries the pod network."""
        space = space_of(self.cloud.topology, "internal")
        host = self.cloud.machines[machine]
        address = next(
            a.ip for i in host.ifaces if i.segment == space for a in i.addresses if a.version == 4
        )
        return machine, address
