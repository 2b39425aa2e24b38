import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from network_isolation.rollout import (
    Member,
    Roll,
    Schedule,
    UnitReport,
    may_apply,
    plan_waves,
    step,
    waiting_message,
)

G1, G2 = "1" * 16, "2" * 16
SCHEDULE = Schedule(limit=25, percent=True, timeout=600)


def cloud(control: int = 3, storage: int = 3, compute: int = 10) -> dict[str, Member]:
    """A Sunbeam-like cloud: one unit per machine, roles by machine."""
    members: dict[str, Member] = {}
    for role, count in (("control", control), ("storage", storage), ("compute", compute)):
        for _ in range(count):
            unit = f"ni/{len(members)}"
            members[unit] = Member(unit, f"machine-{len(members)}", frozenset({role}))
    return members


def role_of(members: dict[str, Member], unit: str) -> frozenset[str]:
    return members[unit].roles


def test_the_canary_is_one_machine_of_the_commonest_kind_and_waves_double():
    members = cloud(control=3, storage=3, compute=26)
    waves = plan_waves(members.values(), Schedule(limit=8, percent=False))
    assert len(waves[0]) == 1
    assert role_of(members, waves[0][0]) == {"compute"}
    assert [len(w) for w in waves[:4]] == [1, 2, 4, 8]
    assert sorted(u for w in waves for u in w) == sorted(members)
    # every role is exercised by the first three waves
    assert {r for w in waves[:3] for u in w for r in role_of(members, u)} == {
        "control",
        "storage",
        "compute",
    }


def test_at_most_one_control_and_one_storage_machine_per_wave():
    members = cloud(control=5, storage=7, compute=40)
    waves = plan_waves(members.values(), SCHEDULE)
    for wave in waves:
        for role in ("control", "storage"):
            assert sum(role in role_of(members, u) for u in wave) <= 1, (role, wave)
    assert len(waves) >= 7  # seven storage machines need seven waves


def test_units_of_one_machine_share_a_wave_and_count_once():
    members = {
        "ni/0": Member("ni/0", "m0", frozenset({"control"})),
        "ni/1": Member("ni/1", "m0", frozenset({"storage"})),
        "ni/2": Member("ni/2", "m1", frozenset({"compute"})),
        "ni/3": Member("ni/3", "m2", frozenset({"compute"})),
    }
    waves = plan_waves(members.values(), Schedule(limit=2, percent=False))
    [together] = [w for w in waves if "ni/0" in w]
    assert "ni/1" in together


def test_a_percentage_cap_scales_with_the_cloud():
    assert Schedule.parse("10%", 600).cap(1000) == 100
    assert Schedule.parse("10%", 600).cap(5) == 1
    assert Schedule.parse("16", 600).cap(1000) == 16
    for bad in ("0", "101%", "ten", "-3", "5%%"):
        with pytest.raises(ValueError, match="percentage"):
            Schedule.parse(bad, 600)


@settings(max_examples=40, deadline=None)
@given(
    roles=st.lists(
        st.frozensets(
            st.sampled_from(["control", "storage", "compute", "juju-controller"]),
            min_size=1,
            max_size=2,
        ),
        min_size=1,
        max_size=40,
    ),
    limit=st.integers(min_value=1, max_value=20),
    percent=st.booleans(),
)
def test_waves_hold_every_machine_once_within_every_limit(roles, limit, percent):
    members = {f"ni/{i}": Member(f"ni/{i}", f"m{i}", r) for i, r in enumerate(roles)}
    schedule = Schedule(min(limit, 100), percent)
    waves = plan_waves(members.values(), schedule)
    flat = [u for w in waves for u in w]
    assert sorted(flat) == sorted(members)
    assert len(waves[0]) == 1
    per_role = {r: sum(r in m.roles for m in members.values()) for r in ("control", "storage")}
    for wave in waves:
        assert len(wave) <= schedule.cap(len(members))
        for role in ("control", "storage"):
            assert sum(role in members[u].roles for u in wave) <= 1
        for role in {r for m in members.values() for r in m.roles}:
            count = sum(role in m.roles for m in members.values())
            if count > 1:
                assert sum(role in members[u].roles for u in wave) < count
    assert per_role  # the quorum roles were checked


