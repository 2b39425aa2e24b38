"""The firewall's layout: which rules, in which order, in which chain, from a plan.

The input chain: replies and loopback; the failsafe; then one lookup of the input interface
that jumps into its group's chain (`network_rules`): there, what is addressed to another
network's subnets is dropped, and what may arrive on the interface is accepted. Back in the
hook's chain: what is addressed to a denied network's subnets (on any interface), essential
ICMP, the drops of denied networks' sources, and one lookup that drops what the group's chain
handed back (and all on a denied network's interface). The forward chain: replies, then
nothing more for traffic that neither arrives on nor leaves by a cloud network's interface;
else the same interface lookup into chains of its own, which judge the destination the client
used (before any DNAT), cut what leaves towards a denied network, and, with strict ports, the
port the client used; then the same drops as input. The output chain, when a network is
denied: replies, then the drops towards denied networks. The first packet of an accepted flow
meets one interface lookup and two address lookups: its destination, then its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..base import Enforcement
from ..canary import INVALID_COUNTER
from ..model import Network
from ..planner import MachinePlan
from ..ports import JUJU_API_PORT, JUJU_SSH_SERVER_PORT, MachinePorts, PortRange
from .common import file_header
from .network_rules import (
    FORWARD_CUTS_COMMENT,
    InterfaceGroup,
    Judged,
    denied_interface_drops,
    denied_subnet_drops,
    dispatch,
    group_chain,
    interface_drops,
    interface_groups,
    misdirected_chain,
    misdirected_counter,
    strict_ports,
)
from .nft import (
    TABLE_FAMILY,
    TABLE_NAME,
    FirewallBuilder,
    Hook,
    NftChain,
    NftMap,
    NftRule,
    NftSection,
    NftSet,
)

# Always accepted from the management subnets and client-cidrs, before any drop.
FAILSAFE_TCP_PORT = 22
# The role whose machine serves every Juju agent of the cloud.
CONTROLLER_ROLE = "juju-controller"

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


@dataclass(frozen=True)
class FirewallView:
    """Everything the nftables template lays out."""

    family: str
    table: str
    header: tuple[str, ...]
    enforcement: Enforcement
    counters: tuple[str, ...]
    sets: tuple[NftSet, ...]
    maps: tuple[NftMap, ...]
    chains: tuple[NftChain, ...]
    groups: tuple[InterfaceGroup, ...]

    def set(self, name: str) -> NftSet:
        """A set by name."""
        return next(s for s in self.sets if s.name == name)

    def map(self, name: str) -> NftMap:
        """A map by name."""
        return next(m for m in self.maps if m.name == name)

    def chain(self, name: str) -> NftChain | None:
        """A chain by name, if there is one."""
        return next((c for c in self.chains if c.name == name), None)

    @property
    def rule_count(self) -> int:
        """The number of rules of the ruleset (what must not grow with the subnets)."""
        return sum(len(c.rules) for c in self.chains)


def firewall_view(
    plan: MachinePlan, ports: MachinePorts | None = None, enforcement: Enforcement | None = None
) -> FirewallView:
    """The ruleset of a plan in one form (`enforcement`; None: the configured one), as data.

    With `strict-ports`, an allowed network accepts only its ports (`ports`, see
    `strict_ports`); without it, `ports` is ignored.
    """
    enforcement = enforcement or plan.config.enforcement
    header = file_header(plan, "nftables ruleset", enforcement)
    header += [
        f"`nft -f` loads it as one transaction: it creates table {TABLE_FAMILY} {TABLE_NAME}"
        " if missing,",
        "deletes it and defines it again. No other table is touched.",
    ]
    if enforcement == "off":
        header.append("enforcement is off: this file only removes our table.")
        return FirewallView(
            TABLE_FAMILY, TABLE_NAME, tuple(header), enforcement, (), (), (), (), ()
        )
    accepted = strict_ports(plan, ports)
    if accepted is not None:
        header += [
            "strict-ports: on an allowed network's interfaces, only the ports in its sets",
            "ports_<networks>_tcp and ports_<networks>_udp are accepted (and tcp/22, failsafe);",
            "forwarded (DNATed) flows only to the ports in fwd_ports_<networks>_tcp and _udp,",
            "by the port the client used.",
        ]
    build = FirewallBuilder(enforcement)
    # Built in the order the file shows them, so the sets are declared in that order too.
    cloud = build.interface_set("if_space", plan.space_interfaces)
    groups = interface_groups(plan)
    denied = interface_groups(plan, allowed=False)
    host_ports = accepted.host if accepted else None
    chained = [(g, group_chain(plan, build, g, host_ports)) for g in groups]
    guarded = _misdirected_chains(plan, build, denied, "in")
    by_interface = dispatch(build, [*chained, *guarded])
    input_sections = [
        *_input_head(plan, build),
        *_by_interface(plan, build, chained, by_interface, "in"),
    ]
    # The forward hook has chains of its own: they judge the destination before any DNAT.
    forwarded: list[tuple[InterfaceGroup, NftChain]] = []
    forward_sections: list[NftSection] = []
    if cloud is not None:
        cuts = _forward_cuts(plan, build, cloud)
        fwd_ports = accepted.forwarded if accepted else None
        fwd_chained = [(g, group_chain(plan, build, g, fwd_ports, "fwd", cuts)) for g in groups]
        forwarded = [*fwd_chained, *_misdirected_chains(plan, build, denied, "fwd")]
        by_interface_fwd = dispatch(build, forwarded, "by_interface_fwd")
        forward_sections = [
            _forward_head(build, cloud),
            *_by_interface(plan, build, fwd_chained, by_interface_fwd, "fwd", cuts),
        ]
    # The base chains, each named after its hook, in the order the file declares them; a chain
    # without rules is left out (the input chain always has some).
    base: tuple[tuple[Hook, tuple[NftSection, ...]], ...] = (
        ("input", _numbered(input_sections)),
        ("forward", _numbered(forward_sections)),
        ("output", _output_sections(plan, build)),
    )
    chains = [NftChain(hook, hook, sections) for hook, sections in base if sections]
    chains += [chain for _, chain in (*chained, *guarded, *forwarded)]
    chains += build.drop_chains
    return FirewallView(
        family=TABLE_FAMILY,
        table=TABLE_NAME,
        header=tuple(header),
        enforcement=enforcement,
        counters=tuple(build.counters),
        sets=tuple(build.sets.values()),
        maps=tuple(build.maps.values()),
        chains=tuple(chains),
        groups=groups,
    )


def _numbered(sections: Sequence[NftSection]) -> tuple[NftSection, ...]:
    """A base chain's sections with their order in the comments, as the docs cite them."""
    return tuple(NftSection(f"{n}. {s.comment}", s.rules) for n, s in enumerate(sections, start=1))


