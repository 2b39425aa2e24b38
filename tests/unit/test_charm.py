"""The charm under ops.testing: roles, bindings, config, co-located units and show-plan.

Every test declares all six bindings: ops.testing gives an undeclared binding a fake address.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ops
import pytest
import yaml
from fake_host import FakeHost
from ops import testing

from charm import NetworkIsolationCharm
from network_isolation.host import MachineRegistry
from tests.charm_context import MACHINE, context

GUIDE_ROLES = ("juju-controller", "control", "compute", "storage")
NO_ROLE_TEXT = "relate to a control, compute, storage or juju-controller principal, or set roles"

Layout = Mapping[str, tuple[str, str] | None]
MakeNetworks = Callable[[Layout], list[testing.Network]]


def principal(role: str, app: str | None = None) -> testing.SubordinateRelation:
    return testing.SubordinateRelation(f"{role}-node", remote_app_name=app or f"{role}-app")


def state(
    networks: list[testing.Network],
    relations: Iterable[testing.RelationBase] = (),
    config: Mapping[str, str | int | bool] | None = None,
) -> testing.State:
    return testing.State(networks=networks, relations=relations, config=dict(config or {}))


def show_plan(ctx: testing.Context[NetworkIsolationCharm], st: testing.State, fmt: str) -> str:
    ctx.run(ctx.on.action("show-plan", params={"format": fmt}), st)
    assert ctx.action_results is not None
    return ctx.action_results["plan"]


def plan_of(ctx: testing.Context[NetworkIsolationCharm], st: testing.State) -> dict[str, Any]:
    return json.loads(show_plan(ctx, st, "json"))


def access(plan: Mapping[str, Any]) -> set[str]:
    return {net for net, item in plan["networks"].items() if item["access"]}


def first_quoted(message: str) -> str:
    match = re.search(r"'([^']+)'", message)
    assert match, message
    return match.group(1)


@pytest.mark.parametrize("role", GUIDE_ROLES)
def test_role_from_its_endpoint(
    role: str,
    make_networks: MakeNetworks,
    distinct_layout: Layout,
    guide_table: dict[str, frozenset[str]],
    state_dir: Path,
):
    ctx = context()
    st = state(make_networks(distinct_layout), [principal(role)])
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "maximum" in out.unit_status.message
    plan = plan_of(ctx, st)
    assert plan["roles"] == [role]
    assert access(plan) == guide_table[role]
    assert plan["status"] == "active"
    # The unit told the machine's registry which role it brings.
    assert MachineRegistry(state_dir / "units").entries() == {
        "network-isolation/0": frozenset({role})
    }


@pytest.mark.parametrize("role", GUIDE_ROLES)
def test_role_from_config(
    role: str,
    make_networks: MakeNetworks,
    distinct_layout: Layout,
    guide_table: dict[str, frozenset[str]],
):
    ctx = context()
    st = state(make_networks(distinct_layout), config={"roles": role})
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    plan = plan_of(ctx, st)
    assert plan["roles"] == [role]
    assert access(plan) == guide_table[role]


def test_related_and_configured_roles_combine(
    make_networks: MakeNetworks, distinct_layout: Layout, guide_table: dict[str, frozenset[str]]
):
    ctx = context()
    st = state(
        make_networks(distinct_layout),
        [principal("compute"), principal("storage")],
        {"roles": "juju-controller"},
    )
    assert isinstance(ctx.run(ctx.on.config_changed(), st).unit_status, ops.ActiveStatus)
    plan = plan_of(ctx, st)
    assert sorted(plan["roles"]) == ["compute", "juju-controller", "storage"]
    assert access(plan) == guide_table["compute"] | guide_table["storage"]


def test_custom_role_from_config(make_networks: MakeNetworks, distinct_layout: Layout):
    ctx = context()
    config = {"role-networks": "network=management,internal,data", "roles": "network"}
    st = state(make_networks(distinct_layout), config=config)
    assert isinstance(ctx.run(ctx.on.config_changed(), st).unit_status, ops.ActiveStatus)
    assert access(plan_of(ctx, st)) == {"management", "internal", "data"}


def test_bindings_reach_the_plan(make_networks: MakeNetworks, distinct_layout: Layout):
    ctx = context()
    st = state(make_networks(distinct_layout), [principal("compute")])
    plan = plan_of(ctx, st)
    for net, place in distinct_layout.items():
        assert place is not None
        nic, cidr = place
        subnet = ipaddress.ip_network(cidr)
        assert plan["networks"][net]["interfaces"] == [nic]
        assert plan["networks"][net]["subnets"] == [cidr]
        assert plan["networks"][net]["addresses"] == [f"{subnet[5]}/{subnet.prefixlen}"]


def test_shared_subnet_gives_no_isolation_and_keeps_the_roles_rows(
    make_networks: MakeNetworks, shared_layout: Layout, guide_table: dict[str, frozenset[str]]
):
    ctx = context()
    st = state(make_networks(shared_layout), [principal("compute")])
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "none" in out.unit_status.message
    plan = plan_of(ctx, st)
    assert access(plan) == guide_table["compute"]
    assert {tuple(item["interfaces"]) for item in plan["networks"].values()} == {("enp1s0",)}
    assert {tuple(item["subnets"]) for item in plan["networks"].values()} == {("10.0.0.0/24",)}


def test_two_networks_on_one_subnet_give_partial_isolation(
    make_networks: MakeNetworks, distinct_layout: Layout
):
    layout = dict(distinct_layout, **{"storage-cluster": distinct_layout["storage"]})
    ctx = context()
    out = ctx.run(ctx.on.config_changed(), state(make_networks(layout), [principal("storage")]))
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "partial" in out.unit_status.message


def test_missing_address_for_a_needed_network_is_blocked(
    make_networks: MakeNetworks, distinct_layout: Layout
):
    layout = dict(distinct_layout, data=None)
    ctx = context()
    out = ctx.run(ctx.on.config_changed(), state(make_networks(layout), [principal("compute")]))
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert out.unit_status.message.startswith(
        "compute needs 'data': no address in its space on this machine"
    )


def test_missing_address_for_a_denied_network_is_fine(
    make_networks: MakeNetworks, distinct_layout: Layout
):
    layout = dict(distinct_layout, data=None, public=None)
    ctx = context()
    out = ctx.run(ctx.on.config_changed(), state(make_networks(layout), [principal("storage")]))
    assert isinstance(out.unit_status, ops.ActiveStatus)


def test_no_role_is_blocked(make_networks: MakeNetworks, distinct_layout: Layout):
    ctx = context()
    out = ctx.run(ctx.on.config_changed(), state(make_networks(distinct_layout)))
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert NO_ROLE_TEXT in out.unit_status.message


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("roles", "boss"),
        ("role-table", "bogus"),
        ("role-networks", "control=management,bogus"),
        ("network-cidrs", "internal=10.20.0.1/24"),
        ("client-cidrs", "0.0.0.0/0"),
        ("enforcement", "block"),
        ("extra-ports", "internal=tcp:70000"),
        ("peer-min-prefix-v4", 0),
        ("peer-min-prefix-v6", 129),
        ("rolling-canary-window", 10),
        ("rolling-canary-threshold", -5),
    ],
)
def test_invalid_config_is_blocked_naming_the_option(
    option: str, value: str | int, make_networks: MakeNetworks, distinct_layout: Layout
):
    ctx = context()
    st = state(make_networks(distinct_layout), [principal("compute")], {option: value})
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert first_quoted(out.unit_status.message) == option
    with pytest.raises(testing.ActionFailed) as caught:
        ctx.run(ctx.on.action("show-plan"), st)
    assert first_quoted(caught.value.message) == option


SUNBEAM_ONLY_ROLES = ("network", "region-controller", "sunbeam")


@pytest.mark.parametrize("role", SUNBEAM_ONLY_ROLES)
def test_sunbeam_role_from_its_endpoint(
    role: str,
    make_networks: MakeNetworks,
    distinct_layout: Layout,
    sunbeam_table: dict[str, frozenset[str]],
):
    ctx = context()
    st = state(make_networks(distinct_layout), [principal(role)], {"role-table": "sunbeam"})
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    plan = plan_of(ctx, st)
    assert (plan["roles"], plan["role_table"]) == ([role], "sunbeam")
    assert access(plan) == sunbeam_table[role]


@pytest.mark.parametrize("role", SUNBEAM_ONLY_ROLES)
def test_sunbeam_role_with_the_guide_table_is_blocked_naming_the_preset(
    role: str, make_networks: MakeNetworks, distinct_layout: Layout
):
    ctx = context()
    out = ctx.run(
        ctx.on.config_changed(), state(make_networks(distinct_layout), [principal(role)])
    )
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert out.unit_status.message == (
        f"unknown role '{role}' in role table 'guide': set role-table=sunbeam or define it in"
        " 'role-networks'"
    )


def applies(fake_host: type[FakeHost]) -> int:
    return fake_host.names().count("apply")


@pytest.mark.parametrize(
    ("role", "app", "network"),
    [("storage", "cinder-volume", "internal"), ("control", "microovn", "data")],
)
def test_principal_the_guide_table_breaks_blocks_and_nothing_is_applied(
    role: str,
    app: str,
    network: str,
    make_networks: MakeNetworks,
    distinct_layout: Layout,
    fake_host: type[FakeHost],
):
    ctx = context()
    st = state(make_networks(distinct_layout), [principal(role, app)])
    out = ctx.run(ctx.on.config_changed(), st)
    assert out.unit_status == ops.BlockedStatus(
        f"{app} needs '{network}', which role table 'guide' denies to {role}:"
        " role-table=sunbeam allows it, or accept it in 'accept-denials'"
    )
    assert applies(fake_host) == 0
    plan = plan_of(ctx, st)
    assert (plan["status"], plan["warnings"]) == ("blocked", [])
    assert network not in access(plan)


@pytest.mark.parametrize(
    ("role", "app", "network"),
    [("storage", "cinder-volume", "internal"), ("control", "microovn", "data")],
)
def test_principal_sunbeams_table_allows_is_enforced_without_a_warning(
    role: str,
    app: str,
    network: str,
    make_networks: MakeNetworks,
    distinct_layout: Layout,
    fake_host: type[FakeHost],
):
    ctx = context()
    config = {"role-table": "sunbeam"}
    st = state(make_networks(distinct_layout), [principal(role, app)], config)
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert app not in out.unit_status.message
    assert applies(fake_host) == 1
    plan = plan_of(ctx, st)
    assert plan["warnings"] == [] and network in access(plan)


@pytest.mark.parametrize(
    ("role", "app", "network"),
    [("storage", "cinder-volume", "internal"), ("control", "microovn", "data")],
)
def test_principal_whose_denial_is_accepted_is_enforced_and_warned_about(
    role: str,
    app: str,
    network: str,
    make_networks: MakeNetworks,
    distinct_layout: Layout,
    fake_host: type[FakeHost],
):
    ctx = context()
    config = {"accept-denials": f"{app}={network}"}
    st = state(make_networks(distinct_layout), [principal(role, app)], config)
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    message = out.unit_status.message
    assert f"; {app} needs '{network}' (" in message
    assert message.endswith(
        f"which role table 'guide' denies to {role}: role-table=sunbeam allows it"
    )
    assert applies(fake_host) == 1
    plan = plan_of(ctx, st)
    assert len(plan["warnings"]) == 1 and plan["warnings"][0] in message
    assert f"  warning: {plan['warnings'][0]}" in show_plan(ctx, st, "text").splitlines()
    assert network not in access(plan)


def test_principal_from_juju_context_blocks(
    make_networks: MakeNetworks, distinct_layout: Layout, fake_host: type[FakeHost]
):
    # The role comes from config, not from a relation: JUJU_PRINCIPAL_UNIT names the principal.
    ctx = context(principal_unit="cinder-volume/3")
    st = state(make_networks(distinct_layout), config={"roles": "storage"})
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert out.unit_status.message.startswith("cinder-volume needs 'internal'")
    assert applies(fake_host) == 0


def test_colocated_units_block_on_each_others_principals(
    make_networks: MakeNetworks, distinct_layout: Layout, fake_host: type[FakeHost]
):
    """Co-located units share the machine's plan: each blocks on what any principal needs."""
    networks = make_networks(distinct_layout)
    ceph = context(0, principal_unit="microceph/0")
    cinder = context(1, principal_unit="cinder-volume/0")
    st_ceph = state(networks, [principal("storage", "microceph")])
    st_cinder = state(networks, [principal("storage", "cinder-volume")])
    cinder.run(cinder.on.config_changed(), st_cinder)
    out = ceph.run(ceph.on.config_changed(), st_ceph)
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert out.unit_status.message.startswith("cinder-volume needs 'internal'")
    assert applies(fake_host) == 0
    assert show_plan(ceph, st_ceph, "json") == show_plan(cinder, st_cinder, "json")


