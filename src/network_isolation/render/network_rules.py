"""The rules of each network, whichever chain they are laid out in.

What the interfaces of allowed networks accept and drop (one section per group of interfaces
that carry the same networks), and the drops that keep a denied network out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..canary import INVALID_COUNTER, CounterKind
from ..model import MISDIRECTED, NETWORKS, Network, label_of
from ..planner import MachinePlan
from ..ports import MachinePorts, PortRange, machine_ports, merge_ranges
from .common import network_names
from .nft import FirewallBuilder, NftChain, NftRule, NftSection, Side
from .subnets import exclude

IPV6_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")
# Ports per network, one kind of `ports.MachinePorts`.
PortMap = Mapping[Network, tuple[PortRange, ...]]
# The hooks whose chains judge a packet by its input interface.
Judged = Literal["in", "fwd"]


@dataclass(frozen=True)
class InterfaceGroup:
    """Interfaces carrying the same allowed domains: they are filtered alike."""

    label: str
    networks: tuple[Network, ...]
    interfaces: tuple[str, ...]
    domains: tuple[int, ...]  # indexes into plan.domains


def interface_groups(plan: MachinePlan, allowed: bool = True) -> tuple[InterfaceGroup, ...]:
    """Interfaces grouped by the domains they carry, filtered alike.

    Allowed groups: the interfaces of allowed domains, by the allowed domains they carry
    (usually one each). Denied groups (`allowed` False): the interfaces that carry only
    denied domains, by those domains.
    """
    denied_only = set(plan.denied_interfaces)
    carried: dict[str, list[int]] = {}
    for index, domain in enumerate(plan.domains):
        if domain.allowed == allowed:
            for interface in domain.interfaces:
                if allowed or interface in denied_only:
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


def chain_name(hook: Judged, group: InterfaceGroup) -> str:
    """The chain of a group's interfaces in a hook: `net_<networks>` (input), `fwd_<...>`."""
    return f"{'fwd' if hook == 'fwd' else 'net'}_{group.label}"


def counter_kinds(plan: MachinePlan) -> dict[str, CounterKind]:
    """Every drop counter a plan's ruleset may have, and whether the role table expects drops.

    Expected: a denied domain's, in every direction (from, to, through or on a network this
    machine may not use), and invalid packets. Unexpected: the groups of allowed interfaces',
    in and forwarded, and packets addressed to one network arriving on another's interface: in
    a healthy cloud neither exists, so a canary that counts them halts (see `canary`).
    """
    kinds = {INVALID_COUNTER: CounterKind("", expected=True)}
    for direction in ("in", "fwd"):
        kinds[misdirected_counter(direction)[0]] = CounterKind("", expected=False)
    for group in interface_groups(plan):
        for direction in ("in", "fwd"):
            counter, _ = drop_counter(direction, group.networks)
            kinds[counter] = CounterKind(network_names(group.networks), expected=False)
    for domain in plan.denied_domains:
        for direction in ("in", "out", "fwd"):
            counter, _ = drop_counter(direction, domain.networks)
            kinds[counter] = CounterKind(network_names(domain.networks), expected=True)
    return kinds


def strict_ports(plan: MachinePlan, ports: MachinePorts | None = None) -> MachinePorts | None:
    """The ports the firewall accepts per allowed network, or None without `strict-ports`.

    `ports` is what the caller computed (`ports.machine_ports(plan, declared)`); without it,
    the catalogues and `extra-ports` alone. Networks the machine may not use are left out.
    """
    if not plan.config.strict_ports:
        return None
    given = machine_ports(plan) if ports is None else ports
    allowed = [net for net in NETWORKS if plan.networks[net].access]
    return MachinePorts(
        host={net: merge_ranges(given.host.get(net, ())) for net in allowed},
        forwarded={net: merge_ranges(given.forwarded.get(net, ())) for net in allowed},
    )