def _misdirected_chains(
    plan: MachinePlan, build: FirewallBuilder, denied: Sequence[InterfaceGroup], hook: Judged
) -> list[tuple[InterfaceGroup, NftChain]]:
    """The chains of denied networks' interfaces that drop misdirected packets first."""
    found = []
    for group in denied:
        chain = misdirected_chain(plan, build, group, hook)
        if chain is not None:
            found.append((group, chain))
    return found


def _input_head(plan: MachinePlan, build: FirewallBuilder) -> list[NftSection]:
    """Input rules 1-2: replies and loopback, the failsafe.

    The failsafe comes before the destination's check (in the interface's chain), so an
    operator in the management subnets or client-cidrs reaches sshd whatever interface the
    plan thinks the packet should arrive on.
    """
    return [
        NftSection(
            # Replies first: most packets are, and they then skip the interface name's load.
            "replies and loopback: accept; invalid packets: drop",
            (
                build.accept("in", extra="ct state established,related"),
                build.accept("in", extra='iifname "lo"'),
                build.drop(INVALID_COUNTER, "in ct-invalid", extra="ct state invalid"),
            ),
        ),
        _failsafe_section(plan, build),
    ]


def _icmp_section(build: FirewallBuilder) -> NftSection:
    return NftSection(
        "essential ICMP and ICMPv6 (errors, path MTU, neighbour discovery, echo)",
        (
            build.accept("in", extra=f"icmp type {{ {', '.join(ICMP_TYPES)} }}"),
            build.accept("in", extra=f"icmpv6 type {{ {', '.join(ICMPV6_TYPES)} }}"),
        ),
    )


