"""The roll as people read it: the application status, and the `rollout-status` action.

Pure: the leader's published roll (and, on the leader, the reports it has read) in, text and
JSON out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .rollout import Roll, UnitReport, named
from .turn import StatusKind, halted_message


def rollout_status(roll: Roll) -> tuple[StatusKind, str]:
    """The application's status: blocked while halted, else where the roll is and who it lacks."""
    if roll.halted:
        return "blocked", halted_message(roll)
    without = f"; goes on without {named(roll.left_out)}" if roll.left_out else ""
    if not roll.generation:
        return "active", "rolling apply: waiting for the first records" + without
    waves = len(roll.waves)
    where = "every wave open" if roll.done else f"wave {roll.opened}/{waves} open"
    return "active", f"rolling apply {roll.generation[:8]}: {where}" + without


def unit_state(unit: str, roll: Roll, wave: int, reports: Mapping[str, UnitReport] | None) -> str:
    """What a unit of the roll has said: its outcome, or why it has said nothing.

    `reports`: what the leader has read; None on another unit, which reads no peer's report.
    """
    report = (reports or {}).get(unit)
    if report is not None and report.generation == roll.generation:
        return report.outcome + (f": {report.error}" if report.error else "")
    if unit in roll.left_out:
        return "left out: no report in time"
    if wave > roll.opened:
        return "waiting for its wave"
    return "no report yet" if reports is not None else "(the leader reads the reports)"


def rollout_summary(roll: Roll, reports: Mapping[str, UnitReport] | None = None) -> dict[str, Any]:
    """Every wave with its units and what each reported; who the roll goes on without.

    `reports`: the leader's; None on another unit.
    """
    in_waves = {u for wave in roll.waves for u in wave}
    return {
        "generation": roll.generation,
        "halted": roll.halted,
        "deferred": roll.deferred,
        "opened": roll.opened,
        "waves": [
            {
                "wave": number,
                "open": number <= roll.opened,
                "units": {u: unit_state(u, roll, number, reports) for u in wave},
            }
            for number, wave in enumerate(roll.waves, start=1)
        ],
        "without-record": [u for u in roll.left_out if u not in in_waves],
        "left-out": [u for u in roll.left_out if u in in_waves],
    }


def rollout_text(summary: Mapping[str, Any]) -> str:
    """The summary as lines an operator reads."""
    lines = [f"rollout {summary['generation'] or '(none yet)'}"]
    if summary["halted"]:
        lines.append(f"HALTED: {summary['halted']}")
    if summary["deferred"]:
        lines.append(f"deferred: {summary['deferred']}")
    for wave in summary["waves"]:
        state = "open" if wave["open"] else "waiting"
        lines.append(f"wave {wave['wave']} ({state}):")
        lines += [f"  {unit}: {said}" for unit, said in wave["units"].items()]
    if summary["without-record"]:
        lines.append(f"no record yet: {', '.join(summary['without-record'])}")
    return "\n".join(lines)
