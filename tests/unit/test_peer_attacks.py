"""Peer data can neither widen nor stop: each attack on the shared view, as a test.

A compromised machine can rewrite its own unit's databag. None of what it writes may change
what another machine allows, block another machine's plan, or make a hook slow.
"""

from __future__ import annotations

import ipaddress
import json

import ops
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ops import testing

from network_isolation.config import CharmConfig
from network_isolation.model import Network
from network_isolation.peers import (
    MAX_RECORD_BYTES,
    MAX_RECORD_SUBNETS,
    MAX_SUBNETS_PER_NETWORK,
    CloudView,
    MachineRecord,
    PeerError,
    admit,
    dump,
    parse_cloud_view,
    parse_record,
)
from network_isolation.planner import (
    InterfaceAddress,
    MachinePlan,
    NetworkView,
    PlanInput,
    known_subnets,
    plan_machine,
)
from network_isolation.render import render
from tests.charm_context import context

MIN = {4: 16, 6: 48}
# compute-1 of examples/microstack-maas.yaml: no address on storage-cluster.
COMPUTE_1 = {
    Network.MANAGEMENT: ("enp1s0", "10.10.0.21/24"),
    Network.INTERNAL: ("enp2s0", "10.20.0.21/24"),
    Network.DATA: ("enp5s0", "10.40.0.21/24"),
    Network.STORAGE: ("enp4s0", "10.50.0.21/24"),
}
HONEST = {Network.STORAGE_CLUSTER: ["10.60.0.0/24", "10.60.1.0/24"]}


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def compute_networks(learnt: dict[Network, list[str]]) -> dict[Network, NetworkView]:
    """compute-1's bindings, with subnets learnt from peers."""
    return {
        n: NetworkView(
            interfaces=tuple(
                InterfaceAddress(name=nic, address=ipaddress.ip_interface(address))
                for nic, address in ([COMPUTE_1[n]] if n in COMPUTE_1 else [])
            ),
            learnt=tuple(net(s) for s in learnt.get(n, [])),
        )
        for n in Network
    }


def compute_plan(learnt: dict[Network, list[str]], **options: str) -> MachinePlan:
    networks = compute_networks(learnt)
    config = CharmConfig.from_options({"client-cidrs": "10.99.0.0/24", **options})
    return plan_machine(
        PlanInput(
            machine="compute-1", roles=frozenset({"compute"}), networks=networks, config=config
        )
    )


def subnets_of(plan: MachinePlan, network: Network) -> set[str]:
    return {str(s) for s in plan.domain_of(network).subnets}


def test_a_16_claimed_for_management_enters_neither_failsafe_nor_management():
    plan = compute_plan({**HONEST, Network.MANAGEMENT: ["198.18.0.0/16"]})
    assert plan.status == "active"
    assert subnets_of(plan, Network.MANAGEMENT) == {"10.10.0.0/24"}
    assert any("198.18.0.0/16" in reason for reason in plan.ignored)
    assert "198.18.0.0/16" not in render(plan).nftables
    # The honest rack subnets of a denied network still reach its drop sets.
    assert {"10.60.0.0/24", "10.60.1.0/24"} <= subnets_of(plan, Network.STORAGE_CLUSTER)


def test_learnt_management_subnets_inside_client_cidrs_or_own_are_kept():
    plan = compute_plan({Network.MANAGEMENT: ["10.99.0.0/24", "10.10.0.0/24"]})
    assert subnets_of(plan, Network.MANAGEMENT) == {"10.10.0.0/24", "10.99.0.0/24"}
    bounded = compute_plan(
        {Network.MANAGEMENT: ["10.10.7.0/24"]}, **{"network-cidrs": "management=10.10.0.0/16"}
    )
    assert "10.10.7.0/24" in subnets_of(bounded, Network.MANAGEMENT)


def test_the_domain_merge_attack_leaves_storage_cluster_denied():
    merge = {
        Network.MANAGEMENT: ["10.10.0.0/24", "10.60.0.0/24"],
        Network.STORAGE_CLUSTER: ["10.60.0.0/24", "10.10.0.0/24"],
    }
    honest, attacked = compute_plan(HONEST), compute_plan(merge)
    assert attacked.status == "active"
    assert [d.networks for d in attacked.domains] == [d.networks for d in honest.domains]
    assert not attacked.domain_of(Network.STORAGE_CLUSTER).allowed
    assert "10.60.0.0/24" in subnets_of(attacked, Network.STORAGE_CLUSTER)
    assert "10.10.0.0/24" not in subnets_of(attacked, Network.STORAGE_CLUSTER)
    assert subnets_of(attacked, Network.MANAGEMENT) == {"10.10.0.0/24"}
    ruleset = render(attacked).nftables
    assert "10.60.0.0/24" in ruleset  # still dropped towards storage-cluster


def test_a_learnt_subnet_overlapping_another_domain_is_dropped_not_blocking():
    plan = compute_plan({**HONEST, Network.INTERNAL: ["10.50.0.0/24"]})
    assert plan.status == "active", plan.problems
    assert "10.50.0.0/24" not in subnets_of(plan, Network.INTERNAL)
    assert any("10.50.0.0/24 learnt for internal overlaps" in r for r in plan.ignored)


def own_of_compute() -> dict[Network, tuple]:
    plan_networks = compute_networks({})
    return known_subnets(plan_networks, CharmConfig())


def record(**subnets: list[str]) -> MachineRecord:
    return MachineRecord.model_validate(
        {"machine": "m9", "subnets": {k.replace("_", "-"): v for k, v in subnets.items()}}
    )


