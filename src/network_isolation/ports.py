"""Port-level policy for `strict-ports`: which ports a machine accepts inside each network.

Two kinds of traffic, two port lists per allowed network of the machine:

- *host* ports, for what is addressed to the host itself: the built-in catalogue keyed by (role,
  network), what the services of a role listen on there, and on management this charm's own
  exporter (`metrics-port`, unless 0);
- *forwarded* ports, for what is DNATed through the host to a Kubernetes pod (a load-balancer
  VIP, a NodePort): the built-in catalogue of the Services Sunbeam puts behind VIPs, by the port
  the client used (the Service's port, not the pod's).

To both add the `extra-ports` option and what the principal charms on the machine declare over
the `network-isolation` interface: the operator and the principals name a port on a network,
whichever way it is served.

Each result is merged per protocol into disjoint, non-adjacent ranges, so it can be loaded into
an nftables interval set as is (overlapping elements are an error without `auto-merge`).

SSH (tcp/22) is not listed here: the firewall keeps it open on its own, as a failsafe, whatever
this module says. Only inbound new connections matter: replies to the machine's own outbound
connections (DNS, NTP, MAAS, Ceph clients, ...) are accepted by connection tracking.

Pure code: no Juju, no host access.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple, cast

from .config import parse_port_range
from .model import NETWORKS, Network
from .planner import MachinePlan

logger = logging.getLogger(__name__)

Protocol = Literal["tcp", "udp"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp")


@dataclass(frozen=True, order=True)
class PortRange:
    """One protocol and an inclusive range of ports; a single port has first == last.

    Ordered by protocol, then range: the order of every tuple this module returns.
    """

    protocol: Protocol
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        for port in (self.first, self.last):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"port {port!r} is not in 1-65535")
        if self.last < self.first:
            raise ValueError(f"port range {self.first}-{self.last} ends before it starts")

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """`tcp:5672` or `udp:6800-7300`; raises ValueError with a readable message."""
        return cls.of(parse_port_range(text.strip()))

    @classmethod
    def of(cls, value: tuple[str, int, int]) -> PortRange:
        """From a (protocol, first, last) triple, the shape `extra-ports` is parsed into."""
        protocol, first, last = value
        return cls(cast(Protocol, protocol), first, last)

    @property
    def nft(self) -> str:
        """The element as nftables writes it in an `inet_service` set: `5672` or `6800-7300`."""
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def __str__(self) -> str:
        return f"{self.protocol}:{self.nft}"


class CatalogueEntry(NamedTuple):
    """One service of the built-in catalogue: where it listens, and who runs it."""

    roles: tuple[str, ...]
    network: Network
    service: str
    ports: tuple[str, ...]


_MGMT = Network.MANAGEMENT
_INT = Network.INTERNAL
_DATA = Network.DATA
_STO = Network.STORAGE
_STOC = Network.STORAGE_CLUSTER
_EVERY_ROLE = (
    "juju-controller",
    "control",
    "compute",
    "storage",
    "network",
    "region-controller",
    "sunbeam",
)
_KUBERNETES = ("control", "region-controller")
_OVN_CHASSIS = ("control", "compute", "network")
# What every Juju agent connects to, from wherever it is: the controller's API.
JUJU_API_PORT = "tcp:17070"
# The controller's SSH server (`juju ssh` through the controller): operators, not agents.
JUJU_SSH_SERVER_PORT = "tcp:17022"
CEPH_DAEMON_PORTS = "tcp:6800-7568"

# The built-in services, by network, each with its source beside it. Abbreviations:
# snap-openstack = canonical/snap-openstack sunbeam-python/sunbeam/; hypervisor =
# canonical/snap-openstack-hypervisor; k8s-snap = canonical/k8s-snap release-1.32 (what Sunbeam
# pins); microovn = canonical/microovn; charm-microceph = canonical/charm-microceph.
# Clients reach Sunbeam's APIs (Traefik), RabbitMQ and Consul on load-balancer VIPs: that
# traffic is DNATed and forwarded to a pod, it never reaches the input hook: see LOAD_BALANCED.
SERVICES: tuple[CatalogueEntry, ...] = (
    # management
    # Juju controller configuration: api-port, SSH server, mongo, dqlite.
    CatalogueEntry(
        ("juju-controller",),
        _MGMT,
        "Juju controller API and SSH server",
        (JUJU_API_PORT, JUJU_SSH_SERVER_PORT),
    ),
    CatalogueEntry(
        ("juju-controller",),
        _MGMT,
        "Juju controller HA (mongo, dqlite)",
        ("tcp:37017", "tcp:17666"),
    ),
    # snap-openstack steps/clusterd.py (CLUSTERD_PORT); in MAAS mode clusterd runs only on
    # the `sunbeam` machines of the `openstack-infra` model (provider/maas/deployment.py).
    CatalogueEntry(("sunbeam",), _MGMT, "Sunbeam clusterd", ("tcp:7000",)),
    # A machine that takes its address by DHCP gets the server's offers on udp/68; replies to
    # a broadcast are not matched by connection tracking.
    CatalogueEntry(_EVERY_ROLE, _MGMT, "DHCP client", ("udp:68",)),
    # k8s-snap docs/canonicalk8s/snap/reference/ports-and-services.md (kube-apiserver *:6443).
    CatalogueEntry(_KUBERNETES, _MGMT, "Kubernetes API", ("tcp:6443",)),
    # microovn cmd/microovn/main.go (DefaultMicroClusterPort); snap-openstack core/ovn.py
    # (MicroOVN on every control, compute and network node).
    CatalogueEntry(_OVN_CHASSIS, _MGMT, "MicroOVN cluster API", ("tcp:6686",)),
    # microovn cmd/microovn/cluster_bootstrap.go and cluster_join.go bootstrap and join on
    # util.NetworkInterfaceAddress() (the first global address of the first interface), not on
    # a Juju binding: the OVN central cluster (NB, SB, raft) meets there, typically management.
    # snap-openstack core/role_assignments.py: central on control nodes.
    CatalogueEntry(("control",), _MGMT, "OVN northbound, southbound and raft", ("tcp:6641-6644",)),
    # hypervisor templates/nova.conf.j2 ([spice] server_listen = node.ip_address) and
    # openstack_hypervisor/hooks.py (node.ip-address defaults to the default-route address):
    # one port per instance console from 5900 up (libvirt's remote_display_port_min).
    CatalogueEntry(("compute",), _MGMT, "SPICE consoles", ("tcp:5900-6099",)),
    # snap-openstack features/instance_recovery/consul.py: the consul-client serf LAN ports per
    # network (8301 management, 8311 data, 8321 storage), when instance recovery is enabled.
    CatalogueEntry(("compute",), _MGMT, "Consul serf (management)", ("tcp:8301", "udp:8301")),
    # charm-microceph; snap-openstack steps/microceph.py binds `admin` to management.
    CatalogueEntry(("storage",), _MGMT, "MicroCeph cluster API", ("tcp:7443",)),
    # internal: no OVN NB/SB here. They listen on every address, but MicroOVN publishes them
    # (ovsdb-cms, ovn-central's connection strings) at the central nodes' cluster address, the
    # management one above: nothing connects to them on internal.
    # snap-openstack steps/k8s.py binds the Kubernetes `cluster` endpoint to internal: members
    # meet there. k8s-snap ports-and-services.md: API, k8sd, k8s-dqlite, kubelet, Cilium health
    # and VXLAN; etcd client and peer when the datastore is etcd (k8s-dqlite by default).
    CatalogueEntry(
        _KUBERNETES,
        _INT,
        "Kubernetes cluster (API, k8sd, datastore, kubelet, CNI)",
        ("tcp:6443", "tcp:6400", "tcp:9000", "tcp:2379-2380", "tcp:10250", "tcp:4240", "udp:8472"),
    ),
    # k8s-snap release-1.32 bundles Cilium 1.17 with Hubble on (values.yaml `hubble.enabled`,
    # listenAddress :4244) on every node; Hubble Relay, when an operator enables it, reaches
    # each node's server at the node's Kubernetes (internal) address.
    CatalogueEntry(_KUBERNETES, _INT, "Cilium Hubble server", ("tcp:4244",)),
    # k8s-snap src/k8s/pkg/k8sd/features/metallb (MetalLB speaker, L2 mode): memberlist binds
    # the node address on MetalLB's default port 7946, TCP and UDP, between speakers.
    CatalogueEntry(_KUBERNETES, _INT, "MetalLB memberlist", ("tcp:7946", "udp:7946")),
    # public: nothing listens on the hosts' own public addresses (the APIs are VIPs).
    # data
    # snap-openstack steps/microovn.py (openstack-network-agents `data` binding: the Geneve
    # encapsulation address) and core/ovn.py (a chassis on control, compute and network).
    CatalogueEntry(_OVN_CHASSIS, _DATA, "Geneve tunnels (OVN)", ("udp:6081",)),
    # snap-openstack steps/hypervisor.py binds `migration` to data.
    CatalogueEntry(
        ("compute",),
        _DATA,
        "live migration (libvirt, QEMU, file transfer)",
        ("tcp:16509", "tcp:16514", "tcp:49152-49215", "tcp:10099"),
    ),
    CatalogueEntry(("compute",), _DATA, "Consul serf (data)", ("tcp:8311", "udp:8311")),
    # storage: Ceph "Network configuration reference" and msgr2 docs.
    CatalogueEntry(("storage",), _STO, "Ceph MON", ("tcp:3300", "tcp:6789")),
    # ceph src/common/options/global.yaml.in: daemons bind from ms_bind_port_min 6800 up to
    # ms_bind_port_max 7568.
    CatalogueEntry(("storage",), _STO, "Ceph OSD, MGR, MDS (public side)", (CEPH_DAEMON_PORTS,)),
    # charm-microceph src/charm.py (rgw_port 80, on the `public` binding's address).
    CatalogueEntry(("storage",), _STO, "Ceph RADOS Gateway", ("tcp:80",)),
    CatalogueEntry(("storage",), _STO, "Ceph MGR Prometheus exporter", ("tcp:9283",)),
    # snap-openstack features/shared_filesystems.py enables MicroCeph's NFS (NFS-Ganesha) for
    # Manila; it serves NFSv4 only, on tcp/2049 of the storage (`public`) address.
    CatalogueEntry(("storage",), _STO, "Ceph NFS (NFS-Ganesha)", ("tcp:2049",)),
    CatalogueEntry(("compute",), _STO, "Consul serf (storage)", ("tcp:8321", "udp:8321")),
    # storage-cluster
    CatalogueEntry(
        ("storage",), _STOC, "Ceph OSD replication and heartbeats", (CEPH_DAEMON_PORTS,)
    ),
)


# The Services Sunbeam puts behind Kubernetes load-balancer VIPs (MetalLB, announced by the
# control nodes from each pool's network) or NodePorts, by the port clients use: the forward
# hook judges a DNATed flow by its original destination port (`ct original proto-dst`), since
# the pod's port (the Service's targetPort) is in no catalogue. The pools, from snap-openstack
# provider/maas/steps.py and core/steps.py (CreateLoadBalancerIPPoolsStep): the default
# `<deployment>-internal-api` (internal, auto-assigned), `<deployment>-public-api` (public) and
# `<deployment>-storage-ippool` (storage), the last two only for the Services Sunbeam patches
# into them. Every Service is `<app>-lb`; traffic policy Cluster (any control node forwards).
LOAD_BALANCED: tuple[CatalogueEntry, ...] = (
    # internal. traefik-k8s src/charm.py (_service_ports): HTTP 80, HTTPS 443, for the
    # internal API endpoints; snap-openstack steps/openstack.py pins its VIP.
    CatalogueEntry(_KUBERNETES, _INT, "Traefik, internal API endpoints", ("tcp:80", "tcp:443")),
    # rabbitmq-k8s src/charm.py (_service_ports): AMQP 5672 and the management API 15672.
    CatalogueEntry(_KUBERNETES, _INT, "RabbitMQ", ("tcp:5672", "tcp:15672")),
    # sunbeam-terraform main.tf (`expose-external = loadbalancer`): the MySQL routers of
    # cinder-volume and manila-data; mysql-router-k8s src/charm.py: read-write 6446, read-only
    # 6447.
    CatalogueEntry(
        _KUBERNETES, _INT, "MySQL Router (cinder-volume, manila-data)", ("tcp:6446-6447",)
    ),
    # ovn-relay-k8s src/charm.py (southbound 6642): where OVN runs in Kubernetes (ovn-k8s,
    # snap-openstack core/ovn.py DEFAULT_PROVIDER on the 2025.1 line), chassis reach the relay.
    CatalogueEntry(_KUBERNETES, _INT, "OVN southbound relay", ("tcp:6642",)),
    # ironic-conductor-k8s src/charm.py: HTTP 8080 and TFTP 69 (the baremetal feature).
    CatalogueEntry(_KUBERNETES, _INT, "Ironic conductor (HTTP, TFTP)", ("tcp:8080", "udp:69")),
    # snap-openstack features/instance_recovery/consul.py: consul-k8s serf LAN on NodePorts
    # 30301 (management) and 30311 (data, when data is a space of its own) at the node's
    # Kubernetes address (internal), and its HTTP API 8500 when it is a VIP.
    CatalogueEntry(
        _KUBERNETES,
        _INT,
        "Consul serf (management and data NodePorts) and HTTP API",
        ("tcp:30301", "udp:30301", "tcp:30311", "udp:30311", "tcp:8500"),
    ),
    # public. snap-openstack steps/openstack.py (OpenStackPatchLoadBalancerServicesIPPoolStep):
    # traefik-public (Horizon, every public endpoint) and traefik-rgw (Ceph RGW), 80 and 443;
    # features/observability: COS's Traefik, the same ports.
    CatalogueEntry(
        _KUBERNETES, Network.PUBLIC, "Traefik, public endpoints", ("tcp:80", "tcp:443")
    ),
    # features/dns/feature.py (PatchBindLoadBalancerIPPoolStep); designate-bind-k8s: DNS on
    # 53. Its rndc port 953 shares the VIP but serves Designate, not the public: not opened.
    CatalogueEntry(_KUBERNETES, Network.PUBLIC, "DNS (Designate's bind)", ("tcp:53", "udp:53")),
    # storage. features/instance_recovery/feature.py patches consul-storage-lb into the storage
    # pool: serf LAN 30321 and HTTP API 8500.
    CatalogueEntry(
        _KUBERNETES,
        _STO,
        "Consul serf (storage) and HTTP API",
        ("tcp:30321", "udp:30321", "tcp:8500"),
    ),
)


def merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Ranges merged per protocol: overlapping and adjacent ones become one; sorted."""
    merged: list[PortRange] = []
    for current in sorted(ranges):
        last = merged[-1] if merged else None
        if last and last.protocol == current.protocol and current.first <= last.last + 1:
            if current.last > last.last:
                merged[-1] = replace(last, last=current.last)
        else:
            merged.append(current)
    return tuple(merged)


