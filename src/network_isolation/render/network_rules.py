"""The rules of each network, whichever chain they are laid out in.

What the interfaces of allowed networks accept and drop (one section per group of interfaces
that carry the same networks), and the drops that keep a denied network out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..model import NETWORKS, Network
from ..planner import MachinePlan
from ..ports import PortRange, machine_ports, merge_ranges
from .common import network_names
from .nft import FirewallBuilder, NftRule, NftSection, label_of
from .subnets import exclude

IPV6_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")

# Ports per network, as `ports.machine_ports` gives them.
PortMap = Mapping[Network, Iterable[PortRange]]


@dataclass(frozen=True)
class InterfaceGroup:
    """Interfaces carrying the same allowed domains: they are filtered alike."""

    label: str
    networks: tuple[Network, ...]
    interfaces: tuple[str, ...]
    domains: tuple[int, ...]  # indexes into plan.domains


def interface_groups(plan: MachinePlan) -> tuple[InterfaceGroup, ...]:
    """Allowed interfaces grouped by the allowed domains they carry (usually one each)."""
    carried: dict[str, list[int]] = {}
    for index, domain in enumerate(plan.domains):
        if domain.allowed:
            for interface in domain.interfaces:
                carried.setdefault(interface, []).append(index)
    by_domains: dict[tuple[int, ...], list[str]] = {}
    for interface in sorted(carried):
        by_domains.setdefault(tuple(carried[interface]), []).append(interface)
    groups = []
    for indexes in sorted(by_domains):
        networks = tuple(n for i in indexes for n in plan.domains[i].networks)
        groups.append(
            InterfaceGroup(
                label=label_of(networks),
                networks=networks,
                interfaces=tuple(by_domains[indexes]),
                domains=indexes,
            )
        )
    return tuple(groups)


def strict_ports(
    plan: MachinePlan, ports: PortMap | None = None
) -> dict[Network, tuple[PortRange, ...]] | None:
    """The ports the firewall accepts per allowed network, or None without `strict-ports`.

    `ports` is what the caller computed (`ports.machine_ports(plan, declared)`); without it,
    the catalogue and `extra-ports` alone. Networks the machine may not use are left out.
    """
    if not plan.config.strict_ports:
        return None
    given = machine_ports(plan) if ports is None else ports
    return {net: merge_ranges(given.get(net, ())) for net in NETWORKS if plan.networks[net].access}


def group_section(
    plan: MachinePlan,
    build: FirewallBuilder,
    group: InterfaceGroup,
    ports: Mapping[Network, tuple[PortRange, ...]] | None,
) -> NftSection:
    """Rule 6 for interfaces of allowed domains: own subnets in, other cloud subnets out.

    With strict ports (`ports` given), every accept of the group also needs a tcp or udp port
    of the group's sets, and the public group drops what its ports do not accept.
    """
    nics = build.interface_set(f"if_{group.label}", group.interfaces)
    own = [s for i in group.domains for s in plan.domains[i].subnets]
    others = [
        s
        for i, d in enumerate(plan.domains)
        if d.allowed and i not in group.domains
        for s in d.subnets
    ]
    names = network_names(group.networks)
    counter, what = f"drop_in_{group.label}", f"in {names}"
    public = Network.PUBLIC in group.networks
    strict = ports is not None
    services: list[str | None] = [None]
    if ports is not None:
        listed = [p for n in group.networks for p in ports.get(n, ())]
        services = [
            f"{protocol} dport @{name}"
            for protocol, name in build.port_sets(f"ports_{group.label}", listed)
        ]
    accept = ", listed ports: accept" if strict else ": accept"
    rules: list[NftRule] = []
    parts: list[str] = []
    if not (public and strict):  # strict public: the any-source accepts below cover it
        # IPv6 link-local sources (DHCPv6 servers, routers) are on this very link: never
        # another network's traffic, since no router forwards them.
        rules += [
            build.accept("in", interfaces=nics, addresses=a, extra=service)
            for a in build.address_sets(f"net_{group.label}", [*own, IPV6_LINK_LOCAL])
            for service in services
        ]
        parts.append(f"own subnets and IPv6 link-local{accept}")
    rules += [
        build.drop("in", counter, what, interfaces=nics, addresses=a)
        for a in build.address_sets(f"cross_{group.label}", exclude(others, own))
    ]
    parts.append("other cloud subnets: drop")
    if public:
        rules += [build.accept("in", interfaces=nics, extra=s) for s in services if s]
        parts.append(f"any other source{accept} (public API users)")
    elif Network.MANAGEMENT in group.networks:
        cloud = [s for d in plan.domains for s in d.subnets]
        rules += [
            build.accept("in", interfaces=nics, addresses=a, extra=service)
            for a in build.address_sets("clients", exclude(plan.config.client_cidrs, cloud))
            for service in services
        ]
        parts.append(f"client-cidrs{accept}")
    if strict or not public:
        rules.append(build.drop("in", counter, what, interfaces=nics))
        parts.append("any other packet: drop" if strict else "any other source: drop")
    return NftSection(
        f"6. on {names} ({', '.join(group.interfaces)}): {'; '.join(parts)}",
        tuple(rules),
    )


def denied_drops(
    plan: MachinePlan, build: FirewallBuilder, direction: Literal["in", "out"]
) -> tuple[list[NftRule], list[NftRule]]:
    """Drops for denied domains in one direction: by their subnets, and by their own NICs."""
    allowed_subnets = [s for d in plan.allowed_domains for s in d.subnets]
    by_subnet: list[NftRule] = []
    by_interface: list[NftRule] = []
    denied_interfaces = set(plan.denied_interfaces)
    for domain in plan.denied_domains:
        label = label_of(domain.networks)
        counter, what = (
            f"drop_{direction}_{label}",
            f"{direction} {network_names(domain.networks)}",
        )
        for a in build.address_sets(f"net_{label}", exclude(domain.subnets, allowed_subnets)):
            by_subnet.append(build.drop(direction, counter, what, addresses=a))
        nics = build.interface_set(
            f"if_{label}", (i for i in domain.interfaces if i in denied_interfaces)
        )
        if nics:
            by_interface.append(build.drop(direction, counter, what, interfaces=nics))
    return by_subnet, by_interface
