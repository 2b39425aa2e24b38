"""The Host: the apply flow as a whole, no-op, change, off, diff, drift repair and prerequisites.

Driven through the fake machine of `host_fakes`; expected values are written out here,
never taken from the code.
"""

from __future__ import annotations

import ipaddress
import stat
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from host_fakes import (
    ARM,
    CONTROLLER,
    NETPLAN,
    NFT,
    OFF,
    REMOVAL,
    RESTART_NETWORKD,
    STATE,
    SYSTEMCTL,
    A,
    Art,
    B,
    FakeMachine,
    FakeProbe,
    ruleset,
    tree,
)

from network_isolation.config import CharmConfig
from network_isolation.host import (
    Host,
    HostError,
    RolledBackError,
    Tools,
    controller_targets,
    gateway_target,
)
from network_isolation.model import Network
from network_isolation.peers import CloudView
from network_isolation.planner import InterfaceAddress, NetworkView, PlanInput, plan_machine
from network_isolation.reachability import neighbour_targets

# -- apply: first time, no-op, change ---------------------------------------------------------


def test_first_apply_runs_each_step_once_in_order(host: Host, machine: FakeMachine, root: Path):
    result = host.apply(A)

    assert result.changed and result.netplan_applied
    assert machine.commands() == [
        f"{NFT} -c -f TMP",
        f"{NETPLAN} generate --root-dir TMP",
        # the boot unit first: a reboot before the confirmation restores the snapshot
        f"{SYSTEMCTL} daemon-reload",
        f"{SYSTEMCTL} enable network-isolation.service",
        ARM,
        f"{NFT} -f {STATE}/pending.nft",
        RESTART_NETWORKD,
        f"{NETPLAN} apply",
        f"{SYSTEMCTL} stop network-isolation-rollback.timer",
        f"{NFT} -s list table inet network_isolation",
    ]
    ours = root / "etc/netplan/90-network-isolation.yaml"
    assert ours.read_text() == A.netplan
    assert stat.S_IMODE(ours.stat().st_mode) == 0o600
    persisted = root / "var/lib/network-isolation/ruleset.nft"
    assert persisted.read_text() == A.nftables
    assert stat.S_IMODE(persisted.stat().st_mode) == 0o600
    assert machine.table == A.nftables
    state = sorted(p.name for p in (root / "var/lib/network-isolation").iterdir())
    # no snapshot, marker or script left; the apply history the exporter reads
    assert state == ["history.json", "live.nft", "ruleset.nft"]
    assert (root / "etc/nftables.conf").read_text() == "flush ruleset\n"


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


def test_forced_apply_reloads_even_when_unchanged(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.table = None  # drift: someone deleted our table
    machine.calls.clear()
    result = host.apply(A, force=True)
    assert result.changed and not result.netplan_applied
    assert machine.table == A.nftables
    assert f"{NFT} -f {STATE}/pending.nft" in machine.commands()


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
    assert host.boot_command()[-1].endswith(
        f"exec {NFT} -f {root}/var/lib/network-isolation/ruleset.nft"
    )
    assert host.drift() is None
    machine.calls.clear()
    assert not host.apply(OFF).changed and machine.calls == []


def test_diff_against_what_is_applied(host: Host):
    assert host.diff(A).startswith("--- /dev/null\n+++ wanted/ruleset.nft\n")
    host.apply(A)
    assert host.diff(A) == ""
    change = host.diff(Art(ruleset(1005), None))
    assert "-    tcp dport 1001 drop\n+    tcp dport 1005 drop\n" in change
    assert "--- applied/90-network-isolation.yaml\n+++ /dev/null\n" in change
    assert host.applied().netplan == A.netplan


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


# -- prerequisites, probe targets, constants ---------------------------------------------------


def test_only_neighbours_are_judged_by_majority_each_with_its_network():
    networks = {
        Network.MANAGEMENT: NetworkView(
            interfaces=(
                InterfaceAddress(name="eth0", address=ipaddress.ip_interface("10.0.0.5/24")),
            )
        ),
        Network.STORAGE: NetworkView(
            interfaces=(
                InterfaceAddress(name="eth1", address=ipaddress.ip_interface("10.3.0.5/24")),
            )
        ),
    }
    plan = plan_machine(
        PlanInput(
            machine="machine-0",
            roles=frozenset({"compute"}),
            networks=networks,
            config=CharmConfig.model_validate({}),
        )
    )
    cloud = CloudView.model_validate(
        {"neighbours": {"management": ["10.0.0.7"], "storage": ["10.3.0.7", "10.3.0.8"]}}
    )
    neighbours = neighbour_targets(plan, cloud)
    assert [(str(t), t.neighbour_on) for t in neighbours] == [
        ("management neighbour 10.0.0.7:22", "management"),
        ("storage neighbour 10.3.0.7:22", "storage"),
        ("storage neighbour 10.3.0.8:22", "storage"),
    ]
    assert all(t.judged_by_majority for t in neighbours)
    alone = [*controller_targets("10.0.0.2:17070"), gateway_target("10.0.0.1")]
    assert not any(t.judged_by_majority for t in alone)


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
