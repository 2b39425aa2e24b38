"""Our netplan file: validation over the host's files, policy routing, mode, interface kinds.

Driven through the fake machine of `host_fakes`; expected values are written out here,
never taken from the code.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from host_fakes import NETPLAN, NFT, A, Art, B, FakeMachine, RouteRunner, tree

from network_isolation.host import Host, InvalidArtefactsError


def test_validation_sees_the_hosts_netplan_files_plus_ours(host: Host, machine: FakeMachine):
    host.apply(A)
    assert machine.staged == [
        "etc/netplan/50-cloud-init.yaml",
        "etc/netplan/90-network-isolation.yaml",
        "lib/netplan/00-lib.yaml",
        "run/netplan/10-run.yaml",
    ]


def test_a_wrong_mode_on_our_netplan_file_is_repaired(host: Host, root: Path):
    host.apply(A)
    ours = root / "etc/netplan/90-network-isolation.yaml"
    ours.chmod(0o644)
    assert host.apply(A).changed
    assert stat.S_IMODE(ours.stat().st_mode) == 0o600


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


def test_a_netplan_file_that_is_not_yaml_is_refused(host: Host):
    with pytest.raises(InvalidArtefactsError, match="netplan policy routing") as raised:
        host.apply(Art(A.nftables, "network: [unclosed\n"))
    assert raised.value.stage == "validate-routing"


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


def test_interface_gateways_come_from_the_hosts_netplan_routes(root: Path):
    (root / "etc/netplan/50-cloud-init.yaml").write_text(
        "network:\n  version: 2\n  ethernets:\n"
        "    enp1s0:\n      addresses: [10.10.0.5/24]\n"
        "      routes: [{to: default, via: 10.10.0.1}, {to: 10.11.0.0/24, via: 10.10.0.254}]\n"
        "    enp4s0: {addresses: [10.50.0.5/24], gateway4: 10.50.0.1, gateway6: 'fd00:50::1'}\n"
        "  vlans:\n    bond0.20: {id: 20, link: bond0, routes: [{to: default, via: nowhere}]}\n"
    )
    gateways = Host(root, RouteRunner("[]", "[]")).interface_gateways()
    assert {name: [str(g) for g in found] for name, found in gateways.items()} == {
        "enp1s0": ["10.10.0.1", "10.10.0.254"],
        "enp4s0": ["10.50.0.1", "fd00:50::1"],
    }
