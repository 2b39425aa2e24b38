"""A first deployment onto a running cloud: every machine audits at once, enforces in waves.

The real charm on every machine (see juju_sim), deployed at once as `juju deploy` and its
relations do it, with update-status every five minutes. The canary's fake host counts what a
canary counts: drops on a denied network and a little background (it passes), or drops on a
network it may use (it halts the roll and goes back to audit).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from juju_sim import (
    DELAYS,
    ENFORCING,
    SEEDS,
    UPDATE_STATUS_ROUNDS,
    Cloud,
    Unit,
    drawn_orders,
)

MACHINES = 12  # 3 control, 3 storage, 6 compute
# What compute machines count, per form of their ruleset: the denied public network's
# traffic (expected drops) and a little background on management (an allowed network).
QUIET = {"audit": {"drop_in_public": 300, "drop_in_management": 2}}
QUIET["enforce"] = {"drop_in_public": 9000, "drop_in_management": 5}
# A canary whose enforcing form drops the storage network's traffic, which it may use.
CUTTING = {"audit": {}, "enforce": {"drop_in_storage": 500, "drop_in_public": 40}}


def counting(cloud: Cloud, traffic: dict[str, dict[str, int]]) -> Cloud:
    """Give every compute machine's host these counters (the canary is a compute machine)."""
    for unit in cloud.units.values():
        if unit.role == "compute":
            unit.host.traffic = traffic
    return cloud


def enforcing(unit: Unit) -> bool:
    return ENFORCING in (unit.host.applied_state.nftables or "")


def first_enforcements(cloud: Cloud) -> dict[int, list[Unit]]:
    """Per round, the machines that loaded an enforcing form for the first time."""
    rounds: dict[int, list[Unit]] = {}
    for unit in cloud.units.values():
        first = next((when for when, rules in unit.applies if ENFORCING in rules), None)
        if first is not None:
            rounds.setdefault(first, []).append(unit)
    return rounds


def check_first_deployment(cloud: Cloud, delay: int = 0) -> dict[int, list[Unit]]:
    """The properties of every first deployment that went through, whatever the event order.

    `delay`: the most rounds a delivery was late; a unit's first hook runs by round 1 + delay.
    """
    for unit in cloud.units.values():
        first = unit.applies[0][0] if unit.applies else None
        assert first is not None and first <= 2 + delay, f"{unit.name} applied nothing at first"
        assert ENFORCING not in unit.applies[0][1], f"{unit.name} enforced in its first apply"
    rounds = first_enforcements(cloud)
    assert len(rounds[min(rounds)]) == 1, "the first enforcing wave is one machine"
    for units in rounds.values():
        roles = [u.role for u in units]
        assert roles.count("control") <= 1 and roles.count("storage") <= 1, roles
    assert not cloud.roll().halted
    for unit in cloud.units.values():
        assert enforcing(unit), f"{unit.name} does not enforce"
        assert cloud.status(unit.index).startswith("ActiveStatus"), cloud.status(unit.index)
    assert cloud.first_deployment_done()  # every first enforcement confirmed
    return rounds


def test_a_first_deployment_audits_at_once_and_enforces_in_waves(tmp_path: Path):
    cloud = counting(Cloud(MACHINES, tmp_path), QUIET)
    seen: set[str] = set()
    cloud.broadcast("config")
    cloud.step()
    while not cloud.roll().waves:
        cloud.step()
    for _ in range(3):  # the roll is planned: the canary enforces, the others wait in audit
        cloud.step()
        seen |= {cloud.status(i) for i in cloud.units}
    waves = len(cloud.roll().waves)
    expected = f"audit until enforcement reaches this machine (wave 3/{waves})"
    assert any(s.endswith(f"'{expected}')") for s in seen), seen
    assert any("canary: enforcing, its counters judged after 300 s" in s for s in seen), seen
    hooks_before = cloud.hooks
    cloud.finish_deployment()
    rounds = cloud.round
    by_round = check_first_deployment(cloud)
    canary = by_round[min(by_round)][0]
    assert canary.role == "compute" and canary.name == cloud.roll().waves[0][0]
    print(
        f"first deployment of {MACHINES} machines: {waves} waves, every machine audited in"
        f" round 1, the canary enforced in round {min(by_round)}, the last machine in round"
        f" {max(by_round)}; done in {rounds} rounds ({rounds * 30 / 60:.0f} minutes of the"
        f" stand-in's clock), {cloud.hooks} hooks ({cloud.hooks - hooks_before} after the"
        f" roll was planned)"
    )


@drawn_orders
@given(
    seed=SEEDS,
    delay=DELAYS,
    leader_change=st.one_of(st.none(), st.integers(1, 20)),
)
def test_any_event_order_deploys_within_the_limits(
    tmp_path_factory: pytest.TempPathFactory, seed: int, delay: int, leader_change: int | None
):
    cloud = counting(Cloud(8, tmp_path_factory.mktemp("run"), random.Random(seed), delay), QUIET)
    cloud.broadcast("config")
    for _ in range(300):
        if cloud.first_deployment_done() and not cloud.pending():
            break
        if leader_change is not None and cloud.round == leader_change:
            cloud.elect(max(cloud.units))
        if cloud.round % UPDATE_STATUS_ROUNDS == UPDATE_STATUS_ROUNDS - 1:
            cloud.broadcast("update")
        cloud.step()
    check_first_deployment(cloud, delay)


def test_a_canary_that_drops_an_allowed_network_halts_and_goes_back_to_audit(tmp_path: Path):
    cloud = counting(Cloud(MACHINES, tmp_path), CUTTING)
    cloud.deploy()
    roll = cloud.roll()
    canary = cloud.units[int(roll.waves[0][0].rpartition("/")[2])]
    assert roll.halted.startswith(f"{canary.name} (machine-{canary.index}) in wave 1: counters:")
    assert "500 packets dropped on storage, which it may use (drop_in_storage)" in roll.halted
    assert [u.name for u in cloud.units.values() if any(ENFORCING in r for _, r in u.applies)] == [
        canary.name
    ], "only the canary ever enforced"
    assert "enforcement: audit" in (canary.host.applied_state.nftables or "")
    for unit in cloud.units.values():
        assert not enforcing(unit)
        status = cloud.status(unit.index)
        if unit.index == cloud.leader:  # only a person can go on: the leader says how
            assert status.startswith("BlockedStatus('rolling apply halted:")
            assert "run the resume-rollout action" in status
            continue
        assert status.startswith("ActiveStatus") and "audit: rolling apply halted:" in status
