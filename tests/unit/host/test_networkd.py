"""Our netplan apply leaves other software's rules and routes alone (networkd drop-in).

The functional test `tests/functional/test_networkd.py` shows the same against the real
systemd-networkd; here the fake machine of `host_fakes` records the commands.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from host_fakes import (
    IP,
    NETPLAN,
    OFF,
    RESTART_NETWORKD,
    SYSTEMCTL,
    A,
    Art,
    B,
    FakeMachine,
    files,
    netplan,
    ruleset,
)

from network_isolation.host import Host, HostError, RolledBackError
from network_isolation.host.networkd import RoutingEntry, routing_entries, stale_routing

DROPIN = "etc/systemd/networkd.conf.d/90-network-isolation.conf"
TWO_NICS = """\
network:
  version: 2
  ethernets:
    enp2s0:
      routes:
        - {to: 10.20.1.0/24, via: 10.20.0.1, table: 101}
        - {to: 10.20.0.0/24, scope: link, table: 101}
      routing-policy:
        - {from: 10.20.0.11, table: 101, priority: 5000}
        - {to: 10.20.1.0/24, table: 101, priority: 5001}
  vlans:
    "enp3s0.40":
      routing-policy:
        - {from: "2001:db8:40::11", table: 104, priority: 17000}
"""


def test_the_drop_in_turns_off_both_foreign_settings(host: Host, root: Path):
    host.apply(A)
    parser = configparser.ConfigParser()
    parser.read_string((root / DROPIN).read_text())
    assert dict(parser["Network"]) == {
        "manageforeignroutingpolicyrules": "no",
        "manageforeignroutes": "no",
    }


def test_networkd_restarts_once_before_the_first_netplan_apply(host: Host, machine: FakeMachine):
    host.apply(A)
    first = machine.commands()
    assert first.index(RESTART_NETWORKD) == first.index(f"{NETPLAN} apply") - 1
    machine.calls.clear()
    host.apply(B)
    assert f"{NETPLAN} apply" in machine.commands()
    assert RESTART_NETWORKD not in machine.commands()


def test_a_ruleset_only_change_neither_writes_the_drop_in_nor_restarts(
    host: Host, machine: FakeMachine, root: Path
):
    host.apply(Art(ruleset(1001), None))
    assert not (root / DROPIN).exists()
    assert RESTART_NETWORKD not in machine.commands()


def test_a_changed_drop_in_is_rewritten_and_networkd_restarted(
    host: Host, machine: FakeMachine, root: Path
):
    host.apply(A)
    (root / DROPIN).write_text("[Network]\nManageForeignRoutes=yes\n")
    machine.calls.clear()
    host.apply(B)
    assert RESTART_NETWORKD in machine.commands()
    assert "ManageForeignRoutingPolicyRules=no" in (root / DROPIN).read_text()


def test_a_failed_restart_rolls_back_and_says_why(host: Host, machine: FakeMachine, root: Path):
    machine.fail(SYSTEMCTL, "try-restart", stderr="Job failed: networkd exited")
    with pytest.raises(RolledBackError, match="cannot restart systemd-networkd: Job failed") as e:
        host.apply(A)
    assert e.value.stage == "netplan-apply"
    assert machine.table is None
    assert not (root / "etc/netplan/90-network-isolation.yaml").exists()


def test_removal_deletes_our_rules_and_the_drop_in_then_restarts_networkd(
    host: Host, machine: FakeMachine, root: Path
):
    before = files(root)
    host.apply(A)
    machine.calls.clear()
    host.remove()
    commands = machine.commands()
    # our last netplan apply runs with the drop-in; then networkd gets its defaults back
    assert commands[1:4] == [
        f"{NETPLAN} apply",
        f"{IP} -4 rule del priority 101 from 10.20.0.0/24 table 101",
        RESTART_NETWORKD,
    ]
    assert commands.count(RESTART_NETWORKD) == 1
    assert not (root / DROPIN).parent.exists()
    assert files(root) == before


def test_removal_without_the_drop_in_leaves_networkd_alone(host: Host, machine: FakeMachine):
    host.apply(Art(ruleset(1001), None))  # no netplan file of ours: no drop-in
    machine.calls.clear()
    host.remove()
    assert RESTART_NETWORKD not in machine.commands()


def test_a_failed_restart_at_removal_is_reported(host: Host, machine: FakeMachine, root: Path):
    host.apply(A)
    machine.fail(SYSTEMCTL, "try-restart", stderr="Job failed: networkd exited")
    with pytest.raises(HostError, match="cannot restart systemd-networkd: Job failed"):
        host.remove()
    assert not (root / DROPIN).exists()  # it takes effect when networkd next restarts


def test_turning_routing_off_removes_the_drop_in(host: Host, machine: FakeMachine, root: Path):
    host.apply(A)
    machine.calls.clear()
    host.apply(Art(ruleset(1002), None))
    assert not (root / DROPIN).exists()
    assert not (root / "etc/netplan/90-network-isolation.yaml").exists()
    assert machine.commands().count(RESTART_NETWORKD) == 1
    machine.calls.clear()
    host.apply(OFF)
    assert not (root / DROPIN).exists()
    assert RESTART_NETWORKD not in machine.commands()


def test_a_change_deletes_what_the_previous_file_had_and_the_new_one_has_not(
    host: Host, machine: FakeMachine
):
    host.apply(A)
    machine.calls.clear()
    host.apply(B)
    deletions = [c for c in machine.commands() if c.startswith(IP)]
    assert deletions == [f"{IP} -4 rule del priority 101 from 10.20.0.0/24 table 101"]
    assert machine.commands().index(deletions[0]) > machine.commands().index(f"{NETPLAN} apply")


def test_failed_deletions_do_not_fail_the_apply(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.fail(IP, "-4", "rule", "del", stderr="RTNETLINK answers: No such file or directory")
    assert host.apply(B).changed


def test_routing_entries_of_rules_and_table_routes_in_every_section():
    assert routing_entries(TWO_NICS) == {
        RoutingEntry("route", "-4", ("10.20.1.0/24", "via", "10.20.0.1", "table", "101")),
        RoutingEntry("route", "-4", ("10.20.0.0/24", "table", "101")),
        RoutingEntry("rule", "-4", ("priority", "5000", "from", "10.20.0.11", "table", "101")),
        RoutingEntry("rule", "-4", ("priority", "5001", "to", "10.20.1.0/24", "table", "101")),
        RoutingEntry(
            "rule", "-6", ("priority", "17000", "from", "2001:db8:40::11", "table", "104")
        ),
    }


@pytest.mark.parametrize("text", [None, "", "network: [", "network: {version: 2}", "- 1\n"])
def test_routing_entries_of_nothing_or_garbage_are_none(text: str | None):
    assert routing_entries(text) == set()


def test_stale_routing_lists_rules_before_routes_and_keeps_what_stays():
    stale = stale_routing(TWO_NICS, netplan(101))
    assert [e.kind for e in stale] == ["rule", "rule", "rule", "route", "route"]
    assert stale_routing(TWO_NICS, TWO_NICS) == []
    assert stale_routing(None, TWO_NICS) == []
    assert stale[0].delete_argv("/sbin/ip")[:4] == ["/sbin/ip", "-4", "rule", "del"]
