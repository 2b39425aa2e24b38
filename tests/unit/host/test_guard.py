"""The guard: probes, the dead-man timer, rollback and rejected artefacts.

Driven through the fake machine of `host_fakes`; expected values are written out here,
never taken from the code.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from host_fakes import (
    ARM,
    CONTROLLER,
    GATEWAY,
    IP,
    NETPLAN,
    NFT,
    STATE,
    SYSTEMCTL,
    SYSTEMD_RUN,
    A,
    B,
    C,
    FakeMachine,
    FakeProbe,
    Killed,
    files,
    tree,
)

from network_isolation.host import (
    ApplyError,
    Host,
    HostError,
    ProbeTarget,
    RejectedError,
    Result,
    RolledBackError,
    Tools,
    fingerprint,
)

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
    # the timer is stopped, its marker held, before anything is restored
    assert machine.commands()[3:] == [
        f"{NFT} -f {STATE}/pending.nft",
        f"{NETPLAN} apply",
        f"{SYSTEMCTL} stop network-isolation-rollback.timer",
        f"{NFT} -f {STATE}/rollback/ruleset.nft",
        f"{NETPLAN} apply",
        f"{IP} -4 rule del priority 102 from 10.20.0.0/24 table 102",
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


# -- neighbours: judged by majority per network, so that no single one can veto -----------------


def neighbour(network: str, address: str) -> ProbeTarget:
    """A neighbour as the charm probes it: tcp/22, a reset counts, judged with its network's."""
    return ProbeTarget(
        address, 22, refused_ok=True, label=f"{network} neighbour", neighbour_on=network
    )


STORAGE = [neighbour("storage", f"10.30.0.{i}") for i in (11, 12, 13)]
INTERNAL = [neighbour("internal", f"10.40.0.{i}") for i in (11, 12, 13)]


def applied_despite(
    host: Host, machine: FakeMachine, probe: FakeProbe, lost: Sequence[ProbeTarget]
) -> bool:
    """Apply A then B with every target answering before; True if B stands with `lost` cut."""
    targets = [CONTROLLER, GATEWAY, *STORAGE, *INTERNAL]
    host.apply(A, targets)
    probe.answers = [{}, dict.fromkeys(lost, "timed out")]
    try:
        host.apply(B, targets)
    except RolledBackError as e:
        assert e.stage == "probe"
        assert machine.table == A.nftables and host.rejected() is not None
        return False
    assert machine.table == B.nftables and host.rejected() is None
    return True


def test_one_neighbour_lost_of_three_does_not_undo_the_apply(
    host: Host, machine: FakeMachine, probe: FakeProbe, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="network_isolation.host.guard"):
        assert applied_despite(host, machine, probe, [STORAGE[1]])
    assert [r.getMessage() for r in caplog.records] == [
        "neighbours unreachable after applying, too few to roll back (at least two, and most"
        " of a network's): storage neighbour 10.30.0.12:22 (timed out)"
    ]


def test_two_neighbours_lost_of_three_on_one_network_roll_back(
    host: Host, machine: FakeMachine, probe: FakeProbe
):
    assert not applied_despite(host, machine, probe, [STORAGE[0], STORAGE[2]])
    assert json.loads(host.guard.rejected_file.read_text())["reason"] == (
        "unreachable after applying: storage neighbour 10.30.0.11:22 (timed out),"
        " storage neighbour 10.30.0.13:22 (timed out)"
    )


def test_one_neighbour_lost_on_each_of_two_networks_does_not_undo_the_apply(
    host: Host, machine: FakeMachine, probe: FakeProbe
):
    assert applied_despite(host, machine, probe, [STORAGE[0], INTERNAL[0]])


def test_a_controller_lost_rolls_back_even_if_every_neighbour_answers(
    host: Host, machine: FakeMachine, probe: FakeProbe
):
    assert not applied_despite(host, machine, probe, [CONTROLLER])


def test_a_gateway_lost_rolls_back_even_if_every_neighbour_answers(
    host: Host, machine: FakeMachine, probe: FakeProbe
):
    assert not applied_despite(host, machine, probe, [GATEWAY])


