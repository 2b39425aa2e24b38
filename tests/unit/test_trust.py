"""One compromised machine steers no other: each attack through the peer relation, as a test.

Any root on a machine can rewrite its unit's databag. Nothing it writes may route or drop
another machine's traffic outside the cloud's own address space, block another machine's plan,
choose its place in the roll, decide its own canary verdict, veto other machines' applies, or
keep restarting the roll. What two units can still do together is said in
docs/explanation/peer-trust.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Mapping

import ops
from ops import testing

from network_isolation.canary import CounterCount, CounterSummary, expected_drops
from network_isolation.model import Network
from network_isolation.peers import CloudView, MachineRecord, aggregate, dump, teach
from network_isolation.rollout import (
    Member,
    Roll,
    RollInputs,
    Schedule,
    UnitReport,
    may_apply,
    plan_waves,
    step,
)
from tests.charm_context import compute_principal, context

APP = "network-isolation"


def unit(number: int) -> str:
    return f"{APP}/{number}"


def record(machine: str, roles: tuple[str, ...] = ("compute",), **subnets: list[str]) -> str:
    return dump(
        MachineRecord.model_validate(
            {
                "machine": machine,
                "roles": list(roles),
                "subnets": {k.replace("_", "-"): v for k, v in subnets.items()},
            }
        )
    )


def run_leader(
    networks: list[testing.Network],
    peers_data: dict[int, dict[str, str]],
    config: dict[str, str | int | bool] | None = None,
) -> tuple[testing.State, CloudView, testing.PeerRelation]:
    ctx = context(0)
    relation = testing.PeerRelation("cluster", peers_data=peers_data)
    out = ctx.run(
        ctx.on.config_changed(),
        testing.State(
            networks=networks,
            relations=[compute_principal(), relation],
            leader=True,
            config=config or {},
        ),
    )
    bag = out.get_relation(relation.id).local_app_data
    return out, CloudView.model_validate_json(bag["cloud"]), relation


def run_follower(
    networks: list[testing.Network],
    view: Mapping[str, object],
    config: dict[str, str] | None = None,
) -> testing.State:
    ctx = context(1)
    relation = testing.PeerRelation("cluster", local_app_data={"cloud": json.dumps(view)})
    return ctx.run(
        ctx.on.config_changed(),
        testing.State(
            networks=networks, relations=[compute_principal(), relation], config=config or {}
        ),
    )


# -- Route and drop anything: a peer's subnet outside the cloud's own address space -------------


def test_two_units_claiming_public_space_teach_it_to_no_one(networks, fake_host):
    claim = record("machine-66", internal=["8.8.0.0/16"], storage_cluster=["1.1.0.0/16"])
    out, view, _ = run_leader(networks, {1: {"machine": claim}, 2: {"machine": claim}})
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    assert "left out 8.8.0.0/16 on internal from network-isolation/1" in out.unit_status.message
    assert "8.8.0.0/16" not in dump(view) and "1.1.0.0/16" not in dump(view)
    applied = fake_host.applied_state
    assert "8.8.0.0" not in applied.nftables and "1.1.0.0" not in applied.nftables
    assert "8.8.0.0" not in (applied.netplan or ""), "no route to it via the internal gateway"


def test_a_compromised_leaders_public_space_is_left_out_by_every_unit(networks, fake_host):
    forged = {
        "subnets": {"internal": ["8.8.0.0/16"], "storage-cluster": ["1.1.0.0/16"]},
        "teachers": {"internal": {"8.8.0.0/16": "network-isolation/9"}},
    }
    out = run_follower(networks, forged)
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    assert "8.8.0.0/16 learnt for internal from network-isolation/9 is not private" in (
        out.unit_status.message
    )
    applied = fake_host.applied_state
    assert "8.8.0.0" not in applied.nftables and "1.1.0.0" not in applied.nftables
    assert "8.8.0.0" not in (applied.netplan or "")


def test_public_space_declared_in_network_cidrs_is_taught(networks):
    claim = record("machine-66", public=["203.0.113.0/24"])
    out, view, _ = run_leader(
        networks, {1: {"machine": claim}}, {"network-cidrs": "public=203.0.113.0/24"}
    )
    assert ipaddress.ip_network("203.0.113.0/24") in view.subnets_of(Network.PUBLIC)


# -- Multi-rack clouds keep working out of the box ----------------------------------------------


def test_two_machines_of_another_rack_teach_its_private_subnets(networks, fake_host):
    rack2 = {1: {"machine": record("machine-21", storage_cluster=["10.60.1.0/24"])}}
    out, view, relation = run_leader(networks, rack2)
    assert ipaddress.ip_network("10.60.1.0/24") not in view.subnets_of(Network.STORAGE_CLUSTER)
    assert "10.60.1.0/24" not in out.unit_status.message, "a new rack is no warning"
    ctx = context(0)
    ctx.run(ctx.on.action("show-plan"), out)
    assert (
        "not yet taught: 10.60.1.0/24 on storage-cluster, reported by network-isolation/1 alone"
        in (ctx.action_results or {})["peer-data"]
    )
    rack2[2] = {"machine": record("machine-22", storage_cluster=["10.60.1.0/24"])}
    out, view, _ = run_leader(networks, rack2)
    assert ipaddress.ip_network("10.60.1.0/24") in view.subnets_of(Network.STORAGE_CLUSTER)
    assert "10.60.1.0/24" in fake_host.applied_state.nftables  # dropped: denied to compute


def test_teachers_are_counted_by_unit_name_not_by_the_machine_a_record_claims():
    same = MachineRecord.model_validate({"machine": "m1", "subnets": {"data": ["10.40.9.0/24"]}})
    other = same.model_copy(update={"machine": "m2"})
    alone = teach({unit(1): same, unit(3): MachineRecord(machine="m2")})
    assert alone.view.subnets_of(Network.DATA) == () and alone.left_out == ()
    assert alone.unconfirmed == (
        "not yet taught: 10.40.9.0/24 on data, reported by network-isolation/1 alone;"
        " it takes 2 units, or network-cidrs",
    )
    # two units agree, whatever machines they claim (two units on one machine count twice)
    assert teach({unit(1): same, unit(3): other}).view.subnets_of(Network.DATA) == (
        ipaddress.ip_network("10.40.9.0/24"),
    )


# -- Block every plan: a learnt subnet overlapping client-cidrs ----------------------------------


def test_a_learnt_subnet_overlapping_client_cidrs_never_blocks_a_plan(networks, fake_host):
    claim = record("machine-66", internal=["10.99.0.0/16"])
    config: dict[str, str | int | bool] = {"client-cidrs": "10.99.0.0/24"}
    out, view, _ = run_leader(networks, {1: {"machine": claim}, 2: {"machine": claim}}, config)
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    assert "overlaps client-cidrs 10.99.0.0/24" in out.unit_status.message
    assert ipaddress.ip_network("10.99.0.0/16") not in view.subnets_of(Network.INTERNAL)
    # and a leader that publishes it anyway blocks no unit either
    forged = {"subnets": {"internal": ["10.99.0.0/16"]}}
    follower = run_follower(networks, forged, {"client-cidrs": "10.99.0.0/24"})
    assert isinstance(follower.unit_status, ops.ActiveStatus), follower.unit_status
    assert "10.99.0.0/16 learnt for internal overlaps client-cidrs" in (
        follower.unit_status.message
    )
    assert fake_host.applied_state.nftables


# -- Choose itself as canary, decide its own verdict -------------------------------------------


def test_a_record_naming_itself_0_does_not_choose_its_wave(networks):
    peers = {n: {"machine": record(f"machine-{10 + n}")} for n in (1, 2, 3)}
    peers[4] = {"machine": record("0")}  # sorts before every machine name
    out, _, relation = run_leader(networks, peers)
    roll = Roll.model_validate_json(out.get_relation(relation.id).local_app_data["roll"])
    assert roll.waves[0] == (unit(0),), "the canary is the first unit Juju numbered"
    assert roll.wave_of(unit(4)) == len(roll.waves)


def test_waves_follow_unit_names_whatever_machines_the_records_claim():
    members = {
        unit(n): Member(unit(n), name, frozenset({"compute"}))
        for n, name in [(1, "zz"), (2, "0"), (3, "aa"), (4, "00")]
    }
    waves = plan_waves(members.values(), Schedule(limit=1, percent=False))
    assert waves == ((unit(1),), (unit(2),), (unit(3),), (unit(4),))


def counters(expected: bool, enforcing: int) -> CounterSummary:
    """A canary's summary with a flood on internal, which a compute node may use."""
    flood = CounterCount(
        counter="drop_in_internal", networks="internal", expected=expected, enforcing=enforcing
    )
    return CounterSummary(audit_seconds=600, window_seconds=300, counters=(flood,))