def group_chain(
    plan: MachinePlan,
    build: FirewallBuilder,
    group: InterfaceGroup,
    ports: PortMap | None,
    hook: Judged = "in",
    cuts: NftRule | None = None,
) -> NftChain:
    """The chain of an allowed group's interfaces in a hook: what may arrive on them.

    The hook's interface map jumps here. First what is addressed to another network is
    dropped (`misdirected_drops`), and in the forward hook `cuts` drops what leaves towards a
    denied network. Then own subnets are accepted; sources of no cloud network on public,
    client-cidrs on management. Anything else (other cloud networks, denied ones included)
    returns to the hook's chain, which drops it under its own counter (`drop_in_*`,
    `drop_fwd_*`). With strict ports (`ports` given), every accept also needs a tcp or udp
    port of the group's sets: for input (`net_*`) the destination port; for forwarded flows
    (`fwd_*`) the port the client used before any DNAT, `ct original proto-dst`.
    """
    own = [s for i in group.domains for s in plan.domains[i].subnets]
    names = network_names(group.networks)
    public = Network.PUBLIC in group.networks
    strict = ports is not None
    forwarded = strict and hook == "fwd"
    services: list[str | None] = [None]
    if ports is not None:
        listed = [p for n in group.networks for p in ports.get(n, ())]
        kind = "fwd_ports" if forwarded else "ports"
        services = [
            f"meta l4proto {protocol} ct original proto-dst @{name}"
            if forwarded
            else f"{protocol} dport @{name}"
            for protocol, name in build.port_sets(f"{kind}_{group.label}", listed)
        ]
    accept = ": accept"
    if strict:
        accept = ", listed original ports: accept" if forwarded else ", listed ports: accept"
    rules: list[NftRule] = []
    parts: list[str] = []
    if not (public and strict):  # strict public: the any-source accepts below cover it
        # IPv6 link-local sources (DHCPv6 servers, routers) are on this very link: never
        # another network's traffic, since no router forwards them.
        rules += [
            build.accept("in", addresses=a, extra=service)
            for a in build.address_sets(f"net_{group.label}", [*own, IPV6_LINK_LOCAL])
            for service in services
        ]
        parts.append(f"own subnets and IPv6 link-local{accept}")
    if public:
        # Only the any-source accepts below need other cloud networks, denied ones included,
        # kept out first; elsewhere nothing but own subnets and clients is accepted.
        others = [
            s for i, d in enumerate(plan.domains) if i not in group.domains for s in d.subnets
        ]
        rules += [
            build.give_back(a)
            for a in build.address_sets(f"cross_{group.label}", exclude(others, own))
        ]
        rules += [build.accept("in", extra=s) for s in services]
        parts += ["other cloud subnets: drop", f"any other source{accept} (public API users)"]
    elif Network.MANAGEMENT in group.networks:
        cloud = [s for d in plan.domains for s in d.subnets]
        rules += [
            build.accept("in", addresses=a, extra=service)
            for a in build.address_sets("clients", exclude(plan.config.client_cidrs, cloud))
            for service in services
        ]
        parts.append(f"client-cidrs{accept}")
    if strict or not public:
        parts.append("any other packet: drop" if strict else "any other source: drop")
    sections = list(_misdirected_sections(plan, build, group, hook))
    if cuts is not None:
        sections.append(NftSection(FORWARD_CUTS_COMMENT, (cuts,)))
    interfaces = ", ".join(group.interfaces)
    sections.append(NftSection(f"on {names} ({interfaces}): {'; '.join(parts)}", tuple(rules)))
    return NftChain(
        chain_name(hook, group),
        None,
        tuple(sections),
        footer="what returns from here is dropped by the hook's chain",
    )


# The forward hook's cuts towards denied networks, in a comment.
FORWARD_CUTS_COMMENT = "out by a cloud network's interface, to a denied network: drop"


def misdirected_chain(
    plan: MachinePlan, build: FirewallBuilder, group: InterfaceGroup, hook: Judged
) -> NftChain | None:
    """The chain of a denied group's interfaces: only the misdirected packets' drops.

    Everything else returns, and the hook's chain drops it later under the denied network's
    counter (after ICMP, as on every interface). None when nothing can be misdirected here.
    """
    sections = _misdirected_sections(plan, build, group, hook)
    if not sections:
        return None
    return NftChain(
        chain_name(hook, group),
        None,
        sections,
        footer="what returns from here is judged by the hook's chain",
    )


def _misdirected_sections(
    plan: MachinePlan, build: FirewallBuilder, group: InterfaceGroup, hook: Judged
) -> tuple[NftSection, ...]:
    rules = misdirected_drops(plan, build, group, hook)
    if not rules:
        return ()
    return (NftSection(MISDIRECTED_WORDS[hook], tuple(rules)),)


MISDIRECTED_WORDS: dict[Judged, str] = {
    "in": "addressed to another network's subnets: drop",
    "fwd": "addressed (before any DNAT) to another network's subnets: drop",
}


def dispatch(
    build: FirewallBuilder,
    groups: Iterable[tuple[InterfaceGroup, NftChain]],
    name: str = "by_interface",
) -> str | None:
    """The map from an allowed interface to its group's chain (one per set of chains)."""
    return build.interface_map(
        name, ((i, f"jump {chain.name}") for group, chain in groups for i in group.interfaces)
    )


def can_return(chain: NftChain) -> bool:
    """Whether a packet can come back from a group's chain (it ends in no plain accept)."""
    rules = chain.rules
    return any(r.verdict == "return" for r in rules) or not rules or rules[-1].text != "accept"


