"""The rolling apply's cost: rounds, hooks and hook-tool calls, measured and modelled.

Measured: the real charm for a few machines under the Juju stand-in of the unit tests
(tests/unit/juju_sim.py: ops.testing per unit, a fake host per machine, peer events delivered
as Juju delivers them), a `client-cidrs` change from `juju config` to the last report.
Modelled (`rollout_model`): the same protocol at 10, 100 and 1,000 machines with the measured
hook-tool calls, next to the one-at-a-time design it replaced, and a time to converge under a
stated cost model. Also measured: rendering the largest cloud view the peer checks allow.
"""

from __future__ import annotations

import importlib
import ipaddress
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from network_isolation.base import IPNetwork
from network_isolation.config import CharmConfig
from network_isolation.model import NETWORKS, Network
from network_isolation.peers import MAX_SUBNETS_PER_NETWORK
from network_isolation.planner import InterfaceAddress, NetworkView, PlanInput, plan_machine
from network_isolation.render import render
from network_isolation.rollout import Schedule

from .hooks import HookToolCounter
from .rollout_model import Calls, CostModel, Design, Outcome, RolloutModel

CHANGE = {"client_cidrs": "10.99.0.0/24"}
DESIGNS: tuple[Design, ...] = ("waves", "turns")


@dataclass(frozen=True)
class CharmRollout:
    """A rollout of the real charm under the Juju stand-in."""

    machines: int
    rounds: int
    hooks: int
    waves: int
    leader_peer_calls: int  # the most hook-tool calls of a leader hook woken by a peer
    follower_calls: float  # mean hook-tool calls of a non-leader hook
    woken_calls: tuple[float, int]  # a non-leader woken by a peer's report: mean, max
    quiet_calls: int  # the fewest: such a hook that returned early (nothing it reads changed)
    leader_quiet_calls: int  # the fewest of a leader woken by a peer: a report that moves nothing
    seconds: float


def charm_rollout(machines: int) -> CharmRollout:
    """Deploy `machines` units, settle, change `client-cidrs` and run to the last report."""
    counter = HookToolCounter()
    stand_in = importlib.import_module("juju_sim")  # tests/unit: the unit tests' Juju stand-in
    with tempfile.TemporaryDirectory() as tmp:
        cloud = stand_in.Cloud(machines, Path(tmp), random.Random(0))
        cloud.deploy(limit=400)
        hooks = cloud.hooks
        start = time.perf_counter()
        cloud.set_config(**CHANGE)
        with counter.installed():
            rounds = cloud.settle(limit=400, counter=counter)
        leader = [c for lead, kind, c in cloud.calls if lead and kind == "changed"]
        follower = [c for lead, _, c in cloud.calls if not lead]
        woken = [c for lead, kind, c in cloud.calls if not lead and kind == "changed"]
        return CharmRollout(
            machines=machines,
            rounds=rounds,
            hooks=cloud.hooks - hooks,
            waves=len(cloud.roll().waves),
            leader_peer_calls=max(leader),
            follower_calls=sum(follower) / len(follower),
            woken_calls=(sum(woken) / len(woken), max(woken)),
            quiet_calls=min(woken),
            leader_quiet_calls=min(leader),
            seconds=time.perf_counter() - start,
        )


def modelled(
    measured: CharmRollout, sizes: tuple[int, ...], cost: CostModel
) -> list[tuple[Outcome, Outcome, Outcome, Outcome]]:
    """Per size: waves in rounds, waves timed, one-at-a-time in rounds, one-at-a-time timed.

    The one-at-a-time leader made the calls of a leader hook less its one peer read, plus one
    relation-get per peer.
    """
    calls = Calls(
        leader_peer=measured.leader_peer_calls,
        follower=max(c for c in (measured.woken_calls[1], round(measured.follower_calls))),
        leader_base=measured.leader_peer_calls - 1,
        follower_quiet=measured.quiet_calls,
        leader_quiet=measured.leader_quiet_calls,
    )
    rows = []
    for n in sizes:
        runs = [
            RolloutModel(n, design, calls, cost, Schedule(), timed=timed).run()
            for design in DESIGNS
            for timed in (False, True)
        ]
        rows.append((runs[0], runs[1], runs[2], runs[3]))
    return rows


