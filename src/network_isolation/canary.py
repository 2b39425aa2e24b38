"""The canary's counters: did its first minutes of enforcing drop what the role table allows?

A ruleset can pass every check of its own host (validation, probes of the controllers, the
gateways and a few neighbours) and still cut traffic the cloud needs: a rack's subnet that MAAS
put in the wrong space, a space bound to the wrong network. Before a first deployment's next
wave opens, the canary's drop counters say whether that happened. Each counter of our table is
named after the networks it drops, so the machine's plan tells which drops the role table
expects and which it does not (`render.counter_kinds`):

- expected: a network this machine may not use (`drop_in_<n>`, `drop_out_<n>`, `drop_fwd_<n>`:
  from, to, through or on a denied network) and conntrack-invalid packets (`drop_in_invalid`);
- unexpected: `drop_in_<n>` and `drop_fwd_<n>` of the interfaces of networks this machine may
  use. A packet counted there came in on the machine's own interface of an allowed network (for
  the machine or forwarded to a pod behind a VIP), from a source its ruleset does not accept: a
  subnet of that network the plan does not know, another allowed network's subnet, or a host
  in no subnet of the cloud. So are `drop_in_misdirected` and `drop_fwd_misdirected`: a packet
  addressed to one network's subnets that came in on another network's interface.

The audit form counts what the enforcing form would drop, so its counts before the switch are
the machine's background (port scans, a stray host). The rule: over the first W seconds of
enforcing, an unexpected counter may exceed the audit form's rate over W by `threshold`
packets at most, else the roll halts. A short audit is never extrapolated upwards: its baseline
is `audit packets × W / max(audit seconds, W)`.

Pure code: the canary summarises, the leader judges; nothing here reads the host or Juju (and
nothing here depends on the planner, so a unit's report can carry a summary).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

from pydantic import Field

from .base import Received
from .model import NETWORKS, Network, label_of

# Bounds of a summary published in relation data (untrusted). A table has two counters per
# group of allowed interfaces (in, forwarded), three per denied domain (in, out, forwarded),
# two for misdirected packets (in, forwarded) and one for invalid packets: with six networks,
# management always allowed, 20 at most.
MAX_COUNTERS = 24
COUNTER_NAME = r"^drop_(in|out|fwd)_[a-z_]{1,80}$"
MAX_PACKETS = 2**63 - 1
INVALID_COUNTER = "drop_in_invalid"
_COUNTER = re.compile(r"^drop_(in|out|fwd)_([a-z_]+)$")
# Every label a counter can carry: the networks it drops, joined as the ruleset names them.
_LABELS: dict[str, frozenset[Network]] = {
    label_of(group): frozenset(group)
    for size in range(1, len(NETWORKS) + 1)
    for group in combinations(NETWORKS, size)
}


class CounterCount(Received):
    """One drop counter of the canary's table, before and after it started enforcing."""

    counter: str = Field(pattern=COUNTER_NAME)
    networks: str = Field(default="", max_length=80)  # `internal+public`; "" for invalid
    expected: bool  # the role table expects drops here: denied networks, invalid packets
    audit: int = Field(default=0, ge=0, le=MAX_PACKETS)  # counted by the audit form
    enforcing: int = Field(default=0, ge=0, le=MAX_PACKETS)  # dropped in the window


class CounterSummary(Received):
    """What the canary publishes: its counters over its audit time and its first window.

    Its `expected` flags are the canary's word only: the leader sets them again from the
    roles it knows (`as_judged_for`) before it judges.
    """

    audit_seconds: float = Field(ge=0, le=10**9)
    window_seconds: float = Field(gt=0, le=10**9)
    counters: tuple[CounterCount, ...] = Field(default=(), max_length=MAX_COUNTERS)

    def as_judged_for(self, allowed: frozenset[Network]) -> CounterSummary:
        """The summary with each counter's `expected` set from the networks a machine may use.

        A counter is expected to drop when it counts invalid packets or only networks outside
        `allowed`; a name the ruleset cannot have is not.
        """
        counters = tuple(
            c.model_copy(update={"expected": expected_drops(c.counter, allowed)})
            for c in self.counters
        )
        return self.model_copy(update={"counters": counters})

    def baseline(self, count: CounterCount) -> float:
        """The packets the audit form's rate predicts over the window (never extrapolated)."""
        return count.audit * self.window_seconds / max(self.audit_seconds, self.window_seconds)

    def excess(self, count: CounterCount) -> float:
        """Packets dropped in the window beyond the audit form's baseline."""
        return count.enforcing - self.baseline(count)


@dataclass(frozen=True)
class Snapshot:
    """Packets per named counter of one form of our table, read `seconds` after it loaded."""

    packets: Mapping[str, int]
    seconds: float

    @classmethod
    def of(cls, counters: Mapping[str, Mapping[str, int]], seconds: float) -> Snapshot:
        """From `Host.counters()` (packets and bytes per counter)."""
        return cls({name: int(c.get("packets", 0)) for name, c in counters.items()}, seconds)


@dataclass(frozen=True)
class CounterKind:
    """What a counter's drops mean on this machine."""

    networks: str
    expected: bool


@dataclass(frozen=True)
class Verdict:
    """The leader's judgement of a canary: `halted` says why the roll stops ("" passes)."""

    halted: str = ""

    @property
    def passed(self) -> bool:
        """The canary's counters allow the next wave."""
        return not self.halted


def expected_drops(counter: str, allowed: frozenset[Network]) -> bool:
    """Whether the role table expects drops on a counter of a machine that may use `allowed`."""
    if counter == INVALID_COUNTER:
        return True
    match = _COUNTER.match(counter)
    networks = _LABELS.get(match.group(2)) if match else None
    return networks is not None and not networks & allowed


def summarise(
    kinds: Mapping[str, CounterKind], audit: Snapshot, enforcing: Snapshot
) -> CounterSummary:
    """The canary's summary: each counter of its enforcing ruleset, before and after.

    `kinds`: the counters of the canary's plan (`render.counter_kinds`); `audit`: the audit
    form's counters read just before the enforcing form replaced it; `enforcing`: the enforcing
    form's, read at least a window after it loaded. Other counters are left out.
    """
    counts = tuple(
        CounterCount(
            counter=name,
            networks=kind.networks,
            expected=kind.expected,
            audit=max(0, audit.packets.get(name, 0)),
            enforcing=max(0, enforcing.packets.get(name, 0)),
        )
        for name, kind in sorted(kinds.items())
    )
    return CounterSummary(
        audit_seconds=max(0.0, audit.seconds),
        window_seconds=max(enforcing.seconds, 1.0),
        counters=counts,
    )


def judge(summary: CounterSummary, threshold: int) -> Verdict:
    """Halt when an allowed network's counter grew beyond the audit baseline by `threshold`.

    The message (at most 200 characters, for a unit's report) names the counter, its networks
    and the figures, the worst counter first.
    """
    over = sorted(
        (c for c in summary.counters if not c.expected and summary.excess(c) > threshold),
        key=lambda c: (-summary.excess(c), c.counter),
    )
    if not over:
        return Verdict()
    worst = over[0]
    more = f" (+{len(over) - 1} more)" if len(over) > 1 else ""
    message = (
        f"{worst.enforcing} packets dropped on {worst.networks}, which it may use"
        f" ({worst.counter}), in {summary.window_seconds:.0f} s of enforcing; audit counted"
        f" {worst.audit} in {summary.audit_seconds:.0f} s; threshold {threshold}{more}"
    )
    return Verdict(message[:200])
