"""Shared fixtures of the unit tests.

The expectations come from Canonical's "Network traffic isolation with MAAS" page (the guide),
written out here by hand: the tests never take expected values from the code under
test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from bindings import DISJOINT_SUBNETS, DISTINCT_NICS, GUIDE_NETWORKS, binding
from fake_host import FakeHost
from ops import testing
from topologies import EXAMPLES

from network_isolation.topology import Topology, load_topology
from tests.role_tables import GUIDE_ROLE_TABLE, SUNBEAM_ROLE_TABLE

# The two role tables, written out by hand (role -> cloud network access).
GUIDE_ROLE_NETWORKS = GUIDE_ROLE_TABLE
SUNBEAM_ROLE_NETWORKS = SUNBEAM_ROLE_TABLE

# Where a network has an address on the test machine: (interface, subnet), or None for none.
Layout = Mapping[str, tuple[str, str] | None]
NetworksFactory = Callable[[Layout], list[testing.Network]]


@pytest.fixture(autouse=True)
def fake_host(monkeypatch: pytest.MonkeyPatch) -> type[FakeHost]:
    """The charm never touches this machine: its Host is replaced at the boundary."""
    import charm

    FakeHost.reset()
    monkeypatch.setattr(charm, "Host", FakeHost)
    return FakeHost


@pytest.fixture(autouse=True)
def state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Keep the charm's per-machine registry in a fresh directory of each test."""
    directory = tmp_path / "state"
    monkeypatch.setenv("NETWORK_ISOLATION_STATE_DIR", str(directory))
    return directory


@pytest.fixture(scope="session")
def guide_table() -> dict[str, frozenset[str]]:
    """The guide's role -> networks table."""
    return dict(GUIDE_ROLE_NETWORKS)


@pytest.fixture(scope="session")
def sunbeam_table() -> dict[str, frozenset[str]]:
    """Sunbeam's role -> networks table."""
    return dict(SUNBEAM_ROLE_NETWORKS)


@pytest.fixture(scope="session")
def guide_networks() -> tuple[str, ...]:
    """The guide's six cloud networks."""
    return GUIDE_NETWORKS


@pytest.fixture(scope="session")
def disjoint_subnets() -> dict[str, str]:
    """One distinct subnet per network."""
    return dict(DISJOINT_SUBNETS)


@pytest.fixture(scope="session")
def make_networks() -> NetworksFactory:
    """Bindings for all six networks, as `network-get` would give them on one machine.

    Every network must be named: an undeclared binding would get ops.testing's fake address.
    """

    def make(layout: Layout) -> list[testing.Network]:
        assert set(layout) == set(GUIDE_NETWORKS), "declare every one of the six bindings"
        return [binding(name, layout[name]) for name in GUIDE_NETWORKS]

    return make


@pytest.fixture(scope="session")
def distinct_layout() -> dict[str, tuple[str, str] | None]:
    """A machine with one NIC per network, each network on its own subnet."""
    return {net: (DISTINCT_NICS[net], DISJOINT_SUBNETS[net]) for net in GUIDE_NETWORKS}


@pytest.fixture
def networks(
    make_networks: NetworksFactory, distinct_layout: dict[str, tuple[str, str] | None]
) -> list[testing.Network]:
    """The bindings of a machine with one NIC and subnet per network (`distinct_layout`)."""
    return make_networks(distinct_layout)


@pytest.fixture(scope="session")
def shared_layout() -> dict[str, tuple[str, str] | None]:
    """A machine on a single subnet: every network in one space, on one NIC."""
    return dict.fromkeys(GUIDE_NETWORKS, ("enp1s0", "10.0.0.0/24"))


@pytest.fixture(scope="module")
def maas() -> Topology:
    """The example cloud: six spaces, two racks, every role."""
    return load_topology(EXAMPLES / "microstack-maas.yaml")


@pytest.fixture(scope="module")
def single() -> Topology:
    """The example cloud with every network in one space."""
    return load_topology(EXAMPLES / "single-space.yaml")
