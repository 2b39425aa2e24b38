"""Rolling apply in waves: a canary machine, then growing waves, each confirmed before the next.

A `juju config` change reaches every unit at once. A change that passes each host's own checks
but is still wrong must not hit the whole cloud in one moment, so the leader opens waves over
the peer relation. This module is the pure decision: how machines are ordered into waves, when
the next wave opens or the roll halts, who may apply now, and what each unit says meanwhile.

A rollout is named by a generation: a digest of everything the leader knows that decides the
rulesets (config, the cloud view, every unit's record). Units never announce what they want:
each waits for a wave that holds it, applies, and reports once, for its own apply only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from .base import Received
from .canary import CounterSummary, judge
from .model import Network, networks_for_roles

GENERATION = re.compile(r"^[0-9a-f]{16}$")
WAVE_LIMIT = re.compile(r"^([1-9][0-9]{0,4})(%?)$")
# Roles whose machines hold quorums (Kubernetes/dqlite and MySQL on control, Ceph MON on
# storage): at most one machine of each in flight at once.
QUORUM_ROLES: tuple[str, ...] = ("control", "storage")
MAX_HALT = 300
MAX_LEFT_OUT = 10_000
MAX_NAMED = 3  # units a status line names before it counts the rest
Outcome = Literal["applied", "failed", "blocked"]


class UnitReport(Received):
    """What a unit says, once per rollout, about its own apply of that rollout.

    `blocked`: its plan or render is blocked (its status says why), so it applied nothing and
    its host keeps the previous ruleset: done for the roll, and no reason to halt it.
    """

    generation: str = Field(default="", pattern=r"^([0-9a-f]{16})?$")
    outcome: Outcome = "applied"
    error: str = Field(default="", max_length=200)
    counters: CounterSummary | None = None  # a first deployment's canary: its drop counters
    record: str = Field(default="", pattern=r"^([0-9a-f]{16})?$")  # digest of its own record

    @property
    def failed(self) -> bool:
        """The unit's apply failed, at whatever stage."""
        return self.outcome == "failed"

    def judged(self, threshold: int, allowed: frozenset[Network] | None = None) -> UnitReport:
        """This report, failed when its counters break the canary rule (see `canary`).

        `allowed`: the networks the leader knows the unit's machine may use; which counters
        are expected to drop is decided from them, not taken from the report.
        """
        if self.counters is None or self.failed:
            return self
        counters = self.counters if allowed is None else self.counters.as_judged_for(allowed)
        verdict = judge(counters, threshold)
        if verdict.passed:
            return self
        error = f"counters: {verdict.halted}"[:200]
        return self.model_copy(update={"outcome": "failed", "error": error})


class Roll(Received):
    """The leader's decision, published in the application databag.

    `waves` lists unit names (every unit of a machine in the same wave); waves 1..`opened` may
    apply. `opened_at` (seconds since the epoch) times the newest wave out; `started_at`, when
    the roll began. `config` and `members` digest the config and the units it was planned for:
    a roll whose only change is the cloud view restarts at most once per wave timeout, and
    `deferred` says whose records changed meanwhile. `left_out` names the units it goes on
    without; `options` digests the `rolling-*` options in force, so that a change of them takes
    effect on the roll in progress (and lifts a halt, which is then judged again).
    """

    generation: str = Field(default="", pattern=r"^([0-9a-f]{16})?$")
    waves: tuple[tuple[str, ...], ...] = ()
    opened: int = Field(default=0, ge=0)
    opened_at: float = 0.0
    halted: str = Field(default="", max_length=MAX_HALT)
    started_at: float = 0.0
    config: str = Field(default="", pattern=r"^([0-9a-f]{16})?$")
    members: str = Field(default="", pattern=r"^([0-9a-f]{16})?$")
    deferred: str = Field(default="", max_length=MAX_HALT)
    # units the roll goes on without: no record yet, or silent past their wave's timeout
    left_out: tuple[str, ...] = Field(default=(), max_length=MAX_LEFT_OUT)
    options: str = Field(default="", pattern=r"^([0-9a-f]{16})?$")  # the rolling-* options
    resumed: int = Field(default=0, ge=0)  # `resume-rollout` runs, part of the config digest

    def wave_of(self, unit: str) -> int | None:
        """1-based wave that holds a unit, if any."""
        return next((i + 1 for i, wave in enumerate(self.waves) if unit in wave), None)

    @property
    def done(self) -> bool:
        """Every wave has been opened (the last one may still be applying)."""
        return self.opened >= len(self.waves)