def test_show_plan_text(
    make_networks: MakeNetworks, distinct_layout: Layout, guide_table: dict[str, frozenset[str]]
):
    ctx = context()
    st = state(make_networks(distinct_layout), [principal("control")])
    lines = show_plan(ctx, st, "text").splitlines()
    assert MACHINE in lines[0] and "control" in lines[0]
    assert lines[1].split() == ["network", "access", "space", "interface", "address"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:8]}
    assert rows == {
        net: "allow" if net in guide_table["control"] else "deny" for net in distinct_layout
    }
    assert lines[8].strip().startswith("=> active:")


def test_show_plan_says_which_interfaces_routing_leaves_alone(
    make_networks: MakeNetworks, distinct_layout: Layout, fake_host: type[FakeHost]
):
    fake_host.kinds = {"enp1s0": "ethernets", "enp2s0": "ethernets", "enp3s0": "ethernets"}
    ctx = context()
    st = state(make_networks(distinct_layout), [principal("control")])
    ctx.run(ctx.on.action("show-plan"), st)
    assert ctx.action_results is not None
    assert "policy routing leaves enp4s0 alone" in ctx.action_results["plan"]
    assert "enp4s0" not in yaml.safe_dump(yaml.safe_load(ctx.action_results["netplan"]))
    assert "# not routed: enp4s0 (storage)" in ctx.action_results["netplan"]


