"""A first deployment: observe everywhere at once, enforce through the canary and the waves.

`juju deploy` on a running cloud reaches every machine in the same moment. A unit whose
machine has never enforced therefore loads its ruleset in audit form at once (counters and
logs from the first hook, nothing dropped) and waits for the rolling apply to reach it before
it loads the enforcing form. Its enforcement counts as confirmed once the roll has gone past
its wave; until then a halt (a failure, the canary's counters) sends it back to audit.

This module is the pure decision next to the rollout's (`rollout`): which form to load now and
what the unit says meanwhile. It reads the leader's roll through `WaveView`, the part of the
roll it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .base import Enforcement, Received


class FirstEnforcement(Received):
    """What the machine's first enforcement has seen so far (`host` keeps it in a file)."""

    audit_since: float
    enforcing_since: float | None = None
    audit_packets: dict[str, int] = {}  # the audit form's counters when it was replaced
    audit_seconds: float = 0.0  # how long the audit form had been loaded then


class WaveView(Protocol):
    """What the decision reads of the leader's roll (`rollout.Roll`)."""

    @property
    def generation(self) -> str:
        """The rollout's name; "" before the leader has decided anything."""
        ...

    @property
    def waves(self) -> tuple[tuple[str, ...], ...]:
        """Unit names per wave."""
        ...

    @property
    def opened(self) -> int:
        """Waves 1..opened may apply."""
        ...

    @property
    def halted(self) -> str:
        """Why the roll stopped ("" while it runs)."""
        ...

    def wave_of(self, unit: str) -> int | None:
        """1-based wave that holds a unit, if any."""
        ...


@dataclass(frozen=True)
class FormDecision:
    """The form of the ruleset to load now, and the status text while it is the audit form."""

    enforcement: Enforcement
    message: str = ""

    @property
    def held_back(self) -> bool:
        """The unit loads audit although `enforcement` is configured to enforce."""
        return bool(self.message)


def machine_wave(units: Sequence[str], roll: WaveView) -> int | None:
    """The wave of a machine: of the first of its units (this one first) that the roll holds.

    The roll puts every unit of a machine in the machine's wave; a unit that joined the
    machine after the roll was planned goes with it.
    """
    return next((w for w in map(roll.wave_of, units) if w is not None), None)


def confirmed(units: Sequence[str], roll: WaveView, reported: bool) -> bool:
    """Whether this machine's first enforcement is confirmed by the roll that brought it.

    `units`: this unit, then the other units of its machine. Confirmed once a later wave has
    opened (its own wave was judged), or, in the last wave, once the unit has reported its
    apply and the roll has not halted.
    """
    wave = machine_wave(units, roll)
    if wave is None or (roll.halted and wave >= roll.opened):
        return False
    return wave < roll.opened or (wave == roll.opened == len(roll.waves) and reported)


def first_deployment_form(
    units: Sequence[str],
    roll: WaveView | None,
    *,
    configured: Enforcement,
    enforced: bool,
) -> FormDecision:
    """Which form of its ruleset a unit loads now.

    `units`: this unit, then the other units of its machine, which share its table.
    `enforced`: this machine's enforcement is confirmed (an earlier roll went past it): the
    rolling apply alone decides when it changes. A machine joining a cloud that enforces is
    no exception: its record starts a rollout, and it enforces when that rollout reaches it.
    Without a peer relation (`roll` None) there is nothing to roll.
    """
    if configured != "enforce" or enforced or roll is None:
        return FormDecision(configured)
    if roll.halted:
        return FormDecision("audit", f"audit: rolling apply halted: {roll.halted}")
    wave = machine_wave(units, roll)
    if roll.generation and wave is not None and wave <= roll.opened:
        return FormDecision("enforce")
    if not roll.generation or wave is None:
        return FormDecision("audit", "audit until the leader schedules enforcement here")
    return FormDecision(
        "audit", f"audit until enforcement reaches this machine (wave {wave}/{len(roll.waves)})"
    )
