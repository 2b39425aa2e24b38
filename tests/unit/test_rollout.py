import pydantic
import pytest

from network_isolation.rollout import Roll, UnitRoll, decide, may_apply, waiting_message

A, B = "a" * 16, "b" * 16


def test_turn_goes_to_the_first_pending_unit_in_numeric_order():
    units = {f"ni/{n}": UnitRoll(wants=A) for n in (10, 2, 1)}
    roll = decide(units, Roll())
    assert roll.turn == "ni/1"
    assert roll.queue == ("ni/2", "ni/10")
    assert may_apply("ni/1", roll)
    assert not may_apply("ni/2", roll)


def test_turn_stays_until_the_unit_has_applied_then_moves_on():
    units = {"ni/0": UnitRoll(wants=A), "ni/1": UnitRoll(wants=A)}
    first = decide(units, Roll())
    assert first.turn == "ni/0"
    # ni/1 reports again, ni/0 is still busy: the turn must not jump
    assert decide(units, first).turn == "ni/0"
    units["ni/0"] = UnitRoll(wants=A, applied=A)
    second = decide(units, first)
    assert second.turn == "ni/1"
    assert second.queue == ()
    units["ni/1"] = UnitRoll(wants=A, applied=A)
    assert decide(units, second) == Roll()


def test_a_failure_halts_the_roll_and_leaves_the_rest_waiting():
    units = {
        "ni/0": UnitRoll(wants=A, failed=A, error="probe of 10.0.0.1:17070 failed"),
        "ni/1": UnitRoll(wants=A),
    }
    roll = decide(units, Roll(turn="ni/0", queue=("ni/1",)))
    assert roll.turn is None
    assert "ni/0" in roll.halted and "17070" in roll.halted
    assert not may_apply("ni/1", roll)
    assert waiting_message("ni/1", roll).startswith("rolling apply halted by ni/0")


def test_the_halt_lifts_when_the_failed_unit_wants_a_new_change():
    units = {"ni/0": UnitRoll(wants=B, failed=A), "ni/1": UnitRoll(wants=B)}
    roll = decide(units, Roll(halted="ni/0: broken"))
    assert roll.halted == ""
    assert roll.turn == "ni/0"


def test_waiting_message_counts_the_turn_holder():
    roll = Roll(turn="ni/0", queue=("ni/1", "ni/2"))
    assert waiting_message("ni/2", roll) == "waiting for apply turn 3/3"
    assert waiting_message("ni/1", roll) == "waiting for apply turn 2/3"


def test_departed_turn_holder_passes_the_turn():
    units = {"ni/1": UnitRoll(wants=A)}
    assert decide(units, Roll(turn="ni/0", queue=("ni/1",))).turn == "ni/1"


@pytest.mark.parametrize("field", ["wants", "applied", "failed"])
def test_untrusted_fingerprints_are_checked(field: str):
    with pytest.raises(pydantic.ValidationError):
        UnitRoll.model_validate({field: "not-a-hash; rm -rf /"})