def test_routes_to_other_racks_go_via_the_gateway_the_hosts_netplan_gives(
    make_networks: MakeNetworks, distinct_layout: Layout, fake_host: type[FakeHost]
):
    """Juju does not tell gateways: MAAS's netplan file does, as routes on each interface."""
    fake_host.vias = {"enp1s0": ["10.10.0.1"], "enp4s0": ["10.50.0.1", "192.0.2.1"]}
    ctx = context()
    config = {"network-cidrs": "storage=10.50.1.0/24"}  # the storage subnet of another rack
    st = state(make_networks(distinct_layout), [principal("storage")], config)
    ctx.run(ctx.on.action("show-plan"), st)
    assert ctx.action_results is not None
    storage = yaml.safe_load(ctx.action_results["netplan"])["network"]["ethernets"]["enp4s0"]
    assert {"to": "10.50.1.0/24", "via": "10.50.0.1", "table": 104} in storage["routes"]
    assert {"to": "10.50.1.0/24", "table": 104, "priority": 17001} in storage["routing-policy"]
    assert "no route to 10.50.1.0/24" not in ctx.action_results["netplan"]


def test_show_plan_defaults_to_text(make_networks: MakeNetworks, distinct_layout: Layout):
    ctx = context()
    st = state(make_networks(distinct_layout), [principal("control")])
    ctx.run(ctx.on.action("show-plan"), st)
    assert ctx.action_results is not None
    assert ctx.action_results["plan"] == show_plan(ctx, st, "text")


