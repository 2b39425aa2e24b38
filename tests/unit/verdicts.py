"""The verdict oracle: what the rendered firewall decides, and what the issue's rules say.

`verdict` reads the rendered rules (the firewall view) first match first, for the first packet
of a new connection; `expected_input` restates the issue's input rules from the plan alone,
without reading the rendered rules. The render tests compare the two.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from subnets import Net, net_overlap

from network_isolation.model import Network
from network_isolation.planner import Domain, MachinePlan
from network_isolation.ports import PortRange, machine_ports
from network_isolation.render import FirewallView
from network_isolation.render.nft import NftRule

# ---------------------------------------------------------------------------------------------
# A first-match reading of the firewall view, for checks against the semantics


PORT_MATCH = re.compile(
    r"(?:meta l4proto )?(tcp|udp)(?: dport| ct original proto-dst)"
    r" (?:(\d+)|@(\S+)|\{ ([\d, ]+) \})"
)
ORIGINAL_DESTINATION = re.compile(r"ct original (?:ip|ip6) daddr @(\S+)")
OUTSIDE_SET = re.compile(r"iifname != @(\S+) oifname != @(\S+)")


@dataclass(frozen=True)
class Packet:
    """The first packet of a new connection, as the rules see it."""

    interface: str  # input interface (for output: the output interface)
    address: ipaddress.IPv4Address | ipaddress.IPv6Address  # source (output: destination)
    protocol: str
    port: int | None
    out_interface: str | None = None  # forward: where it leaves, and to which address
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


def _extra_matches(view: FirewallView, extra: str | None, packet: Packet) -> bool:
    if extra is None:
        return True
    if extra in ('iifname "lo"', 'oifname "lo"'):
        return packet.interface == "lo"
    original = ORIGINAL_DESTINATION.fullmatch(extra)
    if original:  # the walk models no DNAT: the original destination is the destination
        networks = view.set(original.group(1)).networks()
        return packet.destination is not None and any(packet.destination in n for n in networks)
    if extra.startswith(("icmp type", "icmpv6 type")) or "ct state" in extra:
        return False  # the first packet of a new connection: no ct state, not a reply
    outside = OUTSIDE_SET.fullmatch(extra)
    if outside:
        inside = view.set(outside.group(1)).elements
        return packet.interface not in inside and packet.out_interface not in inside
    match = PORT_MATCH.fullmatch(extra)
    if match:
        if packet.protocol != match.group(1) or packet.port is None:
            return False
        if match.group(2):
            return packet.port == int(match.group(2))
        if match.group(4):
            return packet.port in {int(p) for p in match.group(4).split(", ")}
        ranges = view.set(match.group(3)).ports()
        return any(first <= packet.port <= last for first, last in ranges)
    raise AssertionError(f"unknown match '{extra}'")


def _rule_matches(view: FirewallView, rule: NftRule, packet: Packet, output: bool) -> bool:
    """Whether a rule's interface, address and other matches all hold."""
    outbound = output or rule.side == "out"
    interface = packet.interface if output or not outbound else packet.out_interface
    address = packet.address if output or not outbound else packet.destination
    if rule.interfaces and interface not in view.set(rule.interfaces).elements:
        return False
    if rule.addresses and (
        address is None or not any(address in n for n in view.set(rule.addresses).networks())
    ):
        return False
    return _extra_matches(view, rule.extra, packet)


def _walk(view: FirewallView, name: str, packet: Packet, output: bool) -> str | None:
    """A chain's verdict (accept or drop), or None when the packet returns from it.

    An audit chain's log rule counts as the drop it stands for.
    """
    chain = view.chain(name)
    assert chain is not None, f"no chain {name}"
    for rule in chain.rules:
        if rule.vmap is not None:
            target = view.map(rule.vmap).target(packet.interface)
            if target is None:
                continue
            how, called = target.split()
            result = _walk(view, called, packet, output)
            if result is not None or how == "goto":
                return result
            continue
        if not _rule_matches(view, rule, packet, output):
            continue
        if rule.verdict == "jump":
            assert rule.target is not None
            result = _walk(view, rule.target, packet, output)
            if result is not None:
                return result
            continue
        if rule.verdict == "return":
            return None
        if rule.verdict == "log":
            return "drop"
        return "drop" if rule.verdict == "drop" else "accept"
    return None


