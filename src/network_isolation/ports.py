"""Port-level policy for `strict-ports`: which ports a machine accepts inside each network.

Three sources add up, per allowed network of the machine:

- the built-in catalogue, keyed by (role, network): what the services of a role listen on there;
- the `extra-ports` option;
- what the principal charms on the machine declare over the `network-isolation` interface.

The result is merged per protocol into disjoint, non-adjacent ranges, so it can be loaded into
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
_PUB = Network.PUBLIC
_DATA = Network.DATA
_STO = Network.STORAGE
_STOC = Network.STORAGE_CLUSTER
_SUNBEAM_NODES = ("juju-controller", "control", "compute", "storage")

# The built-in services, by network. Sources:
# - Juju controller configuration: api-port 17070, SSH server 17022, mongo 37017, dqlite 17666;
# - Canonical OpenStack (Sunbeam): clusterd 7000, and what snap-openstack binds where
#   (openstack-hypervisor `data`/`migration` -> data, k8s `cluster` -> internal, microovn
#   `ovsdb` -> internal and `cluster` -> management, microceph `cluster` -> storage-cluster and
#   `public` -> storage); Traefik serves the APIs on VIPs on ports 80/443;
# - OpenStack install guide, "Firewalls and default ports" (RabbitMQ, Nova metadata, libvirt
#   and QEMU live migration);
# - OVN/MicroOVN hardening docs (NB 6641, SB 6642, raft 6643/6644, Geneve 6081, cluster 6686);
# - Ceph "Network configuration reference" and msgr2 docs (MON 3300/6789, OSD/MGR/MDS
#   6800-7300 on the public and the cluster side, RGW, mgr prometheus 9283), MicroCeph 7443;
# - Canonical Kubernetes "Ports and services" (API 6443, 6400, 9000, kubelet 10250, Cilium
#   health 4240, VXLAN tunnel 8472).
SERVICES: tuple[CatalogueEntry, ...] = (
    # management
    CatalogueEntry(
        ("juju-controller",),
        _MGMT,
        "Juju controller API and SSH server",
        ("tcp:17070", "tcp:17022"),
    ),
    CatalogueEntry(
        ("juju-controller",),
        _MGMT,
        "Juju controller HA (mongo, dqlite)",
        ("tcp:37017", "tcp:17666"),
    ),
    CatalogueEntry(_SUNBEAM_NODES, _MGMT, "Sunbeam clusterd", ("tcp:7000",)),
    # A machine that takes its address by DHCP gets the server's offers on udp/68; replies to
    # a broadcast are not matched by connection tracking.
    CatalogueEntry(_SUNBEAM_NODES, _MGMT, "DHCP client", ("udp:68",)),
    CatalogueEntry(("control",), _MGMT, "Kubernetes API", ("tcp:6443",)),
    CatalogueEntry(("control", "compute"), _MGMT, "MicroOVN cluster API", ("tcp:6686",)),
    CatalogueEntry(("storage",), _MGMT, "MicroCeph cluster API", ("tcp:7443",)),
    # internal
    CatalogueEntry(("control",), _INT, "Traefik (internal VIP)", ("tcp:80", "tcp:443")),
    CatalogueEntry(("control",), _INT, "RabbitMQ", ("tcp:5671", "tcp:5672")),
    CatalogueEntry(
        ("control",), _INT, "OVN northbound, southbound, relay and raft", ("tcp:6641-6644",)
    ),
    # Sunbeam binds the Kubernetes `cluster` endpoint to internal: members meet there.
    CatalogueEntry(
        ("control",),
        _INT,
        "Kubernetes cluster (API, datastore, kubelet, CNI)",
        ("tcp:6443", "tcp:6400", "tcp:9000", "tcp:10250", "tcp:4240", "udp:8472"),
    ),
    CatalogueEntry(("compute",), _INT, "Nova metadata", ("tcp:8775",)),
    # public
    CatalogueEntry(("control",), _PUB, "Traefik (public VIP)", ("tcp:80", "tcp:443")),
    # data: every OVN chassis. Control is not on data in the default table, but Sunbeam's own
    # table puts network agents there; an operator who adds data to control gets Geneve too.
    CatalogueEntry(("compute", "control"), _DATA, "Geneve tunnels (OVN)", ("udp:6081",)),
    CatalogueEntry(
        ("compute",),
        _DATA,
        "live migration (libvirt, QEMU, file transfer)",
        ("tcp:16509", "tcp:16514", "tcp:49152-49215", "tcp:10099"),
    ),
    # storage
    CatalogueEntry(("storage",), _STO, "Ceph MON", ("tcp:3300", "tcp:6789")),
    CatalogueEntry(("storage",), _STO, "Ceph OSD, MGR, MDS (public side)", ("tcp:6800-7300",)),
    CatalogueEntry(("storage",), _STO, "Ceph RADOS Gateway", ("tcp:80", "tcp:443", "tcp:7480")),
    CatalogueEntry(("storage",), _STO, "Ceph MGR Prometheus exporter", ("tcp:9283",)),
    # storage-cluster
    CatalogueEntry(("storage",), _STOC, "Ceph OSD replication and heartbeats", ("tcp:6800-7300",)),
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


CATALOGUE: Mapping[tuple[str, Network], tuple[PortRange, ...]] = _build_catalogue(SERVICES)


def catalogue_ports(roles: Iterable[str], network: Network) -> tuple[PortRange, ...]:
    """The built-in ports of some roles on one network; custom roles have none."""
    return merge_ranges(p for role in roles for p in CATALOGUE.get((role, network), ()))


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


def machine_ports(
    plan: MachinePlan,
    declared: Mapping[Network, Iterable[PortRange]] | None = None,
) -> dict[Network, tuple[PortRange, ...]]:
    """The ports this machine accepts on each network it may use.

    For every allowed network (and only those): the catalogue entries of the machine's roles,
    plus `extra-ports`, plus what principals declared, merged. An allowed network with nothing
    to accept maps to an empty tuple; a denied network is absent.
    """
    declared = declared or {}
    config = plan.config
    result: dict[Network, tuple[PortRange, ...]] = {}
    for net in NETWORKS:
        if not plan.networks[net].access:
            continue
        result[net] = merge_ranges(
            [
                *catalogue_ports(plan.roles, net),
                *(PortRange.of(p) for p in config.extra_ports.get(net, ())),
                *declared.get(net, ()),
            ]
        )
    return result


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
