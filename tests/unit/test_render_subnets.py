"""Subnet arithmetic: the sorted, non-overlapping subnets nft accepts, and subtraction."""

from __future__ import annotations

from render_helpers import net

from network_isolation.render import exclude, normalize

# ---------------------------------------------------------------------------------------------
# Subnet arithmetic


def test_normalize_keeps_adjacent_subnets_and_drops_nested_ones():
    nets = [net(s) for s in ("10.0.1.0/24", "fd00::/64", "10.0.0.0/24", "10.0.0.128/25")]
    assert [str(n) for n in normalize(nets)] == ["10.0.0.0/24", "10.0.1.0/24", "fd00::/64"]


def test_exclude():
    nets = [net("10.0.0.0/22"), net("10.9.0.0/24"), net("fd00::/64")]
    remove = [net("10.0.1.0/24"), net("10.9.0.0/16"), net("fd00::/56")]
    assert [str(n) for n in exclude(nets, remove)] == ["10.0.0.0/24", "10.0.2.0/23"]
    assert exclude(nets, []) == normalize(nets)
    six = exclude([net("fd00::/62")], [net("fd00:0:0:1::/64"), net("10.0.0.0/8")])
    assert [str(n) for n in six] == ["fd00::/64", "fd00:0:0:2::/63"]