def verdict(
    view: FirewallView,
    chain: str,
    interface: str,
    address: str,
    port: int | None = None,
    protocol: str = "tcp",
    out_interface: str | None = None,
    destination: str | None = None,
) -> str:
    """What a base chain decides for the first packet of a new connection (policy accept).

    Input: `interface` and `address` are where the packet comes from; output: where it goes;
    forward: where it comes from, and `out_interface` and `destination` where it goes.
    """
    if view.chain(chain) is None:
        return "accept"
    packet = Packet(
        interface,
        ipaddress.ip_address(address),
        protocol,
        port,
        out_interface,
        ipaddress.ip_address(destination) if destination else None,
    )
    return _walk(view, chain, packet, output=chain == "output") or "accept"


# ---------------------------------------------------------------------------------------------
# The rules restated from the plan, without reading the rendered rules


def listed_ports(
    plan: MachinePlan, interface: str, ports: Mapping[Network, Iterable[PortRange]] | None = None
) -> list[PortRange] | None:
    """strict-ports: the ranges an interface accepts (every allowed network it carries).

    None without strict-ports. `ports` defaults to what the machine's roles and `extra-ports`
    give (`machine_ports(plan).host`); only networks the machine may use count.
    """
    if not plan.config.strict_ports:
        return None
    given = machine_ports(plan).host if ports is None else ports
    return [
        r
        for d in plan.domains
        if d.allowed and interface in d.interfaces
        for n in d.networks
        if plan.networks[n].access
        for r in given.get(n, ())
    ]


def _domain_of_source(plan: MachinePlan, address: str) -> Domain | None | bool:
    """The domain whose subnets hold the address; None in none; False when ambiguous."""
    ip = ipaddress.ip_address(address)
    found = [d for d in plan.domains if any(ip in s for s in d.subnets)]
    if len(found) > 1:
        return False
    return found[0] if found else None


def expected_input(
    plan: MachinePlan,
    interface: str,
    address: str,
    protocol: str,
    port: int,
    ports: Mapping[Network, Iterable[PortRange]] | None = None,
) -> str | None:
    """The firewall's input rules (and strict-ports) for a new connection, or None.

    None when the source is in subnets of several domains (the plan is blocked: ambiguous).
    """
    ip = ipaddress.ip_address(address)
    if plan.config.enforcement == "off":
        return "accept"
    failsafe = [*plan.domain_of(Network.MANAGEMENT).subnets, *plan.config.client_cidrs]
    if protocol == "tcp" and port == 22 and any(ip in s for s in failsafe):
        return "accept"  # 3. failsafe
    source = _domain_of_source(plan, address)
    if source is False:
        return None
    if isinstance(source, Domain) and not source.allowed:
        return "drop"  # 4. from a denied network, on any interface
    if interface in plan.denied_interfaces:
        return "drop"  # 5. on a denied network's interface
    carried = [d for d in plan.domains if d.allowed and interface in d.interfaces]
    if not carried:
        return "accept"  # 7. an interface of no cloud network
    networks = {n for d in carried for n in d.networks}
    if isinstance(source, Domain):
        accepted = source in carried  # 6. own subnets; another cloud network's: drop
    elif Network.PUBLIC in networks:
        accepted = True  # 6. public API users
    else:
        client = any(ip in c for c in plan.config.client_cidrs)
        accepted = client and Network.MANAGEMENT in networks  # 6. client-cidrs on management
    listed = listed_ports(plan, interface, ports)
    if accepted and listed is not None:
        accepted = any(r.protocol == protocol and r.first <= port <= r.last for r in listed)
    return "accept" if accepted else "drop"


def address_conflicts(view: FirewallView, interfaces: Iterable[str]) -> list[str]:
    """Subnets both accepted and dropped (or handed back) for the same input interface.

    Accepted: the address rules of the chain the interface map sends the interface to;
    dropped: the input chain's address drops and the `return` rules of that chain.
    """
    chain = view.chain("input")
    if chain is None:
        return []
    problems: list[str] = []
    for interface in [*interfaces, "ni-unknown0"]:
        decided: dict[str, list[Net]] = {"accept": [], "drop": []}
        rules = [r for r in chain.rules if r.vmap is None]
        for lookup in (r for r in chain.rules if r.vmap == "by_interface"):
            target = view.map(lookup.vmap or "").target(interface)
            called = view.chain(target.split()[1]) if target else None
            rules += list(called.rules) if called else []
        for rule in rules:
            if rule.addresses is None or rule.extra is not None:
                continue  # catch-all rules and port rules are not about subnets
            if rule.interfaces and interface not in view.set(rule.interfaces).elements:
                continue
            kind = "accept" if rule.verdict == "accept" else "drop"
            decided[kind] += view.set(rule.addresses).networks()
        problems += [
            f"{interface}: {a} accepted, {d} dropped"
            for a in decided["accept"]
            for d in decided["drop"]
            if net_overlap(a, d)
        ]
    return problems
