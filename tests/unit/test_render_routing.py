"""Policy routing by example: tables, rules and routes of the netplan file, and its checks."""

from __future__ import annotations

import ipaddress

import pytest
import yaml
from goldens import golden_files, netplan_cases
from netplan_merge import maas_netplan, netplan_generate
from subnets import iface, net
from topologies import partial_topology, plan_of

from network_isolation.base import InterfaceKind
from network_isolation.config import CharmConfig
from network_isolation.model import Network
from network_isolation.planner import (
    InterfaceAddress,
    MachinePlan,
    NetworkView,
    PlanInput,
    plan_machine,
)
from network_isolation.render import (
    PolicyRule,
    RenderError,
    Route,
    RoutedInterface,
    RoutingView,
    check_policy_routing,
    render,
    routing_view,
)
from network_isolation.report import machine_dict, machine_text
from network_isolation.topology import Topology

GOLDEN = golden_files()
# What MAAS's netplan file defines on the hand-made machines below.
ETHERNETS: dict[str, InterfaceKind] = dict.fromkeys(
    [*(f"enp{k}s0" for k in range(17)), "eth0"], "ethernets"
)
NETPLAN_CASES = netplan_cases()


# ---------------------------------------------------------------------------------------------
# Policy routing


def test_routing_of_a_storage_node_in_rack_two(maas: Topology):
    doc = yaml.safe_load(render(plan_of(maas, "storage-3")).netplan or "")
    storage = doc["network"]["ethernets"]["enp4s0"]
    assert storage["routes"] == [
        {"to": "10.50.0.0/24", "via": "10.50.1.1", "table": 104},
        {"to": "10.50.1.0/24", "scope": "link", "table": 104},
        {"to": "fd00:50::/64", "via": "fd00:51::1", "table": 104},
        {"to": "fd00:51::/64", "scope": "link", "table": 104},
    ]
    assert storage["routing-policy"] == [
        {"from": "10.50.1.33", "table": 104, "priority": 17000},
        {"from": "fd00:51::33", "table": 104, "priority": 17001},
        {"to": "10.50.0.0/24", "table": 104, "priority": 17002},
        {"to": "fd00:50::/64", "table": 104, "priority": 17003},
    ]
    assert set(doc["network"]["ethernets"]) == {"enp1s0", "enp4s0", "enp6s0"}
    assert doc["network"]["ethernets"]["enp1s0"]["routing-policy"][0]["table"] == 102
    assert doc["network"]["ethernets"]["enp6s0"]["routing-policy"][0]["table"] == 105
    for interface in doc["network"]["ethernets"].values():
        assert "addresses" not in interface


def test_routing_tables_are_the_same_on_every_machine(maas: Topology):
    tables: dict[str, set[int]] = {}
    for machine in maas.machines:
        view = routing_view(plan_of(maas, machine))
        assert view is not None
        for table in view.tables:
            tables.setdefault(table.networks[0].value, set()).add(table.number)
    assert tables == {
        "management": {102},
        "internal": {101},
        "public": {103},
        "data": {100},
        "storage": {104},
        "storage-cluster": {105},
    }


def test_no_routing_for_a_sole_space_or_when_disabled(maas: Topology, single: Topology):
    for machine in single.machines:
        assert render(plan_of(single, machine)).netplan is None
    plan = plan_of(maas, "hyper-1")
    off = plan.model_copy(
        update={"config": plan.config.model_copy(update={"manage_routing": False})}
    )
    assert render(off).netplan is None
    assert render(plan).netplan is not None


def test_remote_subnet_without_gateway_gets_no_route_and_no_rule():
    netplan = render(plan_of(partial_topology(), "compute-1")).netplan or ""
    doc = yaml.safe_load(netplan)
    tenant = doc["network"]["bridges"]["br-tenant"]
    assert tenant["routes"] == [{"to": "10.4.1.0/24", "scope": "link", "table": 100}]
    assert tenant["routing-policy"] == [{"from": "10.4.1.21", "table": 100, "priority": 1000}]
    assert "10.4.0.0/24" not in yaml.safe_dump(doc)
    assert "# no route to 10.4.0.0/24 (tenant)" in netplan


