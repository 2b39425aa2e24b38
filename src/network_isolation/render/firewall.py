"""The firewall's layout: which rules, in which order, in which chain, from a plan.

The input chain: loopback and replies; the failsafe; what is addressed to one network but
arrives on another network's interface (and anything addressed to a denied network's subnets);
essential ICMP; then one lookup of the input interface that jumps into its network's chain
(`network_rules`), the drops of denied networks' sources, and one lookup that drops what the
network's chain handed back (and all on a denied network's interface). The forward chain:
replies, then nothing more for traffic that neither arrives on nor leaves by a cloud network's
interface; else the same check of the destination's network, the drops towards denied
networks, as for output, and the same lookups and drops as input (with strict ports, into
chains of their own that judge the port the client used). The output chain, when a network is
denied: replies, then the drops towards denied networks. The first packet of an accepted flow
meets one set lookup by address.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..base import Enforcement
from ..canary import INVALID_COUNTER
from ..model import Network
from ..planner import MachinePlan
from ..ports import JUJU_API_PORT, JUJU_SSH_SERVER_PORT, MachinePorts, PortRange
from .common import file_header
from .network_rules import (
    InterfaceGroup,
    denied_interface_drops,
    denied_subnet_drops,
    dispatch,
    group_chain,
    interface_drops,
    interface_groups,
    misdirected_drops,
    strict_ports,
)
from .nft import (
    TABLE_FAMILY,
    TABLE_NAME,
    FirewallBuilder,
    Hook,
    NftChain,
    NftMap,
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
    cloud = build.interface_set("if_space", {i for d in plan.domains for i in d.interfaces})
    input_head = _input_head(plan, build)
    groups = interface_groups(plan)
    chained = [(g, group_chain(plan, build, g, accepted and accepted.host)) for g in groups]
    by_interface = dispatch(build, chained)
    # Without strict ports both hooks share the chains; with them, forwarded flows have theirs.
    forwarded, by_interface_fwd = chained, by_interface
    if accepted is not None:
        forwarded = [(g, group_chain(plan, build, g, accepted.forwarded, "fwd")) for g in groups]
        by_interface_fwd = dispatch(build, forwarded, "by_interface_fwd")
    # The base chains, each named after its hook, in the order the file declares them; a chain
    # without rules is left out (the input chain always has some).
    base: tuple[tuple[Hook, tuple[NftSection, ...]], ...] = (
        ("input", (*input_head, *_by_interface(plan, build, chained, by_interface, "in", 5))),
        ("forward", _forward_sections(plan, build, cloud, forwarded, by_interface_fwd)),
        ("output", _output_sections(plan, build)),
    )
    chains = [NftChain(hook, hook, sections) for hook, sections in base if sections]
    chains += [chain for _, chain in chained]
    if forwarded is not chained:
        chains += [chain for _, chain in forwarded]
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


def _input_head(plan: MachinePlan, build: FirewallBuilder) -> list[NftSection]:
    """Input rules 1-4: loopback and replies, the failsafe, the destination's network, ICMP.

    The failsafe comes before the destination's check, so an operator in the management
    subnets or client-cidrs reaches sshd whatever interface the plan thinks the packet should
    arrive on.
    """
    sections: list[NftSection] = [
        NftSection(
            "1. loopback and replies: accept; invalid packets: drop",
            (
                build.accept("in", extra='iifname "lo"'),
                build.accept("in", extra="ct state established,related"),
                build.drop(INVALID_COUNTER, "in ct-invalid", extra="ct state invalid"),
            ),
        ),
        _failsafe_section(plan, build),
    ]
    misdirected = misdirected_drops(plan, build, "in")
    if misdirected:
        sections.append(NftSection(f"3. {MISDIRECTED_COMMENT}", tuple(misdirected)))
    sections.append(
        NftSection(
            "4. essential ICMP and ICMPv6 (errors, path MTU, neighbour discovery, echo)",
            (
                build.accept("in", extra=f"icmp type {{ {', '.join(ICMP_TYPES)} }}"),
                build.accept("in", extra=f"icmpv6 type {{ {', '.join(ICMPV6_TYPES)} }}"),
            ),
        )
    )
    return sections


MISDIRECTED_COMMENT = (
    "in on a cloud network's interface, addressed (before any DNAT) to another network's"
    " subnets: drop"
)


def _by_interface(
    plan: MachinePlan,
    build: FirewallBuilder,
    groups: Sequence[tuple[InterfaceGroup, NftChain]],
    by_interface: str | None,
    direction: Literal["in", "fwd"],
    first: int,
) -> list[NftSection]:
    """Judged by input interface: its network's chain, denied sources, then what is left.

    The first packet of an accepted flow leaves at the chain (one address lookup); denied
    sources are counted under their own network; the drop map counts the rest under the
    interface's network. On other interfaces only denied sources are dropped.
    """
    sections = []
    if by_interface:
        sections.append(
            NftSection(
                f"{first}. by input interface: its network's chain accepts what may arrive there",
                (build.lookup(by_interface),),
            )
        )
    from_denied = denied_subnet_drops(plan, build, "in", direction)
    if from_denied:
        sections.append(
            NftSection(
                f"{first + 1}. from a denied network's subnets, on any interface: drop",
                tuple(from_denied),
            )
        )
    drops = interface_drops(plan, build, groups, direction)
    if drops:
        sections.append(
            NftSection(
                f"{first + 2}. what a network's chain handed back, and all on a denied"
                " network's interface: drop",
                (build.lookup(drops),),
            )
        )
    return sections


# The forward hook's cuts towards denied networks, for what leaves by a cloud network's NIC.
FORWARD_CUTS = "fwd_to_denied"


def _forward_sections(
    plan: MachinePlan,
    build: FirewallBuilder,
    cloud: str | None,
    groups: Sequence[tuple[InterfaceGroup, NftChain]],
    by_interface: str | None,
) -> tuple[NftSection, ...]:
    """Forwarded packets (DNAT to a pod, routed through the host) judged like input."""
    if cloud is None:
        return ()
    sections = [
        NftSection(
            "1. replies: accept; neither in on nor out by a cloud network's interface: not ours",
            (
                build.accept("in", extra="ct state established,related"),
                build.accept("in", extra=f"iifname != @{cloud} oifname != @{cloud}"),
            ),
        )
    ]
    misdirected = misdirected_drops(plan, build, "fwd")
    if misdirected:
        sections.append(NftSection(f"2. {MISDIRECTED_COMMENT}", tuple(misdirected)))
    to_denied = [
        *denied_subnet_drops(plan, build, "out", "fwd"),
        *denied_interface_drops(plan, build, "fwd"),
    ]
    if to_denied:
        # Only what leaves by a cloud network's interface can reach one: a pod-bound packet
        # (DNAT to a pod) skips these lookups.
        cuts = NftSection(
            "to a denied network's subnets or out of its interfaces", tuple(to_denied)
        )
        build.drop_chains.append(NftChain(FORWARD_CUTS, None, (cuts,)))
        sections.append(
            NftSection(
                "3. out by a cloud network's interface: to a denied network: drop",
                (build.jump("out", cloud, FORWARD_CUTS),),
            )
        )
    sections += _by_interface(plan, build, groups, by_interface, "fwd", 4)
    return tuple(sections)


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
    comment = f"2. failsafe: {what} from the management subnets and client-cidrs"
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