@pytest.mark.parametrize(
    ("answered", "lost", "rolled_back"),
    [
        (1, 1, False),  # a lone neighbour cannot veto
        (2, 1, False),
        (2, 2, True),
        (3, 1, False),
        (3, 2, True),
        (3, 3, True),
        (4, 2, False),  # half is not a majority
        (4, 3, True),
    ],
)
def test_neighbours_roll_back_when_most_of_those_that_answered_are_lost_and_two_at_least(
    host: Host, probe: FakeProbe, answered: int, lost: int, rolled_back: bool
):
    published = [neighbour("storage", f"10.30.0.{i}") for i in range(11, 16)]
    silent_before = dict.fromkeys(published[answered:], "timed out")
    probe.answers = [silent_before, dict.fromkeys(published[:lost], "timed out")]
    if rolled_back:
        with pytest.raises(RolledBackError, match="unreachable after applying: storage"):
            host.apply(A, published)
    else:
        assert host.apply(A, published).changed


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
    assert machine.commands()[4:8] == [
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
    # kept: it says the change had started; the next apply clears it too
    assert after.pop("var/lib/network-isolation/pending.nft").decode() == B.nftables
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


def dies_once_pending_is_written(monkeypatch: pytest.MonkeyPatch, host: Host) -> None:
    """The hook dies right after the ruleset to load is written, before `nft -f` runs."""
    from network_isolation.host import nftables

    write = nftables.write_atomically

    def write_then_die(path: Path, content: str | bytes, mode: int = 0o644) -> None:
        write(path, content, mode)
        if path == host.table.pending_file:
            monkeypatch.setattr(nftables, "write_atomically", write)
            raise Killed

    monkeypatch.setattr(nftables, "write_atomically", write_then_die)


def test_the_dead_man_does_not_reject_a_change_whose_nft_never_ran(
    root: Path, machine: FakeMachine, probe: FakeProbe, tmp_path: Path, monkeypatch
):
    log = tmp_path / "tools.log"
    tools = Tools(
        nft=fake_tool(tmp_path / "nft", log), netplan=fake_tool(tmp_path / "netplan", log)
    )
    host = Host(root, machine, probe=probe, tools=tools)
    machine.run = _renamed(machine.run, {tools.nft: NFT, tools.netplan: NETPLAN})  # type: ignore[method-assign]
    host.apply(A, [CONTROLLER])
    before = files(root)
    dies_once_pending_is_written(monkeypatch, host)
    with pytest.raises(Killed):
        host.apply(B, [CONTROLLER])
    assert machine.table == A.nftables  # nft -f never ran

    arm = next(c for c in machine.calls if c[0] == SYSTEMD_RUN)
    done = subprocess.run(arm[-2:], capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    assert not log.exists()  # nothing to restore: no nft, no netplan
    assert host.rejected() is None
    assert not host.guard.is_armed()
    machine.calls.clear()
    assert host.apply(B, [CONTROLLER]).changed  # the next hook applies it as any change
    assert machine.table == B.nftables
    after = files(root)
    assert after.pop("var/lib/network-isolation/ruleset.nft") == B.nftables.encode()
    assert after.pop("etc/netplan/90-network-isolation.yaml") == (B.netplan or "").encode()
    assert {k for k, v in after.items() if before.get(k) != v} <= {
        "var/lib/network-isolation/live.nft"
    }


def test_the_next_hook_does_not_reject_a_change_whose_nft_never_ran(
    host: Host, machine: FakeMachine, root: Path, monkeypatch: pytest.MonkeyPatch
):
    host.apply(A, [CONTROLLER])
    dies_once_pending_is_written(monkeypatch, host)
    with pytest.raises(Killed):
        host.apply(B, [CONTROLLER])
    machine.calls.clear()

    assert host.apply(B, [CONTROLLER]).changed  # the timer has not fired yet

    commands = machine.commands()
    assert commands[0] == f"{SYSTEMCTL} stop network-isolation-rollback.timer"  # disarmed
    assert f"{NFT} -f {STATE}/rollback/ruleset.nft" not in commands  # nothing restored
    assert host.rejected() is None and machine.table == B.nftables


def test_a_failure_before_nft_runs_rolls_back_without_rejecting(
    host: Host, machine: FakeMachine, root: Path, monkeypatch: pytest.MonkeyPatch
):
    from network_isolation.host import nftables

    host.apply(A, [CONTROLLER])
    write = nftables.write_atomically

    def disk_full(path: Path, content: str | bytes, mode: int = 0o644) -> None:
        if path == host.table.pending_file:
            raise OSError(28, "No space left on device")
        write(path, content, mode)

    monkeypatch.setattr(nftables, "write_atomically", disk_full)
    with pytest.raises(RolledBackError, match="No space left on device"):
        host.apply(B, [CONTROLLER])
    assert host.rejected() is None  # not the artefacts' fault: retried next time
    monkeypatch.setattr(nftables, "write_atomically", write)
    assert host.apply(B, [CONTROLLER]).changed


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
        f"{SYSTEMCTL} stop network-isolation-rollback.timer",
        f"{NFT} -f {STATE}/rollback/ruleset.nft",
        f"{NETPLAN} apply",
        f"{IP} -4 rule del priority 102 from 10.20.0.0/24 table 102",
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
    # the boot unit, written before arming, stays inert: neither file it needs exists
    assert "ExecStart" in after.pop("etc/systemd/system/network-isolation.service").decode()
    assert after == before


def test_a_marker_without_a_snapshot_is_only_disarmed(
    host: Host, machine: FakeMachine, root: Path
):
    (root / "var/lib/network-isolation").mkdir(parents=True)
    (root / "var/lib/network-isolation/armed").write_text("x\n")
    assert host.apply(A).changed
    assert machine.commands()[0] == f"{SYSTEMCTL} stop network-isolation-rollback.timer"
