"""Host: every side effect of the charm, driven through a fake runner over a temporary root.

The fake runner stands for the machine: it records every command, keeps the "kernel" state of
our table (the last ruleset loaded with `nft -f`), and makes `systemctl enable` create the
symlink systemd would. Expected values are written out here, never taken from the code.
"""

from __future__ import annotations

import configparser
import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from network_isolation import host as host_module
from network_isolation.host import (
    ApplyError,
    Host,
    HostError,
    InvalidArtefactsError,
    MachineRegistry,
    ProbeTarget,
    RejectedError,
    Result,
    RolledBackError,
    Tools,
    controller_targets,
    fingerprint,
    first_error,
    gateway_target,
    tcp_probe,
    write_atomically,
)

NFT, NETPLAN, SYSTEMCTL, SYSTEMD_RUN = (
    "/usr/sbin/nft",
    "/usr/sbin/netplan",
    "/usr/bin/systemctl",
    "/usr/bin/systemd-run",
)
REMOVAL = "table inet network_isolation\ndelete table inet network_isolation\n"


def ruleset(port: int) -> str:
    return (
        "table inet network_isolation\n"
        "delete table inet network_isolation\n"
        "table inet network_isolation {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    tcp dport {port} drop\n"
        "  }\n"
        "}\n"
    )


def netplan(table: int) -> str:
    return (
        "network:\n"
        "  version: 2\n"
        "  ethernets:\n"
        "    enp2s0:\n"
        "      routing-policy:\n"
        f"        - {{from: 10.20.0.0/24, table: {table}, priority: {table}}}\n"
    )


@dataclass(frozen=True)
class Art:
    nftables: str
    netplan: str | None


A = Art(ruleset(1001), netplan(101))
B = Art(ruleset(1002), netplan(102))
C = Art(ruleset(1003), netplan(103))
OFF = Art(REMOVAL, None)
CONTROLLER = ProbeTarget("10.10.0.2", 17070, label="juju controller")
GATEWAY = gateway_target("10.10.0.1")


class Killed(BaseException):
    """The hook process dies (SIGKILL): no Python cleanup runs."""


class FakeMachine:
    """The runner: records commands and plays nft, netplan, systemctl and systemd-run."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[list[str]] = []
        self.table: str | None = None  # the ruleset our table holds in the "kernel"
        self.failures: list[tuple[tuple[str, ...], Result]] = []
        self.staged: list[str] = []  # files netplan generate saw
        self.json_listing = ""

    def fail(self, *prefix: str, stderr: str = "Error: injected", times: int = 1) -> None:
        for _ in range(times):
            self.failures.append((prefix, Result(1, "", stderr)))

    def _injected(self, argv: list[str]) -> Result | None:
        for i, (prefix, result) in enumerate(self.failures):
            if tuple(argv[: len(prefix)]) == prefix:
                del self.failures[i]
                return Result(result.returncode, "", result.stderr.replace("{arg}", argv[-1]))
        return None

    def run(self, argv: Sequence[str]) -> Result:
        argv = list(argv)
        self.calls.append(argv)
        injected = self._injected(argv)
        if injected:
            return injected
        if argv[:2] == [NFT, "-f"]:
            text = Path(argv[2]).read_text()
            self.table = None if text == REMOVAL else text
        elif argv[:2] == [NFT, "-s"]:
            if self.table is None:
                return Result(1, "", "Error: No such file or directory\nlist table inet x\n")
            return Result(0, self.table)
        elif argv[:2] == [NFT, "-j"]:
            if self.table is None:
                return Result(1, "", "Error: No such file or directory")
            return Result(0, self.json_listing)
        elif argv[:2] == [NETPLAN, "generate"]:
            staged = Path(argv[3])
            self.staged = sorted(str(p.relative_to(staged)) for p in staged.rglob("*.yaml"))
        elif argv[:2] == [SYSTEMCTL, "enable"]:
            link = self.root / "etc/systemd/system/sysinit.target.wants" / argv[2]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(f"/etc/systemd/system/{argv[2]}")
        elif argv[:2] == [SYSTEMCTL, "disable"]:
            (self.root / "etc/systemd/system/sysinit.target.wants" / argv[2]).unlink(
                missing_ok=True
            )
        return Result(0)

    def commands(self) -> list[str]:
        """The calls, with the test's root shown as ROOT and temporary paths as TMP."""
        out: list[str] = []
        for argv in self.calls:
            line = " ".join(argv).replace(str(self.root), "ROOT")
            out.append(" ".join("TMP" if w.startswith("/tmp/") else w for w in line.split()))
        return out


