"""One hook's decision: which form to load, whether to apply it now, what to report and say.

Every reconciling hook reads its inputs once (Juju, the machine's registry, the host's files),
decides here once, acts, and publishes once. This module is the decision, and the place where
the rules a reviewer most needs to check meet: the rolling apply's (`rollout`: may this unit
apply now, what it says while it waits), the first deployment's (`first_deployment`: audit
first, enforce when the roll reaches the machine, confirmed once the roll goes past it) and
the canary's (`canary`: a first enforcement reports its counters after its window).

Pure: no Juju, no host, no clock of its own. `HookFacts` is what a hook knows, `decide` gives
its `Turn`, and `unit_status` turns what the hook found into the unit's status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .base import Enforcement
from .canary import CounterSummary, Snapshot, summarise
from .first_deployment import FirstEnforcement, confirmed, first_deployment_form
from .peers import CloudView
from .planner import MachinePlan
from .reachability import ProbeTarget, controller_targets, neighbour_targets
from .render import counter_kinds
from .rollout import Roll, UnitReport, may_apply, waiting_message

# What the first-enforcement record notes before an apply: the audit form of a machine that
# never enforced is loading, or its enforcing form is.
Note = Literal["audit", "enforcing"]
StatusKind = Literal["active", "blocked", "waiting"]


@dataclass(frozen=True)
class HookFacts:
    """Everything a hook knows that decides what this unit does now, read once.

    `applied`: the forms whose artefacts are what the host has applied, among those rendered
    (`forms_to_render`); `rendered`: the plan rendered (it is active and its render worked).
    `enforced`: the host has enforced and the roll confirmed it (`Host.never_enforced` is
    its negation). `colocated`: the units this charm has on the machine (this one included).
    """

    unit: str
    plan: MachinePlan
    cloud: CloudView
    roll: Roll | None  # None: no peer relation, nothing to roll
    own_report: UnitReport
    colocated: Sequence[str]
    enforced: bool
    rendered: bool
    applied: frozenset[Enforcement]
    first_enforcement: FirstEnforcement | None
    now: float
    api_addresses: str | None = None  # JUJU_API_ADDRESSES
    force: bool = False  # the reapply action: apply even if nothing changed, at once
    record: str = ""  # digest of this unit's record: a change of it is its machine's alone
    leader: bool = False  # the leader: a halted roll is its to report as blocked

    @property
    def configured(self) -> Enforcement:
        """The form the operator asked for."""
        return self.plan.config.enforcement

    @property
    def machine_units(self) -> tuple[str, ...]:
        """This unit, then the other units of its machine: they share its table and wave."""
        return (self.unit, *sorted(set(self.colocated) - {self.unit}))


@dataclass(frozen=True)
class CanaryCount:
    """A canary's counters are due: the audit form's, and the enforcing form's after `seconds`."""

    audit: Snapshot
    seconds: float

    def summary(
        self, plan: MachinePlan, enforcing: Mapping[str, Mapping[str, int]]
    ) -> CounterSummary:
        """The summary its report carries, from the enforcing form's counters read now."""
        return summarise(counter_kinds(plan), self.audit, Snapshot.of(enforcing, self.seconds))


@dataclass(frozen=True)
class Turn:
    """What this unit does in this hook.

    `on_roll`: it is this unit's turn to report on the roll (once per rollout, for its own
    apply). `report`: the report due once the hook's apply, if any, has succeeded (a failed
    apply reports as failed instead, when `on_roll`); None while a canary's window is open.
    `canary`: the report carries the canary's drop counters, read now.
    """

    form: Enforcement
    apply: bool = False
    confirm: bool = False  # the roll went past this machine: its first enforcement is confirmed
    note: Note | None = None  # noted in the first-enforcement record before the apply
    on_roll: Roll | None = None  # the roll this unit reports on now, if its turn
    report: UnitReport | None = None
    canary: CanaryCount | None = None
    held_back: str = ""  # a first deployment's stage: audit until..., the canary's window
    waiting: str = ""  # waiting for this unit's wave
    blocked: str = ""  # the leader of a halted roll: only a person can go on
    probe_targets: tuple[ProbeTarget, ...] = ()  # besides the host's default gateways
    owns_exporter: bool = False
    record: str = ""  # digest of this unit's record, named in its reports
    timed: bool = False  # the decision changes with the clock alone (a canary's window)

    def failed(self, error: str) -> UnitReport | None:
        """The report due when the apply failed: at this unit's turn on the roll only."""
        return self.report_of("failed", error[:200])

    def report_of(
        self, outcome: Literal["applied", "failed", "blocked"], error: str = ""
    ) -> UnitReport | None:
        """This unit's report on the roll, named for its rollout; None when not its turn."""
        if self.on_roll is None:
            return None
        return UnitReport(
            generation=self.on_roll.generation, outcome=outcome, error=error, record=self.record
        )


