"""What a machine's own bindings tell of the spaces behind them.

`network-get` names no space: it gives a binding's interfaces, addresses and subnets. A binding
left on Juju's `alpha` space still gets an address on MAAS: Juju falls back to the machine's
preferred private address, whatever its space (juju/juju, apiserver/facades/agent/uniter/
networkinfoiaas.go, `populateMachineAddresses`). Two bindings on real spaces give either the
same addresses (one space) or none in common (a subnet is in one space only), so two bindings
that share some addresses but not all mean one of them gets that fallback. A machine with a
single address in the preferred address's space cannot show it: the fallback then equals a
real binding of that space.

Pure code: no Juju, no host access.
"""

from __future__ import annotations

from collections.abc import Mapping

from .model import NETWORKS, Network
from .planner import NetworkView


def alpha_bindings(networks: Mapping[Network, NetworkView]) -> tuple[str, ...]:
    """A sentence for each network whose binding looks left on the `alpha` space."""
    addresses = {
        net: frozenset(i.address.ip for i in networks[net].interfaces)
        for net in NETWORKS
        if net in networks and networks[net].interfaces
    }
    found: list[str] = []
    for net, mine in addresses.items():
        for other, theirs in addresses.items():
            if other == net or not mine & theirs or mine == theirs:
                continue
            if mine < theirs:
                found.append(
                    f"'{net}' binding looks left on the alpha space (some, not all, of the"
                    f" '{other}' addresses): bind it to its space"
                )
                break
            if not theirs < mine and NETWORKS.index(net) < NETWORKS.index(other):
                found.append(
                    f"'{net}' and '{other}' bindings share some addresses, not all: one is"
                    " left on the alpha space, bind it to its space"
                )
    return tuple(found)