@dataclass(frozen=True)
class Member:
    """A unit in the roll as the leader knows it from its record: its machine and roles."""

    unit: str
    machine: str
    roles: frozenset[str]


@dataclass(frozen=True)
class Schedule:
    """How fast waves grow: doubling from one machine up to `limit` machines (or percent)."""

    limit: int = 25
    percent: bool = True
    timeout: float = 900.0
    canary_threshold: int = 20  # see `canary.judge`
    # the role table in force: the leader judges a canary's counters by its roles
    networks_by_role: Mapping[str, frozenset[Network]] = field(default_factory=dict)
    canary_window: float = 0.0  # a first enforcement's canary reports after this long
    hook_interval: float = 0.0  # how often units run update-status, as the leader sees it

    def timeout_of(self, wave: int, waves: int) -> float:
        """How long an opened wave may wait for its reports.

        The canary of several waves reports its counters in its first hook after its window:
        its wave also waits for the window and two update-status intervals, so that no
        interval Juju is set to times it out.
        """
        if wave == 1 < waves:
            return self.timeout + self.canary_window + 2 * self.hook_interval
        return self.timeout

    @classmethod
    def parse(
        cls,
        text: str,
        timeout: float,
        canary_threshold: int = 20,
        networks_by_role: Mapping[str, frozenset[Network]] | None = None,
    ) -> Schedule:
        """`16` (machines per wave at most) or `25%` (of the machines in the roll)."""
        match = WAVE_LIMIT.match(text.strip())
        if not match or (match.group(2) and int(match.group(1)) > 100):
            raise ValueError(f"'{text}' is neither a number of machines nor a percentage 1-100%")
        limit, percent = int(match.group(1)), bool(match.group(2))
        return cls(limit, percent, timeout, canary_threshold, dict(networks_by_role or {}))

    def with_timing(self, canary_window: float, hook_interval: float) -> Schedule:
        """This schedule with the canary's window and the hook cadence the leader sees."""
        return dataclasses.replace(self, canary_window=canary_window, hook_interval=hook_interval)

    def allowed(self, member: Member | None) -> frozenset[Network] | None:
        """The networks the role table lets a member's machine use (None: no table given)."""
        table = self.networks_by_role
        if member is None or not table:
            return None
        return networks_for_roles((r for r in member.roles if r in table), table)

    def cap(self, machines: int) -> int:
        """The most machines in one wave for a roll of `machines`."""
        if self.percent:
            return max(1, machines * self.limit // 100)
        return self.limit


def unit_order(name: str) -> tuple[str, int]:
    """Units in a stable, human order: by application, then by number."""
    app, _, number = name.rpartition("/")
    return app, int(number) if number.isdigit() else -1


def named(units: Sequence[str]) -> str:
    """A few unit names for a status line, and how many more."""
    more = f" (+{len(units) - MAX_NAMED} more)" if len(units) > MAX_NAMED else ""
    return ", ".join(units[:MAX_NAMED]) + more


def generation(*parts: str) -> str:
    """The name of a rollout: a short digest of what decides every unit's ruleset."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _machines(members: Iterable[Member]) -> list[tuple[str, frozenset[str], tuple[str, ...]]]:
    """(machine, roles, units) per machine; the roles of a machine are its units' roles.

    Machines come in the order of their first unit's name, which Juju gives: a record can
    claim any machine name, so a name must not place a machine in the roll.
    """
    roles: dict[str, set[str]] = {}
    units: dict[str, list[str]] = {}
    for member in members:
        roles.setdefault(member.machine, set()).update(member.roles)
        units.setdefault(member.machine, []).append(member.unit)
    machines = [(m, frozenset(roles[m]), tuple(sorted(units[m], key=unit_order))) for m in roles]
    return sorted(machines, key=lambda machine: unit_order(machine[2][0]))


def _role_first_order(
    machines: list[tuple[str, frozenset[str], tuple[str, ...]]],
) -> list[tuple[str, frozenset[str], tuple[str, ...]]]:
    """Round-robin over kinds of machine (their role sets), the most numerous kind first.

    The canary is then a machine of the commonest kind (compute in a Sunbeam cloud: no quorum
    lives there), and the first waves hold a machine of every kind.
    """
    kinds: dict[frozenset[str], list[tuple[str, frozenset[str], tuple[str, ...]]]] = {}
    for machine in machines:
        kinds.setdefault(machine[1], []).append(machine)
    queues = sorted(kinds.values(), key=lambda q: (-len(q), sorted(q[0][1])))
    order: list[tuple[str, frozenset[str], tuple[str, ...]]] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        order += [q[depth] for q in queues if depth < len(q)]
    return order


def plan_waves(members: Iterable[Member], schedule: Schedule) -> tuple[tuple[str, ...], ...]:
    """Machines into waves of 1, 2, 4, ... up to the cap, within the quorum limits.

    A wave holds at most one machine of each quorum role, and never every machine of a role
    that has more than one. A machine that does not fit waits for a later wave.
    """
    machines = _role_first_order(_machines(members))
    per_role: dict[str, int] = {}
    for _, roles, _ in machines:
        for role in roles:
            per_role[role] = per_role.get(role, 0) + 1
    limits = {role: count - 1 if count > 1 else 1 for role, count in per_role.items()}
    for role in QUORUM_ROLES:
        limits[role] = 1
    cap = schedule.cap(len(machines))
    waves: list[tuple[str, ...]] = []
    size = 1
    waiting = machines
    while waiting:
        wave: list[str] = []
        taken = 0
        in_wave: dict[str, int] = {}
        later: list[tuple[str, frozenset[str], tuple[str, ...]]] = []
        for machine in waiting:
            _, roles, units = machine
            if taken >= size or any(in_wave.get(r, 0) >= limits[r] for r in roles):
                later.append(machine)
                continue
            for role in roles:
                in_wave[role] = in_wave.get(role, 0) + 1
            wave += units
            taken += 1
        waves.append(tuple(wave))
        waiting = later
        size = min(size * 2, cap)
    return tuple(waves)


@dataclass(frozen=True)
class RollInputs:
    """What names a rollout, in parts: the config, the cloud view and the units in it.

    Each part is a digest. A unit's own record is none of them: a change of it re-plans that
    unit's machine alone (`may_apply`), and reaches the others only through the view.
    """

    config: str
    view: str
    members: str
    changed_by: tuple[str, ...] = ()  # units whose records changed lately, named if deferred
    absent: tuple[str, ...] = ()  # units in the relation with no accepted record
    options: str = ""  # digest of the rolling-* options: not part of the generation
    resumed: int = 0  # `resume-rollout` runs so far: part of the config

    @property
    def generation(self) -> str:
        """The rollout's name."""
        return generation(self.config, self.view, self.members)


def step(
    previous: Roll,
    gen: str | RollInputs,
    members: Mapping[str, Member],
    reports: Mapping[str, UnitReport],
    now: float,
    schedule: Schedule,
) -> Roll:
    """The leader's next roll state.

    A new generation starts a new roll from the canary (and lifts a halt: the inputs changed),
    except that a change of the cloud view or of roles alone (same config, same units) waits
    for the roll in progress (`_rate_limited`): a unit flipping its record cannot keep
    restarting the roll.
    Within a roll only reports of this generation from units of an opened wave count, each for
    its own apply: a failure halts the roll, and so do a canary's counters that break the canary
    rule; when every unit still present in the opened waves has reported, the next wave opens;
    a wave that outlives the timeout halts the roll.
    """
    inputs = gen if isinstance(gen, RollInputs) else None
    gen = inputs.generation if inputs else str(gen)
    if gen != previous.generation:
        if inputs and _rate_limited(previous, inputs, now, schedule):
            who = ", ".join(inputs.changed_by[:3]) or "a peer"
            deferred = f"a change of records (of {who}) waits for the roll in progress"
            return previous.model_copy(update={"deferred": deferred[:MAX_HALT]})
        waves = plan_waves(members.values(), schedule)
        return Roll(
            generation=gen,
            waves=waves,
            opened=min(1, len(waves)),
            opened_at=now,
            started_at=now,
            config=inputs.config if inputs else "",
            members=inputs.members if inputs else "",
            left_out=inputs.absent if inputs else (),
            options=inputs.options if inputs else "",
            resumed=inputs.resumed if inputs else 0,
        )
    if inputs and inputs.options != previous.options:
        # the rolling-* options changed: they take effect now, and a halt is judged again
        lifted = {"options": inputs.options, "halted": "", "opened_at": now}
        previous = previous.model_copy(update=lifted)
    if previous.halted or previous.opened == 0:
        return previous
    return _judged(previous, gen, members, reports, now, schedule, inputs)


def _judged(
    previous: Roll,
    gen: str,
    members: Mapping[str, Member],
    reports: Mapping[str, UnitReport],
    now: float,
    schedule: Schedule,
    inputs: RollInputs | None,
) -> Roll:
    """The roll after the reports of its opened waves: halted, the next wave, or as it was."""
    opened = [u for wave in previous.waves[: previous.opened] for u in wave if u in members]
    threshold = schedule.canary_threshold
    current = {
        u: r.judged(threshold, schedule.allowed(members.get(u)))
        for u, r in reports.items()
        if r.generation == gen
    }
    failed = [u for u in opened if u in current and current[u].failed]
    if failed:
        unit = failed[0]
        reason = current[unit].error or "apply failed"
        halted = f"{unit} ({members[unit].machine}) in wave {previous.wave_of(unit)}: {reason}"
        return previous.model_copy(update={"halted": halted[:MAX_HALT]})
    absent = inputs.absent if inputs else ()
    silent = [u for u in previous.left_out if u in opened and u not in current]
    left_out = tuple(dict.fromkeys([*absent, *silent]))
    if left_out != previous.left_out:
        previous = previous.model_copy(update={"left_out": left_out})
    missing = [u for u in opened if u not in current and u not in left_out]
    if not missing:
        if previous.done:
            return previous
        return previous.model_copy(update={"opened": previous.opened + 1, "opened_at": now})
    waves = len(previous.waves)
    if now - previous.opened_at <= schedule.timeout_of(previous.opened, waves):
        return previous
    if previous.opened == 1 < waves:
        # the canary's verdict gates the cloud: a silent canary halts the roll
        late = named(missing)
        extra = schedule.timeout_of(1, waves) - schedule.timeout
        halted = f"wave 1/{waves} timed out after {schedule.timeout:.0f} s waiting for {late}"
        if extra:
            halted += f" (and {extra:.0f} s for its window and two update-status intervals)"
        return previous.model_copy(update={"halted": halted[:MAX_HALT]})
    # a unit silent past its wave's timeout is left out, named; it reports when it returns
    left_out = (*left_out, *missing)
    if previous.done:
        return previous.model_copy(update={"left_out": left_out})
    update = {"left_out": left_out, "opened": previous.opened + 1, "opened_at": now}
    return previous.model_copy(update=update)


def _rate_limited(previous: Roll, inputs: RollInputs, now: float, schedule: Schedule) -> bool:
    """Whether a new generation must wait: a change of the view or of roles alone.

    It waits until the roll in progress is done (or halted), and at least a wave timeout
    after that roll began: a unit that keeps changing its record cannot keep the cloud from
    finishing a roll. A config change, or a unit joining or leaving, starts one at once.
    """
    if not previous.generation or (previous.config, previous.members) != (
        inputs.config,
        inputs.members,
    ):
        return False
    finished = previous.done or bool(previous.halted)
    return not finished or now - previous.started_at < schedule.timeout


def may_apply(unit: str, roll: Roll, own: UnitReport, record: str = "") -> bool:
    """Whether a unit may apply now: its wave is open and it has not yet reported on this roll.

    A roll with no generation yet (no leader decision) lets a unit apply at once, as a lone
    unit with no peers does. A unit whose own record (`record`, a digest) changed since it
    reported applies again in its open wave: that change is its machine's alone.
    """
    if not roll.generation:
        return True
    if roll.halted or (own.generation == roll.generation and own.record == record):
        return False
    wave = roll.wave_of(unit)
    return wave is not None and wave <= roll.opened


def waiting_message(unit: str, roll: Roll) -> str:
    """What a unit that has a change but may not apply it says in its status."""
    if roll.halted:
        return f"rolling apply halted: {roll.halted}"
    wave = roll.wave_of(unit)
    if wave is None or wave <= roll.opened:
        return "waiting for the leader to schedule this change"
    return f"waiting for wave {wave}/{len(roll.waves)}"
