"""The charm's apply path under ops.testing, with the host faked at its boundary."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Iterable
from pathlib import Path

import ops
import pytest
from fake_host import FakeHost
from ops import testing

from network_isolation.host import (
    Applied,
    MachineRegistry,
    ProbeTarget,
    RejectedRecord,
    fingerprint,
)
from network_isolation.host import registry as registry_module
from network_isolation.model import Network
from network_isolation.peers import MachineRecord
from network_isolation.render import Artefacts
from network_isolation.rollout import Roll, UnitReport
from tests.charm_context import compute_principal, context


def compute(app: str = "openstack-hypervisor") -> testing.SubordinateRelation:
    return testing.SubordinateRelation("compute-node", remote_app_name=app)


def state(
    networks: list[testing.Network],
    relations: Iterable[testing.RelationBase] | None = None,
    config: dict[str, str | int | bool] | None = None,
    leader: bool = False,
) -> testing.State:
    return testing.State(
        networks=networks,
        relations=[compute_principal()] if relations is None else relations,
        config=config or {},
        leader=leader,
    )


def applies(fake_host: type[FakeHost]) -> list[tuple[Artefacts, tuple[ProbeTarget, ...], bool]]:
    return [args for name, args in fake_host.calls if name == "apply"]


def test_a_valid_plan_is_rendered_and_applied_once(networks, fake_host, monkeypatch):
    monkeypatch.setenv("JUJU_API_ADDRESSES", "10.10.0.2:17070 10.10.0.3:17070")
    fake_host.gateways = ["10.10.0.1"]
    ctx = context()
    out = ctx.run(ctx.on.config_changed(), state(networks))
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    [(artefacts, targets, force)] = applies(fake_host)
    assert "table inet network_isolation" in artefacts.nftables
    assert [str(t) for t in targets] == [
        "juju controller 10.10.0.2:17070",
        "juju controller 10.10.0.3:17070",
        "gateway 10.10.0.1:22",
    ]
    assert force is False

    # Every hook reconciles; unchanged inputs must not apply again.
    ctx.run(ctx.on.update_status(), state(networks))
    ctx.run(ctx.on.config_changed(), state(networks))
    assert len(applies(fake_host)) == 1


def test_a_config_change_applies_the_new_artefacts(networks, fake_host):
    ctx = context()
    ctx.run(ctx.on.config_changed(), state(networks))
    before = fake_host.applied_state.nftables
    ctx.run(ctx.on.config_changed(), state(networks, config={"enforcement": "audit"}))
    assert len(applies(fake_host)) == 2
    assert fake_host.applied_state.nftables != before
    assert "log prefix" in (fake_host.applied_state.nftables or "")


@pytest.mark.parametrize(
    "config, relations",
    [({"network-cidrs": "bogus"}, None), ({}, [])],
    ids=["invalid-config", "no-role"],
)
def test_bad_input_blocks_and_leaves_what_is_applied(networks, fake_host, config, relations):
    fake_host.applied_state = Applied("previous ruleset", None)
    ctx = context()
    out = ctx.run(ctx.on.config_changed(), state(networks, relations, config))
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert applies(fake_host) == []
    assert fake_host.applied_state == Applied("previous ruleset", None)


def test_a_rolled_back_apply_blocks_and_is_not_retried(networks, fake_host):
    fake_host.fail_apply = "unreachable after applying: juju controller 10.10.0.2:17070"
    ctx = context()
    out = ctx.run(ctx.on.config_changed(), state(networks))
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert "17070" in out.unit_status.message
    fake_host.fail_apply = None
    out = ctx.run(ctx.on.update_status(), state(networks))
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert "not retrying" in out.unit_status.message
    assert fake_host.applied_state.nftables is None


def test_reapply_forces_an_apply_even_when_unchanged(networks, fake_host):
    ctx = context()
    ctx.run(ctx.on.config_changed(), state(networks))
    ctx.run(ctx.on.action("reapply"), state(networks))
    assert [force for _, _, force in applies(fake_host)] == [False, True]
    assert ctx.action_results == {
        "result": "applied",
        "message": "applied ruleset (enforce form)",  # what it applied, in which form
    }


def test_update_status_repairs_drift_and_says_so(networks, fake_host):
    ctx = context()
    ctx.run(ctx.on.config_changed(), state(networks))
    fake_host.drift_reason = "table inet network_isolation is missing"
    out = ctx.run(ctx.on.update_status(), state(networks))
    assert "repair_drift" in fake_host.names()
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "drift repaired: table inet network_isolation is missing" in out.unit_status.message


def test_show_plan_returns_both_artefacts_and_the_diff(networks, fake_host):
    ctx = context()
    ctx.run(ctx.on.action("show-plan"), state(networks))
    results = ctx.action_results or {}
    assert "table inet network_isolation" in results["nftables"]
    assert "routing-policy" in results["netplan"]
    assert results["diff"].startswith("---")
    assert applies(fake_host) == []


def test_show_counters(networks, fake_host):
    fake_host.applied_state = Applied("ruleset", None)
    fake_host.counters_state = {"drop_in_data": {"packets": 3, "bytes": 180}}
    ctx = context()
    ctx.run(ctx.on.action("show-counters"), state(networks))
    results = ctx.action_results or {}
    assert json.loads(results["counters"]) == fake_host.counters_state


def test_show_counters_fails_cleanly_without_a_table(networks, fake_host):
    ctx = context()
    with pytest.raises(testing.ActionFailed) as caught:
        ctx.run(ctx.on.action("show-counters"), state(networks))
    assert "counters" in caught.value.message


def test_the_last_unit_on_the_machine_removes_everything(networks, fake_host, state_dir):
    first, second = context(0), context(1)
    first.run(first.on.config_changed(), state(networks))
    second.run(second.on.config_changed(), state(networks))
    second.run(second.on.remove(), state(networks))
    assert not fake_host.removed, "another unit of the charm still runs on this machine"
    first.run(first.on.remove(), state(networks))
    assert fake_host.removed
    assert fake_host.applied_state == Applied(None, None)


def test_a_stale_entry_of_a_unit_gone_from_the_machine_does_not_stop_removal(
    networks, fake_host, state_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    agents = tmp_path / "agents"
    (agents / "unit-network-isolation-0").mkdir(parents=True)
    monkeypatch.setattr(registry_module, "JUJU_AGENTS_DIR", agents)
    # network-isolation/1 was removed with --force: its agent is gone, its entry stayed
    MachineRegistry(state_dir / "units").record("network-isolation/1", frozenset({"storage"}))
    first = context(0)
    first.run(first.on.config_changed(), state(networks))
    first.run(first.on.remove(), state(networks))
    assert fake_host.removed


# Rolling apply


def roll_of(out: testing.State, relation: testing.PeerRelation) -> Roll:
    return Roll.model_validate_json(out.get_relation(relation.id).local_app_data["roll"])


def report_of(out: testing.State, relation: testing.PeerRelation) -> UnitReport:
    return UnitReport.model_validate_json(out.get_relation(relation.id).local_unit_data["report"])


G = "1" * 16
ME, PEER = "network-isolation/0", "network-isolation/1"


def compute_record(machine: str) -> str:
    """A peer compute machine's record, on the test machine's subnets."""
    return MachineRecord(
        machine=machine,
        roles=("compute",),
        subnets={Network.MANAGEMENT: (ipaddress.ip_network("10.10.0.0/24"),)},
        addresses={Network.MANAGEMENT: (ipaddress.ip_address("10.10.0.9"),)},
    ).model_dump_json()


def peer_reports(
    out: testing.State, peers: testing.PeerRelation, report: UnitReport
) -> tuple[testing.PeerRelation, testing.State]:
    """The state after peer 1 has written its report, as Juju would deliver it."""
    relation = out.get_relation(peers.id)
    assert isinstance(relation, testing.PeerRelation)
    bag = {**relation.peers_data[1], "report": report.model_dump_json()}
    relation = dataclasses.replace(relation, peers_data={**relation.peers_data, 1: bag})
    others = [r for r in out.relations if r.id != peers.id]
    return relation, dataclasses.replace(out, relations=[*others, relation])


def test_a_change_waits_for_its_wave_and_announces_nothing(networks, fake_host):
    fake_host.applied_state = Applied("an older ruleset", None)  # not a first apply
    roll = Roll(generation=G, waves=((PEER,), (ME,)), opened=1)
    peers = testing.PeerRelation("cluster", local_app_data={"roll": roll.model_dump_json()})
    ctx = context(0)
    out = ctx.run(ctx.on.config_changed(), state(networks, [compute_principal(), peers]))
    assert out.unit_status == testing.WaitingStatus("waiting for wave 2/2")
    assert applies(fake_host) == []
    assert "report" not in out.get_relation(peers.id).local_unit_data


def test_an_unconfirmed_apply_is_undone_even_while_waiting_for_a_wave(networks, fake_host):
    """A reboot or a killed hook left a change live that nobody confirmed."""
    fake_host.applied_state = Applied("the unconfirmed ruleset", None)
    fake_host.unconfirmed = Applied("an older ruleset", None)
    roll = Roll(generation=G, waves=((PEER,), (ME,)), opened=1)
    peers = testing.PeerRelation("cluster", local_app_data={"roll": roll.model_dump_json()})
    ctx = context(0)
    out = ctx.run(ctx.on.config_changed(), state(networks, [compute_principal(), peers]))
    assert out.unit_status == testing.WaitingStatus("waiting for wave 2/2")
    assert fake_host.names()[0] == "recover_unconfirmed"
    assert fake_host.applied_state == Applied("an older ruleset", None)
    assert applies(fake_host) == []


def test_a_unit_applies_in_its_wave_and_reports_once(networks, fake_host):
    fake_host.applied_state = Applied("an older ruleset", None)
    roll = Roll(generation=G, waves=((PEER,), (ME,)), opened=2)
    peers = testing.PeerRelation("cluster", local_app_data={"roll": roll.model_dump_json()})
    ctx = context(0)
    out = ctx.run(ctx.on.config_changed(), state(networks, [compute_principal(), peers]))
    assert len(applies(fake_host)) == 1
    report = report_of(out, peers)  # it names the record it applied with
    assert report == UnitReport(generation=G, outcome="applied", record=report.record)
    assert report.record
    # The same roll again (another peer's event): nothing to apply, nothing to write.
    out = ctx.run(ctx.on.update_status(), out)
    assert len(applies(fake_host)) == 1
    assert report_of(out, peers) == report


def test_the_leader_opens_the_canary_then_the_next_wave_on_its_report(networks, fake_host):
    fake_host.applied_state = Applied("an older ruleset", None)
    peers = testing.PeerRelation(
        "cluster",
        peers_data={1: {"machine": compute_record("machine-1")}},
    )
    ctx = context(2)  # the leader is unit 2: waves follow unit numbers
    out = ctx.run(
        ctx.on.config_changed(), state(networks, [compute_principal(), peers], leader=True)
    )
    roll = roll_of(out, peers)
    assert roll.waves[0] == (PEER,) and roll.opened == 1  # unit 1 is the canary
    assert applies(fake_host) == []
    assert out.unit_status == testing.WaitingStatus("waiting for wave 2/2")

    # The canary reports: the leader reads that one unit and opens the next wave.
    relation, after = peer_reports(out, peers, UnitReport(generation=roll.generation))
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=1), after)
    roll = roll_of(out, peers)
    assert roll.opened == 2 and "network-isolation/2" in roll.waves[1]
    assert len(applies(fake_host)) == 1, "the leader applies in its wave, in the same hook"
    assert report_of(out, peers).generation == roll.generation


def test_a_failure_anywhere_in_the_apply_halts_the_roll(networks, fake_host):
    fake_host.applied_state = Applied("an older ruleset", None)
    peers = testing.PeerRelation(
        "cluster",
        peers_data={1: {"machine": compute_record("machine-1")}},
    )
    ctx = context(2)  # the leader is unit 2: waves follow unit numbers
    out = ctx.run(
        ctx.on.config_changed(), state(networks, [compute_principal(), peers], leader=True)
    )
    gen = roll_of(out, peers).generation
    failed = UnitReport(generation=gen, outcome="failed", error="arm: cannot arm the timer")
    relation, after = peer_reports(out, peers, failed)
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=1), after)
    halted = roll_of(out, peers).halted
    assert halted.startswith(f"{PEER} (machine-1) in wave 1: arm: cannot arm the timer")
    assert applies(fake_host) == []
    fix = "fix the cause, then run the resume-rollout action on the leader"
    assert out.unit_status == testing.BlockedStatus(f"rolling apply halted: {halted}; {fix}")


def test_the_first_apply_of_a_new_unit_is_not_held_back(networks, fake_host):
    roll = Roll(generation=G, waves=((PEER,), (ME,)), opened=1)
    peers = testing.PeerRelation("cluster", local_app_data={"roll": roll.model_dump_json()})
    ctx = context(0)
    ctx.run(ctx.on.config_changed(), state(networks, [compute_principal(), peers]))
    assert len(applies(fake_host)) == 1


def test_unreadable_roll_data_from_peers_is_ignored(networks, fake_host):
    fake_host.applied_state = Applied("an older ruleset", None)
    peers = testing.PeerRelation(
        "cluster",
        peers_data={
            1: {"machine": compute_record("machine-1"), "report": "{not json"},
            2: {"machine": compute_record("machine-2"), "report": '{"outcome": "x"}' + " " * 4100},
        },
    )
    ctx = context(0)
    out = ctx.run(
        ctx.on.config_changed(), state(networks, [compute_principal(), peers], leader=True)
    )
    roll = roll_of(out, peers)
    assert sorted(u for wave in roll.waves for u in wave) == [ME, PEER, "network-isolation/2"]
    assert roll.halted == ""


def test_rejected_artefacts_count_as_a_failure_of_the_roll(networks, fake_host):
    ctx = context(0)
    ctx.run(ctx.on.action("show-plan"), state(networks))
    nftables = (ctx.action_results or {})["nftables"]
    netplan = (ctx.action_results or {})["netplan"]
    wanted = fingerprint(Applied(nftables, netplan))  # type: ignore[arg-type]
    fake_host.applied_state = Applied("an older ruleset", None)
    fake_host.rejected_state = RejectedRecord(wanted, "probe", "gateway unreachable")
    roll = Roll(generation=G, waves=((ME,),), opened=1)
    peers = testing.PeerRelation("cluster", local_app_data={"roll": roll.model_dump_json()})
    out = ctx.run(ctx.on.config_changed(), state(networks, [compute_principal(), peers]))
    mine = report_of(out, peers)
    assert mine.failed and mine.generation == G
    assert "gateway unreachable" in mine.error and mine.error.startswith("rejected: ")


def test_the_hosts_netplan_sections_reach_the_rendered_file(networks, fake_host):
    fake_host.kinds = {"enp2s0": "vlans"}
    ctx = context()
    ctx.run(ctx.on.action("show-plan"), state(networks))
    netplan = (ctx.action_results or {})["netplan"]
    vlans = netplan.split("vlans:", 1)
    assert len(vlans) == 2 and "enp2s0" in vlans[1]


def test_declared_ports_of_co_located_principals_are_shared(networks, fake_host, state_dir):
    declaration = {
        "version": "1",
        "ports": json.dumps([{"network": "internal", "protocol": "tcp", "port": 5672}]),
    }
    service_ports = testing.SubordinateRelation(
        "service-ports", remote_app_name="rabbitmq", remote_unit_data=declaration
    )
    first = context(0)
    first.run(first.on.config_changed(), state(networks, [compute_principal(), service_ports]))
    other = MachineRegistry(state_dir / "units").ports_except("network-isolation/1")
    assert other == {"internal": frozenset({"tcp:5672"})}

    bad = testing.SubordinateRelation(
        "service-ports", remote_app_name="evil", remote_unit_data={"version": "1", "ports": "x"}
    )
    out = first.run(first.on.config_changed(), state(networks, [compute_principal(), bad]))
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "evil/0" in out.unit_status.message


def test_strict_ports_open_what_the_principal_declared(networks, fake_host):
    declaration = {
        "version": "1",
        "ports": json.dumps([{"network": "internal", "protocol": "tcp", "port": 15672}]),
    }
    service_ports = testing.SubordinateRelation(
        "service-ports", remote_app_name="rabbitmq", remote_unit_data=declaration
    )
    ctx = context()
    relations = [compute_principal(), service_ports]
    ctx.run(ctx.on.config_changed(), state(networks, relations, {"strict-ports": True}))
    strict = fake_host.applied_state.nftables or ""
    assert "15672" in strict
    assert "ports_internal_tcp" in strict
    ctx.run(ctx.on.config_changed(), state(networks, relations))
    assert "15672" not in (fake_host.applied_state.nftables or "")


def test_a_port_declared_on_a_network_the_machine_may_not_use_is_reported(networks, fake_host):
    declaration = {
        "version": "1",
        "ports": json.dumps([{"network": "public", "protocol": "tcp", "port": 8443}]),
    }
    service_ports = testing.SubordinateRelation(
        "service-ports", remote_app_name="api", remote_unit_data=declaration
    )
    ctx = context()
    st = state(networks, [compute_principal(), service_ports], {"strict-ports": True})
    out = ctx.run(ctx.on.config_changed(), st)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "declared ports on 'public' are not opened" in out.unit_status.message
    assert "8443" not in (fake_host.applied_state.nftables or "")


def test_a_machine_that_never_enforced_loads_its_audit_form_until_its_wave(networks, fake_host):
    roll = Roll(generation=G, waves=((PEER,), ("network-isolation/2",), (ME,)), opened=1)
    peers = testing.PeerRelation("cluster", local_app_data={"roll": roll.model_dump_json()})
    ctx = context(0)
    out = ctx.run(ctx.on.config_changed(), state(networks, [compute_principal(), peers]))
    [(artefacts, _, _)] = applies(fake_host)
    assert "enforcement: audit" in artefacts.nftables
    assert out.unit_status == ops.ActiveStatus(
        "audit until enforcement reaches this machine (wave 3/3)"
    )
    assert fake_host.plan_summary is not None
    assert fake_host.plan_summary.enforcement == "audit"  # what the exporter says it loads
    assert "report" not in out.get_relation(peers.id).local_unit_data  # not its turn yet
    # its wave opens: the enforcing form replaces the audit form, and it reports
    opened = roll.model_copy(update={"opened": 3})
    peers = dataclasses.replace(peers, local_app_data={"roll": opened.model_dump_json()})
    out = ctx.run(
        ctx.on.config_changed(), dataclasses.replace(out, relations=[compute_principal(), peers])
    )
    assert "enforcement: enforce" in applies(fake_host)[-1][0].nftables
    assert report_of(out, peers).generation == G
    assert out.unit_status.message.startswith("compute: ")
