"""The rolling apply across many units: the real charm, a Juju stand-in, drawn event orders."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from juju_sim import DELAYS, SEEDS, Cloud, drawn_orders

from network_isolation.rollout import Schedule
from tools import bench

CHANGE = "10.99.0.0/24"  # a client-cidrs change: every machine's ruleset changes
CAP = Schedule.parse("50%", 900).cap(8)


MACHINES = 8
WAVES = "50%"  # at eight machines: waves of 1, 2, 4, ... within the quorum limits


@pytest.fixture(scope="module")
def cloud_base(tmp_path_factory: pytest.TempPathFactory) -> Cloud:
    """Eight machines deployed: each audited at once, then the first roll enforced them all."""
    cloud = Cloud(MACHINES, tmp_path_factory.mktemp("base"))
    cloud.config["rolling-wave-size"] = WAVES
    cloud.deploy()
    assert all(u.applies[0][0] == 1 for u in cloud.units.values()), "every machine audited"
    assert cloud.roll().done and not cloud.roll().halted
    return cloud


@pytest.fixture
def fresh(cloud_base: Cloud, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the deployed cloud for one run, with its own event order."""

    def copy(rng: random.Random | None = None, delay: int = 0) -> Cloud:
        return cloud_base.clone(tmp_path_factory.mktemp("run"), rng or random.Random(0), delay)

    return copy


def new_applies(cloud: Cloud, after: int) -> dict[int, list[int]]:
    """Per round, the machines that applied the changed ruleset."""
    rounds: dict[int, list[int]] = {}
    for unit in cloud.units.values():
        for when, ruleset in unit.applies:
            if when > after and CHANGE in ruleset:
                rounds.setdefault(when, []).append(unit.index)
    return rounds


def check_roll(cloud: Cloud, start: int, cap: int) -> dict[int, list[int]]:
    """The properties every roll keeps, whatever the order of events."""
    rounds = new_applies(cloud, start)
    first = min(rounds)
    assert len(rounds[first]) == 1, "the first wave is one machine"
    for machines in rounds.values():
        roles = [cloud.units[i].role for i in machines if i in cloud.units]
        assert len(machines) <= cap
        assert roles.count("control") <= 1 and roles.count("storage") <= 1, roles
    for unit in cloud.units.values():
        changed = [r for _, r in unit.applies if CHANGE in r]
        assert len(changed) == len(set(changed)), f"{unit.name} applied a change twice"
    return rounds


def test_a_config_change_rolls_out_in_growing_waves(fresh):
    cloud = fresh()
    start = cloud.round
    hooks = cloud.hooks
    counter = bench.HookToolCounter()
    cloud.set_config(client_cidrs=CHANGE)
    with counter.installed():
        rounds = cloud.settle(counter=counter)
    applied = check_roll(cloud, start, CAP)
    assert sorted(i for machines in applied.values() for i in machines) == sorted(cloud.units)
    assert [len(w) for w in cloud.roll().waves][:3] == [1, 2, 4]
    assert all(cloud.status(i).startswith("ActiveStatus") for i in cloud.units)
    assert cloud.roll().done and not cloud.roll().halted
    # The leader reads only the peer that woke it, whatever the size of the cloud.
    assert max(cloud.leader_reads) <= 3  # its own bag, the app bag, the waking peer's
    assert rounds <= 2 * len(cloud.roll().waves) + 2
    # each report wakes every other unit, each opened wave every non-leader: N² + (W + 1)N
    assert cloud.hooks - hooks <= MACHINES**2 + (len(cloud.roll().waves) + 1) * MACHINES


@drawn_orders
@given(
    seed=SEEDS,
    delay=DELAYS,
    leader_change=st.one_of(st.none(), st.integers(1, 8)),
    removal=st.one_of(st.none(), st.integers(1, 8)),
)
def test_any_event_order_converges_within_the_limits(fresh, seed, delay, leader_change, removal):
    cloud = fresh(random.Random(seed), delay)
    start = cloud.round
    cloud.set_config(client_cidrs=CHANGE)
    for _ in range(200):
        if not cloud.pending():
            break
        if leader_change is not None and cloud.round == start + leader_change:
            cloud.elect(max(cloud.units))
        if removal is not None and cloud.round == start + removal:
            cloud.remove(min(i for i in cloud.units if i != cloud.leader))
        cloud.step()
    assert not cloud.pending()
    check_roll(cloud, start, CAP)
    assert not cloud.roll().halted
    for unit in cloud.units.values():
        assert CHANGE in (unit.host.applied_state.nftables or ""), unit.name
        assert cloud.status(unit.index).startswith("ActiveStatus"), cloud.status(unit.index)


def test_a_failing_apply_halts_the_roll_and_the_rest_keep_their_ruleset(fresh):
    cloud = fresh()
    start = cloud.round
    roll = cloud.roll()
    canary = int(roll.waves[0][0].rpartition("/")[2])
    second = [int(u.rpartition("/")[2]) for u in roll.waves[1]]
    cloud.units[second[0]].host.fail_apply = "unreachable after applying: storage neighbour"
    cloud.set_config(client_cidrs=CHANGE)
    cloud.settle()
    halted = cloud.roll().halted
    assert halted.startswith(f"network-isolation/{second[0]} (machine-{second[0]}) in wave 2")
    applied = sorted(i for m in new_applies(cloud, start).values() for i in m)
    assert set(applied) <= {canary, *second}
    later = [i for i in cloud.units if i not in (canary, *second)]
    for index in later:
        assert CHANGE not in (cloud.units[index].host.applied_state.nftables or "")
        assert "rolling apply halted" in cloud.status(index)
    assert "apply failed" in cloud.status(second[0])


def test_a_unit_that_never_reports_times_the_wave_out_into_a_halt(fresh):
    cloud = fresh()
    canary = int(cloud.roll().waves[0][0].rpartition("/")[2])
    cloud.units[canary].down = True  # its agent is down: it runs no hook
    cloud.set_config(client_cidrs=CHANGE, rolling_wave_timeout=300, rolling_canary_window=60)
    cloud.settle()
    assert not cloud.roll().halted, "nothing has timed out yet"
    for _ in range(40):  # update-status keeps coming, the clock runs on
        cloud.broadcast("update")
        cloud.settle()
    halted = cloud.roll().halted
    assert halted.startswith("wave 1/") and f"network-isolation/{canary}" in halted
    assert "timed out after 300 s" in halted
    assert not any(CHANGE in (u.host.applied_state.nftables or "") for u in cloud.units.values())


def test_a_new_leader_mid_roll_carries_it_on(fresh):
    cloud = fresh()
    cloud.set_config(client_cidrs=CHANGE)
    cloud.step()
    cloud.step()
    cloud.elect(max(cloud.units))
    cloud.settle()
    assert all(CHANGE in (u.host.applied_state.nftables or "") for u in cloud.units.values())
    assert not cloud.roll().halted
