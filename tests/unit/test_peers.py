"""The cloud view over the peer relation: aggregation and untrusted data, pure and in the charm."""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import ops
import pytest
from ops import testing

from charm import NetworkIsolationCharm
from network_isolation.model import Network
from network_isolation.peers import (
    CloudView,
    MachineRecord,
    PeerError,
    aggregate,
    dump,
    parse_cloud_view,
    parse_record,
)
from tests.charm_context import context

MIN = {4: 16, 6: 48}
RACK2_REPL = ipaddress.ip_network("10.60.1.0/24")


def record(machine: str, **subnets: list[str]) -> MachineRecord:
    return MachineRecord.model_validate(
        {
            "machine": machine,
            "roles": ["storage"],
            "subnets": {k.replace("_", "-"): v for k, v in subnets.items()},
        }
    )


def test_aggregate_merges_and_deduplicates_every_network():
    view = aggregate(
        {
            "ni/0": record("m0", storage_cluster=["10.60.0.0/24"], management=["10.10.0.0/24"]),
            "ni/1": record("m1", storage_cluster=["10.60.1.0/24", "10.60.0.0/24"]),
            # a co-located unit on the same machine; a subnet takes two units to be taught
            "ni/2": record("m1", management=["10.10.0.0/24"], storage_cluster=["10.60.1.0/24"]),
        }
    )
    assert view.subnets_of(Network.STORAGE_CLUSTER) == (
        ipaddress.ip_network("10.60.0.0/24"),
        RACK2_REPL,
    )
    assert view.machines == 2
    assert view.subnets_of(Network.DATA) == ()


def test_the_dump_is_canonical_so_unchanged_data_is_not_rewritten():
    a = aggregate({"x/0": record("m0", storage=["10.50.1.0/24", "10.50.0.0/24"])})
    b = aggregate({"x/0": record("m0", storage=["10.50.0.0/24", "10.50.1.0/24"])})
    assert dump(a) == dump(b)
    assert parse_cloud_view(dump(a), MIN) == a


@pytest.mark.parametrize(
    "raw, problem",
    [
        ('{"machine": "m", "subnets": {"internal": ["0.0.0.0/0"]}}', "wider than the allowed /16"),
        ('{"machine": "m", "subnets": {"internal": ["::/0"]}}', "wider than the allowed /48"),
        ('{"machine": "m", "subnets": {"internal": ["10.0.0.0/8"]}}', "wider"),
        ('{"machine": "m", "subnets": {"internal": ["10.0.0.5/24"]}}', "malformed"),
        ('{"machine": "m", "subnets": {"nope": ["10.0.0.0/24"]}}', "malformed"),
        ('{"machine": "m", "subnets": {"internal": "10.0.0.0/24"}}', "malformed"),
        ('{"subnets": {}}', "malformed"),
        ("{not json", "malformed"),
        ('["a list"]', "malformed"),
        ('{"machine": "' + "m" * 100 + '"}', "malformed"),
    ],
)
def test_untrusted_records_are_refused_with_a_reason(raw: str, problem: str):
    with pytest.raises(PeerError) as caught:
        parse_record(raw, MIN)
    assert problem in str(caught.value)


def test_the_minimum_prefix_is_configurable():
    raw = '{"machine": "m", "subnets": {"internal": ["10.0.0.0/8"]}}'
    parsed = parse_record(raw, {4: 8, 6: 48})
    assert parsed is not None
    assert parsed.subnets[Network.INTERNAL] == (ipaddress.ip_network("10.0.0.0/8"),)


def test_nothing_published_yet_is_not_an_error():
    assert parse_record(None, MIN) is None
    assert parse_record("", MIN) is None
    assert parse_cloud_view(None, MIN) == CloudView()


# The charm side


def storage_node() -> testing.SubordinateRelation:
    return testing.SubordinateRelation("storage-node", remote_app_name="microceph")


@pytest.fixture
def storage_networks(make_networks, distinct_layout) -> list[testing.Network]:
    layout = dict(distinct_layout)
    layout["internal"] = layout["public"] = layout["data"] = None
    return make_networks(layout)


def peer_bag(raw: str) -> dict[str, str]:
    return {"machine": raw}


def plan_of(ctx: testing.Context[NetworkIsolationCharm], st: testing.State) -> dict:
    ctx.run(ctx.on.action("show-plan", params={"format": "json"}), st)
    return json.loads((ctx.action_results or {})["plan"])


