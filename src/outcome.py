"""What a hook found and did beyond its inputs, and the unit status it makes.

The rule (`network_isolation.turn.unit_status`) is pure; this module gives it Juju's form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ops

from network_isolation.turn import unit_status
from state import HookState

STATUS_CLASSES: dict[str, type[ops.StatusBase]] = {
    "active": ops.ActiveStatus,
    "blocked": ops.BlockedStatus,
    "waiting": ops.WaitingStatus,
}


@dataclass
class Outcome:
    """What the hook found and did beyond its inputs; collect-status reports it."""

    blocked: str | None = None
    waiting: str | None = None
    held_back: str | None = None  # a first deployment's stage (audit until..., canary)
    warnings: list[str] = field(default_factory=list)

    def status(self, state: HookState) -> ops.StatusBase:
        """The unit's status: the plan's verdict, then what went wrong, then what waits."""
        warnings = [
            *state.binding_warnings,
            *state.principal_warnings,
            *state.problems,
            *self.warnings,
        ]
        kind, message = unit_status(
            state.plan,
            warnings,
            blocked=self.blocked,
            waiting=self.waiting,
            held_back=self.held_back,
        )
        return STATUS_CLASSES[kind](message)
