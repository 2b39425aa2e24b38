"""What the machine's principals need: a need the role table denies blocks, unless accepted.

The machines are those of examples/sunbeam-maas.yaml, loaded as the `plan` command loads them;
the principals' needs and the expected sentences are written out here by hand.
"""

from __future__ import annotations

import pytest
from topologies import EXAMPLES, configured

from network_isolation.model import Network
from network_isolation.planner import MachinePlan, plan_machine
from network_isolation.topology import Topology, load_topology

ACCEPT = "or accept it in 'accept-denials'"


@pytest.fixture(scope="module")
def sunbeam_cloud() -> Topology:
    """The example cloud as Sunbeam deploys it, with Sunbeam's role table."""
    return load_topology(EXAMPLES / "sunbeam-maas.yaml")


def plan_with(cloud: Topology, machine: str, principals: set[str], **options: str) -> MachinePlan:
    """A machine of the cloud with these principals and these options over the cloud's."""
    plan_input = configured(cloud, **options).plan_input(machine)
    return plan_machine(plan_input.model_copy(update={"principals": frozenset(principals)}))


def test_a_need_the_table_denies_blocks_naming_the_principal_the_network_and_the_fix(
    sunbeam_cloud: Topology,
):
    plan = plan_with(sunbeam_cloud, "storage-1", {"cinder-volume"}, **{"role-table": "guide"})
    assert plan.status == "blocked"
    assert plan.message == (
        "cinder-volume needs 'internal', which role table 'guide' denies to storage:"
        f" role-table=sunbeam allows it, {ACCEPT}"
    )
    assert plan.warnings == ()
    assert not plan.networks[Network.INTERNAL].access  # the plan itself is unchanged


def test_several_denied_needs_show_the_first_and_count_the_rest(sunbeam_cloud: Topology):
    # a MicroOVN chassis on a storage node (Sunbeam puts none there): two needs denied
    principals = {"microovn", "cinder-volume"}
    plan = plan_with(sunbeam_cloud, "storage-1", principals, **{"role-table": "guide"})
    assert plan.status == "blocked"
    assert [p.split(",")[0] for p in plan.problems] == [
        "cinder-volume needs 'internal'",
        "microovn needs 'data'",
    ]
    assert plan.message == plan.problems[0] + " (+1 more)"


def test_microovn_needs_no_internal(sunbeam_cloud: Topology):
    # OVN's databases are reached at MicroOVN's cluster (management) address, not on internal
    plan = plan_with(
        sunbeam_cloud,
        "storage-1",
        {"microovn"},
        **{"role-networks": "storage=management,storage,storage-cluster,data"},
    )
    assert not plan.networks[Network.INTERNAL].access
    assert not any("internal" in p for p in (*plan.problems, *plan.warnings))


def test_an_accepted_denial_is_enforced_and_stays_a_warning(sunbeam_cloud: Topology):
    options = {"role-table": "guide", "accept-denials": "cinder-volume=internal"}
    plan = plan_with(sunbeam_cloud, "storage-1", {"cinder-volume", "microceph"}, **options)
    assert plan.status == "active"
    assert plan.problems == ()
    assert plan.warnings == (
        "cinder-volume needs 'internal' (Sunbeam binds its amqp, database and identity there),"
        " which role table 'guide' denies to storage: role-table=sunbeam allows it",
    )
    assert not plan.networks[Network.INTERNAL].access


@pytest.mark.parametrize(
    "accepted",
    ["cinder-volume=data", "microceph=internal", "cinder-volume-arm64=internal"],
)
def test_accepting_another_network_or_application_still_blocks(
    sunbeam_cloud: Topology, accepted: str
):
    options = {"role-table": "guide", "accept-denials": accepted}
    plan = plan_with(sunbeam_cloud, "storage-1", {"cinder-volume"}, **options)
    assert plan.status == "blocked"
    assert plan.message.startswith("cinder-volume needs 'internal'")


@pytest.mark.parametrize(
    ("machine", "principals"),
    [
        ("storage-1", {"cinder-volume", "microceph"}),
        ("control-1", {"k8s", "microovn"}),
        ("compute-1", {"openstack-hypervisor", "microovn"}),
        ("network-1", {"microovn-arm64"}),
    ],
)
def test_the_sunbeam_table_gives_every_principal_what_it_needs(
    sunbeam_cloud: Topology, machine: str, principals: set[str]
):
    plan = plan_with(sunbeam_cloud, machine, principals)
    assert (plan.status, plan.problems, plan.warnings) == ("active", (), ())


def test_a_role_networks_row_that_allows_the_need_clears_it(sunbeam_cloud: Topology):
    options = {
        "role-table": "guide",
        "role-networks": "storage=management,internal,storage,storage-cluster",
    }
    plan = plan_with(sunbeam_cloud, "storage-1", {"cinder-volume"}, **options)
    assert (plan.status, plan.warnings) == ("active", ())


def test_a_need_no_preset_allows_names_role_networks(sunbeam_cloud: Topology):
    # Both presets' storage rows are narrowed: only a row of role-networks can give internal.
    options = {"role-networks": "storage=management,storage,storage-cluster"}
    plan = plan_with(sunbeam_cloud, "storage-1", {"cinder-volume"}, **options)
    assert plan.message == (
        "cinder-volume needs 'internal', which role table 'sunbeam' denies to storage:"
        f" add 'internal' to a role's row in 'role-networks', {ACCEPT}"
    )


def test_a_principal_the_charm_does_not_know_needs_nothing(sunbeam_cloud: Topology):
    plan = plan_with(sunbeam_cloud, "storage-1", {"ubuntu"}, **{"role-table": "guide"})
    assert (plan.status, plan.warnings) == ("active", ())


def test_the_sunbeam_example_with_the_guide_table_holds_its_storage_nodes(
    sunbeam_cloud: Topology,
):
    guide = configured(sunbeam_cloud, **{"role-table": "guide"})
    plans = {name: plan_machine(guide.plan_input(name)) for name in guide.machines}
    for name in ("storage-1", "storage-3"):
        assert plans[name].status == "blocked", name
        assert plans[name].message.startswith(
            "cinder-volume needs 'internal', which role table 'guide' denies to storage:"
        ), name
    for name in ("compute-1", "compute-2", "juju-1"):
        assert (plans[name].status, plans[name].warnings) == ("active", ()), name
    # The control nodes carry a MicroOVN chassis; the roles the guide lacks stay unknown.
    for name in ("control-1", "control-2"):
        assert plans[name].message.startswith("microovn needs 'data'"), name
    assert plans["network-1"].message.startswith("unknown role 'network'")


def test_the_sunbeam_example_as_it_is_enforces_everywhere(sunbeam_cloud: Topology):
    for name in sunbeam_cloud.machines:
        plan = plan_machine(sunbeam_cloud.plan_input(name))
        assert (plan.status, plan.problems, plan.warnings) == ("active", (), ()), name
