"""What must stay reachable after an apply: the controllers, the gateways, a few neighbours.

Pure: the targets are computed here from what Juju and the plan say; `host.probes` probes them
(and reads the host's default gateways, which only the host knows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .peers import CloudView
from .planner import MachinePlan


@dataclass(frozen=True)
class ProbeTarget:
    """A TCP endpoint that must stay reachable after an apply.

    `refused_ok`: a refused connection (a TCP reset) also proves the path works; use it for a
    gateway that answers but listens on nothing.

    `neighbour_on`: the network on which this target is one of a few neighbours, or None for
    a target that must answer on its own (a controller, a gateway). Neighbours are judged
    together, by majority per network: their addresses come from peer data, and one
    compromised machine could make itself everyone's neighbour and stop answering after each
    apply, so that every apply anywhere rolls back.
    """

    host: str
    port: int
    refused_ok: bool = False
    label: str = ""
    neighbour_on: str | None = None

    @property
    def judged_by_majority(self) -> bool:
        """Whether losing this target alone is not enough to roll an apply back."""
        return self.neighbour_on is not None

    def __str__(self) -> str:
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"{self.label} {where}" if self.label else where


def controller_targets(api_addresses: str | None) -> list[ProbeTarget]:
    """Probe targets from `JUJU_API_ADDRESSES` (`host:port` separated by spaces or commas)."""
    targets: list[ProbeTarget] = []
    for item in re.split(r"[\s,]+", api_addresses or ""):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host:
            continue
        target = ProbeTarget(host.strip("[]"), int(port), label="juju controller")
        if target not in targets:
            targets.append(target)
    return targets


def gateway_target(address: str, port: int = 22) -> ProbeTarget:
    """A gateway probe: any TCP answer, a reset included, proves the gateway is reachable."""
    return ProbeTarget(address, port, refused_ok=True, label="gateway")


def neighbour_targets(plan: MachinePlan, cloud: CloudView) -> list[ProbeTarget]:
    """A few machines on each network this machine may use, as the leader shares them.

    Only addresses inside that network's subnets here, and none of this machine's own: a
    refused connection proves the path as well as an answer does. They are judged by majority
    per network (`ProbeTarget.neighbour_on`), never one by one.
    """
    own = {a.ip for network in plan.networks.values() for a in network.addresses}
    return [
        ProbeTarget(
            str(address), 22, refused_ok=True, label=f"{net} neighbour", neighbour_on=net.value
        )
        for net, network in plan.networks.items()
        if network.access
        for address in cloud.neighbours_of(net)
        if address not in own and any(address in s for s in network.subnets)
    ]
