"""The exporter's metrics from a host view: parsing our counters, the plan, the history."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from network_isolation.host import Applied, HostError, RejectedRecord, fingerprint
from network_isolation.host.metrics import drop_labels, read, registry_for
from network_isolation.observed import (
    HISTORY_FILE,
    PLAN_SUMMARY_FILE,
    ApplyHistory,
    PlanSummary,
)
from tests.plan_summaries import plan_summary

RULESET = "table inet network_isolation {}\n"


@dataclass(frozen=True)
class _Artefacts:
    nftables: str
    netplan: str | None


@dataclass
class FakeHost:
    """A host view whose answers the test sets."""

    state: Path
    counters_seen: dict[str, dict[str, int]] = field(default_factory=lambda: {})
    counters_fail: bool = False
    drift_seen: str | None = None
    applied_seen: Applied = Applied(RULESET, None)
    rejected_seen: RejectedRecord | None = None

    def counters(self) -> dict[str, dict[str, int]]:
        if self.counters_fail:
            raise HostError("nft -j list table: permission denied")
        return self.counters_seen

    def drift(self) -> str | None:
        return self.drift_seen

    def applied(self) -> Applied:
        return self.applied_seen

    def rejected(self) -> RejectedRecord | None:
        return self.rejected_seen


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(host: FakeHost) -> Samples:
    text = generate_latest(registry_for(host)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def summary(**changes: object) -> PlanSummary:
    base = plan_summary(
        networks={"management": True, "storage": True, "storage-cluster": False},
        wanted=fingerprint(_Artefacts(RULESET, None)),
    )
    return base.model_copy(update=changes)


def write(host: FakeHost, plan: PlanSummary | None = None, history: ApplyHistory | None = None):
    host.state.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        (host.state / PLAN_SUMMARY_FILE).write_text(plan.model_dump_json())
    if history is not None:
        (host.state / HISTORY_FILE).write_text(history.model_dump_json())


@pytest.mark.parametrize(
    ("counter", "labels"),
    [
        ("drop_in_storage_cluster", ("storage-cluster", "in")),
        ("drop_out_public", ("public", "out")),
        ("drop_fwd_storage", ("storage", "fwd")),
        ("drop_in_invalid", ("ct-invalid", "in")),
        ("drop_in_nowhere", None),
        ("accept_in_storage", None),
        ("a rule's comment", None),
    ],
)
def test_drop_counter_names_map_to_network_and_direction(
    counter: str, labels: tuple[str, str] | None
) -> None:
    assert drop_labels(counter) == labels


def test_drop_counters_become_counters_per_network_and_direction(tmp_path: Path) -> None:
    host = FakeHost(
        tmp_path,
        counters_seen={
            "drop_in_storage_cluster": {"packets": 7, "bytes": 420},
            "drop_out_storage_cluster": {"packets": 2, "bytes": 120},
            "drop_in_invalid": {"packets": 1, "bytes": 40},
            "some comment": {"packets": 99, "bytes": 99},
        },
    )
    samples = scrape(host)
    packets = {
        k[1]: v for k, v in samples.items() if k[0] == "network_isolation_dropped_packets_total"
    }
    assert packets == {
        (("direction", "in"), ("network", "storage-cluster")): 7,
        (("direction", "out"), ("network", "storage-cluster")): 2,
        (("direction", "in"), ("network", "ct-invalid")): 1,
    }
    assert (
        samples[
            (
                "network_isolation_dropped_bytes_total",
                (("direction", "in"), ("network", "storage-cluster")),
            )
        ]
        == 420
    )
    assert samples[("network_isolation_table_present", ())] == 1


def test_no_counters_means_no_table(tmp_path: Path) -> None:
    samples = scrape(FakeHost(tmp_path))
    assert samples[("network_isolation_table_present", ())] == 0
    assert samples[("network_isolation_scrape_errors", ())] == 0


def test_a_failing_read_is_counted_not_raised(tmp_path: Path) -> None:
    samples = scrape(FakeHost(tmp_path, counters_fail=True))
    assert samples[("network_isolation_scrape_errors", ())] == 1


def test_plan_summary_gives_mode_isolation_access_and_planned(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    write(host, summary(enforcement="audit"))
    samples = scrape(host)
    modes = {
        k[1][0][1]: v for k, v in samples.items() if k[0] == "network_isolation_enforcement_mode"
    }
    assert modes == {"enforce": 0, "audit": 1, "off": 0}
    levels = {
        k[1][0][1]: v for k, v in samples.items() if k[0] == "network_isolation_isolation_level"
    }
    assert levels == {"none": 0, "partial": 0, "maximum": 1}
    assert samples[("network_isolation_network_allowed", (("network", "storage"),))] == 1
    assert samples[("network_isolation_network_allowed", (("network", "storage-cluster"),))] == 0
    assert samples[("network_isolation_network_allowed", (("network", "data"),))] == 0
    assert samples[("network_isolation_ruleset_planned", ())] == 1
    assert samples[("network_isolation_isolation_domains", ())] == 6
    assert samples[("network_isolation_plan_blocked", ())] == 0
    write(host, summary(status="blocked"))
    assert scrape(host)[("network_isolation_plan_blocked", ())] == 1


def test_applied_differs_from_planned(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, applied_seen=Applied(RULESET + "# older\n", None))
    write(host, summary())
    assert scrape(host)[("network_isolation_ruleset_planned", ())] == 0
    host.applied_seen = Applied(None, None)
    assert scrape(host)[("network_isolation_ruleset_planned", ())] == 0
    host.applied_seen = Applied(RULESET, "network: {}\n")  # our netplan file counts too
    assert scrape(host)[("network_isolation_ruleset_planned", ())] == 0


def test_without_a_summary_there_are_no_plan_metrics(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    write(host)
    (tmp_path / PLAN_SUMMARY_FILE).write_text("{not json")
    names = {name for name, _ in scrape(host)}
    assert "network_isolation_enforcement_mode" not in names
    assert "network_isolation_table_present" in names


def test_history_drift_and_held_back_changes(tmp_path: Path) -> None:
    history = ApplyHistory().applied(1_700_000_000.5).rolled_back().rolled_back()
    host = FakeHost(
        tmp_path,
        drift_seen="table inet network_isolation is missing",
        rejected_seen=RejectedRecord("f" * 64, "probe", "unreachable"),
    )
    write(host, history=history)
    samples = scrape(host)
    assert samples[("network_isolation_last_apply_timestamp_seconds", ())] == 1_700_000_000.5
    assert samples[("network_isolation_rollbacks_total", ())] == 2
    assert samples[("network_isolation_drift", ())] == 1
    assert samples[("network_isolation_change_held_back", ())] == 1


def test_nothing_applied_yet_has_no_last_apply(tmp_path: Path) -> None:
    reading = read(FakeHost(tmp_path))
    assert reading.history == ApplyHistory()
    names = {name for name, _ in scrape(FakeHost(tmp_path))}
    assert "network_isolation_last_apply_timestamp_seconds" not in names
    assert "network_isolation_rollbacks_total" in names