def worst_view_render_seconds() -> float:
    """Render a compute machine's table with the largest view the checks let through.

    Every network holds the most subnets a view may (512 /32s each, all inside client-cidrs):
    the flood that took minutes when subtraction was quadratic.
    """

    def flood(k: int) -> tuple[IPNetwork, ...]:
        first = k * MAX_SUBNETS_PER_NETWORK
        hosts = range(first, first + MAX_SUBNETS_PER_NETWORK)
        return tuple(ipaddress.ip_network(f"10.99.{i // 256}.{i % 256}/32") for i in hosts)

    networks = {
        net: NetworkView(
            interfaces=(
                InterfaceAddress(
                    name=f"enp{k + 1}s0",
                    address=ipaddress.ip_interface(f"10.{10 * (k + 1)}.0.5/24"),
                ),
            ),
            learnt=flood(k),
        )
        for k, net in enumerate(NETWORKS)
    }
    config = CharmConfig.from_options({"client-cidrs": "10.99.0.0/16"})
    start = time.process_time()  # this process's CPU: other load on the machine does not count
    plan = plan_machine(
        PlanInput(machine="m", roles=frozenset({"compute"}), networks=networks, config=config)
    )
    render(plan)
    assert plan.domain_of(Network.DATA).subnets  # the plan was made, nothing blocked
    return time.process_time() - start


def report(
    measured: CharmRollout,
    rows: list[tuple[Outcome, Outcome, Outcome, Outcome]],
    cost: CostModel,
    render_seconds: float,
) -> list[str]:
    """The rollout tables and targets, as Markdown lines."""
    lines = [
        "## Rolling apply",
        "",
        f"Real charm, {measured.machines} machines under the Juju stand-in: a `client-cidrs`"
        f" change took {measured.rounds} rounds, {measured.hooks} hooks"
        f" ({measured.hooks / measured.machines**2:.2f} N²), {measured.waves} waves; a leader"
        f" hook woken by a peer made at most {measured.leader_peer_calls} hook-tool calls"
        f" ({measured.leader_quiet_calls} for a report that moves no wave),"
        f" a non-leader hook {measured.follower_calls:.1f} on average; a non-leader woken by"
        f" a peer's report {measured.woken_calls[0]:.1f} on average, {measured.woken_calls[1]}"
        f" at most, {measured.quiet_calls} when nothing it reads changed"
        f" ({measured.seconds:.1f} s of ops.testing).",
        "",
        f"Cost model: {cost.call_seconds * 1000:.0f} ms per hook-tool call,"
        f" {cost.latency_seconds:.0f} s from a write to the hook it wakes,"
        f" {cost.apply_seconds:.0f} s per apply; each unit runs its hooks one at a time; a"
        " non-leader woken by a peer's report after a hook that changed nothing returns early.",
        "",
        "| machines | design | rounds | hooks | hooks / N² | leader calls per peer hook"
        " (most / mean) | non-leader calls per peer hook (mean) | waves"
        " | modelled time to converge |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for waves, waves_timed, turns, turns_timed in rows:
        for name, counted, timed in (
            ("waves", waves, waves_timed),
            ("one at a time", turns, turns_timed),
        ):
            n = counted.machines
            lines.append(
                f"| {n:,} | {name} | {counted.rounds:,} | {counted.hooks:,}"
                f" | {counted.hooks / n**2:.2f} | {counted.leader_calls_max:,}"
                f" / {counted.leader_calls_per_hook:.1f}"
                f" | {f'{counted.woken_calls:.1f}' if counted.design == 'waves' else '-'}"
                f" | {counted.waves or '-'} | {_duration(timed.seconds)} |"
            )
    largest = rows[-1]
    by_size = {r[0].machines: r for r in rows}
    lines += [
        "",
        "Rendering the largest view the checks allow"
        f" (6 networks × {MAX_SUBNETS_PER_NETWORK:,} /32s): {render_seconds * 1000:.0f} ms CPU.",
        "",
        "Targets:",
        _target(
            len({r[0].leader_calls_max for r in rows}) == 1,
            "leader hook-tool calls per peer event constant in N",
        ),
        _target(
            32 not in by_size or by_size[32][0].rounds < 25,
            "under 25 rounds at 32 machines",
        ),
        _target(
            all(r[0].hooks < 1.5 * r[0].machines ** 2 for r in rows if r[0].machines >= 32),
            "under 1.5 N² hooks (at 32 machines and more)",
        ),
        _target(largest[1].seconds < 5 * 60, f"{largest[1].machines:,} machines in 5 minutes"),
        _target(
            largest[0].woken_calls <= 8,
            f"a non-leader woken by a report: at most 8 hook-tool calls on average"
            f" at {largest[0].machines:,} machines",
        ),
        _target(render_seconds < 1.0, "largest allowed view renders in under a second"),
    ]
    return lines


def _target(met: bool, what: str) -> str:
    return f"- {'PASS' if met else 'MISS'}: {what}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def main(sizes: tuple[int, ...] = (10, 32, 100, 1000), machines: int = 10) -> list[str]:
    """Measure, model and report the rolling apply."""
    cost = CostModel()
    measured = charm_rollout(machines)
    return report(measured, modelled(measured, sizes, cost), cost, worst_view_render_seconds())
