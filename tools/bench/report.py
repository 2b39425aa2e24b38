"""The report: Markdown tables, the targets met or missed, and the raw JSON."""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .hooks import RoleResult
from .packets import PathResult

# The performance targets.
RECONCILE_TARGET_PEERS = 1000
RECONCILE_TARGET_SECONDS = 1.0
THROUGHPUT_TARGET = 0.95
CONNECTION_RATE_TARGET = 0.95


@dataclass
class PeerResult:
    """Everything measured at one N."""

    peers: int
    leader: RoleResult
    follower: RoleResult
    rules: int
    elements: int
    subnets_per_network: int
    nft_load: float | None = None
    nft_update: float | None = None


@dataclass
class Results:
    """A whole benchmark run."""

    rows: list[PeerResult] = field(default_factory=list)
    paths: list[PathResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def main_table(rows: Sequence[PeerResult]) -> list[str]:
    """The per-N table, in Markdown."""
    lines = [
        "| peers | subnets per network | rules | set elements"
        " | hook ms, leader (no-op / changed) | hook ms, non-leader (no-op / changed)"
        " | hook-tool calls, leader (no-op / changed)"
        " | hook-tool calls, non-leader (no-op / changed)"
        " | writes on no-op (leader / non-leader) | nft -f ms (load / update) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lead, follow = r.leader, r.follower
        lines.append(
            f"| {r.peers:,} | {r.subnets_per_network} | {r.rules} | {r.elements}"
            f" | {_ms(lead.noop.seconds)} / {_ms(lead.changed.seconds)}"
            f" | {_ms(follow.noop.seconds)} / {_ms(follow.changed.seconds)}"
            f" | {lead.noop.last.calls.total()} / {lead.changed.last.calls.total()}"
            f" | {follow.noop.last.calls.total()} / {follow.changed.last.calls.total()}"
            f" | {lead.noop.last.writes} / {follow.noop.last.writes}"
            f" | {_ms(r.nft_load)} / {_ms(r.nft_update)} |"
        )
    return lines


def _baseline(paths: Sequence[PathResult], kind: str) -> PathResult | None:
    return next((p for p in paths if p.kind == kind), None)


def spread(values: Sequence[float]) -> str:
    """Half the range of the rounds, relative to their median: how much they agree."""
    if len(values) < 2 or not statistics.median(values):
        return ""
    return f" ±{(max(values) - min(values)) / 2 / statistics.median(values):.0%}"


def _ratio(value: float, base: PathResult | None, attr: str) -> str:
    reference = getattr(base, attr) if base else 0.0
    return f"{value / reference:.2f}" if reference else "-"


def _baselines(paths: Sequence[PathResult], p: PathResult) -> tuple[PathResult | None, ...]:
    """What a row's rate and throughput are compared with.

    On the host path: conntrack only and no ruleset; on the forwarded path: conntrack only +
    DNAT for both.
    """
    if p.kind.endswith("-fwd"):
        forwarded = _baseline(paths, "conntrack-fwd")
        return forwarded, forwarded
    return _baseline(paths, "conntrack"), _baseline(paths, "none")


def path_table(paths: Sequence[PathResult]) -> list[str]:
    """The packet-path table, in Markdown."""
    lines = [
        "| ruleset | peers | rules | new connections/s | vs conntrack only"
        " | throughput Gbit/s | vs no ruleset |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in paths:
        peers = f"{p.peers:,}" if p.peers else "-"
        conntrack, bare = _baselines(paths, p)
        lines.append(
            f"| {p.label} | {peers} | {p.rules} | {p.rate:,.0f}{spread(p.rates)}"
            f" | {_ratio(p.rate, conntrack, 'rate')}"
            f" | {p.throughput / 1e9:.2f}{spread(p.throughputs)}"
            f" | {_ratio(p.throughput, bare, 'throughput')} |"
        )
    if any(p.kind.endswith("-fwd") for p in paths):
        lines += [
            "",
            "Rows `+ DNAT` (the forwarded path): both ratios against conntrack only + DNAT.",
        ]
    return lines


def _constant(values: dict[int, int]) -> bool:
    return len(set(values.values())) == 1


def _fmt_by_n(values: dict[int, int]) -> str:
    return ", ".join(f"{n:,}: {v}" for n, v in values.items())


def targets(results: Results) -> list[tuple[bool, str]]:
    """Each target of the issue: met or not, with what was measured."""
    rows, found = results.rows, []
    rules = {r.peers: r.rules for r in rows}
    found.append((_constant(rules), f"rule count constant in N ({_fmt_by_n(rules)})"))
    for kind in ("noop", "changed"):
        calls = {r.peers: getattr(r.follower, kind).last.calls.total() for r in rows}
        found.append(
            (
                _constant(calls),
                f"non-leader hook-tool calls constant in N, {kind} hook ({_fmt_by_n(calls)})",
            )
        )
    at = next((r for r in rows if r.peers == RECONCILE_TARGET_PEERS), None)
    if at is not None:
        hooks = (at.leader.noop, at.leader.changed, at.follower.noop, at.follower.changed)
        worst = max(h.seconds for h in hooks)
        found.append(
            (
                worst < RECONCILE_TARGET_SECONDS,
                f"reconcile under 1 s at {RECONCILE_TARGET_PEERS:,} peers on"
                f" {len(os.sched_getaffinity(0))} cores (slowest median: {_ms(worst)} ms)",
            )
        )
    writes = {r.peers: r.leader.noop.last.writes + r.follower.noop.last.writes for r in rows}
    found.append(
        (
            not any(writes.values()),
            f"unchanged-input hook does zero writes (leader + non-leader: {_fmt_by_n(writes)})",
        )
    )
    found += _path_targets(results.paths)
    return found


def _path_targets(paths: Sequence[PathResult]) -> list[tuple[bool, str]]:
    conntrack, bare = _baseline(paths, "conntrack"), _baseline(paths, "none")
    found = []
    forwarded, base = _baseline(paths, "ours-fwd"), _baseline(paths, "conntrack-fwd")
    if forwarded and base:
        rate = forwarded.rate / base.rate if base.rate else 0.0
        found.append(
            (
                rate >= CONNECTION_RATE_TARGET,
                f"new connections to a DNATed VIP (forwarded) >= {CONNECTION_RATE_TARGET} of"
                f" conntrack only + DNAT at {forwarded.peers:,} peers ({rate:.2f})",
            )
        )
    for p in paths:
        if p.kind != "ours" or not conntrack or not bare:
            continue
        throughput = p.throughput / bare.throughput if bare.throughput else 0.0
        found.append(
            (
                throughput >= THROUGHPUT_TARGET,
                f"established-flow throughput within 5% of no ruleset at {p.peers:,} peers"
                f" ({throughput:.3f})",
            )
        )
        rate = p.rate / conntrack.rate if conntrack.rate else 0.0
        found.append(
            (
                rate >= CONNECTION_RATE_TARGET,
                f"new-connection rate >= {CONNECTION_RATE_TARGET} of conntrack only at"
                f" {p.peers:,} peers ({rate:.2f})",
            )
        )
    return found


def breakdown(rows: Sequence[PeerResult]) -> list[str]:
    """Hook-tool calls per tool at the largest N, to show which calls grow."""
    if not rows:
        return []
    largest, smallest = rows[-1], rows[0]
    lines = []
    for name, role_of_row in (("leader", "leader"), ("non-leader", "follower")):
        for kind in ("noop", "changed"):
            small = getattr(getattr(smallest, role_of_row), kind).last.calls
            large = getattr(getattr(largest, role_of_row), kind).last.calls
            tools = sorted(set(small) | set(large))
            detail = ", ".join(
                f"{t} {small[t]}" + (f"->{large[t]}" if small[t] != large[t] else "")
                for t in tools
            )
            lines.append(
                f"- {name}, {kind} hook ({smallest.peers:,}->{largest.peers:,}): {detail}"
            )
    priming = ", ".join(
        f"{r.peers:,}: {r.leader.priming_hooks}/{r.follower.priming_hooks}" for r in rows
    )
    lines.append(f"- hooks that still wrote before the first no-op (leader/non-leader): {priming}")
    return lines


def report(results: Results, settings: dict[str, str]) -> list[str]:
    """The whole printed report."""
    lines = ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "## Reconcile, rules and nft", "", *main_table(results.rows), ""]
    lines += ["Hook-tool calls per tool:", "", *breakdown(results.rows), ""]
    if results.paths:
        lines += ["## Packet path", "", *path_table(results.paths), ""]
    lines += ["## Targets", ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {text}" for ok, text in targets(results)]
    for failure in results.failures:
        lines.append(f"- NOT RUN: {failure}")
    lines += ["", f"Run time: {results.seconds:.0f} s"]
    return lines


def raw_results(results: Results) -> dict[str, Any]:
    """The measurements as JSON-ready data (--json)."""

    def role(r: RoleResult) -> dict[str, Any]:
        return {
            "priming_hooks": r.priming_hooks,
            "noop_seconds": r.noop.seconds,
            "changed_seconds": r.changed.seconds,
            "noop_calls": dict(r.noop.last.calls),
            "changed_calls": dict(r.changed.last.calls),
            "noop_writes": r.noop.last.writes,
        }

    return {
        "rows": [
            {
                "peers": r.peers,
                "rules": r.rules,
                "elements": r.elements,
                "nft_load": r.nft_load,
                "nft_update": r.nft_update,
                "leader": role(r.leader),
                "non_leader": role(r.follower),
            }
            for r in results.rows
        ],
        "paths": [dataclasses.asdict(p) for p in results.paths],
        "failures": results.failures,
        "seconds": results.seconds,
    }
