"""A first deployment's decision: audit at once, enforce when the roll reaches the machine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from network_isolation.base import Enforcement
from network_isolation.first_deployment import (
    FormDecision,
    confirmed,
    first_deployment_form,
)

UNIT = "network-isolation/5"


@dataclass(frozen=True)
class Waves:
    """A leader's roll as the decision reads it."""

    generation: str = "0123456789abcdef"
    waves: tuple[tuple[str, ...], ...] = ()
    opened: int = 0
    halted: str = ""

    def wave_of(self, unit: str) -> int | None:
        return next((i + 1 for i, wave in enumerate(self.waves) if unit in wave), None)


def seven_waves(wave: int, opened: int, halted: str = "") -> Waves:
    """Seven waves, UNIT in `wave` (1-based; 0: in none)."""
    waves = tuple((f"other/{i}",) + ((UNIT,) if i + 1 == wave else ()) for i in range(7))
    return Waves(waves=waves, opened=opened, halted=halted)


def form(
    roll: Waves | None,
    *,
    configured: Enforcement = "enforce",
    enforced: bool = False,
) -> FormDecision:
    return first_deployment_form((UNIT,), roll, configured=configured, enforced=enforced)


def test_a_unit_that_never_enforced_audits_until_its_wave_opens():
    decision = form(seven_waves(3, opened=1))
    assert decision.enforcement == "audit" and decision.held_back
    assert decision.message == "audit until enforcement reaches this machine (wave 3/7)"
    assert form(seven_waves(3, opened=2)).enforcement == "audit"
    assert form(seven_waves(3, opened=3)).enforcement == "enforce"
    assert not form(seven_waves(3, opened=3)).held_back


def test_before_the_leader_decides_every_new_unit_audits():
    assert form(Waves(generation="")).message == (
        "audit until the leader schedules enforcement here"
    )
    assert form(seven_waves(0, opened=7)).enforcement == "audit"  # not in this roll


def test_a_halt_sends_a_unit_that_never_enforced_back_to_audit():
    decision = form(seven_waves(1, opened=1, halted="machine-3 dropped 48 packets"))
    assert decision.enforcement == "audit"
    assert decision.message == "audit: rolling apply halted: machine-3 dropped 48 packets"


@pytest.mark.parametrize("configured", ["audit", "off"])
def test_audit_and_off_are_loaded_as_configured(configured: Enforcement):
    assert form(seven_waves(3, opened=1), configured=configured).enforcement == configured


def test_a_confirmed_or_lone_unit_is_left_to_the_rolling_apply():
    assert form(seven_waves(3, opened=1), enforced=True).enforcement == "enforce"
    assert form(None).enforcement == "enforce"


@pytest.mark.parametrize(
    ("wave", "opened", "halted", "reported", "expected"),
    [
        (1, 1, "", True, False),  # the canary, before its wave is judged
        (1, 2, "", False, True),  # the next wave opened: the canary passed
        (2, 3, "boom", False, True),  # a later wave halted: this one had passed
        (3, 3, "boom", True, False),  # this wave halted
        (7, 7, "", False, False),  # last wave, not yet reported
        (7, 7, "", True, True),  # last wave, reported, no halt
        (0, 7, "", True, False),  # not in the roll
    ],
)
def test_confirmation(wave: int, opened: int, halted: str, reported: bool, expected: bool):
    assert confirmed((UNIT,), seven_waves(wave, opened, halted), reported) is expected


@settings(max_examples=80, deadline=None)
@given(
    wave=st.integers(0, 7),
    opened=st.integers(0, 7),
    halted=st.sampled_from(["", "failed"]),
    decided=st.booleans(),
)
def test_a_new_unit_enforces_only_when_its_wave_is_open(
    wave: int, opened: int, halted: str, decided: bool
):
    roll = seven_waves(wave, opened, halted)
    if not decided:  # no leader decision yet: nothing opened, nothing halted
        roll, halted = Waves(generation="", waves=roll.waves, opened=opened), ""
    decision = form(roll)
    open_wave = decided and 0 < wave <= opened
    assert (decision.enforcement == "enforce") == (not halted and open_wave)
    assert decision.held_back == (decision.enforcement == "audit")


def test_a_unit_joining_a_machine_goes_with_the_machines_wave():
    """A second principal's unit, not yet in the roll, keeps the machine's enforcing form."""
    roll = seven_waves(2, opened=2)
    newcomer = ("network-isolation/9", UNIT)  # itself first, then the machine's other units
    assert first_deployment_form(newcomer, roll, configured="enforce", enforced=False) == (
        FormDecision("enforce")
    )
    waiting = first_deployment_form(
        newcomer, seven_waves(4, opened=2), configured="enforce", enforced=False
    )
    assert waiting.message == "audit until enforcement reaches this machine (wave 4/7)"
    assert confirmed(newcomer, seven_waves(2, opened=3), reported=False)
    assert not confirmed(("network-isolation/9",), seven_waves(2, opened=3), reported=False)
