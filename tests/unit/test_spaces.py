"""Bindings that look left on Juju's `alpha` space (src/network_isolation/spaces.py).

On MAAS, Juju answers `network-get` for a binding on `alpha` with the machine's preferred
private address from whatever space holds it; a binding on a real space gets every address of
the machine in that space. The machines below are written as `network-get` would describe them.
"""

from __future__ import annotations

import ipaddress

import ops
from bindings import GUIDE_NETWORKS, binding
from ops import testing

from network_isolation.model import Network
from network_isolation.planner import InterfaceAddress, NetworkView
from network_isolation.spaces import alpha_bindings
from tests.charm_context import context

MANAGEMENT_V4 = "10.10.0.5/24"
MANAGEMENT_V6 = "fd00:10::5/64"


def view(name: str, *addresses: str) -> NetworkView:
    return NetworkView(
        interfaces=tuple(
            InterfaceAddress(name=name, address=ipaddress.ip_interface(a)) for a in addresses
        )
    )


def test_bindings_on_their_own_spaces_raise_nothing():
    networks = {
        Network.MANAGEMENT: view("enp1s0", MANAGEMENT_V4, MANAGEMENT_V6),
        Network.INTERNAL: view("enp2s0", "10.20.0.5/24", "fd00:20::5/64"),
        Network.DATA: NetworkView(),  # this machine has no address in data's space
    }
    assert alpha_bindings(networks) == ()


def test_networks_that_share_a_space_get_the_same_addresses_and_raise_nothing():
    shared = view("enp1s0", MANAGEMENT_V4, MANAGEMENT_V6)
    assert alpha_bindings(dict.fromkeys(Network, shared)) == ()


def test_a_binding_with_part_of_another_bindings_addresses_is_named():
    networks = {
        Network.MANAGEMENT: view("enp1s0", MANAGEMENT_V4, MANAGEMENT_V6),
        Network.INTERNAL: view("enp1s0", MANAGEMENT_V4),  # the preferred address alone
        Network.PUBLIC: view("enp3s0", "10.30.0.5/24"),
    }
    assert alpha_bindings(networks) == (
        "'internal' binding looks left on the alpha space (some, not all, of the 'management'"
        " addresses): bind it to its space",
    )


def test_an_overlap_where_neither_holds_the_other_names_the_pair_once():
    networks = {
        Network.MANAGEMENT: view("enp1s0", MANAGEMENT_V4, MANAGEMENT_V6),
        # the preferred address plus one in a subnet that MAAS put in no space
        Network.STORAGE: view("enp1s0", MANAGEMENT_V4, "192.168.9.5/24"),
    }
    (warning,) = alpha_bindings(networks)
    assert warning.startswith("'management' and 'storage' bindings share some addresses")


def test_a_single_address_machine_cannot_tell_the_fallback_from_a_shared_space():
    # the documented limit: the fallback equals a real binding of the management space
    networks = {
        Network.MANAGEMENT: view("enp1s0", MANAGEMENT_V4),
        Network.INTERNAL: view("enp1s0", MANAGEMENT_V4),
    }
    assert alpha_bindings(networks) == ()


def management(*addresses: tuple[str, str]) -> testing.Network:
    """Management's binding: every (address, subnet) the machine has in its space, on enp1s0."""
    return testing.Network(
        "management",
        bind_addresses=[
            testing.BindAddress(
                [testing.Address(a, cidr=cidr) for a, cidr in addresses], interface_name="enp1s0"
            )
        ],
        ingress_addresses=[a for a, _ in addresses],
        egress_subnets=[cidr for _, cidr in addresses],
    )


OWN_SPACES = {
    "data": ("enp5s0", "10.40.0.0/24"),
    "internal": ("enp2s0", "10.20.0.0/24"),
    "public": ("enp3s0", "10.30.0.0/24"),
    "storage": ("enp4s0", "10.50.0.0/24"),
    "storage-cluster": ("enp6s0", "10.60.0.0/24"),
}
# On alpha, internal gets management's preferred address, 10.10.0.5, alone.
ON_ALPHA = {**OWN_SPACES, "internal": ("enp1s0", "10.10.0.0/24")}
DUAL_STACK = (("10.10.0.5", "10.10.0.0/24"), ("fd00:10::5", "fd00:10::/64"))
TWO_V4 = (("10.10.0.5", "10.10.0.0/24"), ("10.10.0.9", "10.10.0.0/24"))
WARNING = "'internal' binding looks left on the alpha space"


def run_with(
    management_addresses: tuple[tuple[str, str], ...], places: dict[str, tuple[str, str]]
) -> tuple[ops.StatusBase, list[str]]:
    """The unit's status after config-changed on this machine, and the warnings it logged."""
    networks = [
        management(*management_addresses),
        *(binding(name, places[name]) for name in GUIDE_NETWORKS if name != "management"),
    ]
    st = testing.State(
        networks=networks,
        relations=[testing.SubordinateRelation("compute-node", remote_app_name="hypervisor")],
    )
    ctx = context()
    status = ctx.run(ctx.on.config_changed(), st).unit_status
    logged = [r.message for r in ctx.juju_log if r.level == "WARNING"]
    return ops.StatusBase.from_name(status.name, status.message), logged


def test_a_machine_on_its_own_spaces_neither_warns_nor_logs():
    status, logged = run_with(DUAL_STACK, OWN_SPACES)
    assert isinstance(status, ops.ActiveStatus)
    assert "alpha" not in status.message
    assert not any("alpha" in m for m in logged)


def test_a_binding_on_alpha_in_one_subnet_with_management_is_a_warning():
    # internal's subnet equals management's: one domain, the plan holds, the status warns
    status, logged = run_with(TWO_V4, ON_ALPHA)
    assert isinstance(status, ops.ActiveStatus)
    assert status.message.endswith(
        f"; {WARNING} (some, not all, of the 'management' addresses): bind it to its space"
    )
    assert any(m.startswith(WARNING) for m in logged)


def test_a_dual_stack_binding_on_alpha_explains_the_block_it_causes():
    # internal has 10.10.0.0/24 only, management also fd00:10::/64: the planner sees two
    # networks in different spaces overlapping and blocks; the warning says why
    status, _ = run_with(DUAL_STACK, ON_ALPHA)
    assert isinstance(status, ops.BlockedStatus)
    assert "'internal' and 'management' have overlapping subnets" in status.message
    assert f"; {WARNING}" in status.message
