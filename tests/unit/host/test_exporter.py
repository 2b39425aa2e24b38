"""What the host module keeps for the exporter: plan summary, apply history, service."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from network_isolation.host import (
    EXPORTER_UNIT_NAME,
    ExporterSpec,
    Host,
    HostError,
    ProbeTarget,
    Result,
    RolledBackError,
    exporter_unit_text,
)
from network_isolation.observed import ApplyHistory, PlanSummary
from tests.plan_summaries import plan_summary

NFT, SYSTEMCTL = "/usr/sbin/nft", "/usr/bin/systemctl"
CONTROLLER = ProbeTarget("10.10.0.2", 17070, label="juju controller")
SPEC = ExporterSpec(
    address="10.10.0.5",
    port=9479,
    python="/var/lib/juju/agents/unit-ni-0/charm/venv/bin/python",
    pythonpath=("/var/lib/juju/agents/unit-ni-0/charm/src",),
    state_dir=Path("/var/lib/network-isolation"),
)


@dataclass(frozen=True)
class Art:
    nftables: str
    netplan: str | None = None


def ruleset(port: int) -> Art:
    return Art(
        "table inet network_isolation\ndelete table inet network_isolation\n"
        f"table inet network_isolation {{\n  chain input {{\n    tcp dport {port} drop\n  }}\n}}\n"
    )


class Machine:
    """Plays nft and systemctl (enable/disable make and remove the wants link)."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[list[str]] = []
        self.table = ""
        self.fail_systemctl = False

    def run(self, argv: Sequence[str]) -> Result:
        argv = list(argv)
        self.calls.append(argv)
        wants = self.root / "etc/systemd/system/multi-user.target.wants"
        if argv[0] == SYSTEMCTL and self.fail_systemctl:
            return Result(1, "", "Failed to connect to bus")
        if argv[:2] == [NFT, "-f"]:
            self.table = Path(argv[2]).read_text()
        elif argv[:2] == [NFT, "-s"]:
            return Result(0, self.table)
        elif argv[:2] == [SYSTEMCTL, "enable"] and argv[2] == EXPORTER_UNIT_NAME:
            wants.mkdir(parents=True, exist_ok=True)
            (wants / argv[2]).unlink(missing_ok=True)
            (wants / argv[2]).symlink_to(f"/etc/systemd/system/{argv[2]}")
        elif argv[:3] == [SYSTEMCTL, "disable", "--now"]:
            (wants / argv[3]).unlink(missing_ok=True)
        return Result(0)

    def systemctl(self) -> list[str]:
        return [" ".join(c[1:]) for c in self.calls if c[0] == SYSTEMCTL]


class Probe:
    def __init__(self) -> None:
        self.lost: Mapping[ProbeTarget, str] = {}
        self.calls = 0

    def __call__(self, targets: Sequence[ProbeTarget], budget: float) -> Mapping[ProbeTarget, str]:
        self.calls += 1
        return self.lost if self.calls % 2 == 0 else {}  # before: reachable; after: as set


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "root")


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def host(machine: Machine, probe: Probe) -> Host:
    (machine.root / "etc/netplan").mkdir(parents=True)
    clock = iter(float(t) for t in range(1_700_000_000, 1_700_000_100))
    return Host(machine.root, machine, probe=probe, clock=lambda: next(clock))


def test_history_counts_applies_and_rollbacks(host: Host, probe: Probe) -> None:
    assert host.history() == ApplyHistory()
    host.apply(ruleset(1), [CONTROLLER])
    assert host.history() == ApplyHistory(last_apply=1_700_000_000.0)
    host.apply(ruleset(1), [CONTROLLER])  # unchanged: no apply, no new time
    assert host.history().last_apply == 1_700_000_000.0
    probe.lost = {CONTROLLER: "timed out"}
    with pytest.raises(RolledBackError):
        host.apply(ruleset(2), [CONTROLLER])
    assert host.history() == ApplyHistory(last_apply=1_700_000_000.0, rollbacks=1)
    probe.lost = {}
    host.apply(ruleset(3), [CONTROLLER])
    assert host.history() == ApplyHistory(last_apply=1_700_000_001.0, rollbacks=1)


def test_an_unconfirmed_apply_restored_by_the_next_hook_is_a_rollback(host: Host) -> None:
    host.apply(ruleset(1))
    host.guard.armed_file.write_text("x\n")  # a hook died between apply and confirm
    (host.rollback_dir).mkdir(parents=True, exist_ok=True)
    (host.rollback_dir / "ruleset.nft").write_text(ruleset(1).nftables)
    host.table.pending_file.write_text(ruleset(1).nftables)  # its change had started
    host.apply(ruleset(2))
    assert host.history().rollbacks == 1


def test_record_plan_writes_only_a_change(host: Host) -> None:
    summary = plan_summary(
        enforcement="audit",
        isolation="partial",
        domains=4,
        strict_ports=True,
        networks={"management": True},
        wanted="f" * 64,
    )
    host.record_plan(summary)
    assert not host.exporter.plan_summary_file.exists()  # no exporter: nobody reads it
    host.ensure_exporter(SPEC)
    host.record_plan(summary)
    stamp = host.exporter.plan_summary_file.stat().st_mtime_ns
    assert PlanSummary.model_validate_json(host.exporter.plan_summary_file.read_text()) == summary
    host.record_plan(summary)
    assert host.exporter.plan_summary_file.stat().st_mtime_ns == stamp
    host.record_plan(summary.model_copy(update={"enforcement": "enforce"}))
    assert json.loads(host.exporter.plan_summary_file.read_text())["enforcement"] == "enforce"


def test_ensure_exporter_writes_enables_and_restarts_once(host: Host, machine: Machine) -> None:
    assert host.ensure_exporter(SPEC) is True
    assert host.exporter.unit_file.read_text() == exporter_unit_text(SPEC)
    assert machine.systemctl() == [
        "daemon-reload",
        f"enable {EXPORTER_UNIT_NAME}",
        f"restart {EXPORTER_UNIT_NAME}",
    ]
    assert host.ensure_exporter(SPEC) is False  # unchanged: files checked, no command
    assert len(machine.systemctl()) == 3
    moved = SPEC.__class__(**{**SPEC.__dict__, "port": 9100})
    assert host.ensure_exporter(moved) is True
    assert "--port 9100" in host.exporter.unit_file.read_text()
    assert machine.systemctl()[-1] == f"restart {EXPORTER_UNIT_NAME}"


def test_ensure_exporter_none_removes_it(host: Host, machine: Machine) -> None:
    assert host.ensure_exporter(None) is False  # nothing to remove: no command
    assert machine.systemctl() == []
    host.ensure_exporter(SPEC)
    assert host.ensure_exporter(None) is True
    assert not host.exporter.unit_file.exists()
    assert not host.exporter.unit_link.is_symlink()
    assert machine.systemctl()[-2:] == [f"disable --now {EXPORTER_UNIT_NAME}", "daemon-reload"]


def test_a_systemctl_failure_is_a_host_error(host: Host, machine: Machine) -> None:
    machine.fail_systemctl = True
    with pytest.raises(HostError, match="Failed to connect to bus"):
        host.ensure_exporter(SPEC)


def test_removal_takes_the_exporter_and_its_files(host: Host, machine: Machine) -> None:
    host.apply(ruleset(1))
    host.ensure_exporter(SPEC)
    host.record_plan(plan_summary())
    host.remove()
    assert not host.exporter.unit_file.exists()
    assert f"disable --now {EXPORTER_UNIT_NAME}" in machine.systemctl()
    assert not host.state.exists()