def test_show_plan_json_matches_the_status(make_networks: MakeNetworks, distinct_layout: Layout):
    ctx = context()
    st = state(make_networks(distinct_layout), [principal("storage")])
    out = ctx.run(ctx.on.config_changed(), st)
    plan = plan_of(ctx, st)
    assert plan["status"] == out.unit_status.name
    assert plan["message"] == out.unit_status.message
    assert plan["enforcement"] == "enforce"
    assert plan["problems"] == []


def test_colocated_units_converge_on_one_plan(
    make_networks: MakeNetworks,
    distinct_layout: Layout,
    guide_table: dict[str, frozenset[str]],
    state_dir: Path,
):
    networks = make_networks(distinct_layout)
    ctx0, ctx1 = context(0), context(1)
    st0 = state(networks, [principal("compute", "nova")])
    st1 = state(networks, [principal("storage", "ceph")])
    ctx0.run(ctx0.on.config_changed(), st0)
    ctx1.run(ctx1.on.config_changed(), st1)
    ctx0.run(ctx0.on.update_status(), st0)

    registry = MachineRegistry(state_dir / "units")
    assert registry.entries() == {
        "network-isolation/0": frozenset({"compute"}),
        "network-isolation/1": frozenset({"storage"}),
    }
    for fmt in ("text", "json"):
        assert show_plan(ctx0, st0, fmt) == show_plan(ctx1, st1, fmt)
    plan = plan_of(ctx0, st0)
    assert sorted(plan["roles"]) == ["compute", "storage"]
    assert access(plan) == guide_table["compute"] | guide_table["storage"]
    for ctx, st in ((ctx0, st0), (ctx1, st1)):
        out = ctx.run(ctx.on.update_status(), st)
        assert isinstance(out.unit_status, ops.ActiveStatus)
        assert out.unit_status.message.startswith("compute+storage")

    # The storage principal goes away: its unit of this charm is removed.
    ctx1.run(ctx1.on.remove(), st1)
    assert set(registry.entries()) == {"network-isolation/0"}
    plan = plan_of(ctx0, st0)
    assert plan["roles"] == ["compute"]
    assert access(plan) == guide_table["compute"]


def test_broken_relation_drops_its_role(make_networks: MakeNetworks, distinct_layout: Layout):
    ctx = context()
    relation = principal("compute")
    st = state(make_networks(distinct_layout), [relation])
    assert isinstance(ctx.run(ctx.on.config_changed(), st).unit_status, ops.ActiveStatus)
    out = ctx.run(ctx.on.relation_broken(relation), st)
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert NO_ROLE_TEXT in out.unit_status.message


@pytest.mark.parametrize("event", ["install", "upgrade_charm", "update_status", "leader_elected"])
def test_lifecycle_events_record_the_roles(
    event: str, make_networks: MakeNetworks, distinct_layout: Layout, state_dir: Path
):
    ctx = context()
    ctx.run(
        getattr(ctx.on, event)(), state(make_networks(distinct_layout), [principal("storage")])
    )
    assert MachineRegistry(state_dir / "units").entries() == {
        "network-isolation/0": frozenset({"storage"})
    }