def applied(gen: str) -> UnitReport:
    return UnitReport(generation=gen, outcome="applied")


def test_a_new_generation_opens_the_canary_then_the_waves_in_turn():
    members = cloud(control=1, storage=1, compute=4)
    roll = step(Roll(), G1, members, {}, now=0, schedule=SCHEDULE)
    assert roll.generation == G1 and roll.opened == 1
    [canary] = roll.waves[0]
    others = [u for u in members if u != canary]
    assert may_apply(canary, roll, UnitReport())
    assert not any(may_apply(u, roll, UnitReport()) for u in others)
    assert waiting_message(others[0], roll).startswith("waiting for wave ")
    # nothing reported: the roll stays where it is
    assert step(roll, G1, members, {}, now=10, schedule=SCHEDULE) == roll
    reports = {canary: applied(G1)}
    assert not may_apply(canary, roll, reports[canary])  # a unit applies a change once
    roll = step(roll, G1, members, reports, now=20, schedule=SCHEDULE)
    assert roll.opened == 2 and roll.opened_at == 20
    while not roll.done:
        reports |= {u: applied(G1) for u in roll.waves[roll.opened - 1]}
        roll = step(roll, G1, members, reports, now=30, schedule=SCHEDULE)
    assert roll.opened == len(roll.waves) and not roll.halted


def test_a_failure_halts_the_roll_and_a_new_generation_lifts_the_halt():
    members = cloud(control=1, storage=1, compute=4)
    roll = step(Roll(), G1, members, {}, now=0, schedule=SCHEDULE)
    [canary] = roll.waves[0]
    failed = UnitReport(generation=G1, outcome="failed", error="arm: no systemd-run")
    roll = step(roll, G1, members, {canary: failed}, now=5, schedule=SCHEDULE)
    assert canary in roll.halted and "arm: no systemd-run" in roll.halted
    assert "wave 1" in roll.halted
    assert not any(may_apply(u, roll, UnitReport()) for u in members)
    assert waiting_message("ni/3", roll).startswith("rolling apply halted: ")
    assert step(roll, G2, members, {canary: failed}, now=6, schedule=SCHEDULE).halted == ""


def test_a_report_speaks_only_for_its_own_unit_and_its_own_roll():
    members = cloud(control=1, storage=1, compute=4)
    roll = step(Roll(), G1, members, {}, now=0, schedule=SCHEDULE)
    [canary] = roll.waves[0]
    outsider = next(u for u in members if u != canary)
    reports = {
        outsider: UnitReport(generation=G1, outcome="failed", error="I say so"),
        canary: UnitReport(generation=G2, outcome="failed", error="an old roll"),
    }
    assert step(roll, G1, members, reports, now=1, schedule=SCHEDULE) == roll


def test_a_wave_that_never_reports_times_out_into_a_halt():
    members = cloud(control=1, storage=1, compute=4)
    roll = step(Roll(), G1, members, {}, now=0, schedule=SCHEDULE)
    assert step(roll, G1, members, {}, now=600, schedule=SCHEDULE) == roll
    halted = step(roll, G1, members, {}, now=601, schedule=SCHEDULE)
    assert halted.halted.startswith("wave 1/")
    assert "timed out after 600 s waiting for " + roll.waves[0][0] in halted.halted
    assert not may_apply(roll.waves[0][0], halted, UnitReport())


def test_a_removed_unit_does_not_hold_its_wave():
    members = cloud(control=1, storage=1, compute=4)
    roll = step(Roll(), G1, members, {}, now=0, schedule=SCHEDULE)
    [canary] = roll.waves[0]
    del members[canary]
    assert step(roll, G1, members, {}, now=1, schedule=SCHEDULE).opened == 2


def test_without_a_leader_decision_a_unit_applies_at_once():
    assert may_apply("ni/0", Roll(), UnitReport())


@pytest.mark.parametrize("field", ["generation"])
def test_untrusted_generations_are_checked(field: str):
    with pytest.raises(pydantic.ValidationError):
        UnitReport.model_validate({field: "not-a-hash; rm -rf /"})
    with pytest.raises(pydantic.ValidationError):
        UnitReport.model_validate({"outcome": "enforced-everywhere"})
