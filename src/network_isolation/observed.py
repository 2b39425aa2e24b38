"""What the exporter reports besides the live counters: the plan and the apply history.

The charm records a `PlanSummary` after each reconcile and `Host` keeps an `ApplyHistory`;
both are small JSON files in the state directory that the exporter (a separate process) reads
on every scrape. Pure models: no Juju, no host access.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .base import Enforcement, Received
from .model import NETWORKS
from .planner import MachinePlan

PLAN_SUMMARY_FILE = "plan-summary.json"
HISTORY_FILE = "history.json"

Record = TypeVar("Record", bound=BaseModel)


class PlanSummary(Received):
    """The part of a machine's plan that alerts need, and what it renders to."""

    status: str  # active, or blocked (the plan names a problem: nothing new is applied)
    enforcement: str
    isolation: str
    domains: int
    strict_ports: bool
    # network name -> may this machine use it
    networks: dict[str, bool]
    # fingerprint of the artefacts the plan renders to ("" when the plan is blocked)
    wanted: str = ""

    @classmethod
    def of(
        cls, plan: MachinePlan, wanted: str, enforcement: Enforcement | None = None
    ) -> PlanSummary:
        """The summary of a plan whose artefacts, in form `enforcement`, have fingerprint `wanted`.

        `enforcement`: the form loaded (a first deployment's audit form); None: the configured.
        """
        return cls(
            status=plan.status,
            enforcement=enforcement or plan.config.enforcement,
            isolation=plan.isolation.level.value,
            domains=len(plan.isolation.domains),
            strict_ports=plan.config.strict_ports,
            networks={net.value: plan.networks[net].access for net in NETWORKS},
            wanted=wanted,
        )


class ApplyHistory(Received):
    """What applies have done on this machine since the charm came."""

    last_apply: float | None = None  # Unix time of the last confirmed apply
    rollbacks: int = 0  # applies undone by the charm (failed load, netplan apply or probe)

    def applied(self, when: float) -> ApplyHistory:
        """One more confirmed apply, at `when`."""
        return self.model_copy(update={"last_apply": when})

    def rolled_back(self) -> ApplyHistory:
        """One more apply undone."""
        return self.model_copy(update={"rollbacks": self.rollbacks + 1})


def load_record(model: type[Record], text: str | None) -> Record | None:
    """A record from its JSON text; None when missing or unreadable (a scrape never fails)."""
    if text is None:
        return None
    try:
        return model.model_validate_json(text)
    except ValidationError:
        return None
