"""Hooks that cannot change what a unit does return early, and those that can run in full.

Most of a rollout's hooks are a unit woken by another unit's report. A non-leader reads no
peer's databag, so such a hook changes nothing unless the leader's data, the machine's registry
or the host's record changed; the leader folds the one report and ends when no wave moves.
"""

from __future__ import annotations

import dataclasses

from ops import testing

from network_isolation.peers import MachineRecord
from network_isolation.rollout import Roll, UnitReport
from tests.charm_context import compute_principal, context
from tools import bench

G = "0123456789abcdef"
ME, PEER = "network-isolation/0", "network-isolation/1"


def counted(ctx, event, state: testing.State) -> tuple[testing.State, int]:
    counter = bench.HookToolCounter()
    with counter.installed():
        counter.reset()
        out = ctx.run(event, state)
    return out, counter.total


def test_a_non_leader_woken_by_a_report_returns_early_when_nothing_it_reads_changed(networks):
    roll = Roll(generation=G, waves=((PEER,), (ME,)), opened=1)
    peers = testing.PeerRelation("cluster", local_app_data={"roll": roll.model_dump_json()})
    ctx = context(0)
    first = ctx.run(
        ctx.on.config_changed(),
        testing.State(networks=networks, relations=[compute_principal(), peers]),
    )
    relation = first.get_relation(peers.id)
    settled = ctx.run(ctx.on.update_status(), first)  # a hook that changed nothing
    reported = dataclasses.replace(
        relation, peers_data={1: {"report": UnitReport(generation=G).model_dump_json()}}
    )
    state = dataclasses.replace(settled, relations=[compute_principal(), reported])
    out, calls = counted(ctx, ctx.on.relation_changed(reported, remote_unit=1), state)
    assert calls <= 8, calls
    assert out.unit_status == settled.unit_status, "its status stays as it was"
    # the leader opens the next wave: that is news, the hook runs in full and applies
    opened = dataclasses.replace(
        reported, local_app_data={"roll": roll.model_copy(update={"opened": 2}).model_dump_json()}
    )
    state = dataclasses.replace(out, relations=[compute_principal(), opened])
    out, calls = counted(ctx, ctx.on.relation_changed(opened, remote_unit=1), state)
    assert calls > 20, calls
    assert out.get_relation(opened.id).local_unit_data.get("report")


def peer_record(number: int = 1) -> str:
    return MachineRecord(machine=f"machine-{number}", roles=("compute",)).model_dump_json()


def test_the_leader_folds_a_report_that_moves_no_wave_and_ends(networks, fake_host):
    peers = testing.PeerRelation(
        "cluster", peers_data={n: {"machine": peer_record(n)} for n in (0, 1, 2)}
    )
    ctx = context(3)  # the leader is the last unit: another is the canary
    st = testing.State(networks=networks, relations=[compute_principal(), peers], leader=True)
    first = ctx.run(ctx.on.config_changed(), st)
    settled = ctx.run(ctx.on.update_status(), first)
    roll = Roll.model_validate_json(settled.get_relation(peers.id).local_app_data["roll"])
    assert roll.wave_of("network-isolation/3") != 1
    # a unit of a wave not open yet sends an old report: no wave moves
    old = UnitReport(generation="f" * 16).model_dump_json()
    published = settled.get_relation(peers.id)
    assert isinstance(published, testing.PeerRelation)
    bags = dict(published.peers_data)
    bags[2] = {"machine": peer_record(2), "report": old}
    relation = dataclasses.replace(settled.get_relation(peers.id), peers_data=bags)
    state = dataclasses.replace(settled, relations=[compute_principal(), relation])
    out, calls = counted(ctx, ctx.on.relation_changed(relation, remote_unit=2), state)
    assert calls <= 12, calls
    assert Roll.model_validate_json(out.get_relation(relation.id).local_app_data["roll"]) == roll
    # the canary reports: its wave is done, the next opens, the hook runs in full
    [canary] = roll.waves[0]
    bags[int(canary.rpartition("/")[2])] = {
        "machine": peer_record(int(canary.rpartition("/")[2])),
        "report": UnitReport(generation=roll.generation).model_dump_json(),
    }
    relation = dataclasses.replace(out.get_relation(relation.id), peers_data=bags)
    state = dataclasses.replace(out, relations=[compute_principal(), relation])
    number = int(canary.rpartition("/")[2])
    out, calls = counted(ctx, ctx.on.relation_changed(relation, remote_unit=number), state)
    assert calls > 20, calls
    after = Roll.model_validate_json(out.get_relation(relation.id).local_app_data["roll"])
    assert after.opened == 2
