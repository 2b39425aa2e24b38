"""The firewall's rules by example: layout, semantics, counters, audit and off, strict ports.

Expected values are written out by hand from the example topologies; the ruleset is checked
with a packet-by-packet verdict of its rules and, where the kernel matters, by the real `nft`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

import pytest
from goldens import golden_files
from netns_runner import nft_exercise, nft_rule_count
from topologies import partial_topology, plan_of
from verdicts import address_conflicts, expected_input, listed_ports, verdict

from network_isolation.model import Network
from network_isolation.planner import MachinePlan
from network_isolation.ports import MachinePorts, PortRange, machine_ports
from network_isolation.render import firewall_view, render, strict_ports
from network_isolation.topology import Topology

GOLDEN = golden_files()
NFT_CASES = sorted(k for k in GOLDEN if k.endswith("/nftables.conf"))
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")


# ---------------------------------------------------------------------------------------------
# Firewall semantics, by example


def test_rule_layout_of_a_storage_node(maas: Topology):
    text = render(plan_of(maas, "storage-3")).nftables
    order = [
        "ct state established,related accept",
        'iifname "lo" accept',
        'ct state invalid counter name "drop_in_invalid" drop',
        "tcp dport 22 ip saddr @failsafe_v4 accept",
        "tcp dport 22 ip6 saddr @failsafe_v6 accept",
        "iifname vmap @by_interface",
        'ip daddr @net_data_v4 counter name "drop_in_misdirected" drop',
        "icmp type { destination-unreachable, time-exceeded, parameter-problem, echo-request,"
        " echo-reply } accept",
        'ip saddr @net_data_v4 counter name "drop_in_data" drop',
        "iifname vmap @drop_in",
        "chain forward {",
        "ct state established,related accept",
        "iifname != @if_space oifname != @if_space accept",
        "iifname vmap @by_interface_fwd",
        "oifname @if_space jump fwd_to_denied",
        'ip saddr @net_data_v4 counter name "drop_fwd_data" drop',
        "iifname vmap @drop_fwd",
        "chain output {",
        'ip daddr @net_public_v4 counter name "drop_out_public" drop',
        "chain net_storage {",
        'ip daddr @misdirected_in_storage_v4 counter name "drop_in_misdirected" drop',
        "ip saddr @net_storage_v4 accept",
        "chain fwd_storage {",
        "ct original ip daddr @misdirected_fwd_storage_v4"
        ' counter name "drop_fwd_misdirected" drop',
        "oifname @if_space jump fwd_to_denied",
        "ip saddr @net_storage_v4 accept",
        "chain drop_in_storage {",
        'counter name "drop_in_storage" drop',
        "chain fwd_to_denied {",
        'ip daddr @net_data_v4 counter name "drop_fwd_data" drop',
        "chain drop_fwd_storage {",
        'counter name "drop_fwd_storage" drop',
    ]
    assert_in_order(text[text.index("chain input") :], order)
    assert '"enp4s0" : jump net_storage' in text
    assert '"enp4s0" : jump fwd_storage' in text
    assert '"enp4s0" : goto drop_fwd_storage' in text
    assert "table inet network_isolation\ndelete table inet network_isolation\n" in text
    assert "flush" not in text
    # The forward hook, on purpose: it judges what the host routes (DNAT to a pod).
    assert "type filter hook forward priority filter; policy accept;" in text
    assert re.search(r"\biif |\boif ", text) is None
    assert text.startswith("# network-isolation: nftables ruleset of machine 'storage-3'")
    assert "do not edit" in text


def test_semantics_of_a_control_node(maas: Topology):
    view = firewall_view(plan_of(maas, "control-1"))
    # own subnets on own interface; another cloud network on it; a denied network anywhere
    assert verdict(view, "input", "enp2s0", "10.20.0.99", 5672) == "accept"
    assert verdict(view, "input", "enp2s0", "10.30.0.99", 5672) == "drop"
    assert verdict(view, "input", "enp1s0", "10.60.0.99", 80) == "drop"
    assert verdict(view, "input", "tap1234", "10.40.0.7", 80) == "drop"
    # other sources: accepted on public, on management only from client-cidrs, else dropped
    assert verdict(view, "input", "enp3s0", "203.0.113.9", 443) == "accept"
    assert verdict(view, "input", "enp1s0", "10.99.0.9", 17070) == "accept"
    assert verdict(view, "input", "enp1s0", "203.0.113.9", 17070) == "drop"
    assert verdict(view, "input", "enp2s0", "203.0.113.9", 5672) == "drop"
    # the failsafe wins over every drop: SSH from management or a client, even on storage
    assert verdict(view, "input", "enp4s0", "10.10.0.9", 22) == "accept"
    assert verdict(view, "input", "enp2s0", "fd00:99::9", 22) == "accept"
    # interfaces of no cloud network (OVS, br-ex, taps) are not ours to decide
    assert verdict(view, "input", "br-ex", "198.51.100.7", 80) == "accept"
    # output: only denied networks are dropped
    assert verdict(view, "output", "enp1s0", "10.60.0.31") == "drop"
    assert verdict(view, "output", "enp4s0", "10.50.1.33") == "accept"
    assert address_conflicts(view, ["enp1s0", "enp2s0", "enp3s0", "enp4s0"]) == []


def test_forward_semantics_of_a_control_node(maas: Topology):
    """Forwarded packets (a VIP DNATed to a pod) get the input verdicts of their interface."""
    view = firewall_view(plan_of(maas, "control-1"))
    pod = "10.1.0.5"

    def forward(nic: str, source: str, out: str = "lxc1", to: str = pod, port: int = 443) -> str:
        return verdict(view, "forward", nic, source, port, out_interface=out, destination=to)

    # into a pod from an allowed network's interface: as if addressed to the host
    assert forward("enp2s0", "10.20.0.99") == "accept"  # internal VIP from internal
    assert forward("enp2s0", "203.0.113.9") == "drop"  # internal VIP from the internet
    assert forward("enp2s0", "10.10.0.99") == "drop"  # internal VIP from management
    assert forward("enp3s0", "203.0.113.9") == "accept"  # public VIP: API users
    assert forward("enp3s0", "10.20.0.99") == "drop"  # public VIP from another network
    assert forward("enp4s0", "10.99.0.9") == "drop"  # storage VIP from a client
    assert forward("enp1s0", "10.99.0.9") == "accept"  # management from a client
    assert forward("enp3s0", "10.40.0.7") == "drop"  # a denied network, any interface
    # no failsafe for forwarded packets: SSH to a pod is a service like any other
    assert forward("enp4s0", "10.10.0.9", port=22) == "drop"
    # pod egress: out by a space interface, cut only towards denied networks
    assert forward("lxc1", pod, out="enp1s0", to="10.10.0.9") == "accept"
    assert forward("lxc1", pod, out="enp1s0", to="10.40.0.7") == "drop"
    assert forward("lxc1", pod, out="enp1s0", to="fd00:60::7") == "drop"
    # neither in on nor out by a space interface: pod to pod, instances, bridges
    assert forward("vxlan.calico", "10.1.1.5") == "accept"
    assert forward("tap1234", "10.40.0.7", out="tap5678", to="10.40.0.8") == "accept"


def test_forward_counters_name_network_and_direction(maas: Topology):
    plan = plan_of(maas, "control-1")
    audit = plan.model_copy(
        update={"config": plan.config.model_copy(update={"enforcement": "audit"})}
    )
    text = render(audit).nftables
    assert 'log prefix "network-isolation audit forward internal: "' in text
    assert 'log prefix "network-isolation audit forward data: "' in text
    view = firewall_view(plan)
    assert view.map("drop_fwd").target("enp2s0") == "goto drop_fwd_internal"
    assert view.map("drop_in").target("enp2s0") == "goto drop_in_internal"
    assert view.map("by_interface").target("enp2s0") == "jump net_internal"
    assert view.map("by_interface").target("br-ex") is None


def test_denied_nic_is_dropped_on_input_and_output():
    plan = plan_of(partial_topology(), "storage-1")  # a tenant NIC, but no compute role
    view = firewall_view(plan)
    assert plan.denied_interfaces == ("enp3s0",)
    assert verdict(view, "input", "enp3s0", "198.51.100.1", 80) == "drop"
    assert verdict(view, "output", "enp3s0", "198.51.100.1") == "drop"
    assert verdict(view, "input", "enp3s0", "10.1.0.9", 22) == "accept"  # failsafe
    # forwarded: nothing in on it, nothing out by it
    forward = verdict(view, "forward", "enp3s0", "10.1.0.9", 22, out_interface="lxc1")
    assert forward == "drop"
    out = verdict(
        view, "forward", "lxc1", "10.1.0.9", out_interface="enp3s0", destination="10.9.9.9"
    )
    assert out == "drop"


def test_shared_nic_accepts_every_allowed_network_it_carries():
    view = firewall_view(plan_of(partial_topology(), "edge-1"))  # oam and api on enp1s0
    assert verdict(view, "input", "enp1s0", "10.1.0.9", 80) == "accept"
    assert verdict(view, "input", "enp1s0", "10.2.0.9", 80) == "accept"
    assert verdict(view, "input", "enp1s0", "10.5.0.9", 80) == "drop"
    assert verdict(view, "input", "enp2s0", "10.2.0.9", 80) == "drop"
    assert address_conflicts(view, ["enp1s0", "enp2s0"]) == []


def test_sole_space_drops_nothing_but_invalid_packets(single: Topology):
    for machine in single.machines:
        view = firewall_view(plan_of(single, machine))
        drops = [r for c in view.chains for r in c.rules if r.verdict in ("drop", "return")]
        # one space: every interface carries every subnet, nothing is misdirected
        assert [r.extra for r in drops] == ["ct state invalid"]
        assert [m.name for m in view.maps] == ["by_interface", "by_interface_fwd"]


def test_client_cidrs_overlapping_a_cloud_subnet_stay_consistent():
    plan = plan_of(partial_topology(), "juju-1")
    view = firewall_view(plan)
    # 10.1.0.128/25 (a client range) lies inside oam: accepted there as oam
    assert "10.1.0.128/25" not in view.set("clients_v4").elements
    assert view.set("failsafe_v4").elements == ("10.1.0.0/24", "192.0.2.0/24")
    assert address_conflicts(view, ["enp1s0"]) == []


def test_counters_are_named_per_network_and_direction(maas: Topology):
    view = firewall_view(plan_of(maas, "compute-1"))
    assert set(view.counters) == {
        "drop_in_invalid",
        "drop_in_misdirected",
        "drop_fwd_misdirected",
        "drop_in_public",
        "drop_in_storage_cluster",
        "drop_in_data",
        "drop_in_internal",
        "drop_in_management",
        "drop_in_storage",
        "drop_out_public",
        "drop_out_storage_cluster",
        "drop_fwd_public",
        "drop_fwd_storage_cluster",
        "drop_fwd_data",
        "drop_fwd_internal",
        "drop_fwd_management",
        "drop_fwd_storage",
    }
    for path in NFT_CASES:
        counters = re.findall(r"^\tcounter (\S+) \{$", GOLDEN[path], re.M)
        assert all(IDENTIFIER.match(c) for c in counters), counters
        used = set(re.findall(r'counter name "([^"]+)"', GOLDEN[path]))
        assert used == set(counters)


def assert_in_order(text: str, statements: list[str]) -> None:
    """Every statement is a line of text (stripped), and they come in this order.

    Each is looked for after the one before it, so a statement may appear in several chains.
    """
    lines = [line.strip() for line in text.splitlines()]
    position = -1
    for statement in statements:
        assert statement in lines[position + 1 :], f"{statement!r} missing after line {position}"
        position = lines.index(statement, position + 1)


def _statements(ruleset: str) -> list[str]:
    return [line.strip() for line in ruleset.splitlines() if not line.strip().startswith("#")]


def test_every_drop_has_a_counter():
    for path in NFT_CASES:
        for line in _statements(GOLDEN[path]):
            if re.search(r"\sdrop$", line):
                assert 'counter name "drop_' in line, line


def test_audit_logs_and_counts_instead_of_dropping(maas: Topology):
    plan = plan_of(maas, "storage-3")
    audit = plan.model_copy(
        update={"config": plan.config.model_copy(update={"enforcement": "audit"})}
    )
    enforce_view, audit_view = firewall_view(plan), firewall_view(audit)
    text = render(audit).nftables
    assert all(re.search(r"(^|\s)drop(\s|$)", line) is None for line in _statements(text))
    assert 'log prefix "network-isolation audit in storage-cluster: "' in text
    assert "limit rate 10/minute" in text
    # same rules in the base chains, same counters
    assert enforce_view.counters == audit_view.counters
    for name in ("input", "output"):
        enforce, audited = enforce_view.chain(name), audit_view.chain(name)
        assert enforce is not None and audited is not None
        assert len(enforce.rules) == len(audited.rules)
    nft_exercise(text)


def test_off_only_removes_our_table(maas: Topology):
    plan = plan_of(maas, "hyper-1")
    off = plan.model_copy(update={"config": plan.config.model_copy(update={"enforcement": "off"})})
    text = render(off).nftables
    statements = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert statements == [
        "table inet network_isolation",
        "delete table inet network_isolation",
    ]


def _control_node(
    extra_v4: int, extra_v6: int = 0, config: Mapping[str, object] | None = None
) -> MachinePlan:
    """A control node of a six-space cloud whose storage space has extra subnets."""
    spaces = {
        name: [f"10.{n}0.0.0/24", f"fd00:{n}0::/64"]
        for n, name in enumerate(("oam", "int", "pub", "ten", "cph", "rep"), start=1)
    }
    spaces["cph"] += [f"10.5.{k // 256}.{k % 256}/32" for k in range(extra_v4)]
    spaces["cph"] += [f"fd00:5::{k:x}:0/112" for k in range(extra_v6)]
    topology = Topology.model_validate(
        {
            "spaces": spaces,
            "bindings": {
                "data": "ten",
                "internal": "int",
                "management": "oam",
                "public": "pub",
                "storage": "cph",
                "storage-cluster": "rep",
            },
            "config": {"client-cidrs": "192.0.2.0/24", **(config or {})},
            "machines": {
                "m": {
                    "roles": ["control"],
                    "interfaces": {f"enp{n}s0": [f"10.{n}0.0.5/24"] for n in range(1, 7)},
                }
            },
        }
    )
    return plan_of(topology, "m")


def test_rule_count_does_not_grow_with_subnets():
    """1 subnet per family in the storage space, then 1,000 more of each: same rules."""

    def plan(count: int) -> MachinePlan:
        return _control_node(count, count)

    small, large = plan(0), plan(1000)
    assert len(large.domain_of(Network.STORAGE).subnets) == 2002
    views = [firewall_view(small), firewall_view(large)]
    assert views[0].rule_count == views[1].rule_count
    assert sum(len(s.elements) for s in views[1].sets) > 4000
    kernel = [nft_rule_count(render(p).nftables) for p in (small, large)]
    assert kernel == [views[0].rule_count] * 2


# ---------------------------------------------------------------------------------------------
# strict-ports


def _strict(plan: MachinePlan, **options: object) -> MachinePlan:
    config = plan.config.model_copy(update={"strict_ports": True, **options})
    return plan.model_copy(update={"config": config})


def test_strict_rule_layout_of_a_control_node(maas: Topology):
    text = render(_strict(plan_of(maas, "control-1"))).nftables
    order = [
        "ct state established,related accept",
        'iifname "lo" accept',
        'ct state invalid counter name "drop_in_invalid" drop',
        "tcp dport 22 ip saddr @failsafe_v4 accept",
        "iifname vmap @by_interface",
        'ip saddr @net_data_v4 counter name "drop_in_data" drop',
        "iifname vmap @drop_in",
        "chain net_internal {",
        "tcp dport @ports_internal_tcp ip saddr @net_internal_v4 accept",
        "udp dport @ports_internal_udp ip saddr @net_internal_v4 accept",
        "tcp dport @ports_internal_tcp ip6 saddr @net_internal_v6 accept",
        "chain net_management {",
        "tcp dport @ports_management_tcp ip saddr @clients_v4 accept",
        "chain net_public {",
        "ip saddr @cross_public_v4 return",
        "tcp dport @ports_public_tcp accept",
        "udp dport @ports_public_udp accept",
        "chain drop_in_public {",
        'counter name "drop_in_public" drop',
    ]
    assert_in_order(text[text.index("chain input") :], order)
    assert "\tset ports_public_tcp {\n\t\ttype inet_service\n\t\tflags interval\n" in text
    view = firewall_view(_strict(plan_of(maas, "control-1")))
    assert view.set("ports_internal_tcp").elements == (
        "2379-2380", "4240", "4244", "6400", "6443", "7946", "9000", "10250"
    )  # fmt: skip
    assert view.set("ports_internal_udp").elements == ("7946", "8472")
    assert view.set("ports_public_tcp").elements == ()  # the APIs are VIPs, forwarded
    assert view.set("ports_storage_tcp").elements == ()  # a Ceph client only: nothing listens


def test_strict_semantics_of_a_control_node(maas: Topology):
    plan = _strict(plan_of(maas, "control-1"))
    view = firewall_view(plan)
    cases = [
        # own subnets: the network's ports only, per protocol
        ("enp2s0", "10.20.0.99", "tcp", 5672, "drop"),  # RabbitMQ is a VIP, forwarded
        ("enp2s0", "fd00:20::99", "tcp", 6443, "accept"),
        ("enp2s0", "fd00:20::99", "tcp", 6642, "drop"),  # OVN SB: on management
        ("enp2s0", "10.20.0.99", "tcp", 6643, "drop"),  # OVN raft: on management
        ("enp2s0", "10.20.0.99", "udp", 7946, "accept"),
        ("enp2s0", "10.20.0.99", "udp", 8472, "accept"),
        ("enp2s0", "10.20.0.99", "tcp", 8472, "drop"),
        ("enp2s0", "10.20.0.99", "tcp", 3306, "drop"),
        ("enp4s0", "10.50.0.99", "tcp", 6789, "drop"),
        # public: any source, public ports only; none of the host's own (the APIs are VIPs)
        ("enp3s0", "203.0.113.9", "tcp", 443, "drop"),
        ("enp3s0", "10.30.0.99", "tcp", 80, "drop"),
        ("enp3s0", "203.0.113.9", "tcp", 8080, "drop"),
        ("enp3s0", "203.0.113.9", "udp", 443, "drop"),
        ("enp3s0", "10.20.0.99", "tcp", 443, "drop"),  # another cloud network's subnets
        # management: own subnets and client-cidrs, management ports only
        ("enp1s0", "10.99.0.9", "tcp", 6443, "accept"),
        ("enp1s0", "10.10.0.9", "udp", 68, "accept"),
        ("enp1s0", "10.10.0.9", "tcp", 6643, "accept"),
        ("enp1s0", "10.10.0.9", "tcp", 7000, "drop"),  # clusterd: on the infra machines
        ("enp1s0", "10.99.0.9", "tcp", 17070, "drop"),  # not a controller
        ("enp1s0", "203.0.113.9", "tcp", 6443, "drop"),
        # the failsafe wins, and interfaces of no cloud network are not ours
        ("enp4s0", "10.10.0.9", "tcp", 22, "accept"),
        ("enp2s0", "fd00:99::9", "tcp", 22, "accept"),
        ("br-ex", "198.51.100.7", "tcp", 8080, "accept"),
        ("enp1s0", "10.40.0.7", "tcp", 6443, "drop"),  # a denied network, listed port or not
    ]
    for nic, source, protocol, port, expected in cases:
        assert verdict(view, "input", nic, source, port, protocol) == expected, (nic, source, port)
        assert expected_input(plan, nic, source, protocol, port) == expected, (nic, source, port)
    assert address_conflicts(view, ["enp1s0", "enp2s0", "enp3s0", "enp4s0"]) == []


def test_strict_without_ports_uses_the_catalogue_and_extra_ports(maas: Topology):
    plan = _strict(plan_of(maas, "compute-1"), extra_ports={Network.DATA: (("udp", 4789, 4789),)})
    assert render(plan) == render(plan, machine_ports(plan))
    view = firewall_view(plan)
    assert view.set("ports_data_udp").elements == ("4789", "6081", "8311")
    assert verdict(view, "input", "enp5s0", "10.40.0.9", 4789, "udp") == "accept"
    assert strict_ports(plan) == machine_ports(plan)


def test_declared_ports_open_only_with_the_declaration(maas: Topology):
    plan = _strict(plan_of(maas, "compute-1"))
    declared = {Network.INTERNAL: (PortRange.parse("tcp:7777"),)}
    with_declared = firewall_view(plan, machine_ports(plan, declared))
    without = firewall_view(plan)
    assert verdict(with_declared, "input", "enp2s0", "10.20.0.9", 7777) == "accept"
    assert verdict(without, "input", "enp2s0", "10.20.0.9", 7777) == "drop"
    assert verdict(with_declared, "input", "enp2s0", "10.20.0.9", 8775) == "drop"
    assert with_declared.rule_count == without.rule_count
    assert expected_input(
        plan, "enp2s0", "10.20.0.9", "tcp", 7777, machine_ports(plan, declared).host
    )
    assert listed_ports(plan, "enp2s0", machine_ports(plan, declared).host) == [
        PortRange.parse("tcp:7777"),
    ]
    # On a network with catalogue ports, a declaration adds to them.
    declared = {Network.DATA: (PortRange.parse("tcp:7777"),)}
    listed = listed_ports(plan, "enp5s0", machine_ports(plan, declared).host) or []
    assert PortRange.parse("tcp:7777") in listed and PortRange.parse("tcp:16509") in listed


def test_ports_of_networks_the_machine_may_not_use_are_never_opened(maas: Topology):
    plan = _strict(plan_of(maas, "storage-1"))  # no public, internal or data
    given = {Network.PUBLIC: (PortRange.parse("tcp:443"),)}
    ports = MachinePorts(host=given, forwarded=given)
    view = firewall_view(plan, ports)
    assert all("public" not in s.name for s in view.sets if s.type == "inet_service")
    assert verdict(view, "input", "enp1s0", "10.30.0.9", 443) == "drop"
    nothing = {Network.MANAGEMENT: (), Network.STORAGE: (), Network.STORAGE_CLUSTER: ()}
    assert strict_ports(plan, ports) == MachinePorts(nothing, nothing)


def test_ports_are_ignored_without_strict_ports(maas: Topology):
    plan = plan_of(maas, "control-1")
    every = {Network.INTERNAL: (PortRange.parse("tcp:1-65535"),)}
    ports = MachinePorts(host=every, forwarded=every)
    assert render(plan, ports).nftables == GOLDEN["microstack-maas/control-1/nftables.conf"]
    assert strict_ports(plan, ports) is None


def test_strict_audit_logs_instead_of_dropping_on_public(maas: Topology):
    plan = _strict(plan_of(maas, "control-1"), enforcement="audit")
    text = render(plan).nftables
    assert all(re.search(r"(^|\s)drop(\s|$)", line) is None for line in _statements(text))
    assert '"enp3s0" : goto audit_drop_in_public' in text
    assert '"enp3s0" : goto audit_drop_fwd_public' in text
    view = firewall_view(plan)
    assert verdict(view, "input", "enp3s0", "203.0.113.9", 8080) == "drop"  # would drop


def test_strict_rule_count_constant_in_subnets_and_ports():
    """1 subnet and no extra port, then 1,000 more subnets and 1,000 port ranges: same rules."""

    def plan(count: int, strict: bool = True) -> MachinePlan:
        ports = ",".join(f"tcp:{20000 + 3 * k}-{20001 + 3 * k}" for k in range(count))
        config: dict[str, object] = {"strict-ports": strict}
        if count:
            config["extra-ports"] = f"internal={ports} public={ports.replace('tcp', 'udp')}"
        return _control_node(count, config=config)

    small, large = plan(0), plan(1000)
    views = [firewall_view(small), firewall_view(large)]
    assert len(views[1].set("ports_internal_tcp").elements) > 1000
    assert len(views[1].set("ports_public_udp").elements) == 1000
    assert views[0].rule_count == views[1].rule_count
    assert firewall_view(plan(0, strict=False)).rule_count < views[0].rule_count
    kernel = [nft_rule_count(render(p).nftables) for p in (small, large)]
    assert kernel == [views[0].rule_count] * 2


@pytest.mark.parametrize("strict", [False, True])
def test_ipv6_link_local_is_accepted_on_allowed_interfaces(maas: Topology, strict: bool):
    plan = plan_of(maas, "compute-1")
    if strict:
        plan = _strict(plan)
    view = firewall_view(plan)
    # enp2s0 is compute-1's internal NIC: a DHCPv6 server or router on that link is fine
    assert verdict(view, "input", "enp2s0", "fe80::1", 547, "udp") == (
        "drop" if strict else "accept"
    )
    # tcp/16509 (libvirt) is in compute's data catalogue, so strict mode keeps it
    assert verdict(view, "input", "enp5s0", "fe80::1", 16509) == "accept"
    # an interface that belongs to no cloud network is not decided by this table
    assert verdict(view, "input", "tap0", "fe80::1", 22) == "accept"


def test_the_controller_serves_agents_from_any_subnet_on_its_management_interface(
    maas: Topology,
):
    controller = firewall_view(plan_of(maas, "juju-1"))
    for source in ("10.10.7.20", "10.20.0.21", "fd00:77::20"):  # other racks, a denied network
        assert verdict(controller, "input", "enp1s0", source, 17070) == "accept"
        # sshd and the controller's SSH server serve operators, not agents
        for port in (22, 17022, 8080):
            assert verdict(controller, "input", "enp1s0", source, port) == "drop"
    for source in ("10.10.0.20", "10.99.0.9"):  # a management subnet it knows, a client
        for port in (22, 17022, 17070):
            assert verdict(controller, "input", "enp1s0", source, port) == "accept"
    # only on a controller
    compute = firewall_view(plan_of(maas, "compute-1"))
    assert verdict(compute, "input", "enp1s0", "10.10.7.20", 17070) == "drop"
    assert verdict(compute, "input", "enp1s0", "10.10.7.20", 22) == "drop"


# ---------------------------------------------------------------------------------------------
# A network's addresses, only on its own interfaces


@pytest.mark.parametrize("strict", [False, True])
def test_an_address_is_reachable_only_on_its_own_networks_interfaces(maas: Topology, strict: bool):
    plan = plan_of(maas, "control-1")
    view = firewall_view(_strict(plan) if strict else plan)
    # (input interface, destination): management enp1s0, internal enp2s0, public enp3s0
    management, internal, public = "10.10.0.11", "10.20.0.11", "10.30.0.11"
    outsider = "203.0.113.9"
    # to the management address (sshd, the exporter) through the public NIC: dropped, before
    # the failsafe and whatever the port
    for port in (22, 9479, 6443):
        got = verdict(view, "input", "enp3s0", outsider, port, destination=management)
        assert got == "drop", port
    assert verdict(view, "input", "enp1s0", "10.10.0.9", 22, destination=management) == "accept"
    # every pair of networks of the machine, from each NIC's own subnet, on a port of the
    # destination's network (the failsafe's sources excepted: tcp/22 from management)
    nics = {
        "enp1s0": (management, "10.10.0.9"),
        "enp2s0": (internal, "10.20.0.9"),
        "enp3s0": (public, "10.30.0.9"),
        "enp4s0": ("10.50.0.11", "10.50.0.9"),
    }
    for nic, (own, source) in nics.items():
        assert verdict(view, "input", nic, source, 6443, destination=own) == (
            "drop" if strict and nic in ("enp3s0", "enp4s0") else "accept"  # Kubernetes API
        )
        for other, (address, _) in nics.items():
            if other != nic:
                got = verdict(view, "input", nic, source, 6443, destination=address)
                assert got == "drop", (nic, address)
    # the failsafe comes first: an operator's ssh is never a misdirected packet
    assert verdict(view, "input", "enp3s0", "10.99.0.9", 22, destination=management) == "accept"
    # from an interface of no cloud network (a pod's veth) to the internal address: not judged
    # here (kubelet probes, pods reaching the node)
    assert verdict(view, "input", "lxc1", "10.1.0.9", 10250, destination=internal) == "accept"
    # a forwarded flow to an internal VIP arriving on the public NIC: dropped, whatever DNAT
    vip = "10.20.0.200"
    forwarded = verdict(
        view, "forward", "enp3s0", outsider, 443, out_interface="lxc1", destination=vip
    )
    assert forwarded == "drop"
    # management's subnet is misdirected on every other cloud interface of the machine
    for label in ("internal", "public", "storage"):
        assert "10.10.0.0/24" in view.set(f"misdirected_in_{label}_v4").elements
        assert "10.10.0.0/24" in view.set(f"misdirected_fwd_{label}_v4").elements
    assert "10.10.0.0/24" not in view.set("misdirected_in_management_v4").elements


def test_a_denied_networks_address_is_unreachable_from_anywhere(maas: Topology):
    view = firewall_view(plan_of(maas, "storage-1"))  # storage-cluster allowed, no public
    allowed = "10.60.0.31"
    assert verdict(view, "input", "enp6s0", "10.60.0.32", 6800, destination=allowed) == "accept"
    compute = firewall_view(plan_of(maas, "compute-1"))  # no public, no storage-cluster
    for nic in ("enp1s0", "lxc1"):
        got = verdict(compute, "input", nic, "10.10.0.9", 6686, destination="10.30.0.21")
        assert got == "drop", nic
    # for interfaces of no cloud network: one rule per denied domain and IP version (public,
    # storage-cluster); a cloud network's chain has them in its one lookup
    chain = compute.chain("input")
    assert chain is not None
    denied_destinations = [r.counter for r in chain.rules if r.side == "out"]
    assert denied_destinations == ["drop_in_misdirected"] * 4
    assert "10.30.0.0/24" in compute.set("misdirected_in_management_v4").elements


def test_misdirected_rules_do_not_grow_with_subnets(maas: Topology):
    plan = plan_of(maas, "control-1")
    wider = plan.model_copy(
        update={
            "domains": tuple(
                d.model_copy(
                    update={
                        "subnets": (
                            *d.subnets,
                            *(ipaddress.ip_network(f"10.{200 + i}.{k}.0/24") for k in range(50)),
                        )
                    }
                )
                for i, d in enumerate(plan.domains)
            )
        }
    )
    small, large = firewall_view(plan), firewall_view(wider)
    assert small.rule_count == large.rule_count
    for name in ("misdirected_in_internal_v4", "misdirected_fwd_internal_v4"):
        assert len(large.set(name).elements) > len(small.set(name).elements) + 50


# ---------------------------------------------------------------------------------------------
# strict-ports for forwarded flows: the port the client used


def test_strict_forwarded_flows_are_judged_by_the_port_the_client_used(maas: Topology):
    plan = _strict(plan_of(maas, "control-1"))
    view = firewall_view(plan)
    vip, pod = "10.20.0.200", "lxc1"

    def forwarded(nic: str, source: str, port: int, protocol: str = "tcp") -> str:
        return verdict(
            view, "forward", nic, source, port, protocol, out_interface=pod, destination=vip
        )

    # the Services behind internal VIPs, by their own port (the pod's, 8443, is in no set)
    assert forwarded("enp2s0", "10.20.0.21", 443) == "accept"
    assert forwarded("enp2s0", "10.20.0.21", 5672) == "accept"
    assert forwarded("enp2s0", "10.20.0.21", 8443) == "drop"
    # a host port of internal is not a Service
    assert forwarded("enp2s0", "10.20.0.21", 10250) == "drop"
    # and a Service port is not a host port
    assert verdict(view, "input", "enp2s0", "10.20.0.21", 5672) == "drop"
    # public: Traefik and DNS from anyone outside the cloud, nothing else
    public_vip = "10.30.0.200"
    for port, protocol, expected in (
        (443, "tcp", "accept"),
        (53, "udp", "accept"),
        (953, "tcp", "drop"),
    ):
        got = verdict(view, "forward", "enp3s0", "203.0.113.9", port, protocol, pod, public_vip)
        assert got == expected, port
    assert (
        "meta l4proto tcp ct original proto-dst @fwd_ports_internal_tcp" in render(plan).nftables
    )
    # without strict-ports the forward hook's chain accepts by source alone
    lenient = firewall_view(plan_of(maas, "control-1")).chain("fwd_internal")
    assert lenient is not None
    assert [r.extra for r in lenient.rules if r.verdict == "accept"] == [None, None]
