"""The canary's counter rule: which drops the role table expects, and when the roll halts."""

from __future__ import annotations

import pydantic
import pytest
from goldens import golden_plans
from hypothesis import given, settings
from hypothesis import strategies as st
from topologies import plan_of

from network_isolation.canary import (
    MAX_COUNTERS,
    CounterCount,
    CounterSummary,
    Snapshot,
    judge,
    summarise,
)
from network_isolation.model import Network
from network_isolation.render import counter_kinds, firewall_view
from network_isolation.rollout import Member, Roll, Schedule, UnitReport, step
from network_isolation.topology import Topology

ACTIVE = sorted(k for k, (_, _, plan) in golden_plans().items() if plan.status == "active")
ENFORCING = [k for k in ACTIVE if golden_plans()[k][2].config.enforcement != "off"]


def networks_of(counter: str) -> set[str]:
    """The networks a counter name spells (`drop_in_internal_public` -> {internal, public})."""
    words = counter.split("_")[2:]
    found: set[str] = set()
    while words:
        if words[:2] == ["storage", "cluster"]:
            found.add("storage-cluster")
            words = words[2:]
        else:
            found.add(Network(words.pop(0)).value)
    return found


@pytest.mark.parametrize("case", ENFORCING)
def test_every_counter_of_the_ruleset_is_classified_by_the_role_table(case: str):
    """Expected drops are exactly the denied networks' counters (and invalid packets)."""
    _, _, plan = golden_plans()[case]
    kinds = counter_kinds(plan)
    rendered = firewall_view(plan).counters
    assert rendered and set(rendered) <= set(kinds)
    for counter in rendered:
        if counter == "drop_in_invalid":
            assert kinds[counter].expected
            continue
        if counter.endswith("_misdirected"):
            # to one network, in on another's interface: none in a healthy cloud
            assert not kinds[counter].expected and not kinds[counter].networks
            continue
        networks = networks_of(counter)
        assert networks and set(kinds[counter].networks.split("+")) == networks
        # networks in one space are filtered together: allowed if any of them is
        allowed = any(plan.networks[Network(n)].access for n in networks)
        assert kinds[counter].expected == (not allowed), counter


def test_compute_expects_drops_on_public_and_storage_cluster_only(maas: Topology):
    kinds = counter_kinds(plan_of(maas, "compute-1"))
    expected = {c for c, k in kinds.items() if k.expected}
    unexpected = {c for c, k in kinds.items() if not k.expected}
    denied = ("public", "storage_cluster")
    allowed = ("management", "internal", "data", "storage")
    assert expected == {"drop_in_invalid"} | {
        f"drop_{d}_{n}" for d in ("in", "out", "fwd") for n in denied
    }
    assert unexpected == {
        f"drop_{d}_{n}" for d in ("in", "fwd") for n in (*allowed, "misdirected")
    }


def summary(audit: int, enforcing: int, *, audit_s: float = 600, window_s: float = 300):
    """A storage node's summary: one allowed counter with these figures, big denied drops."""
    return CounterSummary(
        audit_seconds=audit_s,
        window_seconds=window_s,
        counters=(
            CounterCount(
                counter="drop_in_storage_cluster",
                networks="storage-cluster",
                expected=False,
                audit=audit,
                enforcing=enforcing,
            ),
            CounterCount(
                counter="drop_in_internal",
                networks="internal",
                expected=True,
                audit=5_000,
                enforcing=90_000,
            ),
        ),
    )


def test_drops_on_a_denied_network_pass_however_many():
    assert judge(summary(0, 0), threshold=0).passed


def test_drops_on_an_allowed_network_halt_naming_the_network_and_the_counter():
    verdict = judge(summary(0, 412), threshold=20)
    assert not verdict.passed
    assert verdict.halted.startswith("412 packets dropped on storage-cluster, which it may use")
    assert "(drop_in_storage_cluster)" in verdict.halted
    assert verdict.halted.endswith("threshold 20") and len(verdict.halted) <= 200
    assert "internal" not in verdict.halted


def test_the_threshold_is_the_most_packets_beyond_the_baseline_that_pass():
    # audit: 40 packets in 600 s -> 20 expected in a 300 s window
    assert judge(summary(40, 20 + 20), threshold=20).passed
    assert not judge(summary(40, 20 + 21), threshold=20).passed


def test_a_short_audit_is_not_extrapolated():
    # 30 packets in 10 s of audit would be 900 in 300 s; the baseline stays 30
    assert judge(summary(30, 50, audit_s=10), threshold=20).passed
    assert not judge(summary(30, 51, audit_s=10), threshold=20).passed


