"""What the host module keeps for the exporter: plan summary, apply history, service."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from network_isolation.host import (
    EXPORTER_UNIT_NAME,
    ExporterSpec,
    Host,
    HostError,
    PortInUseError,
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
        self.fail_reload = False

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
        elif argv[:2] == [SYSTEMCTL, "enable"] and argv[-1] == EXPORTER_UNIT_NAME:
            wants.mkdir(parents=True, exist_ok=True)
            (wants / argv[-1]).unlink(missing_ok=True)
            (wants / argv[-1]).symlink_to(f"/etc/systemd/system/{argv[-1]}")
        elif argv[:3] == [SYSTEMCTL, "disable", "--now"]:
            (wants / argv[3]).unlink(missing_ok=True)
        elif argv[:2] == [SYSTEMCTL, "daemon-reload"] and self.fail_reload:
            return Result(1, "", "Failed to reload daemon: Connection timed out")
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
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def machine(root: Path) -> Machine:
    return Machine(root)


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
    host.table.pending_file.write_text(ruleset(1).nftables)
    host.guard.loading_file.touch()  # its nft -f had run
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
    moved = replace(SPEC, port=9100)
    assert host.ensure_exporter(moved) is True
    assert "--port 9100" in host.exporter.unit_file.read_text()
    assert machine.systemctl()[-1] == f"restart {EXPORTER_UNIT_NAME}"


def test_an_unchanged_exporter_runs_no_command_in_any_hook(host: Host, machine: Machine) -> None:
    host.ensure_exporter(SPEC)
    machine.calls.clear()
    for _ in range(3):
        assert host.ensure_exporter(SPEC) is False
    assert machine.calls == []


def test_new_code_restarts_the_exporter_and_nothing_else(
    host: Host, machine: Machine, root: Path
) -> None:
    package = root / "var/lib/juju/agents/unit-ni-0/charm/src/network_isolation"
    (package / "host").mkdir(parents=True)
    (package / "host/metrics.py").write_text("VERSION = 1\n")
    host.ensure_exporter(SPEC)
    machine.calls.clear()
    assert host.ensure_exporter(SPEC) is False  # the same code: no restart

    (package / "host/metrics.py").write_text("VERSION = 2\n")  # upgrade-charm
    assert host.ensure_exporter(SPEC) is True
    assert machine.systemctl() == [f"restart {EXPORTER_UNIT_NAME}"]
    assert host.ensure_exporter(SPEC) is False
    assert len(machine.systemctl()) == 1


def test_an_upgraded_dependency_restarts_the_exporter(
    host: Host, machine: Machine, root: Path
) -> None:
    venv = root / "var/lib/juju/agents/unit-ni-0/charm/venv/lib/python3.12/site-packages"
    (venv / "pydantic-2.10.0.dist-info").mkdir(parents=True)
    spec = replace(SPEC, pythonpath=(*SPEC.pythonpath, "/" + str(venv.relative_to(root))))
    host.ensure_exporter(spec)
    machine.calls.clear()
    (venv / "pydantic-2.10.0.dist-info").rename(venv / "pydantic-2.11.1.dist-info")
    assert host.ensure_exporter(spec) is True
    assert machine.systemctl() == [f"restart {EXPORTER_UNIT_NAME}"]


def test_a_disabled_exporter_is_enabled_and_started_not_restarted(
    host: Host, machine: Machine
) -> None:
    host.ensure_exporter(SPEC)
    host.exporter.unit_link.unlink()  # `systemctl disable` by an operator
    machine.calls.clear()
    assert host.ensure_exporter(SPEC) is True
    assert machine.systemctl() == [f"enable --now {EXPORTER_UNIT_NAME}"]


def test_a_changed_unit_is_reloaded_and_restarted_but_not_enabled_again(
    host: Host, machine: Machine
) -> None:
    host.ensure_exporter(SPEC)
    machine.calls.clear()
    assert host.ensure_exporter(replace(SPEC, address="10.10.0.6")) is True
    assert machine.systemctl() == ["daemon-reload", f"restart {EXPORTER_UNIT_NAME}"]


def test_a_failed_reload_is_retried_by_the_next_hook(host: Host, machine: Machine) -> None:
    host.ensure_exporter(SPEC)
    moved = replace(SPEC, port=9100)
    machine.fail_reload = True
    with pytest.raises(HostError, match="Failed to reload daemon"):
        host.ensure_exporter(moved)
    assert "--port 9100" in host.exporter.unit_file.read_text()  # written, not yet loaded
    machine.fail_reload = False
    machine.calls.clear()
    assert host.ensure_exporter(moved) is True
    assert machine.systemctl() == ["daemon-reload", f"restart {EXPORTER_UNIT_NAME}"]


def test_the_unit_names_each_directory_of_the_charm_once() -> None:
    src = "/var/lib/juju/agents/unit-ni-0/charm/src"
    lib = "/var/lib/juju/agents/unit-ni-0/charm/lib"
    text = exporter_unit_text(replace(SPEC, pythonpath=(src, lib, src)))
    assert f"Environment=PYTHONPATH={src}:{lib}\n" in text


# -- the exporter's port -----------------------------------------------------------------------

TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    "   uid  timeout inode\n"
)
TCP6_HEADER = (
    "  sl  local_address                         remote_address                        st"
    " tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)
# As a little-endian kernel prints them: each 32-bit word of the address in host order.
TCP_SOCKETS = {
    "0.0.0.0:9479 listening": "00000000:2507 00000000:0000 0A",
    "10.10.0.5:9479 listening": "05000A0A:2507 00000000:0000 0A",
    "10.10.0.6:9479 listening": "06000A0A:2507 00000000:0000 0A",
    "10.10.0.5:9479 connected": "05000A0A:2507 07000A0A:D431 01",
    "10.10.0.5:9100 listening": "05000A0A:238C 00000000:0000 0A",
}
TCP6_SOCKETS = {
    "[::]:9479 listening": "00000000000000000000000000000000:2507 "
    "00000000000000000000000000000000:0000 0A",
    "[::ffff:10.10.0.5]:9479 listening": "0000000000000000FFFF000005000A0A:2507 "
    "00000000000000000000000000000000:0000 0A",
    "[fd00:10::5]:9479 listening": "100000FD000000000000000005000000:2507 "
    "00000000000000000000000000000000:0000 0A",
}
little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="written as x86 prints it")


def listening(root: Path, *sockets: str) -> None:
    """/proc/net/tcp and tcp6 under the root, with these sockets (keys of the tables above)."""
    proc = root / "proc/net"
    proc.mkdir(parents=True, exist_ok=True)
    for name, header, table in (
        ("tcp", TCP_HEADER, TCP_SOCKETS),
        ("tcp6", TCP6_HEADER, TCP6_SOCKETS),
    ):
        rows = [table[s] for s in sockets if s in table]
        tail = " 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0"
        (proc / name).write_text(
            header + "".join(f"   {i}: {r}{tail}\n" for i, r in enumerate(rows))
        )


@little_endian
@pytest.mark.parametrize(
    ("socket", "where"),
    [
        ("0.0.0.0:9479 listening", "0.0.0.0"),
        ("10.10.0.5:9479 listening", "10.10.0.5"),
        ("[::]:9479 listening", "::"),
        ("[::ffff:10.10.0.5]:9479 listening", "10.10.0.5"),
    ],
)
def test_a_port_another_process_listens_on_is_refused_before_any_change(
    host: Host, machine: Machine, root: Path, socket: str, where: str
) -> None:
    listening(root, socket)
    with pytest.raises(PortInUseError) as raised:
        host.ensure_exporter(SPEC)
    assert str(raised.value) == f"metrics-port 9479 is in use by another process on {where}"
    assert machine.calls == []
    assert not host.exporter.unit_file.exists()


@little_endian
def test_a_port_in_use_elsewhere_is_free_for_the_exporter(
    host: Host, machine: Machine, root: Path
) -> None:
    # another address, another port, a connection rather than a listener, another family
    listening(
        root,
        "10.10.0.6:9479 listening",
        "10.10.0.5:9100 listening",
        "10.10.0.5:9479 connected",
        "[fd00:10::5]:9479 listening",
    )
    assert host.ensure_exporter(SPEC) is True


@little_endian
def test_an_ipv4_wildcard_is_not_in_the_way_of_an_ipv6_address(host: Host, root: Path) -> None:
    listening(root, "0.0.0.0:9479 listening")
    assert host.ensure_exporter(replace(SPEC, address="fd00:10::5")) is True


@little_endian
def test_the_exporters_own_socket_is_not_in_the_way(
    host: Host, machine: Machine, root: Path
) -> None:
    host.ensure_exporter(SPEC)
    listening(root, "10.10.0.5:9479 listening")  # the exporter, started
    assert host.ensure_exporter(SPEC) is False  # unchanged: not even read
    (host.exporter.started_file).write_text("{}\n")  # new code: restarted where it listens
    assert host.ensure_exporter(SPEC) is True
    moved = replace(SPEC, port=9100)
    listening(root, "10.10.0.5:9479 listening", "10.10.0.5:9100 listening")
    with pytest.raises(PortInUseError, match="metrics-port 9100 is in use by another process"):
        host.ensure_exporter(moved)
    assert "--port 9479" in host.exporter.unit_file.read_text()  # left as it was


def test_ensure_exporter_none_removes_it(host: Host, machine: Machine) -> None:
    assert host.ensure_exporter(None) is False  # nothing to remove: no command
    assert machine.systemctl() == []
    host.ensure_exporter(SPEC)
    assert host.ensure_exporter(None) is True
    assert not host.exporter.unit_file.exists()
    assert not host.exporter.unit_link.is_symlink()
    assert not host.exporter.started_file.exists()
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
