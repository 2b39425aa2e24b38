"""The planner: access from roles, isolation from subnets, problems from missing addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from itertools import combinations

import pytest
from bindings import DISTINCT_NICS as NICS
from hypothesis import given, settings
from hypothesis import strategies as st

from network_isolation.config import CharmConfig
from network_isolation.model import IsolationLevel, Network
from network_isolation.planner import (
    InterfaceAddress,
    MachinePlan,
    NetworkView,
    PlanInput,
    plan_machine,
)

GUIDE_ROLES = ("juju-controller", "control", "compute", "storage")
ROLE_SETS = [
    frozenset(c) for n in range(1, len(GUIDE_ROLES) + 1) for c in combinations(GUIDE_ROLES, n)
]
NO_ROLE_TEXT = "relate to a control, compute, storage or juju-controller principal, or set roles"


def view(
    cidrs: list[str], nic: str | None = None, host: int = 5, space: str | None = None
) -> NetworkView:
    """A network's view: its space's subnets and, with a NIC, the machine's address there."""
    subnets = tuple(ipaddress.ip_network(c) for c in cidrs)
    interfaces: tuple[InterfaceAddress, ...] = ()
    if nic is not None:
        first = subnets[0]
        address = ipaddress.ip_interface(f"{first[host]}/{first.prefixlen}")
        interfaces = (InterfaceAddress(name=nic, address=address),)
    return NetworkView(interfaces=interfaces, subnets=subnets, space=space)


def plan(
    roles: frozenset[str] | set[str],
    subnets: Mapping[str, str | list[str]],
    present: set[str] | None = None,
    options: Mapping[str, str | bool] | None = None,
) -> MachinePlan:
    """Plan a machine with an address in each network of `present` (default: all six)."""
    present = set(subnets) if present is None else present
    networks = {
        Network(net): view(
            [cidrs] if isinstance(cidrs, str) else cidrs,
            NICS[net] if net in present else None,
        )
        for net, cidrs in subnets.items()
    }
    return plan_machine(
        PlanInput(
            machine="machine-0",
            roles=frozenset(roles),
            networks=networks,
            config=CharmConfig.from_options(options or {}),
        )
    )


def allowed(machine: MachinePlan) -> set[str]:
    return {net.value for net, item in machine.networks.items() if item.access}


def union(table: Mapping[str, frozenset[str]], roles: frozenset[str] | set[str]) -> set[str]:
    return set().union(*(table[r] for r in roles))


@pytest.mark.parametrize("roles", ROLE_SETS, ids=lambda r: "+".join(sorted(r)))
def test_access_is_the_union_of_the_guide_rows(
    roles: frozenset[str],
    guide_table: dict[str, frozenset[str]],
    disjoint_subnets: dict[str, str],
):
    machine = plan(roles, disjoint_subnets)
    assert allowed(machine) == union(guide_table, roles)
    assert machine.roles == tuple(sorted(roles))
    assert machine.status == "active", machine.problems
    assert machine.problems == ()
    assert machine.isolation.level == IsolationLevel.MAXIMUM


@pytest.mark.parametrize("roles", ROLE_SETS, ids=lambda r: "+".join(sorted(r)))
def test_addresses_only_in_the_needed_networks_suffice(
    roles: frozenset[str],
    guide_table: dict[str, frozenset[str]],
    disjoint_subnets: dict[str, str],
):
    needed = union(guide_table, roles)
    machine = plan(roles, disjoint_subnets, present=needed)
    assert machine.status == "active", machine.problems
    assert allowed(machine) == needed
    # Denied networks the machine has no address in carry no interface of it.
    for net, item in machine.networks.items():
        assert bool(item.interfaces) == (net.value in needed)


def test_roles_from_config_join_the_related_roles(
    guide_table: dict[str, frozenset[str]], disjoint_subnets: dict[str, str]
):
    machine = plan({"compute"}, disjoint_subnets, options={"roles": "storage"})
    assert machine.roles == ("compute", "storage")
    assert allowed(machine) == guide_table["compute"] | guide_table["storage"]


def test_role_networks_override_changes_a_row(
    guide_table: dict[str, frozenset[str]], disjoint_subnets: dict[str, str]
):
    options = {"role-networks": "control=management,internal,public,storage,data"}
    assert "data" not in allowed(plan({"control"}, disjoint_subnets))
    assert allowed(plan({"control"}, disjoint_subnets, options=options)) == (
        guide_table["control"] | {"data"}
    )
    # Other rows stay the guide's.
    assert allowed(plan({"compute"}, disjoint_subnets, options=options)) == guide_table["compute"]