def test_no_audit_at_all_means_no_baseline():
    assert not judge(summary(0, 21, audit_s=0), threshold=20).passed


def test_the_worst_counter_is_named_first():
    base = summary(0, 0)
    counts = (
        CounterCount(
            counter="drop_in_management", networks="management", expected=False, enforcing=30
        ),
        CounterCount(counter="drop_in_storage", networks="storage", expected=False, enforcing=500),
    )
    verdict = judge(base.model_copy(update={"counters": counts}), threshold=20)
    assert "on storage," in verdict.halted and verdict.halted.endswith("(+1 more)")


def test_summarise_reads_the_plans_counters_from_both_snapshots(maas: Topology):
    plan = plan_of(maas, "storage-1")
    audit = Snapshot.of(
        {"drop_in_storage_cluster": {"packets": 3, "bytes": 180}, "unrelated": {"packets": 9}},
        seconds=1200,
    )
    enforcing = Snapshot({"drop_in_storage_cluster": 250, "drop_out_internal": 70}, 301)
    found = summarise(counter_kinds(plan), audit, enforcing)
    by_name = {c.counter: c for c in found.counters}
    assert set(by_name) == set(counter_kinds(plan))
    assert "unrelated" not in by_name
    replication = by_name["drop_in_storage_cluster"]
    assert (replication.audit, replication.enforcing) == (3, 250)
    assert by_name["drop_out_internal"].expected and by_name["drop_out_internal"].enforcing == 70
    assert (found.audit_seconds, found.window_seconds) == (1200, 301)
    assert "storage-cluster" in judge(found, threshold=20).halted


@pytest.mark.parametrize(
    "bad",
    [
        {"counter": "drop_in_x; rm -rf /", "networks": "", "expected": False},
        {"counter": "drop_in_storage", "networks": "", "expected": False, "enforcing": -1},
        {"counter": "accept_all", "networks": "", "expected": False},
    ],
)
def test_a_published_summary_is_bounded(bad: dict[str, object]):
    with pytest.raises(pydantic.ValidationError):
        CounterCount.model_validate(bad)
    many = [{"counter": "drop_in_storage", "expected": False}] * (MAX_COUNTERS + 1)
    with pytest.raises(pydantic.ValidationError):
        CounterSummary.model_validate({"audit_seconds": 1, "window_seconds": 1, "counters": many})


@settings(max_examples=60, deadline=None)
@given(
    audit=st.integers(0, 10_000),
    enforcing=st.integers(0, 10_000),
    more=st.integers(1, 10_000),
    audit_s=st.floats(0, 7200),
    window_s=st.floats(1, 3600),
    threshold=st.integers(0, 1000),
)
def test_more_drops_never_turn_a_halt_into_a_pass_and_more_audit_never_halts(
    audit: int, enforcing: int, more: int, audit_s: float, window_s: float, threshold: int
):
    def halts(a: int, e: int) -> bool:
        return not judge(summary(a, e, audit_s=audit_s, window_s=window_s), threshold).passed

    if halts(audit, enforcing):
        assert halts(audit, enforcing + more)
    else:
        assert not halts(audit + more, enforcing)
    assert not halts(audit, min(enforcing, threshold))  # never more than the threshold


def test_the_leader_halts_the_roll_on_a_canary_whose_counters_break_the_rule():
    members = {
        f"network-isolation/{i}": Member(f"network-isolation/{i}", f"machine-{i}", roles)
        for i, roles in enumerate([frozenset({"compute"})] * 3 + [frozenset({"control"})])
    }
    schedule = Schedule.parse("50%", timeout=900, canary_threshold=20)
    gen = "0123456789abcdef"
    roll = step(Roll(), gen, members, {}, now=0, schedule=schedule)
    [canary] = roll.waves[0]

    def report(enforcing: int) -> dict[str, UnitReport]:
        counters = summary(audit=0, enforcing=enforcing)
        return {canary: UnitReport(generation=gen, outcome="applied", counters=counters)}

    passed = step(roll, gen, members, report(20), now=300, schedule=schedule)
    assert passed.opened == 2 and not passed.halted
    halted = step(roll, gen, members, report(21), now=300, schedule=schedule)
    assert halted.opened == 1
    assert (
        halted.halted.startswith(f"{canary} (machine-")
        and "in wave 1: counters: 21" in halted.halted
    )
    assert "(drop_in_storage_cluster)" in halted.halted
    # the report itself stays as the canary wrote it: the leader judges, the unit only counts
    assert report(21)[canary].judged(20).failed and not report(21)[canary].failed
