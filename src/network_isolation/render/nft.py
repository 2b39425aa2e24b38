"""The nftables data model: what a set, a rule, a section and a chain are, and their nft text.

`FirewallBuilder` makes them while the layout (`firewall`) decides which rules come in which
order: it declares each set and map once, names a counter for every drop and, in audit mode,
turns a drop into a jump to a chain that logs and counts. The template lays the result out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..base import Enforcement, IPNetwork
from ..ports import PROTOCOLS, PortRange, merge_ranges
from .common import RenderError, check_interface_name
from .subnets import normalize, split_families

TABLE_FAMILY = "inet"
TABLE_NAME = "network_isolation"

# Audit mode logs at most this often per counter.
AUDIT_LOG_RATE = "10/minute burst 5 packets"
LOG_PREFIX = "network-isolation audit"
LOG_PREFIX_MAX = 127

SetType = Literal["ipv4_addr", "ipv6_addr", "ifname", "inet_service"]
# `return` hands the packet back to the calling chain; `vmap` looks the verdict up in a map.
Verdict = Literal["accept", "drop", "log", "return", "vmap", "jump"]
# The hooks of our base chains.
Hook = Literal["input", "forward", "output"]
# Which end of the packet a rule matches: where it came from (iifname, saddr) or where it
# goes (oifname, daddr).
Side = Literal["in", "out"]


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
class NftMap:
    """A verdict map keyed by input interface: `iifname vmap @name`."""

    name: str
    verdicts: tuple[tuple[str, str], ...]  # (interface, "jump chain" or "goto chain")

    @property
    def literals(self) -> tuple[str, ...]:
        """The elements as nft writes them."""
        return tuple(f'"{interface}" : {verdict}' for interface, verdict in self.verdicts)

    def target(self, interface: str) -> str | None:
        """The verdict of an interface, if it is in the map."""
        return dict(self.verdicts).get(interface)


@dataclass(frozen=True)
class NftRule:
    """One rule: what it matches, structured for checks, and its nft text."""

    verdict: Verdict
    interfaces: str | None = None  # name of an ifname set (iifname/oifname @set)
    addresses: str | None = None  # name of an address set (saddr/daddr @set)
    extra: str | None = None  # any other match: ct state, icmp types, loopback, port
    counter: str | None = None  # named counter; every drop has one
    vmap: str | None = None  # name of the interface map a `vmap` rule looks up
    target: str | None = None  # the chain a `jump` rule calls
    side: Side = "in"  # interfaces and addresses match the packet's input end, or its output
    text: str = ""


@dataclass(frozen=True)
class NftSection:
    """Rules under one comment, in order."""

    comment: str
    rules: tuple[NftRule, ...]


@dataclass(frozen=True)
class NftChain:
    """A chain: a base chain (hook, policy accept), or one that base chains jump to."""

    name: str
    hook: Hook | None
    sections: tuple[NftSection, ...]
    footer: str | None = None

    @property
    def rules(self) -> tuple[NftRule, ...]:
        """Every rule of the chain, in order."""
        return tuple(r for s in self.sections for r in s.rules)


class FirewallBuilder:
    """Collects sets, counters and audit chains while the rules are laid out."""

    def __init__(self, enforcement: Enforcement):
        self.enforcement = enforcement
        self.sets: dict[str, NftSet] = {}
        self.maps: dict[str, NftMap] = {}
        self.counters: list[str] = []
        self.drop_chains: list[NftChain] = []  # chains of drops that base chains call

    def address_sets(
        self, name: str, nets: Iterable[IPNetwork], keep_empty: bool = False
    ) -> list[tuple[str, str]]:
        """Declare `<name>_v4` and `<name>_v6`; return (family, set) for the non-empty ones."""
        v4, v6 = split_families(normalize(nets))
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

    def interface_map(self, name: str, verdicts: Iterable[tuple[str, str]]) -> str | None:
        """Declare a verdict map by input interface; None when it would be empty."""
        pairs = tuple(sorted((check_interface_name(i), v) for i, v in dict(verdicts).items()))
        if not pairs:
            return None
        new = NftMap(name, pairs)
        if self.maps.get(name, new) != new:
            raise RenderError(f"map '{name}' is defined twice with different elements")
        self.maps[name] = new
        return name

    def _add_set(self, new: NftSet) -> None:
        old = self.sets.get(new.name)
        if old is not None and old != new:
            raise RenderError(f"set '{new.name}' is defined twice with different elements")
        self.sets[new.name] = new

    def accept(
        self,
        side: Side,
        interfaces: str | None = None,
        addresses: tuple[str, str] | None = None,
        extra: str | None = None,
    ) -> NftRule:
        """An accept rule."""
        return _plain("accept", side, interfaces, addresses, extra)

    def give_back(self, addresses: tuple[str, str]) -> NftRule:
        """`return` for sources in a set: the calling chain decides (it drops them)."""
        return _plain("return", "in", None, addresses, None)

    @staticmethod
    def lookup(interface_map: str) -> NftRule:
        """`iifname vmap @map`: the map's verdict for the input interface, if it has one."""
        return NftRule(verdict="vmap", vmap=interface_map, text=f"iifname vmap @{interface_map}")

    @staticmethod
    def jump(side: Side, interfaces: str, chain: str) -> NftRule:
        """`jump` into a chain for packets on (side in) or out by (out) the set's interfaces."""
        match = _match(side, interfaces, None, None)
        return NftRule(
            verdict="jump",
            interfaces=interfaces,
            side=side,
            target=chain,
            text=f"{match} jump {chain}",
        )

    def drop_target(self, counter: str, what: str) -> str:
        """`goto` a chain that drops (audit: logs) and counts: a verdict for an interface map."""
        if self.enforcement == "audit":
            return self.drop(counter, what).text
        chain = counter
        if all(c.name != chain for c in self.drop_chains):
            rule = self.drop(counter, what)
            section = NftSection(f"drop: {what}", (rule,))
            self.drop_chains.append(NftChain(chain, None, (section,)))
        return f"goto {chain}"

    def drop(
        self,
        counter: str,
        what: str,
        side: Side = "in",
        interfaces: str | None = None,
        addresses: tuple[str, str] | None = None,
        extra: str | None = None,
    ) -> NftRule:
        """A drop rule with its named counter; in audit mode, a jump to log-and-count."""
        if counter not in self.counters:
            self.counters.append(counter)
        match = _match(side, interfaces, addresses, extra)
        if self.enforcement == "audit":
            chain = f"audit_{counter}"
            if all(c.name != chain for c in self.drop_chains):
                self.drop_chains.append(self._audit_chain(chain, counter, what))
            statement = f"goto {chain}"
        else:
            statement = f'counter name "{counter}" drop'
        return NftRule(
            verdict="drop",
            interfaces=interfaces,
            addresses=addresses[1] if addresses else None,
            extra=extra,
            counter=counter,
            side=side,
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
        # Accepted here, not handed back: reached from a network's chain (a jump), the end of
        # this chain would return to the hook's chain, whose later rules would count the packet
        # again. A drop ends the walk; so does its audit form.
        accept = NftRule(verdict="accept", text="accept")
        return NftChain(
            name=name,
            hook=None,
            sections=(NftSection(f"would drop: {what}", (rule, accept)),),
            footer="accepted, as the base chain's policy would: audit only counts and logs",
        )


def _plain(
    verdict: Literal["accept", "return"],
    side: Side,
    interfaces: str | None,
    addresses: tuple[str, str] | None,
    extra: str | None,
) -> NftRule:
    match = _match(side, interfaces, addresses, extra)
    return NftRule(
        verdict=verdict,
        interfaces=interfaces,
        addresses=addresses[1] if addresses else None,
        extra=extra,
        side=side,
        text=f"{match} {verdict}" if match else verdict,
    )


def _match(
    side: Side,
    interfaces: str | None,
    addresses: tuple[str, str] | None,
    extra: str | None,
) -> str:
    # The other match first: a port or a ct state is cheaper to test than a set lookup, and
    # most packets fail it.
    parts: list[str] = [extra] if extra else []
    if interfaces:
        parts.append(f"{'iifname' if side == 'in' else 'oifname'} @{interfaces}")
    if addresses:
        family, name = addresses
        parts.append(f"{family} {'saddr' if side == 'in' else 'daddr'} @{name}")
    return " ".join(parts)