def halted_message(roll: Roll) -> str:
    """The leader's status while a roll is halted: the cause, and the fix."""
    fix = "fix the cause, then run the resume-rollout action on the leader"
    return f"rolling apply halted: {roll.halted}; {fix}"


def forms_to_render(
    plan: MachinePlan, roll: Roll | None, never_enforced: bool
) -> set[Enforcement]:
    """The forms a hook may load: the configured one, and the audit form of a first deployment.

    Rendered before the decision so that it knows which of them the host has applied.
    """
    configured = plan.config.enforcement
    if configured == "enforce" and roll is not None and never_enforced:
        return {configured, "audit"}
    return {configured}


def decide(facts: HookFacts) -> Turn:
    """This hook's turn: the form, whether to apply it now, the report due and the status."""
    roll, unit, own = facts.roll, facts.unit, facts.own_report
    units = facts.machine_units
    confirm = (
        not facts.enforced
        and roll is not None
        and facts.configured in facts.applied
        and confirmed(units, roll, own.generation == roll.generation)
    )
    enforced = facts.enforced or confirm
    form = first_deployment_form(units, roll, configured=facts.configured, enforced=enforced)
    its_turn = (
        roll is not None and roll.generation != "" and may_apply(unit, roll, own, facts.record)
    )
    turn = Turn(
        form=form.enforcement,
        confirm=confirm,
        on_roll=roll if its_turn else None,
        held_back=form.message,
        probe_targets=(
            *controller_targets(facts.api_addresses),
            *neighbour_targets(facts.plan, facts.cloud),
        ),
        owns_exporter=min(facts.colocated, default=unit) == unit,
        record=facts.record,
        blocked=halted_message(roll) if facts.leader and roll and roll.halted else "",
    )
    if not facts.rendered:
        return replace(turn, report=turn.report_of("blocked"))
    if form.enforcement in facts.applied and not facts.force:
        return _applied(facts, turn)
    if not (
        facts.force or form.held_back or roll is None or may_apply(unit, roll, own, facts.record)
    ):
        assert roll is not None  # for the type checker: a lone unit never waits
        return replace(turn, waiting=waiting_message(unit, roll))
    note: Note | None = None
    if roll is not None and not enforced and form.enforcement != "off":
        note = "enforcing" if form.enforcement == "enforce" else "audit"
    return _applied(facts, replace(turn, apply=True, note=note))


def _applied(facts: HookFacts, turn: Turn) -> Turn:
    """The turn with the report due once its form is applied.

    A first deployment's canary (wave 1 of several) reports once it has enforced for
    `rolling-canary-window`, with its drop counters, which the leader judges before the next
    wave; a roll of one wave has no next wave to protect. A first enforcement's window starts
    when its enforcing form loads (`note`); a confirmed one is no longer a first enforcement.
    """
    roll = turn.on_roll
    canary = roll is not None and roll.wave_of(facts.unit) == 1 < len(roll.waves)
    if not canary or facts.configured != "enforce":
        return replace(turn, report=turn.report_of("applied"))
    window = facts.plan.config.rolling_canary_window
    held = f"canary: enforcing, its counters judged after {window} s"
    if turn.note == "enforcing":
        return replace(turn, held_back=held, timed=True)  # its window starts with this apply
    record = None if turn.confirm or turn.note == "audit" else facts.first_enforcement
    if record is None or record.enforcing_since is None:
        return replace(turn, report=turn.report_of("applied"))  # not a first enforcement
    seconds = facts.now - record.enforcing_since
    if seconds < window:
        return replace(turn, held_back=held, timed=True)
    audit = Snapshot(record.audit_packets, record.audit_seconds)
    return replace(turn, report=turn.report_of("applied"), canary=CanaryCount(audit, seconds))


def unit_status(
    plan: MachinePlan,
    warnings: Sequence[str],
    *,
    blocked: str | None = None,
    waiting: str | None = None,
    held_back: str | None = None,
) -> tuple[StatusKind, str]:
    """The unit's status: the plan's verdict, then what went wrong, then what waits.

    `warnings`: the inputs' problems first (ignored), then the hook's own; the first is shown.
    """
    warning = f"; {warnings[0]}" if warnings else ""
    if plan.status == "blocked":
        return "blocked", plan.message + warning
    if blocked:
        return "blocked", blocked
    if waiting:
        return "waiting", waiting
    return "active", (held_back or plan.message) + warning