def _by_interface(
    plan: MachinePlan,
    build: FirewallBuilder,
    groups: Sequence[tuple[InterfaceGroup, NftChain]],
    by_interface: str | None,
    direction: Judged,
    cuts: NftRule | None = None,
) -> list[NftSection]:
    """Judged by input interface: its group's chain, then what the chains do not settle.

    The first packet of an accepted flow leaves at the group's chain. After it, in input:
    destinations in a denied network's subnets (on any interface) and essential ICMP; in
    forward: the cuts towards denied networks (for what arrives on no cloud interface). Then
    denied sources, counted under their own network, and the drop map, which counts the rest
    under the interface's network. On other interfaces only denied networks are dropped.
    """
    sections = []
    if by_interface:
        sections.append(
            NftSection(
                "by input interface: its network's chain drops what is addressed to another"
                " network and accepts what may arrive there",
                (build.lookup(by_interface),),
            )
        )
    if direction == "in":
        counted = misdirected_counter("in")
        to_denied = denied_subnet_drops(plan, build, "out", "in", counted)
        if to_denied:
            sections.append(
                NftSection(
                    "addressed to a denied network's subnets, on any interface: drop",
                    tuple(to_denied),
                )
            )
        sections.append(_icmp_section(build))
    elif cuts is not None:
        sections.append(NftSection(FORWARD_CUTS_COMMENT, (cuts,)))
    from_denied = denied_subnet_drops(plan, build, "in", direction)
    if from_denied:
        sections.append(
            NftSection(
                "from a denied network's subnets, on any interface: drop", tuple(from_denied)
            )
        )
    drops = interface_drops(plan, build, groups, direction)
    if drops:
        sections.append(
            NftSection(
                "what a network's chain handed back, and all on a denied network's interface:"
                " drop",
                (build.lookup(drops),),
            )
        )
    return sections


# The forward hook's cuts towards denied networks, for what leaves by a cloud network's NIC.
FORWARD_CUTS = "fwd_to_denied"


def _forward_cuts(plan: MachinePlan, build: FirewallBuilder, cloud: str) -> NftRule | None:
    """The jump into the cuts towards denied networks, for what leaves by a cloud NIC.

    Only what leaves by a cloud network's interface can reach one: a pod-bound packet (DNAT
    to a pod) skips these lookups. None when no network is denied.
    """
    to_denied = [
        *denied_subnet_drops(plan, build, "out", "fwd"),
        *denied_interface_drops(plan, build, "fwd"),
    ]
    if not to_denied:
        return None
    cuts = NftSection("to a denied network's subnets or out of its interfaces", tuple(to_denied))
    build.drop_chains.append(NftChain(FORWARD_CUTS, None, (cuts,)))
    return build.jump("out", cloud, FORWARD_CUTS)


def _forward_head(build: FirewallBuilder, cloud: str) -> NftSection:
    """Replies, and what neither arrives on nor leaves by a cloud network's interface."""
    return NftSection(
        "replies: accept; neither in on nor out by a cloud network's interface: not ours",
        (
            build.accept("in", extra="ct state established,related"),
            build.accept("in", extra=f"iifname != @{cloud} oifname != @{cloud}"),
        ),
    )


def _failsafe_section(plan: MachinePlan, build: FirewallBuilder) -> NftSection:
    """tcp/22 from the management subnets and client-cidrs, before any drop.

    A Juju controller knows only its own management subnets (its peers are the other
    controllers), while its agents connect from every rack: on its management interfaces, its
    API port is open to any source. Its SSH server, like sshd, serves operators: only the
    management subnets it knows and client-cidrs reach it.
    """
    management = plan.domain_of(Network.MANAGEMENT)
    failsafe = build.address_sets(
        "failsafe", [*management.subnets, *plan.config.client_cidrs], keep_empty=True
    )
    nics = (
        build.interface_set("if_juju_controller", management.interfaces)
        if CONTROLLER_ROLE in plan.roles
        else None
    )
    ports = [FAILSAFE_TCP_PORT]
    if CONTROLLER_ROLE in plan.roles:
        ports.append(PortRange.parse(JUJU_SSH_SERVER_PORT).first)
    listed = ", ".join(str(p) for p in ports)
    match = f"tcp dport {{ {listed} }}" if len(ports) > 1 else f"tcp dport {listed}"
    rules = [build.accept("in", addresses=a, extra=match) for a in failsafe]
    what = f"tcp {listed}" if len(ports) > 1 else f"tcp/{listed}"
    comment = f"failsafe: {what} from the management subnets and client-cidrs"
    if nics:
        api = PortRange.parse(JUJU_API_PORT).first
        rules.append(build.accept("in", interfaces=nics, extra=f"tcp dport {api}"))
        comment += f"; from any source on the management interfaces: tcp/{api} (Juju agents)"
    return NftSection(comment, tuple(rules))


def _output_sections(plan: MachinePlan, build: FirewallBuilder) -> tuple[NftSection, ...]:
    to_denied = denied_subnet_drops(plan, build, "out", "out")
    out_denied = denied_interface_drops(plan, build, "out")
    if not to_denied and not out_denied:
        return ()
    sections = [
        NftSection(
            "replies to connections the input chain let in, and loopback: accept",
            (
                # Replies only: a connection this host opens to a denied network is still cut.
                build.accept("out", extra="ct state established,related ct direction reply"),
                build.accept("out", extra='oifname "lo"'),
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
