"""A first deployment with one compromised machine among honest ones (see juju_sim).

The rogue rewrites its record every few rounds: it names its machine "0", publishes the lowest
address of every subnet and swaps its roles, and every other machine's probes of its addresses
answer before an apply and not after it. The cloud still converges, and the leader names it.
"""

from __future__ import annotations

from pathlib import Path

from juju_sim import ENFORCING, Cloud

MACHINES = 12
ROGUE = 7  # a compute machine, not the first of its kind


def test_one_rogue_machine_neither_steers_nor_stalls_a_first_deployment(tmp_path: Path):
    cloud = Cloud(MACHINES, tmp_path)
    cloud.compromise(ROGUE, every=3)
    leader_statuses: set[str] = set()
    cloud.broadcast("config")
    for _ in range(40):  # the deployment's first rounds, while the rogue keeps rewriting
        cloud.step()
        leader_statuses.add(cloud.status(cloud.leader))
    rounds = cloud.finish_deployment(limit=300)
    roll = cloud.roll()
    assert not roll.halted, roll.halted
    assert roll.waves[0] != (f"network-isolation/{ROGUE}",), "it did not make itself canary"
    honest = [u for u in cloud.units.values() if u.index != ROGUE]
    assert all(ENFORCING in (u.host.applied_state.nftables or "") for u in honest)
    rogue = f"network-isolation/{ROGUE}"
    named = [
        s
        for s in leader_statuses
        if f"{rogue} rewrote its record" in s or f"change of records (of {rogue})" in s
    ]
    assert named, leader_statuses
    print(
        f"{MACHINES} machines, one rewriting its record every 3 rounds: every honest machine"
        f" enforces by round {cloud.round} ({rounds} more after the first 40), in"
        f" {len(roll.waves)} waves, not halted; the leader's status named it: {named[0]}"
    )