def _build_catalogue(
    services: Iterable[CatalogueEntry],
) -> dict[tuple[str, Network], tuple[PortRange, ...]]:
    collected: dict[tuple[str, Network], list[PortRange]] = {}
    for entry in services:
        for role in entry.roles:
            collected.setdefault((role, entry.network), []).extend(
                PortRange.parse(p) for p in entry.ports
            )
    return {key: merge_ranges(ranges) for key, ranges in collected.items()}


Catalogue = Mapping[tuple[str, Network], tuple[PortRange, ...]]
CATALOGUE: Catalogue = _build_catalogue(SERVICES)
LOAD_BALANCED_CATALOGUE: Catalogue = _build_catalogue(LOAD_BALANCED)


def catalogue_ports(
    roles: Iterable[str], network: Network, catalogue: Catalogue = CATALOGUE
) -> tuple[PortRange, ...]:
    """The built-in ports of some roles on one network; custom roles have none."""
    return merge_ranges(p for role in roles for p in catalogue.get((role, network), ()))


def exporter_ports(port: int, network: Network) -> tuple[PortRange, ...]:
    """This charm's metrics exporter: on the management network only (0: no exporter)."""
    if network is not Network.MANAGEMENT or not port:
        return ()
    return (PortRange("tcp", port, port),)