def test_role_networks_override_can_narrow_a_row(disjoint_subnets: dict[str, str]):
    options = {"role-networks": "storage=management,storage"}
    machine = plan({"storage"}, disjoint_subnets, options=options)
    assert allowed(machine) == {"management", "storage"}
    assert not machine.networks[Network.STORAGE_CLUSTER].access


def test_custom_role_from_role_networks(
    guide_table: dict[str, frozenset[str]], disjoint_subnets: dict[str, str]
):
    options = {"role-networks": "network=management,internal,data", "roles": "network"}
    machine = plan({"storage"}, disjoint_subnets, options=options)
    assert machine.roles == ("network", "storage")
    assert allowed(machine) == {"management", "internal", "data"} | guide_table["storage"]
    assert machine.status == "active"


def test_unknown_role_is_a_problem(disjoint_subnets: dict[str, str]):
    # A role can come from a co-located unit's record that the config no longer defines.
    machine = plan({"compute", "network"}, disjoint_subnets)
    assert machine.status == "blocked"
    assert any("'network'" in p for p in machine.problems)
    assert "network" in machine.message


@pytest.mark.parametrize(
    "layout",
    [
        # Same subnets for every network: one shared space.
        dict.fromkeys(
            ["data", "internal", "management", "public", "storage", "storage-cluster"],
            ["10.0.0.0/24", "fd00:1::/64"],
        ),
        dict.fromkeys(
            ["data", "internal", "management", "public", "storage", "storage-cluster"],
            "10.0.0.0/24",
        ),
    ],
    ids=["dual-stack", "ipv4"],
)
def test_single_space_gives_no_isolation(layout: dict[str, str | list[str]]):
    machine = plan({"compute"}, layout)
    assert machine.isolation.level == IsolationLevel.NONE
    assert len(machine.domains) == 1
    assert set(machine.domains[0].networks) == set(Network)
    assert machine.status == "active"
    # A single NIC carries the allowed domain, so nothing is denied on it.
    assert machine.denied_interfaces == ()


def test_disjoint_subnets_give_maximum_isolation(disjoint_subnets: dict[str, str]):
    machine = plan({"control"}, disjoint_subnets)
    assert machine.isolation.level == IsolationLevel.MAXIMUM
    assert sorted(len(d.networks) for d in machine.domains) == [1] * 6
    assert {n for d in machine.domains for n in d.networks} == set(Network)


def test_two_networks_sharing_a_space_give_partial_isolation(disjoint_subnets: dict[str, str]):
    layout = dict(disjoint_subnets, **{"storage-cluster": disjoint_subnets["storage"]})
    machine = plan({"storage"}, layout)
    assert machine.isolation.level == IsolationLevel.PARTIAL
    assert len(machine.domains) == 5
    shared = machine.domain_of(Network.STORAGE)
    assert set(shared.networks) == {Network.STORAGE, Network.STORAGE_CLUSTER}
    assert shared is machine.domain_of(Network.STORAGE_CLUSTER)
    # The machine has an address in the shared space: no problem for either network.
    assert machine.status == "active", machine.problems
    assert machine.problems == ()


def test_shared_space_with_only_one_network_allowed_is_fine(disjoint_subnets: dict[str, str]):
    # public shares management's space; compute needs management but not public, so the
    # shared domain stays allowed while public itself is not granted.
    layout = dict(disjoint_subnets, public=disjoint_subnets["management"])
    machine = plan({"compute"}, layout, present={"management", "internal", "data", "storage"})
    assert machine.status == "active", machine.problems
    domain = machine.domain_of(Network.PUBLIC)
    assert set(domain.networks) == {Network.MANAGEMENT, Network.PUBLIC}
    assert domain.allowed
    assert not machine.networks[Network.PUBLIC].access
    assert NICS["management"] not in machine.denied_interfaces


def test_overlapping_but_different_subnets_are_blocked(disjoint_subnets: dict[str, str]):
    layout = dict(disjoint_subnets, data="10.20.0.0/16")  # contains internal's 10.20.0.0/24
    machine = plan({"compute"}, layout)
    assert machine.status == "blocked"
    assert machine.isolation.level != IsolationLevel.MAXIMUM
    overlap = [p for p in machine.problems if "'data'" in p and "'internal'" in p]
    assert len(overlap) == 1, machine.problems
    assert "10.20.0.0/16" in overlap[0] and "10.20.0.0/24" in overlap[0]


def test_ipv4_and_ipv6_subnets_never_overlap(disjoint_subnets: dict[str, str]):
    layout: dict[str, str | list[str]] = dict(disjoint_subnets)
    layout["data"] = ["10.40.0.0/24", "fd00:40::/64"]
    layout["internal"] = ["10.20.0.0/24", "fd00:20::/64"]
    machine = plan({"compute"}, layout)
    assert machine.status == "active", machine.problems
    assert machine.isolation.level == IsolationLevel.MAXIMUM


