"""Render a machine's plan into the two artefacts that enforce it on the host.

- An nftables ruleset (`nft -f`): one table of our own, `inet network_isolation`, replaced
  atomically as a whole; no other table is touched.
- A netplan file (`/etc/netplan/90-network-isolation.yaml`): per allowed network and interface,
  a routing table and policy rules so replies leave by the interface the request came in on.

All decisions are taken here, in pure Python, into small "views" (sets, rules, counters,
routes); the jinja2 templates only lay them out. The templates are the charm's (or the
repository's) top-level `templates/` directory, or, in an installed wheel, the copy packaged as
`network_isolation/templates`. Nothing here touches the host.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import jinja2
from pydantic import BaseModel, ConfigDict

from .config import IPNetwork
from .model import NETWORKS, Network
from .planner import Domain, InterfaceKind, IPAddress, IPInterface, MachinePlan
from .ports import PROTOCOLS, PortRange, machine_ports, merge_ranges

TABLE_FAMILY = "inet"
TABLE_NAME = "network_isolation"
# MAAS (cloud-init) writes 50-cloud-init.yaml; netplan reads files in lexical order of their
# names and appends sequences, so ours adds routes and rules after MAAS's definitions.
NETPLAN_FILE_NAME = "90-network-isolation.yaml"

# Where the templates are: the charm's (or repository's) top-level `templates/` first, then the
# copy an installed wheel carries inside the package (hatch `force-include`).
TEMPLATE_DIRS: tuple[Path, ...] = (
    Path(__file__).resolve().parents[2] / "templates",
    Path(__file__).resolve().parent / "templates",
)
NFTABLES_TEMPLATE = "nftables.conf.j2"
NETPLAN_TEMPLATE = "netplan.yaml.j2"

# Always accepted from the management subnets and client-cidrs, before any drop.
FAILSAFE_TCP_PORT = 22
IPV6_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")

# Routing table of a domain: 100 + the index, in the fixed network order (data, internal,
# management, public, storage, storage-cluster), of the domain's first network. So `data` is
# 100, `management` 102 and `storage-cluster` 105, on every machine of the cloud.
# A domain whose addresses are on several interfaces gets a table per interface (in the order
# of their names): the first has the domain's table, the k-th (from 0) has it + 6 k, so
# storage on two NICs uses 104 and 110. At most ROUTED_INTERFACES_MAX interfaces per domain
# keep every table below the kernel's reserved ones (253-255).
ROUTING_TABLE_BASE = 100
ROUTED_INTERFACES_MAX = 16
# Rule priorities: each domain has a block of its own, in the same order as its table
# (data 1000-4999, internal 5000-8999, ... storage-cluster 21000-24999), all ahead of the
# kernel's `main` (32766) and `default` (32767) rules. A domain's tables share its block.
RULE_PRIORITY_BASE = 1000
RULE_PRIORITY_BLOCK = 4000
# Tables the kernel reserves: unspec, default, main, local.
RESERVED_TABLES = frozenset({0, 253, 254, 255})

# Audit mode logs at most this often per counter.
AUDIT_LOG_RATE = "10/minute burst 5 packets"
LOG_PREFIX = "network-isolation audit"
LOG_PREFIX_MAX = 127

# Essential ICMP (RFC 4890 for ICMPv6): errors that path-MTU discovery and IPv6 need,
# neighbour discovery, router advertisements, multicast listener discovery and echo.
ICMP_TYPES = (
    "destination-unreachable",
    "time-exceeded",
    "parameter-problem",
    "echo-request",
    "echo-reply",
)
ICMPV6_TYPES = (
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    "echo-request",
    "echo-reply",
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "mld-listener-query",
    "mld-listener-report",
    "mld-listener-done",
    "mld2-listener-report",
)

# Netplan sections in the order they are written.
NETPLAN_KINDS: tuple[InterfaceKind, ...] = ("ethernets", "bonds", "bridges", "vlans")

# What nft and the kernel accept as an interface name, without quoting trouble.
INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]{1,15}$")

Enforcement = Literal["enforce", "audit", "off"]
SetType = Literal["ipv4_addr", "ipv6_addr", "ifname", "inet_service"]
Verdict = Literal["accept", "drop", "log"]
# Ports per network, as `ports.machine_ports` gives them.
PortMap = Mapping[Network, Iterable[PortRange]]


class RenderError(ValueError):
    """A plan that cannot be turned into valid, meaningful artefacts."""


class Artefacts(BaseModel):
    """What enforces a plan on its host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nftables: str
    """Full content of a file for `nft -f`: replaces our table (or removes it)."""
    netplan: str | None
    """Content of NETPLAN_FILE_NAME, or None when there is nothing to route."""