def interface_drops(
    plan: MachinePlan,
    build: FirewallBuilder,
    groups: Iterable[tuple[InterfaceGroup, NftChain]],
    direction: Judged,
) -> str | None:
    """The map that drops what a group's chain returned, and all on a denied interface.

    Each interface's drop is counted per network and direction (`drop_fwd_internal`).
    """
    verdicts: list[tuple[str, str]] = []
    every = [(g.networks, g.interfaces) for g, chain in groups if can_return(chain)]
    denied = set(plan.denied_interfaces)
    every += [
        (d.networks, tuple(i for i in d.interfaces if i in denied)) for d in plan.denied_domains
    ]
    for networks, interfaces in every:
        if not interfaces:
            continue
        target = build.drop_target(*drop_counter(direction, networks))
        verdicts += [(interface, target) for interface in interfaces]
    return build.interface_map(f"drop_{direction}", verdicts)


# How log prefixes and comments spell each direction.
DIRECTION_WORDS = {"in": "in", "out": "out", "fwd": "forward"}


def drop_counter(direction: str, networks: Iterable[Network]) -> tuple[str, str]:
    """The counter of drops in a direction for networks, and how the audit log names them."""
    networks = tuple(networks)
    what = f"{DIRECTION_WORDS[direction]} {network_names(networks)}"
    return f"drop_{direction}_{label_of(networks)}", what


def denied_subnet_drops(
    plan: MachinePlan,
    build: FirewallBuilder,
    side: Side,
    direction: Literal["in", "out", "fwd"],
    counted: tuple[str, str] | None = None,
) -> list[NftRule]:
    """Drops of denied domains' subnets, as sources (`side` in) or destinations (out).

    Each domain's drops are counted under its own networks, or all under `counted`.
    """
    allowed_subnets = [s for d in plan.allowed_domains for s in d.subnets]
    rules: list[NftRule] = []
    for domain in plan.denied_domains:
        label = label_of(domain.networks)
        counter, what = counted or drop_counter(direction, domain.networks)
        for a in build.address_sets(f"net_{label}", exclude(domain.subnets, allowed_subnets)):
            rules.append(build.drop(counter, what, side, addresses=a))
    return rules


def denied_interface_drops(
    plan: MachinePlan, build: FirewallBuilder, direction: Literal["out", "fwd"]
) -> list[NftRule]:
    """Drops of what leaves by a denied domain's own interfaces."""
    rules: list[NftRule] = []
    denied_interfaces = set(plan.denied_interfaces)
    for domain in plan.denied_domains:
        label = label_of(domain.networks)
        counter, what = drop_counter(direction, domain.networks)
        nics = build.interface_set(
            f"if_{label}", (i for i in domain.interfaces if i in denied_interfaces)
        )
        if nics:
            rules.append(build.drop(counter, what, "out", interfaces=nics))
    return rules


def misdirected_counter(direction: Judged) -> tuple[str, str]:
    """The counter of packets addressed to one network but arriving on another's interface."""
    return f"drop_{direction}_{MISDIRECTED}", f"{DIRECTION_WORDS[direction]} {MISDIRECTED}"


def misdirected_drops(
    plan: MachinePlan, build: FirewallBuilder, group: InterfaceGroup, direction: Judged
) -> list[NftRule]:
    """Drops of what arrives on a group's interfaces addressed to another network's subnets.

    Linux accepts a packet for any local address on any interface (and routes a forwarded one
    whatever its way in): without this, a host on the public segment reaches the management
    address through the public NIC. One lookup per address family, of the destination in the
    subnets of every allowed domain the group's interfaces do not carry; in input, of denied
    domains too, whose subnets are unreachable from anywhere. Forwarded packets are judged by
    the address the client used, before any DNAT (`ct original`), so a VIP of one network is
    reachable only from its own. The group's chain holds these drops, so an accepted packet
    meets them after the one interface lookup it needs anyway; interfaces of no cloud network
    (pods, instances, loopback) have no chain and are not judged here.
    """
    counter, what = misdirected_counter(direction)
    own = [s for i in group.domains for s in plan.domains[i].subnets]
    others = [
        s
        for i, domain in enumerate(plan.domains)
        if i not in group.domains and (domain.allowed or direction == "in")
        for s in domain.subnets
    ]
    found = build.address_sets(f"misdirected_{direction}_{group.label}", exclude(others, own))
    if direction == "in":
        return [build.drop(counter, what, "out", addresses=a) for a in found]
    return [
        build.drop(counter, what, extra=f"ct original {family} daddr @{name}")
        for family, name in found
    ]
