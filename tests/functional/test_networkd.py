"""Other software's routing-policy rules and routes survive our apply and our removal.

Against the real systemd-networkd in a namespace of its own (see `networkd_bed`: what is real and
what is replaced). The control scenario shows the bed can see the damage: someone else's plain
`netplan apply` of a changed file, with networkd's defaults, deletes the same foreign rules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