def declared_ports(
    declared: Mapping[str, Iterable[tuple[str, int, int]]],
) -> dict[Network, tuple[PortRange, ...]]:
    """Declarations keyed by network name (the interface library's shape) as PortRanges.

    Unknown network names and invalid ranges are skipped: the library has already reported
    them, and this never widens anything.
    """
    result: dict[Network, list[PortRange]] = {}
    for name, triples in declared.items():
        if name not in {n.value for n in NETWORKS}:
            continue
        for triple in triples:
            try:
                result.setdefault(Network(name), []).append(PortRange.of(triple))
            except ValueError:
                continue
    return {net: merge_ranges(ranges) for net, ranges in result.items()}


def registered_ports(
    *sources: Mapping[str, Iterable[str]],
) -> dict[Network, tuple[PortRange, ...]]:
    """Ports kept as text per network name (the machine registry's shape), merged and parsed.

    Every unit on the machine writes the registry: an unreadable entry is logged and skipped.
    """
    triples: dict[str, list[tuple[str, int, int]]] = {}
    for source in sources:
        for network, texts in source.items():
            for text in texts:
                try:
                    triples.setdefault(network, []).append(parse_port_range(text))
                except ValueError:
                    logger.warning("ignored unreadable registry port %r", text)
    return declared_ports(triples)