class FakeProbe:
    """Answers from a queue: each call pops the failures to report (default: all reachable)."""

    def __init__(self) -> None:
        self.answers: list[Mapping[ProbeTarget, str] | BaseException] = []
        self.calls: list[tuple[list[ProbeTarget], float]] = []
        self.side_effect: Callable[[], None] | None = None

    def __call__(self, targets: Sequence[ProbeTarget], budget: float) -> Mapping[ProbeTarget, str]:
        self.calls.append((list(targets), budget))
        if self.side_effect and len(self.calls) == 2:
            self.side_effect()
        answer = self.answers.pop(0) if self.answers else {}
        if isinstance(answer, BaseException):
            raise answer
        return {t: why for t, why in answer.items() if t in targets}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A machine's files: netplan files of others (lib, etc, run), a stock nftables.conf."""
    root = tmp_path / "root"
    for path, content in {
        "etc/netplan/50-cloud-init.yaml": "network: {version: 2}\n",
        "lib/netplan/00-lib.yaml": "network: {version: 2}\n",
        "run/netplan/10-run.yaml": "network: {version: 2}\n",
        "lib/netplan/generate": "\x7fELF not yaml",
        "etc/nftables.conf": "flush ruleset\n",
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
        (root / path).chmod(0o600)
    return root


@pytest.fixture
def machine(root: Path) -> FakeMachine:
    return FakeMachine(root)


@pytest.fixture
def probe() -> FakeProbe:
    return FakeProbe()


@pytest.fixture
def host(root: Path, machine: FakeMachine, probe: FakeProbe) -> Host:
    return Host(root, machine, probe=probe, rollback_after=120)


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every file, link and directory under root with its content, mode and mtime."""
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = ("link", os.readlink(path), info.st_mtime_ns)
        elif path.is_dir():
            found[key] = ("dir", stat.S_IMODE(info.st_mode), info.st_mtime_ns)
        else:
            found[key] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode), info.st_mtime_ns)
    return found


def files(root: Path) -> dict[str, bytes]:
    return {k: v[1] for k, v in tree(root).items() if v[0] == "file"}  # type: ignore[misc]


STATE = "ROOT/var/lib/network-isolation"
ARM = (
    f"{SYSTEMD_RUN} --unit=network-isolation-rollback --on-active=120 "
    "--timer-property=AccuracySec=1s --collect --quiet "
    "--description=network-isolation: restore the state before an unconfirmed apply "
    f"/bin/sh {STATE}/rollback.sh"
)


# -- apply: first time, no-op, change ---------------------------------------------------------


def test_first_apply_runs_each_step_once_in_order(host: Host, machine: FakeMachine, root: Path):
    result = host.apply(A)

    assert result.changed and result.netplan_applied
    assert machine.commands() == [
        f"{NFT} -c -f TMP",
        f"{NETPLAN} generate --root-dir TMP",
        ARM,
        f"{NFT} -f {STATE}/pending.nft",
        f"{NETPLAN} apply",
        f"{SYSTEMCTL} stop network-isolation-rollback.timer",
        f"{NFT} -s list table inet network_isolation",
        f"{SYSTEMCTL} daemon-reload",
        f"{SYSTEMCTL} enable network-isolation.service",
    ]
    ours = root / "etc/netplan/90-network-isolation.yaml"
    assert ours.read_text() == A.netplan
    assert stat.S_IMODE(ours.stat().st_mode) == 0o600
    persisted = root / "var/lib/network-isolation/ruleset.nft"
    assert persisted.read_text() == A.nftables
    assert stat.S_IMODE(persisted.stat().st_mode) == 0o600
    assert machine.table == A.nftables
    state = sorted(p.name for p in (root / "var/lib/network-isolation").iterdir())
    assert state == ["live.nft", "ruleset.nft"]  # no snapshot, marker or script left
    assert (root / "etc/nftables.conf").read_text() == "flush ruleset\n"


def test_validation_sees_the_hosts_netplan_files_plus_ours(host: Host, machine: FakeMachine):
    host.apply(A)
    assert machine.staged == [
        "etc/netplan/50-cloud-init.yaml",
        "etc/netplan/90-network-isolation.yaml",
        "lib/netplan/00-lib.yaml",
        "run/netplan/10-run.yaml",
    ]


def test_reapplying_the_same_artefacts_writes_nothing_and_runs_nothing(
    host: Host, machine: FakeMachine, probe: FakeProbe, root: Path
):
    host.apply(A, [CONTROLLER])
    before = tree(root)
    machine.calls.clear()
    probe.calls.clear()
    time.sleep(0.01)  # so that any write would show in an mtime

    result = host.apply(A, [CONTROLLER])

    assert not result.changed
    assert machine.calls == []
    assert probe.calls == []
    assert tree(root) == before


def test_a_change_of_ruleset_only_does_not_apply_netplan(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.calls.clear()
    result = host.apply(Art(ruleset(2000), A.netplan))
    assert result.changed and not result.netplan_applied
    assert f"{NETPLAN} apply" not in machine.commands()
    assert machine.table == ruleset(2000)


def test_a_wrong_mode_on_our_netplan_file_is_repaired(host: Host, root: Path):
    host.apply(A)
    ours = root / "etc/netplan/90-network-isolation.yaml"
    ours.chmod(0o644)
    assert host.apply(A).changed
    assert stat.S_IMODE(ours.stat().st_mode) == 0o600


def test_forced_apply_reloads_even_when_unchanged(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.table = None  # drift: someone deleted our table
    machine.calls.clear()
    result = host.apply(A, force=True)
    assert result.changed and not result.netplan_applied
    assert machine.table == A.nftables
    assert f"{NFT} -f {STATE}/pending.nft" in machine.commands()


# -- validation failures: nothing changes ------------------------------------------------------


def test_a_ruleset_nft_rejects_changes_nothing(host: Host, machine: FakeMachine, root: Path):
    host.apply(A)
    before = tree(root)
    machine.calls.clear()
    machine.fail(
        NFT, "-c", stderr="{arg}:3:1-4: Error: syntax error, unexpected junk\njunk\n^^^^\n"
    )

    with pytest.raises(InvalidArtefactsError) as raised:
        host.apply(B)

    assert raised.value.stage == "validate-nftables"
    assert str(raised.value) == (
        "nftables ruleset rejected: ruleset.nft:3:1-4: Error: syntax error, unexpected junk"
    )
    assert machine.commands() == [f"{NFT} -c -f TMP"]
    assert tree(root) == before
    assert machine.table == A.nftables


def test_tool_paths_in_errors_name_the_file_not_the_temporary_directory():
    line = first_error(
        "** WARNING **: Permissions for /tmp/x/etc/netplan/50.yaml are too open\n"
        "/tmp/x/etc/netplan/90-network-isolation.yaml:5:21: Error in network definition: "
        "invalid IP family '-1'\n      routes: [{to: x}]\n",
        strip=["/tmp/x"],
    )
    assert line == (
        "/etc/netplan/90-network-isolation.yaml:5:21: Error in network definition: "
        "invalid IP family '-1'"
    )


def test_netplan_generate_rejects_changes_nothing(host: Host, machine: FakeMachine, root: Path):
    host.apply(A)
    before = tree(root)
    machine.calls.clear()
    machine.fail(NETPLAN, "generate", stderr="x.yaml:1:1: Error in network definition: bad\n")

    with pytest.raises(InvalidArtefactsError) as raised:
        host.apply(B)

    assert raised.value.stage == "validate-netplan"
    assert "Error in network definition: bad" in str(raised.value)
    assert machine.commands() == [f"{NFT} -c -f TMP", f"{NETPLAN} generate --root-dir TMP"]
    assert tree(root) == before


@pytest.mark.parametrize(
    "rules, problem",
    [
        ("[{from: 10.20.0.0/24, priority: 5}]", "needs a table"),
        ("[{from: 10.20.0.0/24, table: 0, priority: 5}]", "needs a table"),
        (
            "[{from: 10.20.0.0/24, table: 5, priority: 5}, {from: 10.30.0.0/24, table: 6, "
            "priority: 5}]",
            "priority 5 is also used",
        ),
    ],
)
def test_policy_routing_that_netplan_accepts_silently_is_refused(
    host: Host, machine: FakeMachine, rules: str, problem: str
):
    bad = Art(A.nftables, f"network:\n  ethernets:\n    enp2s0:\n      routing-policy: {rules}\n")
    with pytest.raises(InvalidArtefactsError, match=problem) as raised:
        host.apply(bad)
    assert raised.value.stage == "validate-routing"
    assert machine.commands() == [f"{NFT} -c -f TMP"]


# -- failures after the change: roll back, remember, do not retry -----------------------------


def test_nft_load_failure_keeps_everything_and_rejects_the_artefacts(
    host: Host, machine: FakeMachine, root: Path
):
    host.apply(A)
    before = files(root)
    machine.calls.clear()
    machine.fail(NFT, "-f", stderr="pending.nft:9:1: Error: Could not process rule: File exists")

    with pytest.raises(RolledBackError) as raised:
        host.apply(B)

    assert raised.value.stage == "load"
    assert "Could not process rule" in str(raised.value)
    assert machine.table == A.nftables
    # the transaction failed as a whole: nothing to reload, netplan never touched
    assert machine.commands()[3:] == [
        f"{NFT} -f {STATE}/pending.nft",
        f"{SYSTEMCTL} stop network-isolation-rollback.timer",
    ]
    after = files(root)
    rejected = json.loads(after.pop("var/lib/network-isolation/rejected.json"))
    assert rejected["fingerprint"] == fingerprint(B) and rejected["stage"] == "load"
    assert after == before


def test_netplan_apply_failure_restores_ruleset_and_netplan(
    host: Host, machine: FakeMachine, root: Path
):
    host.apply(A)
    before = files(root)
    machine.calls.clear()
    machine.fail(NETPLAN, "apply", stderr="Error: networkd said no")

    with pytest.raises(RolledBackError) as raised:
        host.apply(B)

    assert raised.value.stage == "netplan-apply"
    assert machine.table == A.nftables
    assert machine.commands()[3:] == [
        f"{NFT} -f {STATE}/pending.nft",
        f"{NETPLAN} apply",
        f"{NFT} -f {STATE}/rollback/ruleset.nft",
        f"{NETPLAN} apply",
        f"{SYSTEMCTL} stop network-isolation-rollback.timer",
    ]
    after = files(root)
    del after["var/lib/network-isolation/rejected.json"]
    assert after == before


def test_probe_failure_restores_the_previous_state_byte_for_byte(
    host: Host, machine: FakeMachine, probe: FakeProbe, root: Path
):
    host.apply(A, [CONTROLLER, GATEWAY])
    before = files(root)
    probe.calls.clear()
    probe.answers = [{}, {CONTROLLER: "timed out"}]

    with pytest.raises(RolledBackError) as raised:
        host.apply(B, [CONTROLLER, GATEWAY])

    assert raised.value.stage == "probe"
    assert "juju controller 10.10.0.2:17070 (timed out)" in str(raised.value)
    assert "previous state restored" in str(raised.value)
    assert [budget for _, budget in probe.calls] == [5.0, 20.0]
    assert machine.table == A.nftables
    after = files(root)
    rejected = json.loads(after.pop("var/lib/network-isolation/rejected.json"))
    assert rejected == {
        "fingerprint": fingerprint(B),
        "stage": "probe",
        "reason": "unreachable after applying: juju controller 10.10.0.2:17070 (timed out)",
    }
    assert after == before
    assert host.rejected() is not None


def test_rejected_artefacts_are_not_retried_until_they_change(
    host: Host, machine: FakeMachine, probe: FakeProbe, root: Path
):
    host.apply(A, [CONTROLLER])
    probe.answers = [{}, {CONTROLLER: "timed out"}]
    with pytest.raises(RolledBackError):
        host.apply(B, [CONTROLLER])
    before = tree(root)
    machine.calls.clear()
    probe.calls.clear()

    with pytest.raises(RejectedError, match="failed at probe") as raised:
        host.apply(B, [CONTROLLER])
    assert raised.value.stage == "rejected"
    assert machine.calls == [] and probe.calls == []
    assert tree(root) == before

    # the inputs change: new artefacts are tried, and their success clears the record
    assert host.apply(C, [CONTROLLER]).changed
    assert machine.table == C.nftables
    assert host.rejected() is None


def test_a_forced_apply_retries_rejected_artefacts(
    host: Host, machine: FakeMachine, probe: FakeProbe
):
    host.apply(A, [CONTROLLER])
    probe.answers = [{}, {CONTROLLER: "timed out"}]
    with pytest.raises(RolledBackError):
        host.apply(B, [CONTROLLER])
    assert host.apply(B, [CONTROLLER], force=True).changed
    assert machine.table == B.nftables
    assert host.rejected() is None  # it worked: no longer rejected


def test_back_to_the_applied_artefacts_after_a_rejection_is_a_no_op(
    host: Host, machine: FakeMachine, probe: FakeProbe
):
    host.apply(A, [CONTROLLER])
    probe.answers = [{}, {CONTROLLER: "timed out"}]
    with pytest.raises(RolledBackError):
        host.apply(B, [CONTROLLER])
    machine.calls.clear()
    assert not host.apply(A, [CONTROLLER]).changed
    assert machine.calls == []


def test_targets_unreachable_before_the_change_are_not_held_against_it(
    host: Host, machine: FakeMachine, probe: FakeProbe
):
    probe.answers = [{GATEWAY: "timed out"}, {}]
    result = host.apply(A, [CONTROLLER, GATEWAY])
    assert result.changed
    assert result.skipped_targets == ("gateway 10.10.0.1:22",)
    assert probe.calls[1][0] == [CONTROLLER]


def test_no_targets_means_no_probe(host: Host, probe: FakeProbe):
    assert host.apply(A).changed
    assert probe.calls == []


# -- the dead-man timer ------------------------------------------------------------------------


def test_arming_failure_stops_before_any_change(host: Host, machine: FakeMachine, root: Path):
    host.apply(A)
    before = files(root)
    machine.calls.clear()
    machine.fail(
        SYSTEMD_RUN, stderr="Failed to start transient timer unit: Access denied", times=2
    )

    with pytest.raises(ApplyError) as raised:
        host.apply(B)

    assert raised.value.stage == "arm"
    assert "Access denied" in str(raised.value)
    assert machine.table == A.nftables
    assert not any(c.startswith(f"{NFT} -f") for c in machine.commands())
    assert not (root / "var/lib/network-isolation/armed").exists()
    assert host.rejected() is None  # not the artefacts' fault: retried next time
    assert files(root) == before


def test_a_leftover_timer_is_stopped_and_arming_retried(host: Host, machine: FakeMachine):
    machine.fail(SYSTEMD_RUN, stderr="Unit network-isolation-rollback.timer already exists")
    assert host.apply(A).changed
    assert machine.commands()[2:6] == [
        ARM,
        f"{SYSTEMCTL} stop network-isolation-rollback.timer",
        f"{SYSTEMCTL} reset-failed network-isolation-rollback.timer "
        "network-isolation-rollback.service",
        ARM,
    ]


def fake_tool(path: Path, log: Path) -> str:
    path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\n')
    path.chmod(0o755)
    return str(path)


def test_the_dead_man_script_restores_a_killed_apply(
    root: Path, machine: FakeMachine, probe: FakeProbe, tmp_path: Path
):
    """The hook dies between apply and confirm, and systemd runs the script.

    The next hook sees the previous state and the failed artefacts rejected.
    """
    log = tmp_path / "tools.log"
    tools = Tools(
        nft=fake_tool(tmp_path / "nft", log), netplan=fake_tool(tmp_path / "netplan", log)
    )
    host = Host(root, machine, probe=probe, tools=tools)
    machine_nft = tools.nft
    # the fake machine plays nft under its configured path
    machine.run = _renamed(machine.run, {machine_nft: NFT, tools.netplan: NETPLAN})  # type: ignore[method-assign]
    host.apply(A, [CONTROLLER])
    before = files(root)
    probe.answers = [{}, Killed()]

    with pytest.raises(Killed):
        host.apply(B, [CONTROLLER])

    assert (root / "etc/netplan/90-network-isolation.yaml").read_text() == B.netplan
    arm = next(c for c in machine.calls if c[0] == SYSTEMD_RUN)
    assert arm[-2:] == host.rollback_command()
    done = subprocess.run(arm[-2:], capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    assert log.read_text() == f"nft -f {host.rollback_dir}/ruleset.nft\nnetplan apply\n"
    after = files(root)
    rejected = json.loads(after.pop("var/lib/network-isolation/rejected.json"))
    assert rejected["fingerprint"] == fingerprint(B) and rejected["stage"] == "confirm"
    after.pop("var/lib/network-isolation/rollback.sh")  # the next apply clears it
    after = {k: v for k, v in after.items() if "/rollback/" not in k}
    assert after == before
    # running it again (a second timer, a late start) does nothing: the marker is gone
    assert subprocess.run(arm[-2:], check=False).returncode == 0
    assert log.read_text().count("\n") == 2
    with pytest.raises(RejectedError, match="not confirmed within 300 s"):
        host.apply(B, [CONTROLLER])


def _renamed(run: Callable[[Sequence[str]], Result], names: dict[str, str]):
    def wrapped(argv: Sequence[str]) -> Result:
        return run([names.get(argv[0], argv[0]), *argv[1:]])

    return wrapped


def test_the_next_hook_restores_a_killed_apply_itself(
    host: Host, machine: FakeMachine, probe: FakeProbe, root: Path
):
    host.apply(A, [CONTROLLER])
    before = files(root)
    probe.answers = [{}, Killed()]
    with pytest.raises(Killed):
        host.apply(B, [CONTROLLER])
    assert machine.table == B.nftables
    machine.calls.clear()

    # the timer has not fired yet when the next hook runs, with the same wanted artefacts
    with pytest.raises(RejectedError):
        host.apply(B, [CONTROLLER])

    assert machine.commands() == [
        f"{NFT} -f {STATE}/rollback/ruleset.nft",
        f"{NETPLAN} apply",
        f"{SYSTEMCTL} stop network-isolation-rollback.timer",
    ]
    assert machine.table == A.nftables
    after = files(root)
    assert json.loads(after.pop("var/lib/network-isolation/rejected.json"))["stage"] == "confirm"
    assert after == before


def test_a_timer_that_fires_before_the_confirmation_wins(
    host: Host, machine: FakeMachine, probe: FakeProbe, root: Path
):
    host.apply(A, [CONTROLLER])
    probe.calls.clear()
    # the dead-man takes the marker while the probe runs (the apply took too long)
    probe.side_effect = lambda: os.rename(
        root / "var/lib/network-isolation/armed", root / "var/lib/network-isolation/fired"
    )
    with pytest.raises(RolledBackError) as raised:
        host.apply(B, [CONTROLLER])
    assert raised.value.stage == "confirm"
    assert "fired before the apply was confirmed" in str(raised.value)
    assert (root / "var/lib/network-isolation/ruleset.nft").read_text() == A.nftables


# -- enforcement off, persistence --------------------------------------------------------------


def test_off_removes_our_table_and_netplan_and_boots_into_nothing(
    host: Host, machine: FakeMachine, root: Path
):
    host.apply(A)
    machine.calls.clear()

    result = host.apply(OFF)

    assert result.changed and result.netplan_applied
    assert machine.table is None
    assert not (root / "etc/netplan/90-network-isolation.yaml").exists()
    # the boot unit stays and loads a ruleset that only removes our table
    assert (root / "var/lib/network-isolation/ruleset.nft").read_text() == REMOVAL
    assert host.boot_command() == [NFT, "-f", f"{root}/var/lib/network-isolation/ruleset.nft"]
    assert host.drift() is None
    machine.calls.clear()
    assert not host.apply(OFF).changed and machine.calls == []


def test_the_boot_unit_loads_our_ruleset_before_the_network(host: Host, root: Path):
    host.apply(A)
    text = (root / "etc/systemd/system/network-isolation.service").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(text)
    assert unit["Unit"]["DefaultDependencies"] == "no"
    assert unit["Unit"]["Wants"] == "network-pre.target"
    assert "network-pre.target" in unit["Unit"]["Before"].split()
    assert unit["Unit"]["After"] == "nftables.service"
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["ExecStart"] == f"{NFT} -f {root}/var/lib/network-isolation/ruleset.nft"
    assert "ExecStop" not in unit["Service"]
    assert unit["Install"]["WantedBy"] == "sysinit.target"
    link = root / "etc/systemd/system/sysinit.target.wants/network-isolation.service"
    assert os.readlink(link) == "/etc/systemd/system/network-isolation.service"
    assert (root / "etc/nftables.conf").read_text() == "flush ruleset\n"


def test_a_disabled_unit_is_enabled_again_without_reapplying(
    host: Host, machine: FakeMachine, root: Path
):
    host.apply(A)
    (root / "etc/systemd/system/sysinit.target.wants/network-isolation.service").unlink()
    machine.calls.clear()
    assert not host.apply(A).changed
    assert machine.commands() == [f"{SYSTEMCTL} enable network-isolation.service"]


# -- audit: drift and counters -----------------------------------------------------------------


def test_drift(host: Host, machine: FakeMachine):
    assert host.drift() is None
    assert machine.calls == []  # nothing applied yet: nothing to compare, no command
    host.apply(A)
    machine.calls.clear()
    assert host.drift() is None
    assert machine.commands() == [f"{NFT} -s list table inet network_isolation"]
    machine.table = ruleset(4444)
    assert host.drift() == "table inet network_isolation differs from the applied ruleset"
    machine.table = None
    assert host.drift() == "table inet network_isolation is missing"
    host.apply(A, force=True)
    assert host.drift() is None


def test_drift_when_enforcement_is_off_but_our_table_is_back(host: Host, machine: FakeMachine):
    host.apply(OFF)
    machine.table = A.nftables
    assert host.drift() == "table inet network_isolation exists but enforcement is off"


def test_nft_errors_other_than_a_missing_table_are_host_errors(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.fail(NFT, "-s", stderr="Error: Operation not permitted")
    with pytest.raises(HostError, match="Operation not permitted"):
        host.drift()


NFT_JSON = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "network_isolation", "handle": 4}},
        {"counter": {"family": "inet", "name": "data_in_drop", "table": "network_isolation",
                     "handle": 2, "packets": 7, "bytes": 420}},
        {"chain": {"family": "inet", "table": "network_isolation", "name": "input"}},
        {"rule": {"chain": "input", "expr": [{"counter": "data_in_drop"}, {"drop": None}]}},
        {"rule": {"chain": "input", "comment": "storage out", "expr": [
            {"counter": {"packets": 3, "bytes": 180}}, {"drop": None}]}},
        {"rule": {"chain": "output", "comment": "storage out", "expr": [
            {"counter": {"packets": 1, "bytes": 60}}, {"accept": None}]}},
        {"rule": {"chain": "output", "expr": [{"counter": {"packets": 9, "bytes": 9}}]}},
    ]
}  # fmt: skip


def test_counters(host: Host, machine: FakeMachine):
    assert host.counters() == {}  # no table
    host.apply(A)
    machine.json_listing = json.dumps(NFT_JSON)
    assert host.counters() == {
        "data_in_drop": {"packets": 7, "bytes": 420},
        "storage out": {"packets": 4, "bytes": 240},
    }
    machine.json_listing = "not json"
    with pytest.raises(HostError, match="unreadable"):
        host.counters()


def test_diff_against_what_is_applied(host: Host):
    assert host.diff(A).startswith("--- /dev/null\n+++ wanted/ruleset.nft\n")
    host.apply(A)
    assert host.diff(A) == ""
    change = host.diff(Art(ruleset(1005), None))
    assert "-    tcp dport 1001 drop\n+    tcp dport 1005 drop\n" in change
    assert "--- applied/90-network-isolation.yaml\n+++ /dev/null\n" in change
    assert host.applied().netplan == A.netplan


# -- removal -----------------------------------------------------------------------------------


def test_removal_leaves_the_host_as_it_was(host: Host, machine: FakeMachine, root: Path):
    before = files(root)
    registry = MachineRegistry(root / "var/lib/network-isolation/units")
    registry.record("network-isolation/0", frozenset({"compute"}))
    host.apply(A)
    registry.forget("network-isolation/0")
    machine.calls.clear()

    host.remove()

    assert machine.commands() == [
        f"{NFT} -f TMP",
        f"{NETPLAN} apply",
        f"{SYSTEMCTL} disable network-isolation.service",
        f"{SYSTEMCTL} daemon-reload",
    ]
    assert machine.table is None
    assert files(root) == before
    assert not (root / "var/lib/network-isolation").exists()
    assert not list((root / "etc/systemd/system").rglob("*network-isolation*"))


def test_removal_keeps_the_registry_of_units_still_there(host: Host, root: Path):
    registry = MachineRegistry(root / "var/lib/network-isolation/units")
    registry.record("network-isolation/1", frozenset({"storage"}))
    host.apply(A)
    host.remove()
    assert registry.entries() == {"network-isolation/1": frozenset({"storage"})}


def test_removal_of_nothing_only_removes_the_table(host: Host, machine: FakeMachine, root: Path):
    before = tree(root)
    host.remove()
    assert machine.commands() == [f"{NFT} -f TMP"]
    assert tree(root) == before


def test_removal_tries_every_step_and_reports_failures(
    host: Host, machine: FakeMachine, root: Path
):
    host.apply(A)
    machine.fail(NFT, "-f", stderr="Error: Operation not permitted")
    with pytest.raises(HostError, match="removal incomplete: nft -f: Error: Operation not"):
        host.remove()
    assert not (root / "etc/netplan/90-network-isolation.yaml").exists()
    assert not (root / "etc/systemd/system/network-isolation.service").exists()


def test_removal_during_an_unconfirmed_apply_disarms_the_timer(
    host: Host, machine: FakeMachine, probe: FakeProbe, root: Path
):
    probe.answers = [{}, Killed()]
    with pytest.raises(Killed):
        host.apply(A, [CONTROLLER])
    machine.calls.clear()
    host.remove()
    assert machine.commands()[0] == f"{SYSTEMCTL} stop network-isolation-rollback.timer"
    assert not (root / "var/lib/network-isolation").exists()


# -- prerequisites, probe targets, constants ---------------------------------------------------


def test_install_prerequisites(root: Path, machine: FakeMachine, tmp_path: Path):
    nft = tmp_path / "sbin/nft"
    installed: list[list[str]] = []

    def installer(packages: Sequence[str]) -> None:
        installed.append(list(packages))
        nft.parent.mkdir(exist_ok=True)
        nft.touch()

    host = Host(root, machine, tools=Tools(nft=str(nft)), installer=installer)
    assert host.install_prerequisites() is True
    assert installed == [["nftables"]]
    assert host.install_prerequisites() is False
    assert installed == [["nftables"]]
    assert machine.calls == []


def test_install_prerequisites_fails_when_nft_is_still_missing(root: Path, tmp_path: Path):
    host = Host(root, FakeMachine(root), tools=Tools(nft=str(tmp_path / "nft")),
                installer=lambda _: None)  # fmt: skip
    with pytest.raises(HostError, match="still missing"):
        host.install_prerequisites()


def test_controller_targets_from_juju_api_addresses():
    assert controller_targets(
        "10.10.0.2:17070 10.10.0.3:17070,[fd00::2]:17070 10.10.0.2:17070"
    ) == [
        ProbeTarget("10.10.0.2", 17070, label="juju controller"),
        ProbeTarget("10.10.0.3", 17070, label="juju controller"),
        ProbeTarget("fd00::2", 17070, label="juju controller"),
    ]
    assert controller_targets(None) == []
    assert controller_targets("garbage :1 host:") == []
    assert str(ProbeTarget("fd00::2", 17070)) == "[fd00::2]:17070"


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_probe_on_loopback(listener: int):
    up = ProbeTarget("127.0.0.1", listener)
    down = ProbeTarget("127.0.0.1", closed_port())
    answers_with_reset = ProbeTarget("127.0.0.1", down.port, refused_ok=True)
    start = time.monotonic()
    failures = tcp_probe([up, down, answers_with_reset], 0.6, interval=0.1)
    took = time.monotonic() - start
    assert set(failures) == {down}
    assert "refused" in failures[down].lower()
    assert 0.4 < took < 1.5  # retried until the budget ran out, and no longer
    assert tcp_probe([], 10) == {}


def test_write_atomically_bytes_and_mode(tmp_path: Path):
    path = tmp_path / "a/b.yaml"
    write_atomically(path, b"x\r\ny\n", 0o600)
    assert path.read_bytes() == b"x\r\ny\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["b.yaml"]


def test_names_match_the_renderer():
    render = pytest.importorskip("network_isolation.render")
    assert (render.TABLE_FAMILY, render.TABLE_NAME) == ("inet", "network_isolation")
    assert render.NETPLAN_FILE_NAME == host_module.NETPLAN_FILE_NAME
    assert host_module.REMOVAL_RULESET == REMOVAL


# -- the rollback itself failing ---------------------------------------------------------------


def test_a_failed_rollback_leaves_the_dead_man_armed(
    host: Host, machine: FakeMachine, probe: FakeProbe, root: Path
):
    host.apply(A, [CONTROLLER])
    probe.answers = [{}, {CONTROLLER: "timed out"}]
    original = machine.run

    def run(argv: Sequence[str]) -> Result:
        if list(argv[:2]) == [NFT, "-f"] and argv[2].endswith("rollback/ruleset.nft"):
            machine.calls.append(list(argv))
            return Result(1, "", "Error: Operation not permitted")
        return original(argv)

    machine.run = run  # type: ignore[method-assign]
    with pytest.raises(
        RolledBackError,
        match="rollback failed .nft -f: Error: Operation not permitted.: the rollback timer",
    ):
        host.apply(B, [CONTROLLER])
    # the timer was not cancelled: it retries the restore from the snapshot it was given
    assert (root / "var/lib/network-isolation/armed").exists()
    assert (root / "var/lib/network-isolation/rollback/ruleset.nft").read_text() == A.nftables
    assert f"{SYSTEMCTL} stop network-isolation-rollback.timer" not in machine.commands()[-3:]
    # the next hook tries the restore again before anything else, and says so if it cannot
    with pytest.raises(HostError, match="cannot restore after an unconfirmed apply"):
        host.apply(C, [CONTROLLER])
    machine.run = original  # type: ignore[method-assign]
    with pytest.raises(RejectedError, match="failed at probe"):
        host.apply(B, [CONTROLLER])
    assert machine.table == A.nftables
    assert not (root / "var/lib/network-isolation/armed").exists()


def test_a_first_apply_that_fails_leaves_no_netplan_file(
    host: Host, machine: FakeMachine, probe: FakeProbe, root: Path
):
    before = files(root)
    probe.answers = [{}, {CONTROLLER: "timed out"}]
    with pytest.raises(RolledBackError):
        host.apply(A, [CONTROLLER])
    assert machine.table is None
    after = files(root)
    assert json.loads(after.pop("var/lib/network-isolation/rejected.json"))["stage"] == "probe"
    assert after == before


def test_a_marker_without_a_snapshot_is_only_disarmed(
    host: Host, machine: FakeMachine, root: Path
):
    (root / "var/lib/network-isolation").mkdir(parents=True)
    (root / "var/lib/network-isolation/armed").write_text("x\n")
    assert host.apply(A).changed
    assert machine.commands()[0] == f"{SYSTEMCTL} stop network-isolation-rollback.timer"


def test_removal_reports_netplan_and_systemctl_failures(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.fail(NETPLAN, "apply", stderr="Error: networkd is down")
    machine.fail(SYSTEMCTL, "disable", stderr="Failed to disable unit")
    with pytest.raises(HostError) as raised:
        host.remove()
    assert "netplan apply: Error: networkd is down" in str(raised.value)
    assert "systemctl disable: Failed to disable unit" in str(raised.value)


def test_systemctl_failures_on_persistence_are_host_errors(host: Host, machine: FakeMachine):
    machine.fail(SYSTEMCTL, "daemon-reload", stderr="Failed to reload daemon: Access denied")
    with pytest.raises(HostError, match="systemctl daemon-reload: Failed to reload daemon"):
        host.apply(A)


def test_a_netplan_file_that_is_not_yaml_is_refused(host: Host):
    with pytest.raises(InvalidArtefactsError, match="netplan policy routing") as raised:
        host.apply(Art(A.nftables, "network: [unclosed\n"))
    assert raised.value.stage == "validate-routing"


def test_counters_report_nft_errors(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.fail(NFT, "-j", stderr="Error: Operation not permitted")
    with pytest.raises(HostError, match="nft -j list table: Error: Operation not permitted"):
        host.counters()


# -- the production runner and installer --------------------------------------------------------


def test_subprocess_runner(tmp_path: Path):
    runner = host_module.SubprocessRunner(timeout=0.5)
    done = runner.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert done == Result(3, "out\n", "err\n")
    assert runner.run([str(tmp_path / "missing")]).returncode == 127
    slow = runner.run(["/bin/sleep", "5"])
    assert slow.returncode == 124 and "timed out" in slow.stderr


def test_apt_install_reports_failures(monkeypatch: pytest.MonkeyPatch):
    apt = pytest.importorskip("charmlibs.apt")
    asked: list[object] = []

    def add_package(names: object) -> None:
        asked.append(names)
        raise apt.PackageError("Failed to install packages: nftables")

    monkeypatch.setattr(apt, "add_package", add_package)
    with pytest.raises(HostError, match="cannot install nftables: Failed to install"):
        host_module.apt_install(["nftables"])
    assert asked == [["nftables"]]


@pytest.mark.parametrize(
    "extra",
    [
        "flush ruleset",
        "table inet lxd {\n}",
        "delete table ip filter",
        'include "/etc/nftables.conf"',
        "add rule inet network_isolation_other input drop",
    ],
)
def test_a_ruleset_that_reaches_beyond_our_table_is_refused(
    host: Host, machine: FakeMachine, extra: str
):
    with pytest.raises(InvalidArtefactsError, match="reaches beyond table inet network_isolation"):
        host.apply(Art(A.nftables + extra + "\n", None))
    assert machine.calls == []


def test_statements_on_our_table_are_accepted(host: Host):
    extra = "add element inet network_isolation blocked { 192.0.2.1 }\n# a comment\n"
    assert host.apply(Art(A.nftables + extra, None)).changed


def test_repair_drift_reloads_what_was_confirmed_not_a_rejected_change(
    host: Host, machine: FakeMachine, probe: FakeProbe
):
    assert host.repair_drift() is None  # nothing applied: nothing to repair
    host.apply(A, [CONTROLLER])
    probe.answers = [{}, {CONTROLLER: "timed out"}]
    with pytest.raises(RolledBackError):
        host.apply(B, [CONTROLLER])
    machine.calls.clear()
    assert host.repair_drift([CONTROLLER]) is None
    assert machine.commands() == [f"{NFT} -s list table inet network_isolation"]

    machine.table = None
    assert host.repair_drift([CONTROLLER]) == "table inet network_isolation is missing"
    assert machine.table == A.nftables
    assert host.drift() is None
    assert host.rejected() is not None  # B stays rejected


class RouteRunner:
    """Answers `ip -j route show default` per family, as iproute2 prints it."""

    def __init__(self, v4: str, v6: str, v6_rc: int = 0):
        self.answers = {"-4": Result(0, v4), "-6": Result(v6_rc, v6)}
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> Result:
        self.calls.append(list(argv))
        return self.answers[argv[2]]


def test_default_gateways_are_read_from_both_families(root: Path):
    runner = RouteRunner(
        '[{"dst":"default","gateway":"10.10.0.1","dev":"enp1s0"}]',
        '[{"dst":"default","gateway":"fd00:10::1","dev":"enp1s0"},{"dst":"default","dev":"x"}]',
    )
    assert Host(root, runner).default_gateways() == ["10.10.0.1", "fd00:10::1"]
    assert all(call[:3] == ["/sbin/ip", "-j", call[2]] for call in runner.calls)


@pytest.mark.parametrize("garbage", ["not json", '{"gateway": 1}', '[{"gateway": 5}]', "[1]"])
def test_default_gateways_ignore_what_they_cannot_read(root: Path, garbage: str):
    runner = RouteRunner(garbage, "", v6_rc=1)
    assert Host(root, runner).default_gateways() == []


def test_interface_kinds_come_from_the_hosts_netplan_files(root: Path):
    (root / "etc/netplan/50-cloud-init.yaml").write_text(
        "network:\n  version: 2\n  ethernets: {enp1s0: {}, enp2s0: {}}\n"
        "  bonds: {bond0: {interfaces: [enp1s0, enp2s0]}}\n"
        "  vlans: {bond0.20: {id: 20, link: bond0}}\n"
    )
    (root / "run/netplan").mkdir(parents=True, exist_ok=True)
    (root / "run/netplan/99-broken.yaml").write_text("network: [not, a, mapping\n")
    kinds = Host(root, RouteRunner("[]", "[]")).interface_kinds()
    assert kinds["bond0"] == "bonds"
    assert kinds["bond0.20"] == "vlans"
    assert kinds["enp1s0"] == "ethernets"