def test_the_leader_not_the_canary_decides_which_drops_are_expected(guide_table):
    members = {unit(n): Member(unit(n), f"m{n}", frozenset({"compute"})) for n in range(4)}
    schedule = Schedule.parse("50%", 900, 20, {r: frozenset(n) for r, n in guide_table.items()})
    gen = "0123456789abcdef"
    roll = step(Roll(), gen, members, {}, now=0, schedule=schedule)
    [canary] = roll.waves[0]
    lying = UnitReport(generation=gen, counters=counters(expected=True, enforcing=5000))
    halted = step(roll, gen, members, {canary: lying}, now=300, schedule=schedule)
    assert "counters: 5000 packets dropped on internal, which it may use" in halted.halted
    assert halted.opened == 1


def test_a_counter_is_expected_only_for_networks_the_machine_may_not_use():
    compute = frozenset({Network.MANAGEMENT, Network.INTERNAL, Network.DATA, Network.STORAGE})
    assert expected_drops("drop_in_invalid", compute)
    assert expected_drops("drop_in_storage_cluster", compute)
    assert expected_drops("drop_fwd_public_storage_cluster", compute)
    assert not expected_drops("drop_in_internal", compute)
    assert not expected_drops("drop_in_internal_public", compute)  # one of them is allowed
    assert not expected_drops("drop_in_nonsense", compute)


