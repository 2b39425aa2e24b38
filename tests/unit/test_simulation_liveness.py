"""A roll that always finishes or says who holds it, and an operator who can steer it.

The real charm on every machine (see juju_sim): a unit whose agent is down, Juju's
update-status interval at 5, 20 and 60 minutes, a halted roll resumed by the action once its
cause is fixed, and a `rolling-*` change that takes effect on the roll in progress.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from juju_sim import ENFORCING, SECONDS_PER_ROUND, Cloud, Unit

from network_isolation.rollout import Roll

MACHINES = 8
TIMEOUT = 900  # rolling-wave-timeout's default
TIMEOUT_ROUNDS = int(TIMEOUT / SECONDS_PER_ROUND)
CHANGE = "10.99.0.0/24"  # a client-cidrs change: every machine's ruleset changes
QUIET = {"audit": {"drop_in_public": 300}, "enforce": {"drop_in_public": 9000}}
CUTTING = {"audit": {}, "enforce": {"drop_in_storage": 500}}


def enforcing(unit: Unit) -> bool:
    return ENFORCING in (unit.host.applied_state.nftables or "")


def app_status(cloud: Cloud) -> str:
    state = cloud.units[cloud.leader].state
    return str(state.app_status) if state else ""


def run_until(cloud: Cloud, done, limit: int) -> int:
    """Rounds, with update-status as Juju runs it, until `done(cloud)`; how many it took."""
    start = cloud.round
    while not done(cloud):
        if cloud.round % cloud.update_every == cloud.update_every - 1:
            cloud.broadcast("update")
        cloud.step()
        assert cloud.round - start <= limit, f"not done in {limit} rounds: {cloud.roll()}"
    return cloud.round - start


def deployed(tmp_path: Path) -> Cloud:
    cloud = Cloud(MACHINES, tmp_path)
    cloud.deploy()
    assert cloud.roll().done and not cloud.roll().halted
    return cloud


def test_a_unit_that_never_publishes_does_not_hold_a_first_deployment(tmp_path: Path):
    baseline = Cloud(MACHINES, tmp_path / "baseline")
    rounds_without = baseline.deploy()
    cloud = Cloud(MACHINES, tmp_path / "silent")
    silent = cloud.units[5]
    silent.down = True  # its agent is down from the start: it never publishes a record
    cloud.broadcast("config")
    names: set[str] = set()

    def others_enforce(c: Cloud) -> bool:
        names.update({c.status(c.leader), app_status(c)})
        return all(enforcing(u) for u in c.units.values() if u is not silent)

    rounds = run_until(cloud, others_enforce, rounds_without + 2 * TIMEOUT_ROUNDS)
    assert any(
        f"first roll waits for a record with roles from {silent.name}" in s for s in names
    ), names
    assert any(f"goes on without {silent.name}" in s for s in names), names
    assert not enforcing(silent) and not cloud.roll().halted
    # its agent comes back: it publishes, a new roll includes it, it enforces too
    silent.down = False
    run_until(cloud, lambda c: enforcing(silent) and not c.pending(), 3 * TIMEOUT_ROUNDS)
    assert all(enforcing(u) for u in cloud.units.values())
    print(
        f"first deployment of {MACHINES} machines, one never publishing: the others enforced"
        f" after {rounds} rounds ({rounds_without} without it; a wave timeout is"
        f" {TIMEOUT_ROUNDS}); it enforced {cloud.round - rounds} rounds after it came back"
    )


def test_a_unit_down_at_a_config_change_is_left_out_and_named(tmp_path: Path):
    cloud = deployed(tmp_path)
    roll = cloud.roll()
    down = cloud.units[int(roll.waves[-1][0].rpartition("/")[2])]  # in the last wave
    assert down.index != cloud.leader
    down.down = True
    cloud.set_config(client_cidrs=CHANGE)
    start = cloud.round

    def others_applied(c: Cloud) -> bool:
        return all(CHANGE in (u.host.applied_state.nftables or "") for u in c.units.values()
                   if u is not down)  # fmt: skip

    rounds = run_until(cloud, others_applied, 2 * TIMEOUT_ROUNDS)
    run_until(cloud, lambda c: down.name in c.roll().left_out, 2 * TIMEOUT_ROUNDS)
    assert not cloud.roll().halted
    assert f"goes on without {down.name}" in cloud.status(cloud.leader)
    assert f"goes on without {down.name}" in app_status(cloud)
    down.down = False  # it comes back: its wave is open, it applies and reports
    run_until(cloud, lambda c: CHANGE in (down.host.applied_state.nftables or ""), 40)
    print(f"a config change with one unit down: the others applied it in {rounds} rounds")
    assert cloud.round > start


@pytest.mark.parametrize("minutes", [5, 20, 60])
def test_a_first_deployment_finishes_whatever_the_update_status_interval(
    tmp_path: Path, minutes: int
):
    cloud = Cloud(MACHINES, tmp_path)
    cloud.update_every = int(minutes * 60 / SECONDS_PER_ROUND)
    rounds = cloud.deploy(limit=20 * cloud.update_every)
    roll = cloud.roll()
    assert not roll.halted, roll.halted
    assert all(enforcing(u) for u in cloud.units.values())
    print(
        f"update-status every {minutes} min: {MACHINES} machines enforce after {rounds} rounds"
        f" ({rounds * SECONDS_PER_ROUND / 60:.0f} modelled minutes), {len(roll.waves)} waves,"
        f" {cloud.hooks} hooks"
    )


def test_a_halted_roll_is_resumed_by_the_action_once_its_cause_is_fixed(tmp_path: Path):
    cloud = Cloud(MACHINES, tmp_path)
    for unit in cloud.units.values():
        if unit.role == "compute":
            unit.host.traffic = CUTTING  # the canary's enforcing form drops its storage traffic
    cloud.deploy()
    halted = cloud.roll()
    assert halted.halted and "counters" in halted.halted
    assert app_status(cloud).startswith("BlockedStatus('rolling apply halted:")
    for unit in cloud.units.values():
        unit.host.traffic = QUIET  # the operator fixed the cause (a space, a binding)
    results = cloud.run_action(cloud.leader, "resume-rollout")
    assert results["result"] == "resumed" and results["was-halted"] == halted.halted
    rounds = cloud.finish_deployment()
    assert not cloud.roll().halted and cloud.roll().resumed == 1
    assert all(enforcing(u) for u in cloud.units.values())
    print(f"resumed after the fix: every machine enforced {rounds} rounds later")


def test_a_rolling_option_change_takes_effect_on_the_roll_in_progress(tmp_path: Path):
    cloud = deployed(tmp_path)
    cloud.set_config(client_cidrs=CHANGE, rolling_wave_timeout=120, rolling_canary_window=60)
    cloud.step()  # the leader plans the roll; the others see it from the next round on
    canary = cloud.units[int(cloud.roll().waves[0][0].rpartition("/")[2])]
    assert canary.index != cloud.leader
    canary.down = True
    run_until(cloud, lambda c: bool(c.roll().halted), 4 * TIMEOUT_ROUNDS)
    assert "timed out after 120 s" in cloud.roll().halted
    canary.down = False  # its agent is back; the halt stays until someone acts
    run_until(cloud, lambda c: not c.pending(), 2 * TIMEOUT_ROUNDS)
    assert cloud.roll().halted
    cloud.set_config(rolling_wave_timeout=1800)  # the operator gives it more time
    run_until(cloud, lambda c: all(CHANGE in (u.host.applied_state.nftables or "")
                                   for u in c.units.values()), 4 * TIMEOUT_ROUNDS)  # fmt: skip
    assert not cloud.roll().halted


def test_only_the_leader_resumes_and_every_unit_can_read_the_roll(tmp_path: Path):
    cloud = deployed(tmp_path)
    other = next(i for i in cloud.units if i != cloud.leader)
    with pytest.raises(Exception, match="run it on the leader"):
        cloud.run_action(other, "resume-rollout")
    status = cloud.run_action(cloud.leader, "rollout-status")
    roll = Roll.model_validate_json(cloud.app_bag["roll"])
    assert f"rollout {roll.generation}" in status["text"]
    assert "wave 1 (open):" in status["text"]
    assert all(f"{u}: applied" in status["text"] for wave in roll.waves for u in wave)