def test_the_leader_shares_other_racks_subnets_with_every_unit(storage_networks, fake_host):
    rack2 = dump(record("machine-9", storage_cluster=["10.60.1.0/24"]))
    rack2_too = dump(record("machine-10", storage_cluster=["10.60.1.0/24"]))
    peers = testing.PeerRelation(
        "cluster", peers_data={1: peer_bag(rack2), 2: peer_bag(rack2_too)}
    )
    ctx = context()
    st = testing.State(networks=storage_networks, relations=[storage_node(), peers], leader=True)
    out = ctx.run(ctx.on.config_changed(), st)
    view = CloudView.model_validate_json(out.get_relation(peers.id).local_app_data["cloud"])
    assert RACK2_REPL in view.subnets_of(Network.STORAGE_CLUSTER)
    assert "10.60.1.0/24" in plan_of(ctx, out)["networks"]["storage-cluster"]["subnets"]

    # A non-leader (on another machine) reads the leader's one aggregate, never the other
    # units' bags.
    fake_host.reset()
    follower = context(1)
    shared = testing.PeerRelation(
        "cluster",
        local_app_data=out.get_relation(peers.id).local_app_data,
        peers_data={0: {"machine": "{garbage that only the leader would read"}},
    )
    st2 = testing.State(networks=storage_networks, relations=[storage_node(), shared])
    out2 = follower.run(follower.on.config_changed(), st2)
    assert isinstance(out2.unit_status, ops.ActiveStatus)
    assert "ignored" not in out2.unit_status.message
    assert "10.60.1.0/24" in plan_of(follower, st2)["networks"]["storage-cluster"]["subnets"]


def test_a_peer_claiming_everything_is_ignored_and_named(storage_networks):
    evil = '{"machine": "m666", "subnets": {"storage-cluster": ["0.0.0.0/0"]}}'
    peers = testing.PeerRelation("cluster", peers_data={3: peer_bag(evil)})
    ctx = context()
    st = testing.State(networks=storage_networks, relations=[storage_node(), peers], leader=True)
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "refused the record of network-isolation/3: 0.0.0.0/0 is wider" in str(out.unit_status)
    cloud = out.get_relation(peers.id).local_app_data["cloud"]
    assert "0.0.0.0/0" not in cloud
    subnets = plan_of(ctx, out)["networks"]["storage-cluster"]["subnets"]
    assert "0.0.0.0/0" not in subnets


def test_a_forged_cloud_view_is_ignored_by_non_leaders(storage_networks):
    forged = json.dumps({"subnets": {"storage-cluster": ["0.0.0.0/0"]}, "machines": 1})
    peers = testing.PeerRelation("cluster", local_app_data={"cloud": forged})
    ctx = context(1)
    st = testing.State(networks=storage_networks, relations=[storage_node(), peers])
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "ignored the shared cloud view" in out.unit_status.message
    assert "0.0.0.0/0" not in plan_of(ctx, st)["networks"]["storage-cluster"]["subnets"]


def test_each_unit_publishes_its_own_machine_record(storage_networks):
    peers = testing.PeerRelation("cluster")
    ctx = context()
    st = testing.State(networks=storage_networks, relations=[storage_node(), peers])
    out = ctx.run(ctx.on.config_changed(), st)
    mine = MachineRecord.model_validate_json(out.get_relation(peers.id).local_unit_data["machine"])
    assert mine.machine == "machine-7"
    assert mine.roles == ("storage",)
    assert set(mine.subnets) == {Network.MANAGEMENT, Network.STORAGE, Network.STORAGE_CLUSTER}


def test_the_leader_applies_the_view_it_has_just_aggregated(storage_networks, fake_host):
    rack2 = dump(record("machine-9", storage_cluster=["10.60.1.0/24"]))
    rack2_too = dump(record("machine-10", storage_cluster=["10.60.1.0/24"]))
    peers = testing.PeerRelation(
        "cluster", peers_data={1: peer_bag(rack2), 2: peer_bag(rack2_too)}
    )
    ctx = context()
    st = testing.State(networks=storage_networks, relations=[storage_node(), peers], leader=True)
    ctx.run(ctx.on.config_changed(), st)
    assert "10.60.1.0/24" in (fake_host.applied_state.nftables or "")


def test_the_leader_keeps_what_it_learnt_and_rereads_no_peer_on_update_status(storage_networks):
    evil = '{"machine": "m666", "subnets": {"storage-cluster": ["0.0.0.0/0"]}}'
    agreeing = dump(record("m4", storage_cluster=["10.60.7.0/24"]))  # rack 7's other machine
    peers = testing.PeerRelation("cluster", peers_data={3: peer_bag(evil), 4: peer_bag(agreeing)})
    ctx = context()
    st = testing.State(networks=storage_networks, relations=[storage_node(), peers], leader=True)
    out = ctx.run(ctx.on.config_changed(), st)
    assert "refused the record of network-isolation/3" in str(out.unit_status)
    # The peer's databag now holds a valid record; update-status does not read it, so the
    # leader still names what it learnt (and refused) before.
    fixed = dump(record("m3", storage_cluster=["10.60.7.0/24"]))
    relation = dataclasses.replace(
        out.get_relation(peers.id), peers_data={3: peer_bag(fixed), 4: peer_bag(agreeing)}
    )
    later = dataclasses.replace(out, relations=[storage_node(), relation])
    again = ctx.run(ctx.on.update_status(), later)
    assert "refused the record of network-isolation/3" in str(again.unit_status)
    # Its own relation-changed makes the leader read it.
    changed = ctx.run(ctx.on.relation_changed(relation, remote_unit=3), later)
    assert "refused" not in str(changed.unit_status)
    view = CloudView.model_validate_json(changed.get_relation(peers.id).local_app_data["cloud"])
    assert ipaddress.ip_network("10.60.7.0/24") in view.subnets_of(Network.STORAGE_CLUSTER)
