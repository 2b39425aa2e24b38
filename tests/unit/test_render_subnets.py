"""Subnet arithmetic: the sorted, non-overlapping subnets nft accepts, and subtraction."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from subnets import net

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


small_v4 = st.builds(
    lambda a, p: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{p}", strict=False),
    st.integers(0x0A000000, 0x0A0000FF),
    st.integers(24, 32),
)


@settings(max_examples=60, deadline=None)
@given(nets=st.lists(small_v4, max_size=6), remove=st.lists(small_v4, max_size=12))
def test_exclude_leaves_exactly_the_addresses_not_removed(nets, remove):
    """Checked address by address in 10.0.0.0/24, where every drawn subnet lies."""
    result = exclude(nets, remove)
    expected = {a for n in nets for a in n} - {a for r in remove for a in r}
    assert {a for n in result for a in n} == expected
    assert list(result) == list(normalize(result))  # sorted, nothing nested


def test_exclude_of_thousands_of_host_routes_is_a_sweep():
    """The /32 flood: 4,096 removed /32s in a /16 leave exactly their gaps."""
    hosts = [net(f"10.99.{i // 64}.{(i % 64) * 4}/32") for i in range(4096)]
    left = exclude([net("10.99.0.0/16")], hosts)
    assert sum(n.num_addresses for n in left) == 65536 - 4096