INJECTED = (
    "tenant\nnetwork:\n  version: 2\n  bridges:\n    br-tenant:\n      routing-policy:\n"
    "        - {from: 0.0.0.0/0, table: 100, priority: 1}\n#"
)


def test_text_from_the_plan_cannot_leave_its_comment():
    """A space name is text like any other: it reaches the header as one comment line."""
    plan_input = partial_topology().plan_input("compute-1")
    networks = {
        network: view.model_copy(update={"space": INJECTED}) if network == Network.DATA else view
        for network, view in plan_input.networks.items()
    }
    plan = plan_machine(plan_input.model_copy(update={"networks": networks}))
    netplan = render(plan).netplan or ""
    assert "# no route to 10.4.0.0/24 (tenant network: version: 2 bridges:" in netplan
    body = [line for line in netplan.splitlines() if not line.startswith("#")]
    assert body[:2] == ["network:", "  version: 2"]
    generated = netplan_generate(maas_netplan(plan_input), netplan)
    assert not [text for text in generated.values() if "From=0.0.0.0/0" in text]


def test_interfaces_the_host_netplan_does_not_define_are_left_alone(maas: Topology):
    """An OVS bridge carrying data: networkd would take it over if our file named it."""
    seen = maas.plan_input("compute-1")
    kinds = {name: kind for name, kind in seen.interface_kinds.items() if name != "enp5s0"}
    plan = plan_machine(seen.model_copy(update={"interface_kinds": kinds}))
    host_files = yaml.safe_load(maas_netplan(seen))
    del host_files["network"]["ethernets"]["enp5s0"]
    netplan = render(plan).netplan or ""
    assert "enp5s0" not in yaml.safe_dump(yaml.safe_load(netplan))
    assert "# not routed: enp5s0 (data): the host's netplan files do not define it" in netplan
    generated = netplan_generate(yaml.safe_dump(host_files), netplan)
    assert [name for name in generated if "enp5s0" in name] == []
    assert "10-netplan-enp1s0.network" in generated  # the others are still routed
    assert plan.unrouted_interfaces == ("enp5s0",)
    assert "policy routing leaves enp5s0 alone" in machine_text(plan)
    assert machine_dict(plan)["unrouted-interfaces"] == ["enp5s0"]


def test_interfaces_keep_their_netplan_section():
    doc = yaml.safe_load(render(plan_of(partial_topology(), "control-1")).netplan or "")
    assert set(doc["network"]) == {"version", "bonds", "vlans"}
    assert set(doc["network"]["vlans"]) == {"bond0.20", "bond0.50"}
    assert set(doc["network"]["bonds"]) == {"bond0"}


def test_link_local_addresses_and_subnets_are_not_routed():
    plan_input = PlanInput(
        machine="m",
        roles=frozenset({"juju-controller"}),
        networks={
            Network.MANAGEMENT: NetworkView(
                interfaces=(
                    InterfaceAddress(name="enp1s0", address=iface("10.10.0.5/24")),
                    InterfaceAddress(name="enp1s0", address=iface("fe80::5/64")),
                ),
            ),
            Network.STORAGE: NetworkView(subnets=(net("10.50.0.0/24"),)),
        },
        config=CharmConfig(),
        interface_kinds=ETHERNETS,
    )
    doc = yaml.safe_load(render(plan_machine(plan_input)).netplan or "")
    assert doc["network"]["ethernets"]["enp1s0"] == {
        "routes": [{"to": "10.10.0.0/24", "scope": "link", "table": 102}],
        "routing-policy": [{"from": "10.10.0.5", "table": 102, "priority": 9000}],
    }


def test_domain_on_several_interfaces_gets_a_table_per_interface():
    """Space ceph on enp2s0 (rack 1) and enp3s0 (rack 2): each address leaves by its NIC."""
    view = routing_view(plan_of(partial_topology(), "storage-2"))
    assert view is not None
    assert [(t.number, t.interface) for t in view.tables] == [
        (102, "enp1s0"),
        (104, "enp2s0"),
        (110, "enp3s0"),
    ]
    doc = yaml.safe_load(render(plan_of(partial_topology(), "storage-2")).netplan or "")
    nics = doc["network"]["ethernets"]
    assert nics["enp2s0"] == {
        "routes": [
            {"to": "10.5.0.0/24", "scope": "link", "table": 104},
            {"to": "10.5.1.0/24", "via": "10.5.0.1", "table": 104},
        ],
        "routing-policy": [{"from": "10.5.0.32", "table": 104, "priority": 17000}],
    }
    assert nics["enp3s0"] == {
        "routes": [
            {"to": "10.5.0.0/24", "via": "10.5.1.1", "table": 110},
            {"to": "10.5.1.0/24", "scope": "link", "table": 110},
        ],
        "routing-policy": [{"from": "10.5.1.32", "table": 110, "priority": 17001}],
    }


