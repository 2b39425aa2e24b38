"""Property tests of rendering over random clouds: real tools accept it, rules mean what they say.

The expectations restate the firewall's rules (and strict-ports) from the plan's domains,
the config and the ports (`verdicts.expected_input`), and are checked against a
first-match reading of the rendered rules (`verdicts.verdict`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netns_runner import nft_exercise
from netplan_merge import maas_netplan, netplan_generate
from subnets import net_overlap, net_within
from verdicts import address_conflicts, expected_input, listed_ports, verdict

from network_isolation.model import Network
from network_isolation.planner import MachinePlan, plan_machine
from network_isolation.ports import PROTOCOLS, MachinePorts, PortRange, machine_ports
from network_isolation.render import firewall_view, render, routing_view
from network_isolation.topology import Machine, Topology

GUIDE_ROLES = ("juju-controller", "control", "compute", "storage")
KINDS = ("ethernets", "ethernets", "vlans", "bonds", "bridges")
NETWORK_NAMES = [n.value for n in Network]
CLIENT_CHOICES = ("192.0.2.0/24", "2001:db8::/64", "10.0.0.128/25")
NON_CLOUD = {4: "203.0.113.7", 6: "2001:db8:ffff::7"}
# extra-ports choices, and ports a principal may declare (never tcp/22: that is the failsafe)
EXTRA_PORTS = ("tcp:8080", "udp:5353-5354", "tcp:9000-9100", "udp:161")
DECLARED = ("tcp:7777", "udp:6000-6010", "tcp:443")
UNLISTED_CANDIDATES = (1, 9, 1234, 23456, 65000)
OTHER_NIC = "ni-other0"  # an interface of no cloud network (OVS, br-ex, a tap)

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

TOOLS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PURE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _nic_name(kind: str, index: int) -> str:
    return {
        "ethernets": f"enp{index}s0",
        "vlans": f"enp9s0.{100 + index}",
        "bonds": f"bond{index}",
        "bridges": f"br{index}",
    }[kind]


@st.composite
def clouds(draw: st.DrawFn) -> tuple[Topology, MachinePlan]:
    """A random cloud of one machine: spaces, bindings, roles, NICs of every kind, config."""
    count = draw(st.integers(1, 6))
    spaces: dict[str, Any] = {}
    for i in range(count):
        racks = draw(st.integers(1, 3))
        subnets = [f"10.{i}.{r}.0/24" for r in range(racks)]
        if draw(st.booleans()):
            subnets += [f"fd00:{i}:{r}::/64" for r in range(racks)]
        gateways = {s: str(ipaddress.ip_network(s)[1]) for s in subnets if draw(st.booleans())}
        spaces[f"sp{i}"] = {"subnets": subnets, "gateway": gateways}
    bindings = {n: f"sp{draw(st.integers(0, count - 1))}" for n in NETWORK_NAMES}

    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=4))
    nics = [_nic_name(kind, k) for k, kind in enumerate(kinds)]
    addresses: dict[str, list[str]] = {nic: [] for nic in nics}
    for i, space in enumerate(spaces.values()):
        for subnet in space["subnets"]:
            if draw(st.integers(0, 3)) == 0:
                continue  # no address on this subnet
            nic = nics[draw(st.integers(0, len(nics) - 1))]
            net = ipaddress.ip_network(subnet)
            addresses[nic].append(f"{net[5 + i]}/{net.prefixlen}")
    if draw(st.booleans()):
        addresses[nics[0]].append("172.16.0.5/24")  # an address in no space
    interfaces = {
        nic: {"type": kind, "addresses": addresses[nic]}
        for nic, kind in zip(nics, kinds, strict=True)
        if addresses[nic]
    }

    config: dict[str, Any] = {
        "enforcement": draw(st.sampled_from(("enforce", "enforce", "audit", "off"))),
        "manage-routing": draw(st.booleans()),
        "strict-ports": draw(st.booleans()),
    }
    extra_ports = {
        net: draw(st.lists(st.sampled_from(EXTRA_PORTS), unique=True, min_size=1, max_size=2))
        for net in draw(st.lists(st.sampled_from(NETWORK_NAMES), unique=True, max_size=3))
    }
    if extra_ports:
        config["extra-ports"] = " ".join(f"{n}={','.join(p)}" for n, p in extra_ports.items())
    clients = draw(st.lists(st.sampled_from(CLIENT_CHOICES), unique=True, max_size=3))
    if clients:
        config["client-cidrs"] = " ".join(clients)
    extra = draw(st.sampled_from((None, "10.200.0.0/24", "10.0.0.0/16")))
    if extra:  # network-cidrs: a network of its own, or one overlapping a space (blocked)
        config["network-cidrs"] = f"{draw(st.sampled_from(NETWORK_NAMES))}={extra}"

    topology = Topology.model_validate(
        {
            "spaces": spaces,
            "bindings": bindings,
            "config": config,
            "machines": {
                "m": {
                    "roles": draw(st.lists(st.sampled_from(GUIDE_ROLES), unique=True)),
                    "interfaces": interfaces,
                }
            },
        }
    )
    return topology, plan_machine(topology.plan_input("m"))


Ports = MachinePorts


@st.composite
def declarations(draw: st.DrawFn, plan: MachinePlan) -> Ports | None:
    """None (the charm passes nothing: render computes the ports), or ports with declarations."""
    if not draw(st.booleans()):
        return None
    declared = {
        Network(net): tuple(
            PortRange.parse(p)
            for p in draw(st.lists(st.sampled_from(DECLARED), unique=True, min_size=1))
        )
        for net in draw(st.lists(st.sampled_from(NETWORK_NAMES), unique=True, max_size=3))
    }
    return machine_ports(plan, declared)


@st.composite
def clouds_and_ports(draw: st.DrawFn) -> tuple[Topology, MachinePlan, Ports | None]:
    """A random cloud and what the charm would pass as `ports`."""
    topology, plan = draw(clouds())
    return topology, plan, draw(declarations(plan))


def _probes(plan: MachinePlan, nic: str, ports: Ports | None) -> list[tuple[str, int]]:
    """tcp/80, and under strict-ports a listed and an unlisted port per protocol."""
    probes = [("tcp", 80)]
    listed = listed_ports(plan, nic, ports and ports.host)
    if listed is None:
        return probes
    for protocol in PROTOCOLS:
        mine = [r for r in listed if r.protocol == protocol]
        if mine:
            probes.append((protocol, mine[-1].last))
        free = next(
            p for p in UNLISTED_CANDIDATES if not any(r.first <= p <= r.last for r in mine)
        )
        probes.append((protocol, free))
    return probes


def _host(net: Net) -> str:
    return str(net[1] if net.num_addresses > 2 else net.network_address)


def _overlaps(net: Net, others: list[Net]) -> bool:
    return any(net_overlap(net, o) for o in others)


# ---------------------------------------------------------------------------------------------
# The real tools


@TOOLS
@given(clouds_and_ports())
def test_every_render_passes_nft_and_netplan(cloud: tuple[Topology, MachinePlan, Ports | None]):
    topology, plan, ports = cloud
    artefacts = render(plan, ports)
    off = plan.model_copy(update={"config": plan.config.model_copy(update={"enforcement": "off"})})
    nft_exercise(
        artefacts.nftables, off=render(off).nftables, interfaces=topology.machines["m"].interfaces
    )
    if artefacts.netplan is not None:
        netplan_generate(maas_netplan(topology.plan_input("m")), artefacts.netplan)


# ---------------------------------------------------------------------------------------------
# The rules' meaning


@PURE
@given(clouds())
def test_failsafe_is_always_there_first(cloud: tuple[Topology, MachinePlan]):
    _, plan = cloud
    text = render(plan).nftables
    view = firewall_view(plan)
    if plan.config.enforcement == "off":
        assert view.chains == ()
        assert "chain" not in text
        return
    # a Juju controller's SSH server shares the failsafe's sources
    ports = "{ 22, 17022 }" if "juju-controller" in plan.roles else "22"
    assert f"tcp dport {ports} ip saddr @failsafe_v4 accept" in text
    assert f"tcp dport {ports} ip6 saddr @failsafe_v6 accept" in text
    input_chain = view.chain("input")
    assert input_chain is not None
    failsafe = [i for i, r in enumerate(input_chain.rules) if r.extra == f"tcp dport {ports}"]
    drops = [
        i
        for i, r in enumerate(input_chain.rules)
        if r.verdict == "drop" and r.extra != "ct state invalid"
    ]
    assert len(failsafe) == 2 and (not drops or max(failsafe) < min(drops))
    sources = [*plan.domain_of(Network.MANAGEMENT).subnets, *plan.config.client_cidrs]
    elements = [*view.set("failsafe_v4").networks(), *view.set("failsafe_v6").networks()]
    for source in sources:
        assert any(net_within(source, e) for e in elements)


@PURE
@given(clouds())
def test_no_subnet_is_both_accepted_and_dropped_on_one_interface(
    cloud: tuple[Topology, MachinePlan],
):
    topology, plan = cloud
    view = firewall_view(plan)
    assert address_conflicts(view, topology.machines["m"].interfaces) == []


@PURE
@given(clouds())
def test_audit_never_drops(cloud: tuple[Topology, MachinePlan]):
    _, plan = cloud
    audit = plan.model_copy(
        update={"config": plan.config.model_copy(update={"enforcement": "audit"})}
    )
    text = render(audit).nftables
    statements = [ln for ln in text.splitlines() if not ln.strip().startswith("#")]
    assert not any(re.search(r"(^|\s)drop(\s|$)", ln) for ln in statements)
    view = firewall_view(audit)
    drops = [r for c in view.chains for r in c.rules if r.verdict == "drop"]
    assert all("goto audit_" in r.text for r in drops)


@PURE
@given(clouds_and_ports())
def test_cloud_sources_meet_rules_4_and_6(cloud: tuple[Topology, MachinePlan, Ports | None]):
    topology, plan, ports = cloud
    view = firewall_view(plan, ports)
    nics = [*topology.machines["m"].interfaces, OTHER_NIC]
    for index, domain in enumerate(plan.domains):
        others = [s for j, d in enumerate(plan.domains) if j != index for s in d.subnets]
        for subnet in domain.subnets:
            if _overlaps(subnet, others):
                continue  # ambiguous (the plan is blocked): not a question of rules
            source = _host(subnet)
            for nic in nics:
                for protocol, port in _probes(plan, nic, ports):
                    expected = expected_input(
                        plan, nic, source, protocol, port, ports and ports.host
                    )
                    got = verdict(view, "input", nic, source, port, protocol)
                    assert got == expected, (nic, source, protocol, port)
            out = "drop" if not domain.allowed and plan.config.enforcement != "off" else "accept"
            assert verdict(view, "output", OTHER_NIC, source) == out


@PURE
@given(clouds_and_ports())
def test_other_sources_meet_rules_5_6_and_7(cloud: tuple[Topology, MachinePlan, Ports | None]):
    topology, plan, ports = cloud
    view = firewall_view(plan, ports)
    cloud_subnets = [s for d in plan.domains for s in d.subnets]
    sources = dict.fromkeys(NON_CLOUD.values(), False)
    sources.update({_host(c): True for c in plan.config.client_cidrs})
    for source, client in sources.items():
        address = ipaddress.ip_address(source)
        if any(address in s for s in cloud_subnets):
            continue
        if not client and any(address in c for c in plan.config.client_cidrs):
            continue
        for nic in [*topology.machines["m"].interfaces, OTHER_NIC]:
            for protocol, port in _probes(plan, nic, ports):
                expected = expected_input(plan, nic, source, protocol, port, ports and ports.host)
                got = verdict(view, "input", nic, source, port, protocol)
                assert got == expected, (nic, source, protocol, port)


@PURE
@given(clouds_and_ports())
def test_strict_ports_drop_unlisted_and_accept_listed_on_allowed_networks(
    cloud: tuple[Topology, MachinePlan, Ports | None],
):
    """On an allowed network's NIC, from its own subnets: a listed port passes, others not."""
    topology, plan, ports = cloud
    strict = plan.model_copy(
        update={
            "config": plan.config.model_copy(
                update={"strict_ports": True, "enforcement": "enforce"}
            )
        }
    )
    view = firewall_view(strict, ports)
    for domain in strict.allowed_domains:
        others = [s for d in strict.domains if d != domain for s in d.subnets]
        subnets = [s for s in domain.subnets if not _overlaps(s, others)]
        for nic in domain.interfaces:
            if not subnets or nic in strict.denied_interfaces:
                continue
            listed = listed_ports(strict, nic, ports and ports.host) or []
            source = _host(subnets[0])
            for protocol, port in _probes(strict, nic, ports)[1:]:
                expected = any(
                    r.protocol == protocol and r.first <= port <= r.last for r in listed
                )
                got = verdict(view, "input", nic, source, port, protocol)
                assert got == ("accept" if expected else "drop"), (nic, protocol, port)


