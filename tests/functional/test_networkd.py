"""Other software's routing-policy rules and routes survive our apply and our removal.

Against the real systemd-networkd in a namespace of its own (see `networkd_bed`: what is real and
what is replaced). The control scenario shows the bed can see the damage: someone else's plain
`netplan apply` of a changed file, with networkd's defaults, deletes the same foreign rules.
After our removal networkd has its defaults back: the next `netplan apply` deletes them again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from network_isolation.host import Host, SubprocessRunner, Tools

from . import networkd_bed as bed
from .conftest import need

FOREIGN_RULES = [
    "-4 9:\tfrom 192.0.2.0/24 lookup 2004",
    "-4 10:\tfrom all fwmark 0x200/0xf00 lookup 2005 proto static",
]
# Routes on a link networkd does not manage (like cilium_host, docker0, lxdbr0, br-ex).
FOREIGN_ROUTES = [
    "198.51.100.0/24 dev peer1 table 2004 scope link",
    "203.0.113.0/24 dev peer1 scope link",
]
DROPIN = "90-network-isolation.conf"


@pytest.fixture(scope="module")
def prerequisites() -> None:
    problem = bed.missing()
    if problem:
        need(problem)


def ours(state: dict[str, list[str]]) -> list[str]:
    """Our rules (priorities 5000, 5001) and our routes (table 101) in a snapshot."""
    rules = [r for r in state["rules"] if r.split(":")[0].split()[-1] in ("5000", "5001")]
    return rules + [r for r in state["routes"] if "table 101" in r]


@pytest.mark.usefixtures("prerequisites")
def test_a_plain_netplan_apply_deletes_foreign_rules(tmp_path: Path):
    seen = bed.run("plain-netplan-apply", tmp_path)
    before, after = seen["before"], seen["after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert set(FOREIGN_RULES) <= set(before["rules"])
    assert not set(FOREIGN_RULES) & set(after["rules"])
    # networkd drops the foreign route through the link it reconfigures, too
    managed_route = "198.51.101.0/24 via 10.20.0.1 dev eth1 proto static"
    assert managed_route in before["routes"] and managed_route not in after["routes"]


@pytest.mark.usefixtures("prerequisites")
def test_foreign_rules_and_routes_survive_our_apply_and_removal(tmp_path: Path):
    seen = bed.run("charm-apply-and-remove", tmp_path)
    stages = ["before", "applied", "networkd restarted", "changed", "removed"]
    assert list(seen) == stages
    for stage in stages:
        state = seen[stage]
        assert isinstance(state, dict)
        assert set(FOREIGN_RULES) <= set(state["rules"]), stage
        assert set(FOREIGN_ROUTES) <= set(state["routes"]), stage

    applied, changed = seen["applied"], seen["changed"]
    assert isinstance(applied, dict) and isinstance(changed, dict)
    assert ours(applied) == [
        "-4 5000:\tfrom 10.20.0.11 lookup 101 proto static",
        "10.20.0.0/24 dev eth1 table 101 proto static scope link",
        "10.30.0.0/24 via 10.20.0.1 dev eth1 table 101 proto static",
    ]
    assert applied["dropins"] == [DROPIN]
    # After a restart networkd no longer knows rule 5000 and the route to 10.30.0.0/24 are
    # its own; the host deletes them itself when our file drops them.
    assert ours(changed) == [
        "-4 5001:\tfrom 10.20.0.11 lookup 101 proto static",
        "10.20.0.0/24 dev eth1 table 101 proto static scope link",
        "10.31.0.0/24 via 10.20.0.1 dev eth1 table 101 proto static",
    ]
    removed = seen["removed"]
    assert isinstance(removed, dict)
    assert ours(removed) == [] and removed["dropins"] == []
    before = seen["before"]
    assert isinstance(before, dict)
    assert removed["rules"] == before["rules"]


@pytest.mark.usefixtures("prerequisites")
def test_after_removal_networkd_manages_foreign_rules_again(tmp_path: Path):
    seen = run_here("removal-hands-networkd-back", tmp_path)
    stages = ["before", "installed, reconfigured", "removed", "removed, reconfigured"]
    assert list(seen) == stages
    states = {stage: seen[stage] for stage in stages}
    assert all(isinstance(state, dict) for state in states.values())
    rules = {stage: set(state["rules"]) for stage, state in states.items()}  # type: ignore[index]
    # while installed, a reconfigure keeps them; our removal's restart of networkd drops
    # nothing; from then on a reconfigure deletes them, as before the charm came
    assert set(FOREIGN_RULES) <= rules["installed, reconfigured"]
    assert set(FOREIGN_RULES) <= rules["removed"]
    assert not set(FOREIGN_RULES) & rules["removed, reconfigured"]
    removed = states["removed"]
    assert isinstance(removed, dict) and removed["dropins"] == []
    # routes on a link networkd does not manage are never its business
    for state in states.values():
        assert set(FOREIGN_ROUTES) <= set(state["routes"])  # type: ignore[index]


@pytest.mark.usefixtures("prerequisites")
def test_a_reload_does_not_end_the_drop_ins_settings(tmp_path: Path):
    """The settings are read when networkd starts: `networkctl reload` keeps them."""
    seen = run_here("deleting-the-drop-in-is-not-enough", tmp_path)
    state = seen["deleted, reloaded"]
    assert isinstance(state, dict) and state["dropins"] == []
    assert set(FOREIGN_RULES) <= set(state["rules"])


# ---------------------------------------------------------------------------------------------
# This module's scenarios, run in the bed's namespace with its `main`.


def run_here(scenario: str, root: Path) -> dict[str, object]:
    """Run one of this module's scenarios in the bed's namespaces, as `bed.run` runs its own."""
    return bed.run(scenario, root, scenarios="tests.functional.test_networkd")


def someone_elses_netplan_apply(machine: bed.Bed) -> None:
    """`netplan apply` by anyone: networkd reloads and reconfigures every link it manages."""
    bed.sh(str(machine.dir / "netplan"), "apply")


def charm_host(machine: bed.Bed) -> Host:
    """`Host` on the bed's root, with the bed's netplan, systemctl and systemd-run."""
    tools = Tools(
        netplan=str(machine.dir / "netplan"),
        systemctl=str(machine.dir / "systemctl"),
        systemd_run=str(machine.dir / "systemd-run"),
    )
    return Host(machine.root, SubprocessRunner(), probe=lambda targets, budget: {}, tools=tools)


def deleting_the_drop_in_is_not_enough(machine: bed.Bed) -> dict[str, object]:
    """Our apply, then the drop-in deleted and someone's netplan apply (a reload, no restart)."""
    charm_host(machine).apply(bed.Artefacts(bed.RULESET, bed.ours(5000, "10.30.0.0/24")))
    (machine.root / "etc/systemd/networkd.conf.d" / DROPIN).unlink()
    someone_elses_netplan_apply(machine)
    return {"deleted, reloaded": bed.snapshot(machine)}


def removal_hands_networkd_back(machine: bed.Bed) -> dict[str, object]:
    """Our apply, someone's netplan apply, our removal, someone's netplan apply again."""
    host = charm_host(machine)
    seen: dict[str, object] = {"before": bed.snapshot(machine)}
    host.apply(bed.Artefacts(bed.RULESET, bed.ours(5000, "10.30.0.0/24")))
    someone_elses_netplan_apply(machine)
    seen["installed, reconfigured"] = bed.snapshot(machine)
    host.remove()
    seen["removed"] = bed.snapshot(machine)
    someone_elses_netplan_apply(machine)
    seen["removed, reconfigured"] = bed.snapshot(machine)
    return seen


SCENARIOS: dict[str, Callable[[bed.Bed], dict[str, object]]] = {
    "deleting-the-drop-in-is-not-enough": deleting_the_drop_in_is_not_enough,
    "removal-hands-networkd-back": removal_hands_networkd_back,
}