def test_missing_address_for_a_needed_network_is_blocked(disjoint_subnets: dict[str, str]):
    present = set(disjoint_subnets) - {"data"}
    machine = plan({"compute"}, disjoint_subnets, present=present)
    assert machine.status == "blocked"
    assert machine.problems == ("compute needs 'data': no address in its space on this machine",)
    assert machine.message == machine.problems[0]


def test_every_missing_network_is_reported_once(disjoint_subnets: dict[str, str]):
    # control and compute both need internal and storage: each is reported once.
    present = set(disjoint_subnets) - {"internal", "storage"}
    machine = plan({"control", "compute"}, disjoint_subnets, present=present)
    assert machine.status == "blocked"
    assert len(machine.problems) == 2
    assert sum("'internal'" in p for p in machine.problems) == 1
    assert sum("'storage'" in p for p in machine.problems) == 1
    assert machine.message.startswith(machine.problems[0])


def test_missing_address_for_a_denied_network_is_fine(disjoint_subnets: dict[str, str]):
    present = set(disjoint_subnets) - {"public", "data"}
    machine = plan({"storage"}, disjoint_subnets, present=present)
    assert machine.status == "active", machine.problems


def test_no_role_is_blocked(disjoint_subnets: dict[str, str]):
    machine = plan(set(), disjoint_subnets)
    assert machine.status == "blocked"
    assert NO_ROLE_TEXT in machine.message
    assert allowed(machine) == set()
    assert all(not d.allowed for d in machine.domains)


def test_denied_interfaces_exclude_nics_also_in_an_allowed_domain():
    # enp1s0 holds a management and a data address; enp2s0 holds only internal.
    networks = {
        Network.MANAGEMENT: view(["10.10.0.0/24"], "enp1s0"),
        Network.DATA: view(["10.40.0.0/24"], "enp1s0"),
        Network.INTERNAL: view(["10.20.0.0/24"], "enp2s0"),
        Network.PUBLIC: view(["10.30.0.0/24"]),
        Network.STORAGE: view(["10.50.0.0/24"], "enp4s0"),
        Network.STORAGE_CLUSTER: view(["10.60.0.0/24"], "enp6s0"),
    }
    machine = plan_machine(
        PlanInput(
            machine="m",
            roles=frozenset({"storage"}),
            networks=networks,
            config=CharmConfig(),
        )
    )
    assert machine.status == "active", machine.problems
    assert {d.name for d in machine.denied_domains} == {"data", "internal", "public"}
    assert machine.denied_interfaces == ("enp2s0",)
    assert machine.space_interfaces == ("enp1s0", "enp2s0", "enp4s0", "enp6s0")
    assert {i for d in machine.allowed_domains for i in d.interfaces} == {
        "enp1s0",
        "enp4s0",
        "enp6s0",
    }


def test_network_cidrs_add_subnets(disjoint_subnets: dict[str, str]):
    options = {"network-cidrs": "internal=10.20.1.0/24,fd00:20::/64"}
    machine = plan({"compute"}, disjoint_subnets, options=options)
    expected = {ipaddress.ip_network(c) for c in ("10.20.0.0/24", "10.20.1.0/24", "fd00:20::/64")}
    assert set(machine.networks[Network.INTERNAL].subnets) == expected
    assert set(machine.domain_of(Network.INTERNAL).subnets) == expected
    assert machine.isolation.level == IsolationLevel.MAXIMUM
    assert machine.status == "active"


def test_network_cidrs_give_subnets_to_a_network_without_address(
    disjoint_subnets: dict[str, str],
):
    networks = {Network(n): view([c], NICS[n]) for n, c in disjoint_subnets.items()}
    networks[Network.PUBLIC] = NetworkView()  # nothing known from the binding
    machine = plan_machine(
        PlanInput(
            machine="m",
            roles=frozenset({"storage"}),
            networks=networks,
            config=CharmConfig.from_options({"network-cidrs": "public=10.30.0.0/24"}),
        )
    )
    assert machine.networks[Network.PUBLIC].subnets == (ipaddress.ip_network("10.30.0.0/24"),)


def test_network_cidrs_that_overlap_another_network_are_blocked(
    disjoint_subnets: dict[str, str],
):
    machine = plan({"compute"}, disjoint_subnets, options={"network-cidrs": "data=10.20.0.0/16"})
    assert machine.status == "blocked"
    assert any("'data'" in p and "'internal'" in p for p in machine.problems)