@PURE
@given(clouds())
def test_failsafe_accepts_ssh_everywhere(cloud: tuple[Topology, MachinePlan]):
    topology, plan = cloud
    view = firewall_view(plan)
    sources = [*plan.domain_of(Network.MANAGEMENT).subnets, *plan.config.client_cidrs]
    for source in sources:
        for nic in [*topology.machines["m"].interfaces, OTHER_NIC]:
            assert verdict(view, "input", nic, _host(source), 22) == "accept"


def _check_routed_interface(
    machine: Machine, kind: str, name: str, interface: dict[str, Any]
) -> tuple[list[int], list[tuple[int, str]], set[str]]:
    """One interface of our netplan file: its priorities, (table, destination)s, `from`s."""
    assert machine.interfaces[name].type == kind
    assert set(interface) == {"routes", "routing-policy"}  # never addresses
    addresses = machine.interfaces[name].addresses
    tables = {r["table"] for r in interface["routes"]}
    priorities, sources = [], set()
    for rule in interface["routing-policy"]:
        priorities.append(rule["priority"])
        assert 100 <= rule["table"] < 253 and rule["table"] in tables
        assert ("from" in rule) != ("to" in rule)
        if "from" in rule:
            assert rule["from"] in {str(a.ip) for a in addresses}  # on its own NIC
            sources.add(rule["from"])
        else:
            route = next(
                r
                for r in interface["routes"]
                if r["to"] == rule["to"] and r["table"] == rule["table"]
            )
            assert "via" in route
    destinations = []
    for route in interface["routes"]:
        assert ("via" in route) != (route.get("scope") == "link")
        destinations.append((route["table"], route["to"]))
        if route.get("scope") == "link":  # a connected route: on the NIC of the subnet
            subnet = ipaddress.ip_network(route["to"])
            assert any(net_within(subnet, a.network) for a in addresses)
    return priorities, destinations, sources


@PURE
@given(clouds())
def test_policy_routing_is_well_formed(cloud: tuple[Topology, MachinePlan]):
    topology, plan = cloud
    netplan = render(plan).netplan
    if not plan.config.manage_routing or len(plan.domains) == 1:
        assert netplan is None
    view = routing_view(plan)
    assert (view is None) == (netplan is None)
    if netplan is None:
        return
    doc = yaml.safe_load(netplan)["network"]
    assert doc.pop("version") == 2
    priorities: list[int] = []
    destinations: list[tuple[int, str]] = []
    sources: set[str] = set()
    for kind, section in doc.items():
        for name, interface in section.items():
            found = _check_routed_interface(topology.machines["m"], kind, name, interface)
            priorities += found[0]
            destinations += found[1]
            sources |= found[2]
    assert len(priorities) == len(set(priorities))
    assert len(destinations) == len(set(destinations))  # each destination once per table
    # every routable address of an allowed domain has its rule, whatever NIC holds it
    for domain in plan.allowed_domains:
        for bound in domain.bound:
            if not bound.address.ip.is_link_local:
                assert str(bound.address.ip) in sources