def _two_nic_storage(subnets: list[str], gateways: dict[str, str]) -> MachinePlan:
    return plan_machine(
        PlanInput(
            machine="m",
            roles=frozenset({"storage"}),
            networks={
                Network.MANAGEMENT: NetworkView(
                    interfaces=(InterfaceAddress(name="enp1s0", address=iface("10.10.0.5/24")),),
                ),
                Network.STORAGE: NetworkView(
                    interfaces=(
                        InterfaceAddress(name="enp5s0", address=iface("10.50.1.5/24")),
                        InterfaceAddress(name="enp4s0", address=iface("10.50.0.5/24")),
                        InterfaceAddress(name="enp4s0", address=iface("fe80::5/64")),
                    ),
                    subnets=tuple(net(s) for s in subnets),
                    gateways={net(k): ipaddress.ip_address(v) for k, v in gateways.items()},
                ),
            },
            config=CharmConfig(),
            interface_kinds=ETHERNETS,
        )
    )


def test_remote_subnet_of_a_domain_on_several_interfaces_is_steered_once():
    plan = _two_nic_storage(
        ["10.50.0.0/24", "10.50.1.0/24", "10.50.2.0/24"],
        {"10.50.0.0/24": "10.50.0.1", "10.50.1.0/24": "10.50.1.1"},
    )
    doc = yaml.safe_load(render(plan).netplan or "")["network"]["ethernets"]
    # tables in the order of the interface names, not of the addresses
    assert doc["enp4s0"]["routing-policy"] == [
        {"from": "10.50.0.5", "table": 104, "priority": 17000},
        {"to": "10.50.2.0/24", "table": 104, "priority": 17001},
    ]
    assert doc["enp5s0"]["routing-policy"] == [
        {"from": "10.50.1.5", "table": 110, "priority": 17002},
    ]
    assert {"to": "10.50.2.0/24", "via": "10.50.1.1", "table": 110} in doc["enp5s0"]["routes"]
    assert all("fe80" not in str(r) for r in doc["enp4s0"]["routing-policy"])


def test_interface_without_gateway_notes_only_what_no_sibling_reaches():
    plan = _two_nic_storage(
        ["10.50.0.0/24", "10.50.1.0/24", "10.50.2.0/24"], {"10.50.0.0/24": "10.50.0.1"}
    )
    netplan = render(plan).netplan or ""
    assert "# no route to 10.50.2.0/24 (storage, enp5s0): no gateway on a local subnet" in netplan
    assert "no route to 10.50.0.0/24" not in netplan  # enp4s0 is on it
    doc = yaml.safe_load(netplan)["network"]["ethernets"]
    assert doc["enp5s0"]["routes"] == [{"to": "10.50.1.0/24", "scope": "link", "table": 110}]


def test_too_many_interfaces_for_a_domain():
    addresses = tuple(
        InterfaceAddress(name=f"enp{k}s0", address=iface(f"10.50.{k}.5/24")) for k in range(17)
    )
    plan = plan_machine(
        PlanInput(
            machine="m",
            roles=frozenset({"storage"}),
            networks={
                Network.MANAGEMENT: NetworkView(
                    interfaces=(InterfaceAddress(name="eth0", address=iface("10.10.0.5/24")),),
                ),
                Network.STORAGE: NetworkView(interfaces=addresses),
            },
            config=CharmConfig(),
            interface_kinds=ETHERNETS,
        )
    )
    with pytest.raises(RenderError, match="17 interfaces"):
        render(plan)