# ---------------------------------------------------------------------------------------------
# The firewall view


@dataclass(frozen=True)
class NftSet:
    """A named set: subnets (interval set) or interface names."""

    name: str
    type: SetType
    elements: tuple[str, ...]

    @property
    def interval(self) -> bool:
        """Subnets and port ranges need `flags interval`; interface names are plain values."""
        return self.type != "ifname"

    @property
    def literals(self) -> tuple[str, ...]:
        """The elements as nft writes them (interface names are quoted)."""
        if self.type == "ifname":
            return tuple(f'"{e}"' for e in self.elements)
        return self.elements

    def networks(self) -> tuple[IPNetwork, ...]:
        """The elements of an address set as networks."""
        return tuple(ipaddress.ip_network(e) for e in self.elements)

    def ports(self) -> tuple[tuple[int, int], ...]:
        """The elements of a port set as inclusive (first, last) ranges."""
        ranges = []
        for element in self.elements:
            first, _, last = element.partition("-")
            ranges.append((int(first), int(last or first)))
        return tuple(ranges)


@dataclass(frozen=True)
class NftRule:
    """One rule: what it matches, structured for checks, and its nft text."""

    verdict: Verdict
    interfaces: str | None = None  # name of an ifname set (iifname/oifname @set)
    addresses: str | None = None  # name of an address set (saddr/daddr @set)
    extra: str | None = None  # any other match: ct state, icmp types, loopback, port
    counter: str | None = None  # named counter; every drop has one
    text: str = ""


@dataclass(frozen=True)
class NftSection:
    """Rules under one comment, in order."""

    comment: str
    rules: tuple[NftRule, ...]


@dataclass(frozen=True)
class NftChain:
    """A chain: a base chain (hook, policy accept) or an audit chain (no hook)."""

    name: str
    hook: Literal["input", "output"] | None
    sections: tuple[NftSection, ...]
    footer: str | None = None

    @property
    def rules(self) -> tuple[NftRule, ...]:
        """Every rule of the chain, in order."""
        return tuple(r for s in self.sections for r in s.rules)


@dataclass(frozen=True)
class InterfaceGroup:
    """Interfaces carrying the same allowed domains: they are filtered alike."""

    label: str
    networks: tuple[Network, ...]
    interfaces: tuple[str, ...]
    domains: tuple[int, ...]  # indexes into plan.domains


@dataclass(frozen=True)
class FirewallView:
    """Everything the nftables template lays out."""

    family: str
    table: str
    header: tuple[str, ...]
    enforcement: Enforcement
    counters: tuple[str, ...]
    sets: tuple[NftSet, ...]
    chains: tuple[NftChain, ...]
    groups: tuple[InterfaceGroup, ...]

    def set(self, name: str) -> NftSet:
        """A set by name."""
        return next(s for s in self.sets if s.name == name)

    def chain(self, name: str) -> NftChain | None:
        """A chain by name, if there is one."""
        return next((c for c in self.chains if c.name == name), None)

    @property
    def rule_count(self) -> int:
        """The number of rules of the ruleset (what must not grow with the subnets)."""
        return sum(len(c.rules) for c in self.chains)


def _split(nets: Iterable[IPNetwork]) -> tuple[list[IPNetwork], list[IPNetwork]]:
    v4: list[IPNetwork] = [n for n in nets if n.version == 4]
    v6: list[IPNetwork] = [n for n in nets if n.version == 6]
    return v4, v6


def _key(net: IPNetwork) -> tuple[int, int]:
    return net.version, int(net.network_address)


def within(inner: IPNetwork, outer: IPNetwork) -> bool:
    """Whether `inner` lies in `outer` (False across address families)."""
    return (
        inner.version == outer.version
        and int(outer.network_address) <= int(inner.network_address)
        and int(inner.broadcast_address) <= int(outer.broadcast_address)
    )


