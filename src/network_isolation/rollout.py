"""Rolling apply: one machine at a time, each confirmed before the next starts.

A `juju config` change reaches every unit at once. A change that passes each host's own checks
but is still wrong must not hit the whole cloud in one moment, so the leader hands out apply
turns over the peer relation. This module is the pure decision: who may apply now, and what
each unit should say while it waits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

FINGERPRINT = re.compile(r"^[0-9a-f]{16,64}$")


class UnitRoll(BaseModel):
    """What a unit says about its apply: the change it wants, and how its last attempt went."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    wants: str | None = Field(default=None, pattern=FINGERPRINT.pattern)
    applied: str | None = Field(default=None, pattern=FINGERPRINT.pattern)
    failed: str | None = Field(default=None, pattern=FINGERPRINT.pattern)
    error: str = Field(default="", max_length=200)

    @property
    def pending(self) -> bool:
        """The unit has a change it has neither applied nor failed."""
        return self.wants is not None and self.wants not in (self.applied, self.failed)

    @property
    def has_failed(self) -> bool:
        """The unit's wanted change failed on its host and was rolled back."""
        return self.wants is not None and self.wants == self.failed


class Roll(BaseModel):
    """The leader's decision, published in the application databag."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    turn: str | None = None
    queue: tuple[str, ...] = ()
    halted: str = Field(default="", max_length=300)

    def position(self, unit: str) -> tuple[int, int] | None:
        """1-based place of a unit in the queue and the queue length, if it is waiting."""
        if unit not in self.queue:
            return None
        return self.queue.index(unit) + 1, len(self.queue)


def unit_order(name: str) -> tuple[str, int]:
    """Units in a stable, human order: by application, then by number."""
    app, _, number = name.rpartition("/")
    return app, int(number) if number.isdigit() else -1


def decide(units: Mapping[str, UnitRoll], previous: Roll) -> Roll:
    """The next roll state, from every unit's report and the previous decision.

    A failure halts the roll; the halt lifts when the failed unit wants a new change (the
    inputs changed). Otherwise the turn stays with its unit until it has applied or failed,
    then passes to the next pending unit in a stable order.
    """
    failed = sorted((u for u, s in units.items() if s.has_failed), key=unit_order)
    if failed:
        unit = failed[0]
        reason = units[unit].error or "apply failed and was rolled back"
        return Roll(turn=None, queue=(), halted=f"{unit}: {reason}"[:300])
    pending = sorted((u for u, s in units.items() if s.pending), key=unit_order)
    turn = previous.turn if previous.turn in pending else (pending[0] if pending else None)
    queue = tuple(u for u in pending if u != turn)
    return Roll(turn=turn, queue=queue, halted="")


def may_apply(unit: str, roll: Roll) -> bool:
    """Whether a unit that wants a change may apply it now."""
    return not roll.halted and roll.turn == unit


def waiting_message(unit: str, roll: Roll) -> str:
    """What a unit waiting for its turn says in its status."""
    if roll.halted:
        return f"rolling apply halted by {roll.halted}"
    place = roll.position(unit)
    if place is None:
        return "waiting for an apply turn from the leader"
    return f"waiting for apply turn {place[0] + 1}/{place[1] + 1}"