def test_addresses_and_interfaces_come_from_the_views(disjoint_subnets: dict[str, str]):
    machine = plan({"compute"}, disjoint_subnets)
    item = machine.networks[Network.DATA]
    assert item.interfaces == (NICS["data"],)
    assert item.addresses == (ipaddress.ip_interface("10.40.0.5/24"),)
    assert item.subnets == (ipaddress.ip_network("10.40.0.0/24"),)


def test_same_input_gives_the_same_plan(disjoint_subnets: dict[str, str]):
    first = plan({"compute", "storage"}, disjoint_subnets)
    second = plan({"storage", "compute"}, dict(reversed(list(disjoint_subnets.items()))))
    assert first == second


@pytest.mark.parametrize("mode", ["audit", "off"])
def test_enforcement_mode_shows_in_the_verdict(mode: str, disjoint_subnets: dict[str, str]):
    enforced = plan({"compute"}, disjoint_subnets)
    relaxed = plan({"compute"}, disjoint_subnets, options={"enforcement": mode})
    assert relaxed.status == "active"
    assert relaxed.message != enforced.message
    assert allowed(relaxed) == allowed(enforced)


NETWORK_NAMES = ["data", "internal", "management", "public", "storage", "storage-cluster"]


@settings(max_examples=60, deadline=None)
@given(
    roles=st.sets(st.sampled_from([*GUIDE_ROLES, "custom"]), min_size=1),
    overrides=st.dictionaries(
        st.sampled_from([*GUIDE_ROLES, "custom"]),
        # every role must keep management (the config refuses a row without it)
        st.sets(st.sampled_from(NETWORK_NAMES)).map(lambda nets: nets | {"management"}),
    ),
)
def test_access_is_the_union_of_the_table_in_force(
    roles: set[str],
    overrides: dict[str, set[str]],
    guide_table: dict[str, frozenset[str]],
    disjoint_subnets: dict[str, str],
):
    text = " ".join(f"{role}={','.join(sorted(nets))}" for role, nets in overrides.items())
    table = {**guide_table, **{r: frozenset(n) for r, n in overrides.items()}}
    machine = plan(roles, disjoint_subnets, options={"role-networks": text})
    if set(roles) <= set(table):
        assert allowed(machine) == union(table, roles)
        assert machine.status == "active", machine.problems
    else:
        assert machine.status == "blocked"


def test_network_cidrs_extend_the_whole_space_of_networks_bound_together():
    subnets = {
        "management": "10.10.0.0/24",
        "internal": "10.20.0.0/24",
        "public": "10.30.0.0/24",
        "data": "10.40.0.0/24",
        "storage": "10.50.0.0/24",
        "storage-cluster": "10.50.0.0/24",
    }
    machine = plan({"storage"}, subnets, options={"network-cidrs": "storage=10.51.0.0/24"})
    extra = ipaddress.ip_network("10.51.0.0/24")
    assert machine.status == "active", machine.problems
    assert extra in machine.networks[Network.STORAGE_CLUSTER].subnets
    assert machine.domain_of(Network.STORAGE) == machine.domain_of(Network.STORAGE_CLUSTER)


@pytest.mark.parametrize("table", ["guide", "sunbeam"])
def test_each_role_of_each_table_gets_exactly_its_row(
    table: str, guide_table: dict[str, frozenset[str]], sunbeam_table: dict[str, frozenset[str]]
):
    rows = {"guide": guide_table, "sunbeam": sunbeam_table}[table]
    config = CharmConfig.from_options({"role-table": table})
    for role, networks in rows.items():
        plan = plan_machine(
            PlanInput(machine="m", roles=frozenset({role}), networks={}, config=config)
        )
        assert {n.value for n, item in plan.networks.items() if item.access} == networks, role


def test_client_cidrs_overlapping_a_cloud_network_are_refused(disjoint_subnets: dict[str, str]):
    internal = disjoint_subnets["internal"]
    wide = str(ipaddress.ip_network(internal).supernet(new_prefix=16))
    machine = plan({"storage"}, disjoint_subnets, options={"client-cidrs": f"192.0.2.0/24,{wide}"})
    assert machine.status == "blocked"
    assert machine.message.startswith(f"invalid config 'client-cidrs': {wide} overlaps")
    assert internal in machine.message and "'internal'" in machine.message


def test_client_cidrs_inside_management_or_outside_the_cloud_are_fine(
    disjoint_subnets: dict[str, str],
):
    management = ipaddress.ip_network(disjoint_subnets["management"])
    inside = next(management.subnets(new_prefix=management.prefixlen + 1))
    options = {"client-cidrs": f"192.0.2.0/24,{inside}"}
    assert plan({"storage"}, disjoint_subnets, options=options).status == "active"