@dataclass(frozen=True)
class MachinePorts:
    """The ports a machine accepts per allowed network: on its own addresses, and forwarded.

    An allowed network with nothing to accept maps to an empty tuple; a denied one is absent.
    """

    host: Mapping[Network, tuple[PortRange, ...]]
    forwarded: Mapping[Network, tuple[PortRange, ...]]


def machine_ports(
    plan: MachinePlan,
    declared: Mapping[Network, Iterable[PortRange]] | None = None,
) -> MachinePorts:
    """The ports this machine accepts on each network it may use.

    For every allowed network (and only those): the catalogues' entries of the machine's roles
    (host services and this charm's exporter; load-balanced Services), each plus `extra-ports`
    and what principals declared, merged.
    """
    declared = declared or {}
    config = plan.config
    host: dict[Network, tuple[PortRange, ...]] = {}
    forwarded: dict[Network, tuple[PortRange, ...]] = {}
    for net in NETWORKS:
        if not plan.networks[net].access:
            continue
        given = [
            *(PortRange.of(p) for p in config.extra_ports.get(net, ())),
            *declared.get(net, ()),
        ]
        host[net] = merge_ranges(
            [
                *catalogue_ports(plan.roles, net),
                *exporter_ports(config.metrics_port, net),
                *given,
            ]
        )
        forwarded[net] = merge_ranges(
            [*catalogue_ports(plan.roles, net, LOAD_BALANCED_CATALOGUE), *given]
        )
    return MachinePorts(host, forwarded)


