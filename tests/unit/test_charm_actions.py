"""The operator's actions on the roll and the host: reapply, resume-rollout, rollout-status.

`reapply` fails, saying why, whenever it applied nothing, and says what it applied when it did;
`resume-rollout` belongs to the leader; `rollout-status` shows every wave and its reports.
"""

from __future__ import annotations

import pytest
from ops import testing

from network_isolation.peers import MachineRecord
from network_isolation.rollout import Roll, UnitReport
from network_isolation.rollout_report import rollout_status, rollout_summary, rollout_text
from tests.charm_context import compute_principal, context

G = "0123456789abcdef"


def reapply(
    networks: list[testing.Network],
    config: dict[str, str | int | bool] | None = None,
    relations: list[testing.RelationBase] | None = None,
) -> dict[str, str]:
    ctx = context()
    st = testing.State(
        networks=networks,
        relations=[compute_principal()] if relations is None else relations,
        config=config or {},
    )
    ctx.run(ctx.on.action("reapply"), st)
    return dict(ctx.action_results or {})


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"client-cidrs": "0.0.0.0/0"}, "nothing applied: invalid config 'client-cidrs': "),
        ({"role-table": "nope"}, "nothing applied: invalid config 'role-table': "),
    ],
)
def test_reapply_with_invalid_config_fails_naming_the_option(
    networks, fake_host, config: dict[str, str | int | bool], reason: str
):
    with pytest.raises(testing.ActionFailed) as failed:
        reapply(networks, config)
    assert failed.value.message.startswith(reason)
    assert fake_host.applied_state.nftables is None, "nothing on the host changed"


def test_reapply_of_a_blocked_plan_fails_with_the_plans_reason(networks, fake_host):
    with pytest.raises(testing.ActionFailed) as failed:
        reapply(networks, relations=[])  # no principal: the machine has no role
    assert failed.value.message.startswith("nothing applied: no role:")
    assert fake_host.applied_state.nftables is None


def test_reapply_whose_apply_fails_says_so(networks, fake_host):
    fake_host.fail_apply = "unreachable after applying: juju controller 10.10.0.2:17070"
    with pytest.raises(testing.ActionFailed) as failed:
        reapply(networks)
    assert failed.value.message.startswith("nothing applied: apply failed: unreachable after")


def test_reapply_says_what_it_applied(networks, fake_host):
    assert reapply(networks, {"enforcement": "audit"}) == {
        "result": "applied",
        "message": "applied ruleset (audit form)",
    }
    assert "enforcement: audit" in (fake_host.applied_state.nftables or "")


def test_reapply_is_not_blocked_by_a_peers_subnet(networks, fake_host):
    """A learnt subnet overlapping client-cidrs is left out: the plan still applies."""
    view = '{"subnets": {"internal": ["10.99.0.0/16"]}}'
    peers = testing.PeerRelation("cluster", local_app_data={"cloud": view})
    results = reapply(networks, {"client-cidrs": "10.99.0.0/24"}, [compute_principal(), peers])
    assert results["result"] == "applied"


def peer_record(machine: str) -> str:
    return MachineRecord(machine=machine, roles=("compute",)).model_dump_json()


def test_resume_rollout_runs_on_the_leader_only(networks):
    ctx = context(1)
    peers = testing.PeerRelation("cluster")
    st = testing.State(networks=networks, relations=[compute_principal(), peers])
    with pytest.raises(testing.ActionFailed, match="run it on the leader"):
        ctx.run(ctx.on.action("resume-rollout"), st)


def test_resume_rollout_starts_a_halted_rollout_again(networks, fake_host):
    halted = Roll(
        generation=G, waves=(("network-isolation/1",),), opened=1, halted="network-isolation/1"
    )
    peers = testing.PeerRelation(
        "cluster",
        local_app_data={"roll": halted.model_dump_json()},
        peers_data={1: {"machine": peer_record("machine-1")}},
    )
    ctx = context(0)
    st = testing.State(networks=networks, relations=[compute_principal(), peers], leader=True)
    out = ctx.run(ctx.on.action("resume-rollout"), st)
    results = ctx.action_results or {}
    assert results["result"] == "resumed" and results["was-halted"] == "network-isolation/1"
    roll = Roll.model_validate_json(out.get_relation(peers.id).local_app_data["roll"])
    assert roll.generation != G and not roll.halted and roll.resumed == 1


def test_rollout_status_lists_waves_reports_and_who_is_missing():
    roll = Roll(
        generation=G,
        waves=(("network-isolation/1",), ("network-isolation/0", "network-isolation/2")),
        opened=2,
        left_out=("network-isolation/9", "network-isolation/2"),
    )
    reports = {
        "network-isolation/1": UnitReport(generation=G, outcome="applied"),
        "network-isolation/0": UnitReport(generation="f" * 16, outcome="failed"),  # old roll
    }
    text = rollout_text(rollout_summary(roll, reports))
    assert text.splitlines() == [
        f"rollout {G}",
        "wave 1 (open):",
        "  network-isolation/1: applied",
        "wave 2 (open):",
        "  network-isolation/0: no report yet",
        "  network-isolation/2: left out: no report in time",
        "no record yet: network-isolation/9",
    ]
    elsewhere = rollout_summary(roll)  # another unit reads no report
    assert elsewhere["waves"][1]["units"]["network-isolation/0"] == (
        "(the leader reads the reports)"
    )
    assert rollout_status(roll) == (
        "active",
        f"rolling apply {G[:8]}: every wave open; goes on without network-isolation/9,"
        " network-isolation/2",
    )
    halted = roll.model_copy(update={"halted": "network-isolation/1 (m1) in wave 1: load"})
    kind, message = rollout_status(halted)
    assert kind == "blocked" and message.endswith(
        "then run the resume-rollout action on the leader"
    )


def test_the_rollout_status_action_shows_the_published_roll(networks):
    roll = Roll(generation=G, waves=(("network-isolation/1",),), opened=1)
    peers = testing.PeerRelation("cluster", local_app_data={"roll": roll.model_dump_json()})
    ctx = context(1)
    st = testing.State(networks=networks, relations=[compute_principal(), peers])
    ctx.run(ctx.on.action("rollout-status"), st)
    results = ctx.action_results or {}
    assert results["text"].startswith(f"rollout {G}\nwave 1 (open):")
    assert '"generation": "0123456789abcdef"' in results["rollout"]
