"""Turn what a machine sees (bindings, roles, config) into its access plan.

Pure code shared by the charm and the offline `plan` command: the same inputs always give the
same plan, whichever unit or tool computes it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import Field

from .base import Frozen, InterfaceKind, IPAddress, IPInterface, IPNetwork
from .config import CharmConfig, ConfigError
from .model import NETWORKS, ROLE_TABLES, IsolationLevel, Network, networks_for_roles
from .principals import principal_denials

MAX_REASONS = 10  # refused learnt subnets named in a plan; the rest are counted
# A subnet with its domain's index and a tag (own, learnt, ...) for the overlap sweep.
Tagged = tuple[IPNetwork, int, int]

NO_ROLE_MESSAGE = (
    "no role: relate to a control, compute, storage or juju-controller principal, or set roles"
)


class InterfaceAddress(Frozen):
    """One address of this machine on a network, and the interface that holds it."""

    name: str
    address: IPInterface


class NetworkView(Frozen):
    """What the machine knows of one cloud network: Juju's binding, or a topology's space.

    `subnets` are trusted (a topology's space); `learnt` come from peers and are untrusted:
    they may extend a network's sets, never merge domains, widen management or block a plan.
    """

    interfaces: tuple[InterfaceAddress, ...] = ()
    subnets: tuple[IPNetwork, ...] = Field(default=(), description="the space's, trusted")
    learnt: tuple[IPNetwork, ...] = Field(default=(), description="from peers, untrusted")
    space: str | None = None
    gateways: dict[IPNetwork, IPAddress] = {}
    teachers: dict[IPNetwork, str] = {}  # which unit taught each learnt subnet, when known


class PlanInput(Frozen):
    """Everything the planner needs about one machine."""

    machine: str
    roles: frozenset[str]
    networks: dict[Network, NetworkView]
    config: CharmConfig
    interface_kinds: dict[str, InterfaceKind] = {}
    principals: frozenset[str] = frozenset()  # application names of the machine's principals


class NetworkPlan(Frozen):
    """One network on one machine: may the machine use it, and where does it live."""

    access: bool
    space: str | None
    subnets: tuple[IPNetwork, ...]
    interfaces: tuple[str, ...]
    addresses: tuple[IPInterface, ...]


class Domain(Frozen):
    """Networks that resolve to the same subnets (one space): the unit of filtering."""

    networks: tuple[Network, ...]
    space: str | None
    subnets: tuple[IPNetwork, ...]
    allowed: bool
    interfaces: tuple[str, ...]
    addresses: tuple[IPInterface, ...]
    gateways: dict[IPNetwork, IPAddress] = {}
    bound: tuple[InterfaceAddress, ...] = Field(default=(), description="address per NIC")

    @property
    def name(self) -> str:
        """A short label: the space name where known, else the networks it carries."""
        return self.space or "+".join(n.value for n in self.networks)


class Isolation(Frozen):
    """The degree of isolation and the traffic domains that make it."""

    level: IsolationLevel
    domains: tuple[tuple[Network, ...], ...]


class MachinePlan(Frozen):
    """The access plan of one machine: the single source for status, rendering and reports."""

    machine: str
    roles: tuple[str, ...]
    status: Literal["active", "blocked"]
    message: str
    problems: tuple[str, ...]
    networks: dict[Network, NetworkPlan]
    domains: tuple[Domain, ...]
    isolation: Isolation
    config: CharmConfig
    interface_kinds: dict[str, InterfaceKind] = {}
    ignored: tuple[str, ...] = Field(default=(), description="peer subnets refused here")
    warnings: tuple[str, ...] = Field(
        default=(), description="networks a principal needs, denied as accept-denials allows"
    )

    @property
    def allowed_domains(self) -> tuple[Domain, ...]:
        """Domains this machine may use."""
        return tuple(d for d in self.domains if d.allowed)

    @property
    def denied_domains(self) -> tuple[Domain, ...]:
        """Domains this machine must stay off."""
        return tuple(d for d in self.domains if not d.allowed)

    @property
    def denied_interfaces(self) -> tuple[str, ...]:
        """NICs only in denied domains (a NIC also carrying an allowed domain stays usable)."""
        allowed = {i for d in self.allowed_domains for i in d.interfaces}
        return tuple(sorted({i for d in self.denied_domains for i in d.interfaces} - allowed))

    @property
    def space_interfaces(self) -> tuple[str, ...]:
        """Every NIC that carries a cloud network on this machine, allowed or denied."""
        return tuple(sorted({i for d in self.domains for i in d.interfaces}))

    @property
    def unrouted_interfaces(self) -> tuple[str, ...]:
        """Interfaces of allowed networks that the host's netplan files do not define.

        An OVS or LXD bridge, say: naming it in our netplan file would make networkd take the
        link over and drop the addresses it did not configure, so policy routing leaves it
        alone.
        """
        bound = {i.name for d in self.allowed_domains for i in d.bound}
        return tuple(sorted(bound - set(self.interface_kinds)))

    def domain_of(self, network: Network) -> Domain:
        """The domain carrying a network."""
        return next(d for d in self.domains if network in d.networks)


def _sorted_unique(items: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    unique = set(items)
    return tuple(sorted(unique, key=lambda n: (n.version, n.network_address, n.prefixlen)))


def known_subnets(
    networks: Mapping[Network, NetworkView], config: CharmConfig
) -> dict[Network, tuple[IPNetwork, ...]]:
    """Each network's own subnets: what the binding or space shows, plus `network-cidrs`.

    Extra subnets belong to the space: a subnet added to one network is added to every network
    that shares its space, so networks bound together stay one domain.
    """
    base = {
        net: frozenset(
            [
                *networks.get(net, NetworkView()).subnets,
                *(i.address.network for i in networks.get(net, NetworkView()).interfaces),
            ]
        )
        for net in NETWORKS
    }
    result: dict[Network, tuple[IPNetwork, ...]] = {}
    for net in NETWORKS:
        space_mates = [m for m in NETWORKS if m == net or (base[net] and base[m] == base[net])]
        extra = [c for mate in space_mates for c in config.network_cidrs.get(mate, ())]
        result[net] = _sorted_unique([*base[net], *extra])
    return result


def domain_index(domains: tuple[tuple[Network, ...], ...]) -> dict[Network, int]:
    """Each network's place in the domains."""
    return {net: i for i, group in enumerate(domains) for net in group}


def learnt_subnets(
    networks: Mapping[Network, NetworkView],
    own: Mapping[Network, tuple[IPNetwork, ...]],
    config: CharmConfig,
) -> tuple[dict[Network, tuple[IPNetwork, ...]], list[str]]:
    """Each network's subnets with those learnt from peers, and the learnt ones left out.

    Domains stay those of the machine's own subnets: a learnt subnet joins every network of
    its network's domain, unless it overlaps a subnet of another domain (own or learnt: both
    learnt ones go). Management takes only learnt subnets inside what its own subnets and
    `client-cidrs` give, so peers never widen the failsafe or the management accepts. Other
    networks take only private address space or what `network-cidrs` declares, and nothing
    that overlaps `client-cidrs`: whatever a leader publishes, a peer's subnet never reaches
    public address space or the clients. A subnet left out never blocks the plan; it is named
    with the unit that taught it. One sorted sweep: O(n log n) in the subnets.
    """
    domains = group_domains(own)
    index = domain_index(domains)
    management = index[Network.MANAGEMENT]
    bound = [*own[Network.MANAGEMENT], *config.client_cidrs]
    # (domain, learnt subnet) -> why it is left out: the subnet (and its domain) it
    # overlaps, or a sentence
    refused: dict[tuple[int, IPNetwork], tuple[IPNetwork, int] | str] = {}
    entries: list[Tagged] = [(s, index[net], 1) for net in NETWORKS for s in own[net]]
    teachers: dict[IPNetwork, str] = {}
    for net in NETWORKS:
        view = networks.get(net, NetworkView())
        teachers.update(view.teachers)
        declared = [c for mate in domains[index[net]] for c in config.network_cidrs.get(mate, ())]
        for subnet in view.learnt:
            if index[net] == management:
                inside = any(within(subnet, b) for b in bound)
                why = "" if inside else "is outside its own subnets and client-cidrs"
            else:
                why = unlearnable(subnet, declared, config.client_cidrs)
            if why:
                refused[(index[net], subnet)] = why
            else:
                entries.append((subnet, index[net], 0))
    for outer, inner in nested_pairs(entries):
        if outer[1] == inner[1]:
            continue
        for (subnet, domain, trusted), other in ((outer, inner), (inner, outer)):
            if not trusted and (domain, subnet) not in refused:
                refused[(domain, subnet)] = (other[0], other[1])
    extended = {
        net: _sorted_unique(
            [
                *own[net],
                *(
                    s
                    for mate in domains[index[net]]
                    for s in networks.get(mate, NetworkView()).learnt
                    if (index[net], s) not in refused
                ),
            ]
        )
        for net in NETWORKS
    }
    reasons = [
        f"{subnet} learnt for {domains[domain][0]}"
        + (f" from {teachers[subnet]}" if teachers.get(subnet) else "")
        + (f" overlaps {why[0]} of {domains[why[1]][0]}" if isinstance(why, tuple) else f" {why}")
        for (domain, subnet), why in list(refused.items())[:MAX_REASONS]
    ]
    if len(refused) > MAX_REASONS:
        reasons.append(f"(+{len(refused) - MAX_REASONS} more learnt subnets refused)")
    return extended, reasons


# Address space a cloud's own networks use: RFC 1918, RFC 6598 shared space, RFC 4193 ULAs.
PRIVATE_SPACE: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def is_private(subnet: IPNetwork) -> bool:
    """Inside the address space a cloud's own networks use (`PRIVATE_SPACE`)."""
    return any(within(subnet, space) for space in PRIVATE_SPACE)


def unlearnable(
    subnet: IPNetwork, declared: Iterable[IPNetwork], clients: Iterable[IPNetwork]
) -> str:
    """Why a subnet of a network other than management may not be learnt ("" if it may).

    A peer's subnet must not overlap `client-cidrs` (`clients`) and must be private address
    space or inside what `network-cidrs` declares for its network (`declared`).
    """
    clash = next((c for c in clients if within(c, subnet) or within(subnet, c)), None)
    if clash is not None:
        return f"overlaps client-cidrs {clash}"
    if not is_private(subnet) and not any(within(subnet, d) for d in declared):
        return "is not private address space and not in network-cidrs"
    return ""


def within(inner: IPNetwork, outer: IPNetwork) -> bool:
    """Whether `inner` lies inside `outer` (False across address families)."""
    return (
        inner.version == outer.version
        and int(outer.network_address) <= int(inner.network_address)
        and int(inner.broadcast_address) <= int(outer.broadcast_address)
    )


def nested_pairs(entries: Iterable[Tagged]) -> Iterable[tuple[Tagged, Tagged]]:
    """Pairs (outer, inner) of overlapping tagged subnets, by one sorted sweep.

    CIDR blocks overlap only by nesting, so the stack holds the blocks enclosing the current
    one: at most one per prefix length and tag.
    """
    ordered = sorted(
        set(entries), key=lambda e: (e[0].version, int(e[0].network_address), e[0].prefixlen)
    )
    stack: list[Tagged] = []
    for entry in ordered:
        start = int(entry[0].network_address)
        while stack and (
            stack[-1][0].version != entry[0].version or int(stack[-1][0].broadcast_address) < start
        ):
            stack.pop()
        for outer in stack:
            yield outer, entry
        stack.append(entry)


def group_domains(
    subnets: Mapping[Network, tuple[IPNetwork, ...]],
) -> tuple[tuple[Network, ...], ...]:
    """Networks grouped by identical subnet sets; a network with none known stands alone."""
    groups: dict[object, list[Network]] = {}
    for net in NETWORKS:
        key: object = frozenset(subnets[net]) or net
        groups.setdefault(key, []).append(net)
    return tuple(tuple(g) for g in groups.values())


def isolation_of(subnets: Mapping[Network, tuple[IPNetwork, ...]]) -> Isolation:
    """The degree as Canonical's guide defines it: one space is none, six disjoint is maximum."""
    domains = group_domains(subnets)
    if len(domains) == 1:
        level = IsolationLevel.NONE
    elif len(domains) == len(NETWORKS) and not overlaps(subnets):
        level = IsolationLevel.MAXIMUM
    else:
        level = IsolationLevel.PARTIAL
    return Isolation(level=level, domains=domains)


def overlaps(subnets: Mapping[Network, tuple[IPNetwork, ...]]) -> list[str]:
    """Pairs of networks in different spaces whose subnets overlap: ambiguous to filter.

    A sweep over the subnets sorted by first address: O(n log n), so a cloud with thousands
    of rack subnets plans as fast as a small one.
    """
    domains = group_domains(subnets)
    intervals = sorted(
        (int(net.network_address), int(net.broadcast_address), net.version, index, net)
        for index, group in enumerate(domains)
        for net in subnets[group[0]]
    )
    clashes: dict[tuple[int, int], tuple[IPNetwork, IPNetwork]] = {}
    open_: dict[int, tuple[int, int, IPNetwork]] = {}  # per version: widest reach so far
    for start, end, version, index, net in intervals:
        reach = open_.get(version)
        if reach and reach[0] >= start and reach[1] != index:
            pair = (min(index, reach[1]), max(index, reach[1]))
            clashes.setdefault(pair, (reach[2], net))
        if not reach or end > reach[0]:
            open_[version] = (end, index, net)
    return [
        f"'{domains[a][0]}' and '{domains[b][0]}' have overlapping subnets {first} and"
        f" {second} in different spaces: bind them to one space or make them disjoint"
        for (a, b), (first, second) in sorted(clashes.items())
    ]


def client_overlaps(
    subnets: Mapping[Network, tuple[IPNetwork, ...]], config: CharmConfig
) -> list[ConfigError]:
    """`client-cidrs` that overlap a cloud subnet outside the management domain.

    The tcp/22 failsafe accepts client-cidrs on every interface before any drop: a client
    range that covers a cloud network's subnet would open it from that network.
    """
    management = set(subnets[Network.MANAGEMENT])
    problems: list[ConfigError] = []
    for client in config.client_cidrs:
        clash = next(
            (
                (net, subnet)
                for net in NETWORKS
                for subnet in subnets[net]
                if subnet not in management and subnet.overlaps(client)
            ),
            None,
        )
        if clash:
            problems.append(
                ConfigError(
                    "client-cidrs",
                    f"{client} overlaps {clash[1]} of '{clash[0]}': tcp/22 would be open from"
                    " that network; list only the client machines' own subnets",
                )
            )
    return problems


def _missing_networks(
    roles: Iterable[str], config: CharmConfig, networks: Mapping[Network, NetworkPlan]
) -> list[str]:
    problems: list[str] = []
    reported: set[Network] = set()
    table = config.networks_by_role
    for role in sorted(roles):
        for net in NETWORKS:
            if net in table[role] and not networks[net].addresses and net not in reported:
                reported.add(net)
                problems.append(f"{role} needs '{net}': no address in its space on this machine")
    return problems


def _summary(
    roles: tuple[str, ...], allowed: int, isolation: Isolation, config: CharmConfig
) -> str:
    mode = {"enforce": "", "audit": " (audit only)", "off": " (enforcement off)"}
    return (
        f"{'+'.join(roles)}: {allowed}/{len(NETWORKS)} networks allowed,"
        f" isolation {isolation.level}{mode[config.enforcement]}"
    )


def plan_machine(plan_input: PlanInput) -> MachinePlan:
    """The machine's plan: per-network access, domains, isolation degree, problems.

    A network a principal needs and the roles deny is a problem unless `accept-denials`
    accepts it; then it is a warning, and the machine enforces.
    """
    config = plan_input.config
    roles = tuple(sorted(plan_input.roles | config.roles))
    unknown = sorted(set(roles) - set(config.networks_by_role))
    allowed = networks_for_roles((r for r in roles if r not in unknown), config.networks_by_role)
    own = known_subnets(plan_input.networks, config)
    subnets, ignored = learnt_subnets(plan_input.networks, own, config)
    views = {net: plan_input.networks.get(net, NetworkView()) for net in NETWORKS}

    networks = {
        net: NetworkPlan(
            access=net in allowed,
            space=views[net].space,
            subnets=subnets[net],
            interfaces=tuple(sorted({i.name for i in views[net].interfaces})),
            addresses=tuple(i.address for i in views[net].interfaces),
        )
        for net in NETWORKS
    }
    isolation = isolation_of(own)
    domains = tuple(_domain(group, networks, views) for group in isolation.domains)

    problems = [_unknown_role(r, config) for r in unknown]
    if not roles:
        problems.append(NO_ROLE_MESSAGE)
    problems += _missing_networks((r for r in roles if r not in unknown), config, networks)
    problems += overlaps(own)
    problems += [str(e) for e in client_overlaps(own, config)]
    denials = principal_denials(plan_input.principals, roles, allowed, config)
    problems += denials.blocking

    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        status: Literal["active", "blocked"] = "blocked"
        message = problems[0] + more
    else:
        status, message = "active", _summary(roles, len(allowed), isolation, config)
    return MachinePlan(
        machine=plan_input.machine,
        roles=roles,
        status=status,
        message=message,
        problems=tuple(problems),
        networks=networks,
        domains=domains,
        isolation=isolation,
        config=config,
        interface_kinds=plan_input.interface_kinds,
        ignored=tuple(ignored),
        warnings=denials.accepted,
    )


def _unknown_role(role: str, config: CharmConfig) -> str:
    presets = " or ".join(f"role-table={p}" for p, table in ROLE_TABLES.items() if role in table)
    fix = f"set {presets} or define it" if presets else "define it"
    return f"unknown role '{role}' in role table '{config.role_table}': {fix} in 'role-networks'"


def _domain(
    group: tuple[Network, ...],
    networks: Mapping[Network, NetworkPlan],
    views: Mapping[Network, NetworkView],
) -> Domain:
    addresses: dict[IPInterface, None] = {}
    bound: dict[InterfaceAddress, None] = {}
    gateways: dict[IPNetwork, IPAddress] = {}
    for net in group:
        addresses.update(dict.fromkeys(networks[net].addresses))
        bound.update(dict.fromkeys(views[net].interfaces))
        gateways.update(views[net].gateways)
    return Domain(
        networks=group,
        space=next((views[n].space for n in group if views[n].space), None),
        subnets=networks[group[0]].subnets,
        allowed=any(networks[n].access for n in group),
        interfaces=tuple(sorted({i for n in group for i in networks[n].interfaces})),
        addresses=tuple(addresses),
        gateways=gateways,
        bound=tuple(bound),
    )