def ignored_ports(
    plan: MachinePlan,
    declared: Mapping[Network, Iterable[PortRange]] | None = None,
) -> list[str]:
    """Readable notes on ports given for networks this machine may not use (so not opened)."""
    extra = {
        net: [PortRange.of(p) for p in triples] for net, triples in plan.config.extra_ports.items()
    }
    return denied_ports(plan, extra, "extra-ports") + denied_ports(
        plan, declared or {}, "declared"
    )


def denied_ports(
    plan: MachinePlan, by_network: Mapping[Network, Iterable[PortRange]], source: str
) -> list[str]:
    """Notes on the ports one source gives for networks this machine may not use."""
    notes: list[str] = []
    for net in NETWORKS:
        ranges = merge_ranges(by_network.get(net, ()))
        if ranges and not plan.networks[net].access:
            listed = ", ".join(str(r) for r in ranges)
            notes.append(
                f"{source} ports on '{net}' are not opened: this machine may not use"
                f" '{net}' ({listed})"
            )
    return notes


def domain_ports(
    plan: MachinePlan, ports: Mapping[Network, Iterable[PortRange]]
) -> dict[tuple[Network, ...], tuple[PortRange, ...]]:
    """The ports to accept in each allowed domain (networks sharing subnets filter as one)."""
    return {
        domain.networks: merge_ranges(p for net in domain.networks for p in ports.get(net, ()))
        for domain in plan.allowed_domains
    }


def by_protocol(ranges: Iterable[PortRange]) -> dict[Protocol, tuple[PortRange, ...]]:
    """Merged ranges split per protocol (one nftables set each), both keys always present."""
    merged = merge_ranges(ranges)
    return {proto: tuple(r for r in merged if r.protocol == proto) for proto in PROTOCOLS}