def overlap(first: IPNetwork, second: IPNetwork) -> bool:
    """Whether two subnets share an address (False across address families)."""
    return within(first, second) or within(second, first)


def normalize(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Subnets sorted (IPv4 first), without those inside another: nft refuses overlaps.

    Adjacent subnets are kept apart, so the sets show the subnets the cloud defines.
    """
    ordered = sorted(set(nets), key=lambda n: (*_key(n), n.prefixlen))
    kept: list[IPNetwork] = []
    for net in ordered:
        if kept and within(net, kept[-1]):
            continue
        kept.append(net)
    return tuple(kept)


def _minus(net: IPNetwork, gone: IPNetwork) -> list[IPNetwork]:
    if not overlap(net, gone):
        return [net]
    if within(net, gone):
        return []
    if isinstance(net, ipaddress.IPv4Network) and isinstance(gone, ipaddress.IPv4Network):
        return list(net.address_exclude(gone))
    if isinstance(net, ipaddress.IPv6Network) and isinstance(gone, ipaddress.IPv6Network):
        return list(net.address_exclude(gone))
    raise AssertionError("unreachable: overlapping subnets of different families")


def exclude(nets: Iterable[IPNetwork], remove: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """The addresses of `nets` that are not in `remove`, as normalized subnets."""
    gone = normalize(remove)
    starts = [_key(g) for g in gone]
    result: list[IPNetwork] = []
    for net in normalize(nets):
        first, last = _key(net), (net.version, int(net.broadcast_address))
        before = bisect.bisect_right(starts, first) - 1
        if before >= 0 and not _minus(net, gone[before]):
            continue  # inside a removed subnet
        pieces = [net]
        # CIDR blocks nest or are disjoint: the removed ones starting inside `net` lie in it.
        for inner in gone[bisect.bisect_left(starts, first) : bisect.bisect_right(starts, last)]:
            pieces = [p for piece in pieces for p in _minus(piece, inner)]
        result += pieces
    return normalize(result)


def _ident(network: Network) -> str:
    return network.value.replace("-", "_")


def label_of(networks: Iterable[Network]) -> str:
    """An nft identifier naming networks: `storage_cluster`, `internal_public`."""
    return "_".join(_ident(n) for n in sorted(set(networks), key=NETWORKS.index))


def check_interface_name(name: str) -> str:
    """An interface name safe to write into nft and netplan files."""
    if not INTERFACE_NAME.match(name):
        raise RenderError(f"'{name}' is not a valid interface name (at most 15 characters)")
    return name


class _FirewallBuilder:
    """Collects sets, counters and audit chains while the rules are laid out."""

    def __init__(self, enforcement: Enforcement):
        self.enforcement = enforcement
        self.sets: dict[str, NftSet] = {}
        self.counters: list[str] = []
        self.audit_chains: list[NftChain] = []

    def address_sets(
        self, name: str, nets: Iterable[IPNetwork], keep_empty: bool = False
    ) -> list[tuple[str, str]]:
        """Declare `<name>_v4` and `<name>_v6`; return (family, set) for the non-empty ones."""
        v4, v6 = _split(normalize(nets))
        found: list[tuple[str, str]] = []
        families: tuple[tuple[str, str, SetType, list[IPNetwork]], ...] = (
            ("ip", "v4", "ipv4_addr", v4),
            ("ip6", "v6", "ipv6_addr", v6),
        )
        for family, suffix, set_type, members in families:
            if members or keep_empty:
                set_name = f"{name}_{suffix}"
                self._add_set(NftSet(set_name, set_type, tuple(str(m) for m in members)))
                found.append((family, set_name))
        return found

    def interface_set(self, name: str, interfaces: Iterable[str]) -> str | None:
        """Declare an interface-name set; None when there is no interface."""
        names = tuple(sorted({check_interface_name(i) for i in interfaces}))
        if not names:
            return None
        self._add_set(NftSet(name, "ifname", names))
        return name

    def port_sets(self, name: str, ranges: Iterable[PortRange]) -> list[tuple[str, str]]:
        """Declare `<name>_tcp` and `<name>_udp`, empty or not; return (protocol, set).

        Both are always there, so the rules that use them do not depend on the ports.
        """
        merged = merge_ranges(ranges)
        found: list[tuple[str, str]] = []
        for protocol in PROTOCOLS:
            set_name = f"{name}_{protocol}"
            elements = tuple(r.nft for r in merged if r.protocol == protocol)
            self._add_set(NftSet(set_name, "inet_service", elements))
            found.append((protocol, set_name))
        return found

    def _add_set(self, new: NftSet) -> None:
        old = self.sets.get(new.name)
        if old is not None and old != new:
            raise RenderError(f"set '{new.name}' is defined twice with different elements")
        self.sets[new.name] = new

    def accept(
        self,
        direction: str,
        interfaces: str | None = None,
        addresses: tuple[str, str] | None = None,
        extra: str | None = None,
    ) -> NftRule:
        """An accept rule."""
        match = _match(direction, interfaces, addresses, extra)
        return NftRule(
            verdict="accept",
            interfaces=interfaces,
            addresses=addresses[1] if addresses else None,
            extra=extra,
            text=f"{match} accept" if match else "accept",
        )

    def drop(
        self,
        direction: str,
        counter: str,
        what: str,
        interfaces: str | None = None,
        addresses: tuple[str, str] | None = None,
        extra: str | None = None,
    ) -> NftRule:
        """A drop rule with its named counter; in audit mode, a jump to log-and-count."""
        if counter not in self.counters:
            self.counters.append(counter)
        match = _match(direction, interfaces, addresses, extra)
        if self.enforcement == "audit":
            chain = f"audit_{counter}"
            if all(c.name != chain for c in self.audit_chains):
                self.audit_chains.append(self._audit_chain(chain, counter, what))
            statement = f"goto {chain}"
        else:
            statement = f'counter name "{counter}" drop'
        return NftRule(
            verdict="drop",
            interfaces=interfaces,
            addresses=addresses[1] if addresses else None,
            extra=extra,
            counter=counter,
            text=f"{match} {statement}" if match else statement,
        )

    @staticmethod
    def _audit_chain(name: str, counter: str, what: str) -> NftChain:
        prefix = f"{LOG_PREFIX} {what}: "
        if len(prefix) > LOG_PREFIX_MAX:  # pragma: no cover - names are short and fixed
            raise RenderError(f"log prefix '{prefix}' is too long")
        rule = NftRule(
            verdict="log",
            counter=counter,
            text=(
                f'counter name "{counter}" limit rate {AUDIT_LOG_RATE}'
                f' log prefix "{prefix}" level info'
            ),
        )
        return NftChain(
            name=name,
            hook=None,
            sections=(NftSection(f"would drop: {what}", (rule,)),),
            footer="the packet goes on: the base chain's policy accepts it",
        )


def _match(
    direction: str,
    interfaces: str | None,
    addresses: tuple[str, str] | None,
    extra: str | None,
) -> str:
    parts: list[str] = []
    if interfaces:
        parts.append(f"{'iifname' if direction == 'in' else 'oifname'} @{interfaces}")
    if addresses:
        family, name = addresses
        parts.append(f"{family} {'saddr' if direction == 'in' else 'daddr'} @{name}")
    if extra:
        parts.append(extra)
    return " ".join(parts)


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


def _names(networks: Iterable[Network]) -> str:
    return "+".join(n.value for n in sorted(set(networks), key=NETWORKS.index))


def _header(plan: MachinePlan, what: str, *, firewall: bool) -> list[str]:
    """The generated file's comment header.

    The netplan one leaves out the enforcement mode, which does not change routing, so that
    switching modes does not rewrite the file (and run `netplan apply`).
    """
    mode = f"; enforcement: {plan.config.enforcement}" if firewall else ""
    lines = [
        f"network-isolation: {what} of machine '{plan.machine}'.",
        "Generated from the machine's plan by the network-isolation charm: do not edit,",
        "every reconcile overwrites it.",
        f"roles: {', '.join(plan.roles) or 'none'}; isolation: {plan.isolation.level}{mode}",
    ]
    if plan.status != "active":
        lines.append(f"WARNING: the plan is {plan.status}: {plan.message}")
    return [" ".join(line.split()) for line in lines]


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


def firewall_view(plan: MachinePlan, ports: PortMap | None = None) -> FirewallView:
    """The ruleset of a plan, as data: sets, counters, chains of rules.

    With `strict-ports`, an allowed network accepts only its ports (`ports`, see
    `strict_ports`); without it, `ports` is ignored.
    """
    enforcement: Enforcement = plan.config.enforcement
    header = _header(plan, "nftables ruleset", firewall=True)
    header += [
        f"`nft -f` loads it as one transaction: it creates table {TABLE_FAMILY} {TABLE_NAME}"
        " if missing,",
        "deletes it and defines it again. No other table is touched.",
    ]
    if enforcement == "off":
        header.append("enforcement is off: this file only removes our table.")
        return FirewallView(TABLE_FAMILY, TABLE_NAME, tuple(header), enforcement, (), (), (), ())
    accepted = strict_ports(plan, ports)
    if accepted is not None:
        header += [
            "strict-ports: on an allowed network's interfaces, only the ports in its sets",
            "ports_<networks>_tcp and ports_<networks>_udp are accepted (and tcp/22, failsafe).",
        ]
    build = _FirewallBuilder(enforcement)
    groups = interface_groups(plan)
    input_chain = NftChain("input", "input", _input_sections(plan, build, groups, accepted))
    chains = [input_chain]
    output = _output_sections(plan, build)
    if output:
        chains.append(NftChain("output", "output", output))
    chains += build.audit_chains
    return FirewallView(
        family=TABLE_FAMILY,
        table=TABLE_NAME,
        header=tuple(header),
        enforcement=enforcement,
        counters=tuple(build.counters),
        sets=tuple(build.sets.values()),
        chains=tuple(chains),
        groups=groups,
    )


def _input_sections(
    plan: MachinePlan,
    build: _FirewallBuilder,
    groups: Sequence[InterfaceGroup],
    ports: Mapping[Network, tuple[PortRange, ...]] | None,
) -> tuple[NftSection, ...]:
    sections: list[NftSection] = [
        NftSection(
            "1. loopback and replies: accept; invalid packets: drop",
            (
                build.accept("in", extra='iifname "lo"'),
                build.accept("in", extra="ct state established,related"),
                build.drop("in", "drop_in_invalid", "in ct-invalid", extra="ct state invalid"),
            ),
        ),
        NftSection(
            "2. essential ICMP and ICMPv6 (errors, path MTU, neighbour discovery, echo)",
            (
                build.accept("in", extra=f"icmp type {{ {', '.join(ICMP_TYPES)} }}"),
                build.accept("in", extra=f"icmpv6 type {{ {', '.join(ICMPV6_TYPES)} }}"),
            ),
        ),
    ]
    management = plan.domain_of(Network.MANAGEMENT)
    failsafe = build.address_sets(
        "failsafe", [*management.subnets, *plan.config.client_cidrs], keep_empty=True
    )
    sections.append(
        NftSection(
            f"3. failsafe: tcp/{FAILSAFE_TCP_PORT} from the management subnets and client-cidrs",
            tuple(
                build.accept("in", addresses=a, extra=f"tcp dport {FAILSAFE_TCP_PORT}")
                for a in failsafe
            ),
        )
    )
    from_denied, on_denied = _denied_drops(plan, build, "in")
    if from_denied:
        sections.append(
            NftSection(
                "4. from a denied network's subnets, on any interface: drop", tuple(from_denied)
            )
        )
    if on_denied:
        sections.append(NftSection("5. on a denied network's interfaces: drop", tuple(on_denied)))
    for group in groups:
        sections.append(_group_section(plan, build, group, ports))
    return tuple(sections)


def _group_section(
    plan: MachinePlan,
    build: _FirewallBuilder,
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
    counter, what = f"drop_in_{group.label}", f"in {_names(group.networks)}"
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
        f"6. on {_names(group.networks)} ({', '.join(group.interfaces)}): {'; '.join(parts)}",
        tuple(rules),
    )


def _denied_drops(
    plan: MachinePlan, build: _FirewallBuilder, direction: Literal["in", "out"]
) -> tuple[list[NftRule], list[NftRule]]:
    """Drops for denied domains in one direction: by their subnets, and by their own NICs."""
    allowed_subnets = [s for d in plan.allowed_domains for s in d.subnets]
    by_subnet: list[NftRule] = []
    by_interface: list[NftRule] = []
    denied_interfaces = set(plan.denied_interfaces)
    for domain in plan.denied_domains:
        label = label_of(domain.networks)
        counter, what = f"drop_{direction}_{label}", f"{direction} {_names(domain.networks)}"
        for a in build.address_sets(f"net_{label}", exclude(domain.subnets, allowed_subnets)):
            by_subnet.append(build.drop(direction, counter, what, addresses=a))
        nics = build.interface_set(
            f"if_{label}", (i for i in domain.interfaces if i in denied_interfaces)
        )
        if nics:
            by_interface.append(build.drop(direction, counter, what, interfaces=nics))
    return by_subnet, by_interface


def _output_sections(plan: MachinePlan, build: _FirewallBuilder) -> tuple[NftSection, ...]:
    to_denied, out_denied = _denied_drops(plan, build, "out")
    if not to_denied and not out_denied:
        return ()
    sections = [
        NftSection(
            "loopback, and replies to connections the input chain let in: accept",
            (
                build.accept("out", extra='oifname "lo"'),
                # Replies only: a connection this host opens to a denied network is still cut.
                build.accept("out", extra="ct state established,related ct direction reply"),
            ),
        )
    ]
    if to_denied:
        sections.append(NftSection("to a denied network's subnets: drop", tuple(to_denied)))
    if out_denied:
        sections.append(
            NftSection("out of a denied network's interfaces: drop", tuple(out_denied))
        )
    return tuple(sections)


# ---------------------------------------------------------------------------------------------
# The routing view


@dataclass(frozen=True)
class Route:
    """A route in one of our tables."""

    to: str
    table: int
    via: str | None = None
    scope: Literal["link"] | None = None


@dataclass(frozen=True)
class PolicyRule:
    """A routing-policy rule: `from <address>` or `to <subnet>`, into one table."""

    selector: Literal["from", "to"]
    value: str
    table: int
    priority: int


@dataclass(frozen=True)
class RoutedInterface:
    """Routes and rules added to one interface's netplan definition."""

    name: str
    kind: InterfaceKind
    routes: tuple[Route, ...]
    policy: tuple[PolicyRule, ...]


@dataclass(frozen=True)
class RoutingTable:
    """One domain's table, for the file's header and for reports."""

    number: int
    networks: tuple[Network, ...]
    interface: str


@dataclass(frozen=True)
class RoutingView:
    """Everything the netplan template lays out."""

    header: tuple[str, ...]
    tables: tuple[RoutingTable, ...]
    sections: tuple[tuple[InterfaceKind, tuple[RoutedInterface, ...]], ...]

    @property
    def interfaces(self) -> tuple[RoutedInterface, ...]:
        """Every routed interface."""
        return tuple(i for _, group in self.sections for i in group)


def routing_table(domain: Domain, position: int = 0) -> int:
    """The routing table of a domain's `position`-th interface: 100 + its index (+ 6 each)."""
    return ROUTING_TABLE_BASE + NETWORKS.index(domain.networks[0]) + position * len(NETWORKS)


def _connected(subnet: IPNetwork, addresses: Sequence[IPInterface]) -> bool:
    return any(within(subnet, a.network) for a in addresses)


def _gateway(domain: Domain, addresses: Sequence[IPInterface], version: int) -> IPAddress | None:
    """The gateway of the first local subnet of this family that has one."""
    for address in addresses:
        if address.version != version:
            continue
        for subnet, gateway in sorted(domain.gateways.items(), key=lambda kv: str(kv[0])):
            if subnet.version == version and address.ip in subnet and gateway in address.network:
                return gateway
    return None


def bound_addresses(domain: Domain) -> dict[str, tuple[IPInterface, ...]]:
    """The domain's routable (not link-local) addresses per interface, by interface name."""
    by_interface: dict[str, dict[IPInterface, None]] = {}
    for item in domain.bound:
        if not item.address.ip.is_link_local:
            by_interface.setdefault(item.name, {})[item.address] = None
    return {name: tuple(by_interface[name]) for name in sorted(by_interface)}


@dataclass(frozen=True)
class _TableOfInterface:
    """One table of a domain: the interface it leaves by, its routes and rule selectors."""

    interface: str
    table: int
    routes: tuple[Route, ...]
    selectors: tuple[tuple[Literal["from", "to"], str], ...]


def _interface_table(
    domain: Domain,
    name: str | None,
    addresses: Sequence[IPInterface],
    table: int,
    siblings: Sequence[IPInterface],
    notes: list[str],
) -> tuple[list[Route], list[IPNetwork]]:
    """Routes of one interface's table, and the subnets routed through its gateway.

    Connected subnets: scope link. The domain's other subnets: via this interface's gateway,
    or a note when it has none (unless another interface of the domain, among `siblings`,
    is on the subnet: then the main table's connected route serves it). `name` is given
    when the domain has several interfaces, for the notes.
    """
    routes: list[Route] = []
    remote: list[IPNetwork] = []
    for subnet in domain.subnets:
        if subnet.is_link_local:
            continue
        if _connected(subnet, addresses):
            routes.append(Route(to=str(subnet), table=table, scope="link"))
            continue
        gateway = _gateway(domain, addresses, subnet.version)
        if gateway is not None:
            routes.append(Route(to=str(subnet), table=table, via=str(gateway)))
            remote.append(subnet)
        elif not _connected(subnet, siblings):
            where = f"{domain.name}, {name}" if name else domain.name
            notes.append(f"no route to {subnet} ({where}): no gateway on a local subnet")
    return routes, remote


def _domain_tables(domain: Domain, notes: list[str]) -> list[_TableOfInterface]:
    """A table per interface holding the domain's addresses (usually one).

    Each address's `from` rule goes to its own interface's table, so replies leave where the
    request came in. A subnet no interface of the domain is on gets one `to` rule, into the
    first table that routes it.
    """
    bound = bound_addresses(domain)
    if len(bound) > ROUTED_INTERFACES_MAX:
        raise RenderError(
            f"{domain.name} has addresses on {len(bound)} interfaces; at most"
            f" {ROUTED_INTERFACES_MAX} can have routing tables"
        )
    every = [a for addresses in bound.values() for a in addresses]
    steered: set[IPNetwork] = set()
    tables: list[_TableOfInterface] = []
    for position, (name, addresses) in enumerate(bound.items()):
        table = routing_table(domain, position)
        check_interface_name(name)
        label = name if len(bound) > 1 else None
        routes, remote = _interface_table(domain, label, addresses, table, every, notes)
        to = [s for s in remote if s not in steered and not _connected(s, every)]
        steered.update(to)
        selectors: list[tuple[Literal["from", "to"], str]] = [
            *(("from", str(a.ip)) for a in addresses),
            *(("to", str(s)) for s in to),
        ]
        tables.append(_TableOfInterface(name, table, tuple(routes), tuple(selectors)))
    return tables


def routing_view(plan: MachinePlan) -> RoutingView | None:
    """Per-network policy routing of a plan, or None when there is nothing to route."""
    if not plan.config.manage_routing or len(plan.domains) < 2:
        return None
    notes: list[str] = []
    tables: list[RoutingTable] = []
    routed: dict[str, tuple[list[Route], list[PolicyRule]]] = {}
    for domain in plan.allowed_domains:
        domain_tables = _domain_tables(domain, notes)
        count = sum(len(t.selectors) for t in domain_tables)
        if count > RULE_PRIORITY_BLOCK:
            raise RenderError(
                f"{domain.name} needs {count} routing-policy rules;"
                f" at most {RULE_PRIORITY_BLOCK} fit in its priority block"
            )
        priority = (
            RULE_PRIORITY_BASE + (routing_table(domain) - ROUTING_TABLE_BASE) * RULE_PRIORITY_BLOCK
        )
        for item in domain_tables:
            policy = []
            for selector, value in item.selectors:
                policy.append(PolicyRule(selector, value, item.table, priority))
                priority += 1
            tables.append(RoutingTable(item.table, domain.networks, item.interface))
            entry = routed.setdefault(item.interface, ([], []))
            entry[0].extend(item.routes)
            entry[1].extend(policy)
    if not routed:
        return None
    sections = []
    for kind in NETPLAN_KINDS:
        members = tuple(
            RoutedInterface(name, kind, tuple(routes), tuple(policy))
            for name, (routes, policy) in sorted(routed.items())
            if plan.interface_kinds.get(name, "ethernets") == kind
        )
        if members:
            sections.append((kind, members))
    header = _header(plan, "policy routing", firewall=False)
    header += [
        "netplan merges it after 50-cloud-init.yaml (MAAS): it adds routes and rules to the",
        "interfaces defined there and never redefines their addresses.",
        "routing tables: "
        + ", ".join(f"{t.number} {_names(t.networks)} ({t.interface})" for t in tables),
        *notes,
    ]
    view = RoutingView(header=tuple(header), tables=tuple(tables), sections=tuple(sections))
    check_policy_routing(view)
    return view


def check_policy_routing(view: RoutingView) -> None:
    """What netplan does not check: every rule names a real table of ours, priorities differ.

    And every destination (a default route included) at most once per table.
    """
    seen: set[int] = set()
    destinations: set[tuple[int, str]] = set()
    tables_with_routes = {r.table for i in view.interfaces for r in i.routes}
    for interface in view.interfaces:
        for rule in interface.policy:
            _check_rule(interface.name, rule, tables_with_routes, seen)
            seen.add(rule.priority)
        for route in interface.routes:
            if not route.table or route.table in RESERVED_TABLES:
                raise RenderError(f"route to {route.to} on {interface.name} has no table of ours")
            if (route.via is None) == (route.scope is None):
                raise RenderError(f"route to {route.to} needs either a gateway or scope link")
            destination = _destination(route)
            if (route.table, destination) in destinations:
                raise RenderError(
                    f"route to {route.to} on {interface.name}: table {route.table} already"
                    " has a route there"
                )
            destinations.add((route.table, destination))


def _destination(route: Route) -> str:
    """A route's destination in one spelling: `default` is 0.0.0.0/0 or ::/0 (by its via)."""
    if route.to == "default":
        if route.via is None:
            return "default"
        return "::/0" if ipaddress.ip_address(route.via).version == 6 else "0.0.0.0/0"
    try:
        return str(ipaddress.ip_network(route.to, strict=False))
    except ValueError:
        return route.to


def _check_rule(interface: str, rule: PolicyRule, tables: set[int], seen: set[int]) -> None:
    where = f"routing-policy rule {rule.selector} {rule.value} on {interface}"
    if not rule.table or rule.table in RESERVED_TABLES:
        raise RenderError(f"{where} has no usable table ({rule.table})")
    if rule.table not in tables:
        raise RenderError(f"{where} points to table {rule.table}, which has no route")
    if not rule.value:
        raise RenderError(f"{where} matches every packet")
    if not 0 < rule.priority < 32766:
        raise RenderError(f"{where} has priority {rule.priority}, outside 1-32765")
    if rule.priority in seen:
        raise RenderError(f"{where} has the same priority as another rule")


# ---------------------------------------------------------------------------------------------
# Rendering


def templates_dir() -> Path:
    """The first of TEMPLATE_DIRS that holds our templates."""
    for directory in TEMPLATE_DIRS:
        if (directory / NFTABLES_TEMPLATE).is_file() and (directory / NETPLAN_TEMPLATE).is_file():
            return directory
    raise RenderError(
        f"templates not found: none of {', '.join(str(d) for d in TEMPLATE_DIRS)} holds"
        f" {NFTABLES_TEMPLATE} and {NETPLAN_TEMPLATE}"
    )


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["q"] = json.dumps  # a JSON string is a valid double-quoted YAML scalar
    return env


def render_nftables(view: FirewallView) -> str:
    """The `nft -f` file of a firewall view."""
    return _environment().get_template(NFTABLES_TEMPLATE).render(view=view)


def render_netplan(view: RoutingView) -> str:
    """The netplan file of a routing view."""
    return _environment().get_template(NETPLAN_TEMPLATE).render(view=view)


def render(
    plan: MachinePlan, ports: Mapping[Network, tuple[PortRange, ...]] | None = None
) -> Artefacts:
    """Both artefacts of a plan.

    `ports` matters only with `strict-ports`: the ports each allowed network accepts, as
    `ports.machine_ports(plan, declared)` gives them (the catalogue, `extra-ports` and what
    the principals declared). Without it, `machine_ports(plan)`: no declarations.
    """
    routing = routing_view(plan)
    return Artefacts(
        nftables=render_nftables(firewall_view(plan, ports)),
        netplan=render_netplan(routing) if routing else None,
    )