# -- Veto any apply: the neighbours a unit probes ------------------------------------------------


def neighbour_record(third_octet: int, host: int) -> MachineRecord:
    subnet = f"10.40.{third_octet}.0/24"
    return MachineRecord.model_validate(
        {
            "machine": f"m{host}",
            "subnets": {"data": [subnet]},
            "addresses": {"data": [f"10.40.{third_octet}.{host}"]},
        }
    )


def test_publishing_the_lowest_address_does_not_make_a_unit_everyones_neighbour():
    honest = {unit(n): neighbour_record(0, 10 + n) for n in range(1, 9)}
    quiet = aggregate(honest).neighbours_of(Network.DATA)
    for rogue in range(1, 9):
        low = {**honest, unit(rogue): neighbour_record(0, 1)}  # the lowest address there is
        loud = aggregate(low).neighbours_of(Network.DATA)
        chosen_quiet = ipaddress.ip_address(f"10.40.0.{10 + rogue}") in quiet
        chosen_loud = ipaddress.ip_address("10.40.0.1") in loud
        assert chosen_quiet == chosen_loud, "a neighbour by its unit name, not its address"
        assert len(loud) == 3 == len(set(loud))


# -- Stall forever: a record that keeps changing -------------------------------------------------


def test_a_change_of_records_alone_waits_for_the_roll_in_progress():
    members = {unit(n): Member(unit(n), f"m{n}", frozenset({"compute"})) for n in range(12)}
    schedule = Schedule(limit=25, percent=True, timeout=900)
    first = RollInputs("c" * 16, "1" * 16, "e" * 16)
    roll = step(Roll(), first, members, {}, now=0, schedule=schedule)
    flipped = RollInputs("c" * 16, "2" * 16, "e" * 16, changed_by=(unit(7),))
    held = step(roll, flipped, members, {}, now=120, schedule=schedule)
    assert held.generation == roll.generation and held.waves == roll.waves
    assert held.deferred == (
        "a change of records (of network-isolation/7) waits for the roll in progress"
    )
    late = step(held, flipped, members, {}, now=5000, schedule=schedule)
    assert late.generation == roll.generation, "the roll in progress is not done yet"
    done = held.model_copy(update={"opened": len(held.waves)})
    assert step(done, flipped, members, {}, now=600, schedule=schedule).generation == (
        roll.generation
    ), "and not sooner than a wave timeout after it began"
    assert step(done, flipped, members, {}, now=901, schedule=schedule).generation == (
        flipped.generation
    )
    # a config change or a new unit restarts at once
    config = RollInputs("d" * 16, "2" * 16, "e" * 16)
    assert step(roll, config, members, {}, now=120, schedule=schedule).generation == (
        config.generation
    )


def test_a_units_own_record_change_re_plans_only_its_machine():
    roll = Roll(generation="0123456789abcdef", waves=((unit(1),), (unit(2),)), opened=2)
    reported = UnitReport(generation=roll.generation, record="1" * 16)
    assert not may_apply(unit(2), roll, reported, "1" * 16)
    assert may_apply(unit(2), roll, reported, "2" * 16), "its own change: it applies again"
    waiting = roll.model_copy(update={"opened": 1})
    assert not may_apply(unit(2), waiting, reported, "2" * 16), "only within its open wave"


def test_a_peer_flipping_its_record_does_not_restart_the_rollout_in_progress(networks):
    peers = {n: {"machine": record(f"machine-{10 + n}", data=["10.40.0.0/24"])} for n in (1, 2)}
    out, _, relation = run_leader(networks, peers)
    before = Roll.model_validate_json(out.get_relation(relation.id).local_app_data["roll"])
    assert not before.done
    flipped = record("0", ("storage",), data=["10.40.0.0/24"])  # a new name, other roles
    changed = dataclasses.replace(
        out.get_relation(relation.id), peers_data={**peers, 2: {"machine": flipped}}
    )
    ctx = context(0)
    later = ctx.run(
        ctx.on.relation_changed(changed, remote_unit=2),
        dataclasses.replace(out, relations=[compute_principal(), changed]),
    )
    after = Roll.model_validate_json(later.get_relation(relation.id).local_app_data["roll"])
    assert after.generation == before.generation and after.waves == before.waves
    assert after.deferred == (
        "a change of records (of network-isolation/2) waits for the roll in progress"
    )
    assert "a change of records (of network-isolation/2)" in later.unit_status.message
