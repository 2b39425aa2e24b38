"""The canary's counter rule on real drops: a first deployment's canary in the namespace bed.

storage-1 of examples/microstack-maas.yaml is the canary. Each phase loads one form of its
ruleset (audit, then enforcing, as a first deployment does), sends the same traffic, and reads
the counters through the real `Host.counters()` (`nft -j list table` in storage-1's namespace):

- replication from storage-3 in rack 2 (10.60.1.33) and storage-2 in rack 1, over TCP: a
  client whose connection is cut retransmits its SYN, as every real one does;
- compute-1 from its internal address to storage-1's management address: a network storage
  nodes may not use, so drops the role table expects;
- an outsider's one-shot UDP probes at the management address, as a scanner sends them:
  background that the audit form counts as much as the enforcing form drops.

The right ruleset passes the rule. A wrong one (MAAS has rack 2's replication subnet in the
storage space, so storage-1's own replication interface drops it) halts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from network_isolation.canary import CounterSummary, Snapshot, judge, summarise
from network_isolation.config import CharmConfig
from network_isolation.host import Host
from network_isolation.host.system import Result
from network_isolation.planner import MachinePlan, plan_machine
from network_isolation.render import counter_kinds
from network_isolation.topology import load_topology

from .conftest import MAAS, render_dir
from .matrix import TCP_PORT, UDP_PORT
from .testbed import OUTSIDER, Bed, cloud_of, running_bed

CANARY = "storage-1"
MACHINES = ("storage-1", "storage-2", "storage-3", "compute-1")
CONNECTIONS = 12  # per client and phase
CUT_TIMEOUT = 3.5  # seconds a cut TCP client keeps retransmitting its SYN (at ~1 s and ~3 s)
# Notional durations of each phase: every phase sends the same traffic, so the audit form's
# rate over its phase is what the enforcing form would see without a cut.
PHASE_SECONDS = 300.0
THRESHOLD = CharmConfig().rolling_canary_threshold
RACK2_REPLICATION = ("10.60.1.0/24", "fd00:61::/64")


class BedRunner:
    """Runs the host's commands (nft) inside one machine's namespace of the bed."""

    def __init__(self, bed: Bed, machine: str):
        self.bed, self.machine = bed, machine

    def run(self, argv: Sequence[str]) -> Result:
        """Like SubprocessRunner.run, in the machine's namespace."""
        inside = ["nsenter", f"--net=/run/netns/{self.bed.ns[self.machine]}", *argv]
        answer = self.bed.sandbox.request("run", argv=inside, input=None)
        return Result(answer["rc"], answer["out"], answer["err"])


@dataclass(frozen=True)
class Ruleset:
    """One plan of the canary: its audit and enforcing forms, rendered by `plan`."""

    plan: MachinePlan
    audit: Path
    enforcing: Path


@dataclass
class Canary:
    """The bed, the canary's host, and its right and wrong rulesets."""

    bed: Bed
    host: Host
    right: Ruleset
    wrong: Ruleset


def wrong_topology(out: Path, **config: str) -> Path:
    """microstack-maas.yaml with rack 2's replication subnet in the storage (ceph-public) space."""
    data: dict[str, Any] = yaml.safe_load(MAAS.read_text())
    repl, public = data["spaces"]["ceph-repl"], data["spaces"]["ceph-public"]
    for subnet in RACK2_REPLICATION:
        repl["subnets"].remove(subnet)
        public["subnets"].append(subnet)
        public["gateway"][subnet] = repl["gateway"].pop(subnet)
    data["config"].update(config)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def ruleset(topology: Path, audit: Path, enforcing: Path) -> Ruleset:
    """The canary's plan of a topology and its two rendered forms."""
    return Ruleset(plan_machine(load_topology(topology).plan_input(CANARY)), audit, enforcing)


@pytest.fixture(scope="module")
def canary(
    prerequisites: None, renders: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Canary]:
    """The four machines' namespaces, echo servers on the canary, its host reading counters."""
    base = tmp_path_factory.mktemp("canary")
    wrong = ruleset(
        wrong_topology(base / "wrong.yaml"),
        render_dir(wrong_topology(base / "audit.yaml", enforcement="audit"), base / "audit"),
        render_dir(base / "wrong.yaml", base / "enforcing"),
    )
    right = ruleset(MAAS, renders(MAAS, enforcement="audit"), renders(MAAS))
    with running_bed(cloud_of(load_topology(MAAS)), MACHINES) as bed:
        bed.listen([CANARY], tcp=[TCP_PORT], udp=[UDP_PORT])
        host = Host(root=base / "root", runner=BedRunner(bed, CANARY), state=base / "state")
        yield Canary(bed, host, right, wrong)


