"""Removal: the host as it was before us, every step tried.

Driven through the fake machine of `host_fakes`; expected values are written out here,
never taken from the code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from host_fakes import (
    CONTROLLER,
    IP,
    NETPLAN,
    NFT,
    RESTART_NETWORKD,
    SYSTEMCTL,
    A,
    FakeMachine,
    FakeProbe,
    Killed,
    files,
    tree,
)

from network_isolation.host import Host, HostError, MachineRegistry

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
        f"{IP} -4 rule del priority 101 from 10.20.0.0/24 table 101",
        RESTART_NETWORKD,  # the drop-in gone, networkd manages foreign routing again
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


def test_removal_reports_netplan_and_systemctl_failures(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.fail(NETPLAN, "apply", stderr="Error: networkd is down")
    machine.fail(SYSTEMCTL, "disable", stderr="Failed to disable unit")
    with pytest.raises(HostError) as raised:
        host.remove()
    assert "netplan apply: Error: networkd is down" in str(raised.value)
    assert "systemctl disable: Failed to disable unit" in str(raised.value)


@pytest.mark.parametrize("marker", ["armed", "fired", "restoring"])
def test_removal_leaves_no_marker_of_an_apply_in_flight(host: Host, root: Path, marker: str):
    host.apply(A)
    (root / "var/lib/network-isolation" / marker).write_text("x\n")
    host.remove()
    assert not (root / "var/lib/network-isolation").exists()
