"""One hook's decision (network_isolation.turn), as tables: each branch of a reconciling hook."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from network_isolation.base import Enforcement
from network_isolation.config import CharmConfig
from network_isolation.first_deployment import FirstEnforcement
from network_isolation.model import Network
from network_isolation.peers import CloudView
from network_isolation.planner import (
    InterfaceAddress,
    MachinePlan,
    NetworkView,
    PlanInput,
    plan_machine,
)
from network_isolation.rollout import Roll, UnitReport
from network_isolation.turn import (
    CanaryCount,
    HookFacts,
    Turn,
    decide,
    forms_to_render,
    unit_status,
)

ME = "network-isolation/0"
GEN = "0123456789abcdef"
NOW = 10_000.0
WINDOW = 300


def plan(enforcement: Enforcement = "enforce", *, roles: frozenset[str] = frozenset({"compute"})):
    """A compute machine with one address on each of the networks a compute node uses."""
    addresses = {
        Network.MANAGEMENT: "10.0.0.5/24",
        Network.INTERNAL: "10.1.0.5/24",
        Network.DATA: "10.2.0.5/24",
        Network.STORAGE: "10.3.0.5/24",
    }
    networks = {
        net: NetworkView(
            interfaces=(InterfaceAddress(name=f"eth{i}", address=ipaddress.ip_interface(address)),)
        )
        for i, (net, address) in enumerate(addresses.items())
    }
    config = CharmConfig.model_validate(
        {"enforcement": enforcement, "rolling_canary_window": WINDOW}
    )
    return plan_machine(
        PlanInput(machine="machine-0", roles=roles, networks=networks, config=config)
    )


def roll(waves: tuple[tuple[str, ...], ...], opened: int, *, halted: str = "") -> Roll:
    return Roll(generation=GEN, waves=waves, opened=opened, opened_at=NOW - 60, halted=halted)


CANARY = roll(((ME,), ("other/1", "other/2")), opened=1)  # this unit is the canary
SECOND = roll((("other/1",), (ME, "other/2")), opened=2)  # this unit's wave is the last, open
WAITING = roll((("other/1",), (ME, "other/2")), opened=1)  # this unit's wave is not open yet
PAST = roll(((ME,), ("other/1",), ("other/2",)), opened=3)  # the roll went past this unit


def facts(
    the_plan: MachinePlan | None = None,
    *,
    the_roll: Roll | None = None,
    applied: frozenset[Enforcement] = frozenset(),
    enforced: bool = True,
    rendered: bool = True,
    own: UnitReport | None = None,
    record: FirstEnforcement | None = None,
    force: bool = False,
    colocated: tuple[str, ...] = (ME,),
    cloud: CloudView | None = None,
    api_addresses: str | None = None,
) -> HookFacts:
    return HookFacts(
        unit=ME,
        plan=the_plan or plan(),
        cloud=cloud or CloudView(),
        roll=the_roll,
        own_report=own or UnitReport(),
        colocated=colocated,
        enforced=enforced,
        rendered=rendered,
        applied=applied,
        first_enforcement=record,
        now=NOW,
        api_addresses=api_addresses,
        force=force,
    )


def applied_report(outcome: str = "applied") -> UnitReport:
    return UnitReport.model_validate({"generation": GEN, "outcome": outcome})


# A machine that enforces already (enforced=True): the rolling apply alone decides.
ENFORCED_CASES = [
    pytest.param(
        facts(rendered=False, the_roll=SECOND),
        Turn(form="enforce", on_roll=SECOND, report=applied_report("blocked")),
        id="plan not rendered, its turn: reports blocked, applies nothing",
    ),
    pytest.param(
        facts(rendered=False, the_roll=WAITING),
        Turn(form="enforce"),
        id="plan not rendered, not its turn: says nothing",
    ),
    pytest.param(
        facts(applied=frozenset({"enforce"}), the_roll=SECOND),
        Turn(form="enforce", on_roll=SECOND, report=applied_report()),
        id="already applied, its turn: reports applied without applying",
    ),
    pytest.param(
        facts(applied=frozenset({"enforce"}), the_roll=SECOND, own=applied_report()),
        Turn(form="enforce"),
        id="already applied and reported: nothing",
    ),
    pytest.param(
        facts(the_roll=WAITING),
        Turn(form="enforce", waiting="waiting for wave 2/2"),
        id="a change, its wave not open: waits",
    ),
    pytest.param(
        facts(the_roll=roll((("other/1",), (ME,)), opened=1, halted="other/1: failed")),
        Turn(form="enforce", waiting="rolling apply halted: other/1: failed"),
        id="a change, the roll halted: waits and says why",
    ),
    pytest.param(
        facts(the_roll=SECOND),
        Turn(form="enforce", apply=True, on_roll=SECOND, report=applied_report()),
        id="a change, its wave open: applies, then reports",
    ),
    pytest.param(
        facts(the_roll=Roll()),
        Turn(form="enforce", apply=True),
        id="the leader has decided nothing yet: applies, nothing to report",
    ),
    pytest.param(
        facts(),
        Turn(form="enforce", apply=True),
        id="a lone unit (no peer relation): applies, nothing to report",
    ),
    pytest.param(
        facts(the_roll=WAITING, applied=frozenset({"enforce"}), force=True),
        Turn(form="enforce", apply=True),
        id="reapply: applies at once even if applied and not its turn",
    ),
    pytest.param(
        facts(the_plan=plan("off"), the_roll=SECOND),
        Turn(form="off", apply=True, on_roll=SECOND, report=applied_report()),
        id="enforcement off: the form that removes the table, applied in its wave",
    ),
]


@pytest.mark.parametrize(("given", "expected"), ENFORCED_CASES)
def test_a_machine_that_enforces_follows_the_roll(given: HookFacts, expected: Turn):
    assert replace(decide(given), probe_targets=(), owns_exporter=False) == expected


# A machine that never enforced: audit at once, enforce when its wave opens, then confirmed.
def never(
    the_roll: Roll,
    *,
    applied: frozenset[Enforcement] = frozenset(),
    own: UnitReport | None = None,
    record: FirstEnforcement | None = None,
) -> HookFacts:
    return facts(the_roll=the_roll, applied=applied, own=own, record=record, enforced=False)


FIRST_DEPLOYMENT_CASES = [
    pytest.param(
        never(Roll()),
        Turn(
            form="audit",
            apply=True,
            note="audit",
            held_back="audit until the leader schedules enforcement here",
        ),
        id="before the leader decides: loads the audit form at once",
    ),
    pytest.param(
        never(WAITING),
        Turn(
            form="audit",
            apply=True,
            note="audit",
            held_back="audit until enforcement reaches this machine (wave 2/2)",
        ),
        id="its wave not open: loads the audit form, outside the waves",
    ),
    pytest.param(
        never(WAITING, applied=frozenset({"audit"})),
        Turn(form="audit", held_back="audit until enforcement reaches this machine (wave 2/2)"),
        id="its wave not open, audit form loaded: nothing",
    ),
    pytest.param(
        never(roll(((ME,), ("other/1",)), opened=1, halted="x")),
        Turn(form="audit", apply=True, note="audit", held_back="audit: rolling apply halted: x"),
        id="the roll halted: back to (or stays in) the audit form",
    ),
    pytest.param(
        never(SECOND, applied=frozenset({"audit"})),
        Turn(
            form="enforce", apply=True, note="enforcing", on_roll=SECOND, report=applied_report()
        ),
        id="its wave opens (not the canary): enforces, notes it, reports",
    ),
    pytest.param(
        never(CANARY, applied=frozenset({"audit"})),
        Turn(
            form="enforce",
            apply=True,
            note="enforcing",
            on_roll=CANARY,
            held_back=f"canary: enforcing, its counters judged after {WINDOW} s",
            timed=True,  # the clock alone ends its window: no hook of it returns early
        ),
        id="the canary enforces: its window starts, no report yet",
    ),
    pytest.param(
        never(
            PAST,
            applied=frozenset({"enforce"}),
            own=applied_report(),
            record=FirstEnforcement(audit_since=0, enforcing_since=NOW - 10),
        ),
        Turn(form="enforce", confirm=True),
        id="the roll went past it: its first enforcement is confirmed",
    ),
    pytest.param(
        never(
            SECOND,
            applied=frozenset({"enforce"}),
            own=applied_report(),
            record=FirstEnforcement(audit_since=0, enforcing_since=NOW - 10),
        ),
        Turn(form="enforce", confirm=True),
        id="the last wave, reported, not halted: confirmed",
    ),
    pytest.param(
        never(PAST, applied=frozenset({"audit"}), own=applied_report()),
        Turn(form="enforce", waiting="waiting for the leader to schedule this change"),
        id="the roll went past it but its enforcing form is not loaded: not confirmed",
    ),
    pytest.param(
        never(
            roll(((ME,), ("other/1",)), opened=1, halted="other/1: failed"),
            applied=frozenset({"enforce"}),
            own=applied_report(),
        ),
        Turn(
            form="audit",
            apply=True,
            note="audit",
            held_back="audit: rolling apply halted: other/1: failed",
        ),
        id="halted in its own wave: not confirmed, back to audit",
    ),
]


@pytest.mark.parametrize(("given", "expected"), FIRST_DEPLOYMENT_CASES)
def test_a_first_deployment_audits_then_enforces_in_its_wave(given: HookFacts, expected: Turn):
    assert replace(decide(given), probe_targets=(), owns_exporter=False) == expected


def enforcing_canary(seconds: float, **changes: object) -> HookFacts:
    record = FirstEnforcement(
        audit_since=0,
        enforcing_since=NOW - seconds,
        audit_packets={"drop_in_public": 7},
        audit_seconds=600.0,
    )
    base = never(CANARY, applied=frozenset({"enforce"}), record=record)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_canary_reports_its_counters_only_after_its_window():
    inside = decide(enforcing_canary(WINDOW - 1))
    assert inside.report is None and not inside.apply
    assert inside.held_back == f"canary: enforcing, its counters judged after {WINDOW} s"

    after = decide(enforcing_canary(WINDOW + 5))
    assert after.report == applied_report() and after.held_back == ""
    assert after.canary is not None and after.canary.seconds == WINDOW + 5
    assert dict(after.canary.audit.packets) == {"drop_in_public": 7}
    assert after.canary.audit.seconds == 600.0


def test_the_canary_summary_counts_the_enforcing_form_against_the_audit_form():
    canary = decide(enforcing_canary(WINDOW + 5)).canary
    assert isinstance(canary, CanaryCount)
    summary = canary.summary(plan(), {"drop_in_public": {"packets": 9, "bytes": 900}})
    by_name = {c.counter: c for c in summary.counters}
    # public is denied to a compute node: its drops are expected; the audit figure is kept
    assert by_name["drop_in_public"].expected and by_name["drop_in_public"].audit == 7
    assert by_name["drop_in_public"].enforcing == 9
    assert summary.window_seconds == WINDOW + 5 and summary.audit_seconds == 600.0


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"first_enforcement": None}, id="not a first enforcement"),
        pytest.param({"plan": plan("audit")}, id="configured to audit: nothing to judge"),
    ],
)
def test_a_canary_with_nothing_to_judge_reports_as_it_is(changes: dict[str, object]):
    turn = decide(enforcing_canary(1, **changes))
    assert turn.canary is None and turn.on_roll is not None
    assert turn.report == UnitReport(generation=GEN, outcome="applied")


def test_a_roll_of_one_wave_has_no_canary_to_wait_for():
    alone = roll(((ME,),), opened=1)
    turn = decide(never(alone, applied=frozenset({"audit"})))
    assert turn.apply and turn.form == "enforce" and turn.report == applied_report()


def test_a_failed_apply_reports_failed_only_at_its_turn():
    turn = decide(facts(the_roll=SECOND))
    assert turn.failed("load: " + "x" * 300) == UnitReport(
        generation=GEN, outcome="failed", error=("load: " + "x" * 300)[:200]
    )
    assert decide(facts(the_roll=WAITING)).failed("load: nope") is None
    assert decide(facts()).failed("load: nope") is None


def test_the_first_registered_unit_of_a_machine_runs_the_exporter():
    assert decide(facts(colocated=(ME, "other/7"))).owns_exporter
    assert not decide(facts(colocated=("a-principal-sub/0", ME))).owns_exporter
    assert decide(facts(colocated=())).owns_exporter, "not registered yet: it is alone"


def test_probe_targets_are_the_controllers_and_neighbours_on_allowed_networks():
    cloud = CloudView.model_validate(
        {
            "neighbours": {
                "internal": ["10.1.0.7", "10.1.0.5", "192.0.2.9"],  # own, outside the subnet
                "public": ["10.9.0.7"],  # a network a compute node may not use
            }
        }
    )
    turn = decide(facts(cloud=cloud, api_addresses="10.0.0.2:17070"))
    assert [str(t) for t in turn.probe_targets] == [
        "juju controller 10.0.0.2:17070",
        "internal neighbour 10.1.0.7:22",
    ]
    assert turn.probe_targets[1].refused_ok


@pytest.mark.parametrize(
    ("configured", "the_roll", "never_enforced", "expected"),
    [
        ("enforce", CANARY, True, {"enforce", "audit"}),
        ("enforce", CANARY, False, {"enforce"}),
        ("enforce", None, True, {"enforce"}),
        ("audit", CANARY, True, {"audit"}),
        ("off", CANARY, True, {"off"}),
    ],
)
def test_a_first_deployment_renders_the_audit_form_too(
    configured: Enforcement, the_roll: Roll | None, never_enforced: bool, expected: set[str]
):
    assert forms_to_render(plan(configured), the_roll, never_enforced) == expected


def test_the_unit_status_puts_the_plan_first_then_failures_then_waits():
    active = plan()
    blocked = active.model_copy(update={"status": "blocked", "message": "no role"})
    assert unit_status(active, []) == ("active", active.message)
    assert unit_status(active, ["w1", "w2"]) == ("active", f"{active.message}; w1")
    assert unit_status(active, ["w"], held_back="audit until x") == ("active", "audit until x; w")
    assert unit_status(active, ["w"], waiting="wave 2/3") == ("waiting", "wave 2/3")
    assert unit_status(active, [], blocked="apply failed", waiting="w") == (
        "blocked",
        "apply failed",
    )
    assert unit_status(blocked, ["w"], blocked="apply failed") == ("blocked", "no role; w")


def test_only_the_leader_of_a_halted_roll_is_blocked():
    halted = roll(((ME,), ("other/1",)), opened=1, halted="other/1: load failed")
    as_leader = decide(replace(facts(the_roll=halted), leader=True))
    assert as_leader.blocked == (
        "rolling apply halted: other/1: load failed;"
        " fix the cause, then run the resume-rollout action on the leader"
    )
    assert decide(facts(the_roll=halted)).blocked == ""
    assert decide(replace(facts(the_roll=SECOND), leader=True)).blocked == ""