def test_the_leader_refuses_a_record_that_conflicts_with_its_own_subnets():
    own = own_of_compute()
    with pytest.raises(PeerError, match="10.50.0.0/24 for internal overlaps own 10.50.0.0/24"):
        admit(record(internal=["10.50.0.0/24"]), [], own)
    with pytest.raises(PeerError, match="overlaps a peer's 10.21.0.0/24"):
        admit(record(storage=["10.21.0.0/24"]), [record(internal=["10.21.0.0/24"])], own)
    # A network this machine does not know itself is not judged here (a shared space).
    admit(record(storage=["10.50.0.0/24"], storage_cluster=["10.50.0.0/24"]), [], own)
    admit(record(storage_cluster=["10.60.0.0/24"]), [record(internal=["10.20.1.0/24"])], own)


def test_bounds_per_record_and_per_view():
    many = [f"10.99.{i}.0/24" for i in range(MAX_RECORD_SUBNETS + 1)]
    with pytest.raises(PeerError, match=f"more than {MAX_RECORD_SUBNETS} subnets on data"):
        parse_record(dump(record(data=many)), MIN)
    with pytest.raises(PeerError, match="byte limit"):
        parse_record(json.dumps({"machine": "m", "pad": "x" * MAX_RECORD_BYTES}), MIN)
    flood = [f"10.99.{i // 256}.{i % 256}/32" for i in range(MAX_SUBNETS_PER_NETWORK + 1)]
    view = json.dumps({"subnets": {"data": flood}})
    with pytest.raises(PeerError, match=f"more than {MAX_SUBNETS_PER_NETWORK} subnets on data"):
        parse_cloud_view(view, MIN)
    full = [record(data=flood[i : i + 8]) for i in range(0, MAX_SUBNETS_PER_NETWORK, 8)]
    with pytest.raises(PeerError, match="already holds"):
        admit(record(data=["10.98.0.0/24"]), full, own_of_compute())


def test_an_address_outside_its_subnets_is_refused():
    raw = json.dumps(
        {
            "machine": "m",
            "subnets": {"data": ["10.40.0.0/24"]},
            "addresses": {"data": ["10.41.0.9"]},
        }
    )
    with pytest.raises(PeerError, match="address 10.41.0.9 is in none of its subnets on data"):
        parse_record(raw, MIN)


# Fuzzing: whatever a peer writes, the parser answers with a record or a clear PeerError.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
cidr_like = st.one_of(
    st.ip_addresses().map(str),
    st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(), st.integers(-1, 130)),
    st.text(max_size=20),
)
record_like = st.fixed_dictionaries(
    {"machine": st.text(max_size=70)},
    optional={
        "roles": st.lists(st.text(max_size=10), max_size=3),
        "subnets": st.dictionaries(
            st.sampled_from([n.value for n in Network] + ["x"]),
            st.lists(cidr_like, max_size=3),
            max_size=3,
        ),
        "addresses": st.dictionaries(
            st.sampled_from([n.value for n in Network]),
            st.lists(cidr_like, max_size=3),
            max_size=2,
        ),
        "inputs": st.text(max_size=20),
    },
)


@settings(max_examples=150, deadline=None)
@given(
    raw=st.one_of(st.text(max_size=200), json_values.map(json.dumps), record_like.map(json.dumps))
)
def test_the_parser_never_crashes_and_says_why(raw: str):
    try:
        parsed = parse_record(raw, MIN)
    except PeerError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert parsed is None or isinstance(parsed, MachineRecord)
    try:
        parse_cloud_view(raw, MIN)
    except PeerError as e:
        assert str(e)


# The charm: a leader with one bad peer among good ones.


def storage_networks(make_networks, distinct_layout) -> list[testing.Network]:
    layout = dict(distinct_layout)
    layout["data"] = None
    return make_networks(layout)


@pytest.fixture
def leader_networks(make_networks, distinct_layout) -> list[testing.Network]:
    return make_networks(distinct_layout)


def run_leader(networks: list[testing.Network], peers_data: dict[int, dict[str, str]]):
    ctx = context(machine_id="0")
    relation = testing.PeerRelation("cluster", peers_data=peers_data)
    control = testing.SubordinateRelation("control-node", remote_app_name="k8s")
    out = ctx.run(
        ctx.on.config_changed(),
        testing.State(networks=networks, relations=[control, relation], leader=True),
    )
    return out, CloudView.model_validate_json(
        out.get_relation(relation.id).local_app_data["cloud"]
    )


def test_one_conflicting_record_is_refused_alone_and_named(leader_networks, fake_host):
    good = dump(record(storage_cluster=["10.60.1.0/24"]))
    bad = dump(record(internal=["10.50.0.0/24"]))  # the storage subnet, claimed for internal
    peers = {1: {"machine": good}, 2: {"machine": bad}, 3: {"machine": good}}  # rack 2's two
    out, view = run_leader(leader_networks, peers)
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    assert "refused the record of network-isolation/2: 10.50.0.0/24 for internal" in str(
        out.unit_status
    )
    assert net("10.60.1.0/24") in view.subnets_of(Network.STORAGE_CLUSTER)
    assert net("10.50.0.0/24") not in view.subnets_of(Network.INTERNAL)
    assert fake_host.applied_state.nftables is not None


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.one_of(st.text(max_size=100), record_like.map(json.dumps)))
def test_no_peer_record_blocks_the_leader_or_changes_its_management(
    leader_networks, fake_host, raw
):
    fake_host.reset()
    out, view = run_leader(leader_networks, {1: {"machine": raw}})
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    ruleset = fake_host.applied_state.nftables or ""
    failsafe = ruleset[ruleset.index("set failsafe_v4") :].split("}", 1)[0]
    assert "10.10.0.0/24" in failsafe
    assert failsafe.count("/") == 1, failsafe
