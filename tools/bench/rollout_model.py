"""A light model of a rollout across N machines: rounds, hooks and modelled time to converge.

Running the real charm under ops.testing for a thousand units takes hours, so the rollout at
100 and 1,000 machines is modelled: the leader's decisions are the charm's own pure code
(`plan_waves`, `step`, `may_apply`), the Juju side is the delivery the stand-in of the unit
tests uses (a unit-databag write wakes every other unit, an application-databag write every
non-leader, a pending change of the same remote unit is not queued twice), and each unit runs
its hooks one at a time, in order. The hook-tool calls per hook are measured on the real charm
(see `tools/bench`), then priced by the cost model.

The one-at-a-time design it replaced is modelled the same way: every unit announces what it
wants, the leader re-reads every peer's databag on every peer event (N + 1 relation-get) and
hands out one turn at a time.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from network_isolation.rollout import Member, Roll, Schedule, UnitReport, may_apply, step

Design = Literal["waves", "turns"]
APP = "network-isolation"


@dataclass(frozen=True)
class CostModel:
    """What a hook costs under Juju: per hook-tool call, per event delivery, per apply."""

    call_seconds: float = 0.020
    latency_seconds: float = 1.0
    apply_seconds: float = 2.0


@dataclass(frozen=True)
class Calls:
    """Hook-tool calls per hook, as measured on the real charm."""

    leader_peer: int  # the leader, woken by one peer's report
    follower: int  # a non-leader, a hook that reads everything
    leader_base: int  # the leader's calls besides reading peers (the one-at-a-time design)
    follower_quiet: int = 0  # a non-leader woken by a report when nothing it reads changed
    leader_quiet: int = 0  # the leader woken by a report that moves no wave


@dataclass
class _Unit:
    index: int
    queue: deque[tuple[str, int | None]] = field(default_factory=deque)
    queued: set[tuple[str, int | None]] = field(default_factory=set)
    busy_until: float = 0.0
    report: UnitReport = field(default_factory=UnitReport)
    settled: bool = False  # its last full hook changed nothing: a peer's report cannot either
    wants: bool = False  # the one-at-a-time design: announced a pending change
    done: bool = False  # the one-at-a-time design: applied

    @property
    def name(self) -> str:
        return f"{APP}/{self.index}"


@dataclass
class Outcome:
    """What one modelled rollout took."""

    machines: int
    design: Design
    rounds: int
    hooks: int
    leader_calls_per_hook: float
    leader_calls_max: int
    seconds: float
    waves: int
    woken_calls: float = 0.0  # mean hook-tool calls of a non-leader woken by a peer's report


def sunbeam_members(machines: int) -> dict[str, Member]:
    """A Sunbeam cloud: 3 control and 3 storage nodes (fewer when tiny), the rest compute."""
    quorum = min(3, max(1, machines // 4))
    roles = ["control"] * quorum + ["storage"] * quorum
    roles += ["compute"] * (machines - len(roles))
    return {
        f"{APP}/{i}": Member(f"{APP}/{i}", f"machine-{i}", frozenset({role}))
        for i, role in enumerate(roles)
    }


class RolloutModel:
    """One rollout of a change that alters every machine's ruleset, from `juju config` on.

    `timed`: each hook takes its hook-tool calls (and an apply) at the cost model's prices and
    each delivery the latency; otherwise every hook is instant and every delivery takes one
    round, so the finish time is the number of rounds.
    """

    def __init__(
        self,
        machines: int,
        design: Design,
        calls: Calls,
        cost: CostModel,
        schedule: Schedule,
        timed: bool,
    ):
        self.members = sunbeam_members(machines)
        self.units = [_Unit(i) for i in range(machines)]
        self.design: Design = design
        self.calls, self.cost = calls, cost
        self.schedule, self.timed = schedule, timed
        self.roll = Roll(generation="0" * 16)  # the previous rollout, long finished
        self.turn: int | None = None
        self.round = 0.0
        self.seen_roll, self.seen_turn = self.roll, self.turn
        self.events: list[tuple[float, int, int]] = []
        self.seq = itertools.count()
        self.hooks = 0
        self.leader_calls: list[int] = []
        self.woken_calls: list[int] = []
        self.finish = 0.0

    def _send(self, to: _Unit, kind: str, remote: int | None, now: float) -> None:
        if (kind, remote) in to.queued:
            return  # Juju runs one hook for the latest data
        to.queue.append((kind, remote))
        to.queued.add((kind, remote))
        delay = self.cost.latency_seconds if self.timed else 1.0
        heapq.heappush(self.events, (now + delay, next(self.seq), to.index))

    def _broadcast(self, kind: str, source: int, now: float, leader_too: bool = True) -> None:
        for unit in self.units:
            if unit.index != source and (leader_too or unit.index != 0):
                self._send(unit, kind, source, now)

    def run(self) -> Outcome:
        """Deliver `config-changed` to every unit and run hooks until none is pending."""
        for unit in self.units:
            self._send(unit, "config", None, 0.0)
        while self.events:
            when, _, index = heapq.heappop(self.events)
            unit = self.units[index]
            if not unit.queue:
                continue
            start = max(when, unit.busy_until) if self.timed else when
            if not self.timed and when > self.round:
                # a round: every hook in it sees what the leader had published when it began
                self.round, self.seen_roll, self.seen_turn = when, self.roll, self.turn
            kind, remote = unit.queue.popleft()
            unit.queued.discard((kind, remote))
            calls, applied = self._hook(unit, kind, remote, start)
            self.hooks += 1
            cost = calls * self.cost.call_seconds + (self.cost.apply_seconds if applied else 0)
            unit.busy_until = start + (cost if self.timed else 0.0)
            self.finish = max(self.finish, unit.busy_until)
        per_hook = self.leader_calls or [0]
        return Outcome(
            machines=len(self.units),
            design=self.design,
            rounds=round(self.finish) if not self.timed else 0,
            hooks=self.hooks,
            leader_calls_per_hook=sum(per_hook) / len(per_hook),
            leader_calls_max=max(per_hook),
            seconds=self.finish,
            waves=len(self.roll.waves),
            woken_calls=sum(self.woken_calls) / max(1, len(self.woken_calls)),
        )

    def _hook(self, unit: _Unit, kind: str, remote: int | None, now: float) -> tuple[int, bool]:
        """One hook; the hook-tool calls it makes and whether it applied."""
        if self.design == "turns":
            return self._turns_hook(unit, kind, now)
        leader = unit.index == 0
        moved = False
        if leader:
            moved = self._lead(now)
        roll = self.roll if leader or self.timed else self.seen_roll
        applied = may_apply(unit.name, roll, unit.report)
        if applied:  # applies, then reports once: its one unit-databag write of the rollout
            unit.report = UnitReport(generation=roll.generation)
            self._broadcast("report", unit.index, now)
            if leader:
                self._lead(now)
        # a hook woken by a report returns early when the unit's last hook changed nothing and
        # (on the leader) the report moves no wave; any other hook reads everything
        quiet = kind == "report" and unit.settled and not applied and not moved
        if leader:
            calls = (
                self.calls.leader_quiet
                if quiet and self.calls.leader_quiet
                else (self.calls.leader_peer)
            )
        else:
            calls = (
                self.calls.follower_quiet
                if quiet and self.calls.follower_quiet
                else (self.calls.follower)
            )
            if kind == "report":
                self.woken_calls.append(calls)
        unit.settled = not applied and not moved and (quiet or kind != "app")
        if leader and kind == "report":
            self.leader_calls.append(calls)
        return calls, applied

    def _lead(self, now: float) -> bool:
        """The leader steps the roll; whether it moved (and was published)."""
        reports = {u.name: u.report for u in self.units if u.report.generation}
        decided = step(self.roll, "1" * 16, self.members, reports, 0.0, self.schedule)
        if decided == self.roll:
            return False
        self.roll = decided
        self._broadcast("app", 0, now, leader_too=False)
        return True

    def _turns_hook(self, unit: _Unit, kind: str, now: float) -> tuple[int, bool]:
        """The one-at-a-time design: announce, re-read every peer, one turn at a time."""
        leader = unit.index == 0
        if kind == "config" and not unit.wants:
            unit.wants = True
            self._broadcast("wants", unit.index, now)
        applied = False
        if leader:
            self._pass_turn(now)
        turn = self.turn if leader or self.timed else self.seen_turn
        if turn == unit.index and not unit.done:
            applied = unit.done = True
            self._broadcast("applied", unit.index, now)
            if leader:
                self._pass_turn(now)
        calls = self.calls.leader_base + len(self.units) if leader else self.calls.follower
        if leader and kind in ("wants", "applied"):
            self.leader_calls.append(calls)
        return calls, applied

    def _pass_turn(self, now: float) -> None:
        pending = [u.index for u in self.units if u.wants and not u.done]
        turn = self.turn if self.turn in pending else (pending[0] if pending else None)
        if turn != self.turn:
            self.turn = turn
            self._broadcast("turn", 0, now, leader_too=False)