def test_priorities_are_unique_and_tables_nonzero_everywhere():
    for path in NETPLAN_CASES:
        doc = yaml.safe_load(GOLDEN[path])
        rules = [
            rule
            for kind in ("ethernets", "bonds", "bridges", "vlans")
            for interface in doc["network"].get(kind, {}).values()
            for rule in interface["routing-policy"]
        ]
        priorities = [r["priority"] for r in rules]
        assert len(priorities) == len(set(priorities)), path
        assert all(r["table"] not in (0, 253, 254, 255) for r in rules), path
        assert all(("from" in r) != ("to" in r) for r in rules), path


def _routing(policy: list[PolicyRule], routes: list[Route] | None = None) -> RoutingView:
    routes = routes if routes is not None else [Route("10.0.0.0/24", 102, scope="link")]
    interface = RoutedInterface("enp1s0", "ethernets", tuple(routes), tuple(policy))
    return RoutingView(header=(), tables=(), sections=(("ethernets", (interface,)),))


@pytest.mark.parametrize(
    ("policy", "routes", "problem"),
    [
        ([PolicyRule("from", "10.0.0.5", 0, 9000)], None, "no usable table"),
        ([PolicyRule("from", "10.0.0.5", 254, 9000)], None, "no usable table"),
        ([PolicyRule("from", "10.0.0.5", 103, 9000)], None, "which has no route"),
        (
            [
                PolicyRule("from", "10.0.0.5", 102, 9000),
                PolicyRule("to", "10.1.0.0/24", 102, 9000),
            ],
            None,
            "same priority",
        ),
        ([PolicyRule("from", "", 102, 9000)], None, "matches every packet"),
        ([PolicyRule("from", "10.0.0.5", 102, 32766)], None, "outside"),
        ([], [Route("10.0.0.0/24", 0, scope="link")], "no table of ours"),
        ([], [Route("10.0.0.0/24", 102)], "either a gateway or scope link"),
        (
            [],
            [Route("10.0.0.0/24", 102, scope="link"), Route("10.0.0.0/24", 102, via="10.0.0.1")],
            "already has a route there",
        ),
        (
            [],
            [Route("default", 102, via="10.0.0.1"), Route("0.0.0.0/0", 102, via="10.0.0.2")],
            "already has a route there",
        ),
    ],
)
def test_policy_routing_checks(policy: list[PolicyRule], routes: list[Route] | None, problem: str):
    with pytest.raises(RenderError, match=problem):
        check_policy_routing(_routing(policy, routes))


def test_a_default_route_per_family_per_table_is_fine():
    routes = [
        Route("10.0.0.0/24", 102, scope="link"),
        Route("default", 102, via="10.0.0.1"),
        Route("default", 102, via="fd00::1"),
        Route("default", 103, via="10.0.0.1"),
    ]
    check_policy_routing(_routing([PolicyRule("from", "10.0.0.5", 102, 9000)], routes))


def test_too_many_rules_for_a_priority_block():
    subnets = [f"10.50.{k // 256}.{k % 256}/32" for k in range(4001)]
    plan_input = PlanInput(
        machine="m",
        roles=frozenset({"storage"}),
        networks={
            Network.MANAGEMENT: NetworkView(
                interfaces=(InterfaceAddress(name="enp1s0", address=iface("10.10.0.5/24")),),
            ),
            Network.STORAGE: NetworkView(
                interfaces=(InterfaceAddress(name="enp4s0", address=iface("10.60.0.5/24")),),
                subnets=tuple(net(s) for s in subnets),
                gateways={net("10.60.0.0/24"): ipaddress.ip_address("10.60.0.1")},
            ),
        },
        config=CharmConfig(),
        interface_kinds=ETHERNETS,
    )
    with pytest.raises(RenderError, match="priority block"):
        render(plan_machine(plan_input))


def test_bad_interface_name_is_refused():
    plan_input = PlanInput(
        machine="m",
        roles=frozenset({"juju-controller"}),
        networks={
            Network.MANAGEMENT: NetworkView(
                interfaces=(InterfaceAddress(name='en"p1', address=iface("10.10.0.5/24")),),
            ),
            Network.STORAGE: NetworkView(subnets=(net("10.50.0.0/24"),)),
        },
        config=CharmConfig(),
        interface_kinds=ETHERNETS,
    )
    with pytest.raises(RenderError, match="not a valid interface name"):
        render(plan_machine(plan_input))
