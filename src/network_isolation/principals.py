"""What Sunbeam's principal charms need, to stop a machine whose role table would break them.

A role table is a guess about what runs on a machine; the principals related on the machine say
what really does. When a principal needs a network that the machine's roles deny (a
`cinder-volume` on a storage node under the guide's table, a MicroOVN chassis on a control
node), enforcing would break the cloud even though the plan is consistent, and the first
deployment's canary would count those drops as expected ones. Such a denial blocks the
machine's plan, naming the network and the `role-table` preset that allows it; an operator who
means it accepts it in `accept-denials`, and it is enforced and stays a warning.

Pure code: no Juju, no host access.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import NamedTuple

from .config import CharmConfig
from .model import ROLE_TABLES, Network, networks_for_roles, role_table


class PrincipalNeed(NamedTuple):
    """A network a principal application uses on its machine, and why."""

    network: Network
    why: str


# openstack-network-agents is no principal: Sunbeam relates it to microovn over `juju-info`
# (cloud/etc/deploy-microovn/main.tf), so its needs are its principal's.
_MICROOVN = (
    PrincipalNeed(
        Network.DATA, "its chassis tunnels Geneve from its openstack-network-agents' data address"
    ),
)
# Not internal: Sunbeam binds MicroOVN's `ovsdb` endpoint there, but MicroOVN publishes OVN's
# northbound and southbound at its cluster members' addresses (microovn ovn/environment.go,
# ConnectionString; the ovsdb relation passes them on), the management ones: nothing of
# MicroOVN's flows on internal.

# By Juju application name as Sunbeam deploys it in the `openstack-machines` model (arm64
# machines get `<name>-arm64`). Sources: canonical/snap-openstack, sunbeam-python/sunbeam/.
PRINCIPAL_NEEDS: Mapping[str, tuple[PrincipalNeed, ...]] = {
    # steps/cinder_volume.py: amqp, database, identity-credentials, storage-backend -> internal
    "cinder-volume": (
        PrincipalNeed(Network.INTERNAL, "Sunbeam binds its amqp, database and identity there"),
    ),
    # steps/microovn.py (endpoint bindings; openstack_network_agents_endpoint_bindings, `data`
    # -> data), core/ovn.py (a chassis on control, compute and network nodes)
    "microovn": _MICROOVN,
    "microovn-arm64": _MICROOVN,
    # steps/hypervisor.py: `data`/`migration` -> data, `ceph-access` -> storage, amqp -> internal
    "openstack-hypervisor": (
        PrincipalNeed(Network.DATA, "Geneve and live migration use it"),
        PrincipalNeed(Network.STORAGE, "its `ceph-access` endpoint is bound there"),
        PrincipalNeed(Network.INTERNAL, "Sunbeam binds its amqp and identity there"),
    ),
    # steps/microceph.py: `public` -> storage, `cluster` -> storage-cluster
    "microceph": (
        PrincipalNeed(Network.STORAGE, "Ceph's public side is bound there"),
        PrincipalNeed(Network.STORAGE_CLUSTER, "Ceph's cluster side is bound there"),
    ),
    # steps/k8s.py: `cluster` -> internal
    "k8s": (PrincipalNeed(Network.INTERNAL, "the Kubernetes `cluster` endpoint is bound there"),),
}


class PrincipalDenials(NamedTuple):
    """The networks the machine's principals need and its roles deny, one sentence each."""

    blocking: tuple[str, ...]  # not accepted: the machine must not enforce
    accepted: tuple[str, ...]  # accepted in `accept-denials`: enforced, and warned about


def principal_denials(
    principals: Iterable[str],
    roles: Sequence[str],
    allowed: Collection[Network],
    config: CharmConfig,
) -> PrincipalDenials:
    """What the role table in force denies the principals on a machine with these roles.

    `principals` are application names (every unit's of this charm on the machine: co-located
    units share one plan, so each blocks on the needs of all); `allowed` is what the roles give.
    """
    denied_to = (
        f"which role table '{config.role_table}' denies to {'+'.join(roles) or 'this machine'}"
    )
    blocking: list[str] = []
    accepted: list[str] = []
    for app in sorted(set(principals)):
        for need in PRINCIPAL_NEEDS.get(app, ()):
            if need.network in allowed:
                continue
            remedy = _remedy(need.network, roles, config.role_networks)
            if need.network in config.accept_denials.get(app, ()):
                accepted.append(
                    f"{app} needs '{need.network}' ({need.why}), {denied_to}: {remedy}"
                )
            else:
                blocking.append(
                    f"{app} needs '{need.network}', {denied_to}: {remedy},"
                    " or accept it in 'accept-denials'"
                )
    return PrincipalDenials(tuple(blocking), tuple(accepted))


def _remedy(
    network: Network, roles: Sequence[str], overrides: Mapping[str, frozenset[Network]]
) -> str:
    """The presets whose rows for these roles allow the network, or the option to set."""
    fixes = [
        name
        for name in ROLE_TABLES
        if roles
        and all(r in role_table(overrides, name) for r in roles)
        and network in networks_for_roles(roles, role_table(overrides, name))
    ]
    if fixes:
        return " or ".join(f"role-table={name}" for name in fixes) + " allows it"
    return f"add '{network}' to a role's row in 'role-networks'"
