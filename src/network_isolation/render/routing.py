"""Policy routing: per allowed network and interface, a routing table and policy rules.

So that replies leave by the interface the request came in on. The view is checked for what
netplan does not check (tables of ours, unique priorities, one route per destination) before
the template lays it out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from ..base import InterfaceKind, IPAddress, IPInterface, IPNetwork
from ..model import NETWORKS, Network
from ..planner import Domain, MachinePlan, within
from .common import RenderError, check_interface_name, file_header, network_names

# MAAS (cloud-init) writes 50-cloud-init.yaml; netplan reads files in lexical order of their
# names and appends sequences, so ours adds routes and rules after MAAS's definitions.
NETPLAN_FILE_NAME = "90-network-isolation.yaml"

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

# Netplan sections in the order they are written.
NETPLAN_KINDS: tuple[InterfaceKind, ...] = ("ethernets", "bonds", "bridges", "vlans")


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


def _domain_tables(
    domain: Domain, defined: Collection[str], notes: list[str]
) -> list[_TableOfInterface]:
    """A table per interface holding the domain's addresses (usually one).

    Each address's `from` rule goes to its own interface's table, so replies leave where the
    request came in. A subnet no interface of the domain is on gets one `to` rule, into the
    first table that routes it. Only interfaces the host's netplan files define (`defined`)
    are routed; the others are noted.
    """
    bound = bound_addresses(domain)
    for name in [n for n in bound if n not in defined]:
        del bound[name]
        notes.append(
            f"not routed: {name} ({network_names(domain.networks)}): the host's netplan files"
            " do not define it"
        )
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
        domain_tables = _domain_tables(domain, plan.interface_kinds, notes)
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
            if plan.interface_kinds[name] == kind
        )
        if members:
            sections.append((kind, members))
    header = file_header(plan, "policy routing", None)
    header += [
        "netplan merges it after 50-cloud-init.yaml (MAAS): it adds routes and rules to the",
        "interfaces defined there and never redefines their addresses.",
        "routing tables: "
        + ", ".join(f"{t.number} {network_names(t.networks)} ({t.interface})" for t in tables),
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