def traffic(bed: Bed) -> dict[str, list[str]]:
    """One phase's traffic at the canary; what each client got, by client."""
    probes: list[dict[str, Any]] = []
    names: list[str] = []

    def send(name: str, host: str, src: str, dst: str, proto: str, timeout: float) -> None:
        for _ in range(CONNECTIONS):
            port = TCP_PORT if proto == "tcp" else UDP_PORT
            probes.append(
                {
                    "host": host,
                    "src": src,
                    "dst": dst,
                    "proto": proto,
                    "port": port,
                    "timeout": timeout,
                }
            )
            names.append(name)

    send("rack 2 replication", "storage-3", "10.60.1.33", "10.60.0.31", "tcp", CUT_TIMEOUT)
    send("rack 1 replication", "storage-2", "10.60.0.32", "10.60.0.31", "tcp", CUT_TIMEOUT)
    send("compute internal", "compute-1", "10.20.0.21", "10.10.0.31", "tcp", CUT_TIMEOUT)
    outsider = str(bed.cloud.hosts[OUTSIDER].addresses[0].ip)
    send("outsider scan", OUTSIDER, outsider, "10.10.0.31", "udp", 0.75)
    bed.forget_neighbours()
    got: dict[str, list[str]] = {}
    for name, result in zip(names, bed.probe(probes), strict=True):
        got.setdefault(name, []).append(result.got)
    return got


def phase(canary: Canary, render: Path) -> tuple[Snapshot, dict[str, list[str]]]:
    """Load one form of the canary's ruleset, send the traffic, read the real counters."""
    canary.bed.load(CANARY, (render / CANARY / "nftables.conf").read_text())
    got = traffic(canary.bed)
    return Snapshot.of(canary.host.counters(), PHASE_SECONDS), got


def first_deployment(
    canary: Canary, rules: Ruleset
) -> tuple[CounterSummary, dict[str, list[str]]]:
    """Audit, then enforce: the canary's summary and what the clients got when enforcing."""
    audit, audited = phase(canary, rules.audit)
    assert {r for results in audited.values() for r in results} == {"pass"}, audited
    enforcing, got = phase(canary, rules.enforcing)
    return summarise(counter_kinds(rules.plan), audit, enforcing), got


def counts(summary: CounterSummary) -> dict[str, tuple[int, int]]:
    """(audit, enforcing) packets per counter."""
    return {c.counter: (c.audit, c.enforcing) for c in summary.counters}


def test_the_right_ruleset_drops_a_denied_network_and_background_and_passes(canary: Canary):
    summary, got = first_deployment(canary, canary.right)
    assert set(got["rack 2 replication"]) == set(got["rack 1 replication"]) == {"pass"}
    assert set(got["compute internal"]) == set(got["outsider scan"]) == {"drop"}
    seen = counts(summary)
    print(f"right ruleset, (audit, enforcing) packets: {seen}")
    # the denied network's drops: every SYN and its retransmissions, more than audit saw
    assert seen["drop_in_internal"][1] > seen["drop_in_internal"][0] >= CONNECTIONS
    # background on the management network, an allowed one: as much in both forms
    assert seen["drop_in_management"] == (CONNECTIONS, CONNECTIONS)
    assert seen["drop_in_storage_cluster"] == (0, 0)
    verdict = judge(summary, THRESHOLD)
    assert verdict.passed, verdict.halted


def test_a_subnet_in_the_wrong_space_cuts_replication_and_halts(canary: Canary):
    summary, got = first_deployment(canary, canary.wrong)
    assert set(got["rack 2 replication"]) == {"drop"}
    assert set(got["rack 1 replication"]) == {"pass"}
    print(f"wrong ruleset, (audit, enforcing) packets: {counts(summary)}")
    audit, dropped = counts(summary)["drop_in_storage_cluster"]
    assert audit == CONNECTIONS  # the audit form saw one SYN per connection
    assert dropped - audit > THRESHOLD  # the enforcing form dropped each one's retries too
    verdict = judge(summary, THRESHOLD)
    assert not verdict.passed
    print(verdict.halted)
    assert verdict.halted.startswith(f"{dropped} packets dropped on storage-cluster,")
    assert "(drop_in_storage_cluster)" in verdict.halted
