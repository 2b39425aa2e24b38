"""The benchmark's cloud: racks of machines, their records, databags and hook states."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress

from ops import testing

from network_isolation.model import NETWORKS, Network
from network_isolation.peers import TEACHERS_NEEDED, CloudView, MachineRecord, aggregate, dump
from network_isolation.rollout import Roll, UnitReport

APP = "network-isolation"
RACK_SIZE = 20
# One NIC per network on every machine, as MAAS trunks every space's VLAN to every rack.
NICS: dict[Network, str] = {
    Network.MANAGEMENT: "enp1s0",
    Network.INTERNAL: "enp2s0",
    Network.PUBLIC: "enp3s0",
    Network.STORAGE: "enp4s0",
    Network.DATA: "enp5s0",
    Network.STORAGE_CLUSTER: "enp6s0",
}


def rack_subnet(network: Network, rack: int) -> ipaddress.IPv4Network:
    """The subnet of one rack on one network: 10.(16 * network + rack / 256).(rack % 256).0/24."""
    if not 0 <= rack < 16 * 256:
        raise ValueError(f"rack {rack} is out of the benchmark's address plan")
    index = NETWORKS.index(network)
    return ipaddress.IPv4Network(f"10.{16 * index + rack // 256}.{rack % 256}.0/24")


def machine_address(network: Network, unit: int) -> ipaddress.IPv4Interface:
    """The address of unit `unit`'s machine on a network (unit 0 is the measured one)."""
    rack, place = divmod(unit, RACK_SIZE)
    subnet = rack_subnet(network, rack)
    return ipaddress.IPv4Interface(f"{subnet[10 + place]}/{subnet.prefixlen}")


def taught_peer(peers: int) -> int:
    """The last peer whose rack subnets the cloud view holds: the packet path's client.

    A rack's private subnets are taught once `TEACHERS_NEEDED` units report them, so a last
    rack with fewer machines is not in the table yet: a client there would measure the path
    of a dropped packet, not of an accepted one.
    """
    rack_start = peers // RACK_SIZE * RACK_SIZE
    return peers if peers - rack_start + 1 >= TEACHERS_NEEDED else rack_start - 1


def role_of(unit: int) -> str:
    """Per rack: 14 compute nodes, 3 storage nodes, 3 control nodes."""
    place = unit % RACK_SIZE
    return "compute" if place < 14 else "storage" if place < 17 else "control"


def machine_record(unit: int) -> MachineRecord:
    """What unit `unit` publishes in its databag, as the charm builds it."""
    return MachineRecord(
        machine=f"machine-{unit}",
        roles=(role_of(unit),),
        subnets={net: (machine_address(net, unit).network,) for net in NETWORKS},
    )


def _fingerprint(unit: int) -> str:
    return hashlib.sha256(f"ruleset of unit {unit}".encode()).hexdigest()


def peer_databag(unit: int) -> dict[str, str]:
    """A settled peer's unit databag: its record, its applied ruleset and Juju's own keys."""
    address = str(machine_address(Network.MANAGEMENT, unit).ip)
    wanted = _fingerprint(unit)
    return {
        "machine": dump(machine_record(unit)),
        "report": dump(UnitReport(generation=wanted[:16])),
        "private-address": address,
        "ingress-address": address,
        "egress-subnets": f"{address}/32",
    }


def cloud_view(peers: int, extra_racks: int = 0) -> CloudView:
    """The leader's aggregate of the measured unit and its peers (plus extra new racks).

    A new rack comes with two machines: a private subnet takes two units to be taught.
    """
    records = {f"{APP}/{u}": machine_record(u) for u in range(peers + 1)}
    first_new = peers // RACK_SIZE + 1
    for rack in range(first_new, first_new + extra_racks):
        for unit in (rack * RACK_SIZE, rack * RACK_SIZE + 1):
            records[f"{APP}/{unit}"] = machine_record(unit)
    return aggregate(records)


def own_networks() -> list[testing.Network]:
    """The measured unit's six bindings, as `network-get` gives them."""
    bindings = []
    for net in NETWORKS:
        address = machine_address(net, 0)
        bindings.append(
            testing.Network(
                net.value,
                bind_addresses=[
                    testing.BindAddress(
                        [testing.Address(str(address.ip), cidr=str(address.network))],
                        interface_name=NICS[net],
                    )
                ],
                ingress_addresses=[str(address.ip)],
                egress_subnets=[str(address.network)],
            )
        )
    return bindings


def hook_state(
    peers: int, leader: bool, config: dict[str, str] | None = None, extra_racks: int = 0
) -> testing.State:
    """The state of a hook on unit 0 of a cloud of `peers` + 1 machines.

    A non-leader finds the leader's aggregate in the application databag; a leader finds it
    empty and builds it from the peers' unit databags.
    """
    app_data: dict[str, str] = {}
    if not leader:
        app_data = {"cloud": dump(cloud_view(peers, extra_racks)), "roll": dump(Roll())}
    cluster = testing.PeerRelation(
        "cluster",
        peers_data={u: peer_databag(u) for u in range(1, peers + 1)},
        local_app_data=app_data,
    )
    principal = testing.SubordinateRelation("compute-node", remote_app_name="openstack-hypervisor")
    return testing.State(
        leader=leader,
        config=dict(config or {}),
        networks=own_networks(),
        relations=[principal, cluster],
    )


def granted_turn(state: testing.State) -> testing.State:
    """The state with a wave open that holds unit 0."""
    relations = []
    for relation in state.relations:
        if isinstance(relation, testing.PeerRelation):
            granted = Roll(generation="0" * 16, waves=((f"{APP}/0",),), opened=1)
            app_data = {**relation.local_app_data, "roll": dump(granted)}
            relation = dataclasses.replace(relation, local_app_data=app_data)
        relations.append(relation)
    return dataclasses.replace(state, relations=relations)
