"""The port catalogue and the merging of port ranges for strict-ports.

Expected ports are written out by hand from the services' own port documentation,
never read back from the module under test.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from network_isolation.config import CharmConfig
from network_isolation.model import PRESET_ROLES, ROLE_TABLES, Network
from network_isolation.planner import MachinePlan, NetworkView, PlanInput, plan_machine
from network_isolation.ports import (
    CATALOGUE,
    MachinePorts,
    PortRange,
    by_protocol,
    catalogue_ports,
    declared_ports,
    domain_ports,
    ignored_ports,
    machine_ports,
    merge_ranges,
)


def pr(text: str) -> PortRange:
    return PortRange.parse(text)


def texts(ranges: tuple[PortRange, ...]) -> list[str]:
    return [str(r) for r in ranges]


def make_plan(
    roles: set[str],
    options: Mapping[str, object] | None = None,
    networks: Mapping[Network, NetworkView] | None = None,
) -> MachinePlan:
    return plan_machine(
        PlanInput(
            machine="machine-0",
            roles=frozenset(roles),
            networks=dict(networks or {}),
            config=CharmConfig.from_options(options or {}),
        )
    )


# PortRange


@pytest.mark.parametrize(
    ("text", "protocol", "first", "last", "nft"),
    [
        ("tcp:5672", "tcp", 5672, 5672, "5672"),
        ("udp:6081", "udp", 6081, 6081, "6081"),
        ("tcp:6800-7300", "tcp", 6800, 7300, "6800-7300"),
        (" tcp:1-65535 ", "tcp", 1, 65535, "1-65535"),
    ],
)
def test_port_range_parse(text: str, protocol: str, first: int, last: int, nft: str):
    port = PortRange.parse(text)
    assert (port.protocol, port.first, port.last) == (protocol, first, last)
    assert port.nft == nft
    assert str(port) == f"{protocol}:{nft}"


@pytest.mark.parametrize(
    "text", ["tcp:0", "tcp:70000", "tcp:9-3", "sctp:80", "tcp:", "80", "tcp:1-65536", ""]
)
def test_port_range_parse_rejects(text: str):
    with pytest.raises(ValueError):
        PortRange.parse(text)


@pytest.mark.parametrize(
    "triple", [("tcp", 0, 1), ("tcp", 10, 9), ("icmp", 1, 1), ("udp", 1, 65536)]
)
def test_port_range_model_rejects(triple: tuple[str, int, int]):
    with pytest.raises(ValueError):
        PortRange.of(triple)


def test_port_range_is_hashable_and_frozen():
    assert len({pr("tcp:80"), pr("tcp:80"), pr("udp:80")}) == 2


# merge_ranges


@pytest.mark.parametrize(
    ("given_ranges", "expected"),
    [
        ([], []),
        (["tcp:80"], ["tcp:80"]),
        (["tcp:80", "tcp:80"], ["tcp:80"]),
        (["tcp:443", "tcp:80"], ["tcp:80", "tcp:443"]),
        (["tcp:5672", "tcp:5671"], ["tcp:5671-5672"]),  # adjacent
        (["tcp:6800-7300", "tcp:7000"], ["tcp:6800-7300"]),  # contained
        (["tcp:6800-7000", "tcp:6900-7300"], ["tcp:6800-7300"]),  # overlapping
        (["tcp:1-10", "tcp:11-20", "tcp:21-30"], ["tcp:1-30"]),  # a chain
        (["tcp:1-10", "tcp:12-20"], ["tcp:1-10", "tcp:12-20"]),  # a gap of one port
        (["tcp:6081", "udp:6081"], ["tcp:6081", "udp:6081"]),  # protocols stay apart
        (["udp:5-9", "tcp:8", "udp:1-4", "tcp:7-9"], ["tcp:7-9", "udp:1-9"]),
    ],
)
def test_merge_ranges(given_ranges: list[str], expected: list[str]):
    assert texts(merge_ranges(pr(t) for t in given_ranges)) == expected


ranges_strategy = st.lists(
    st.tuples(
        st.sampled_from(["tcp", "udp"]),
        st.integers(1, 300),
        st.integers(0, 40),
    ).map(lambda t: PortRange.of((t[0], t[1], min(t[1] + t[2], 65535)))),
    max_size=30,
)


@given(ranges_strategy)
def test_merge_ranges_keeps_the_ports_and_leaves_no_overlap_or_adjacency(
    ranges: list[PortRange],
):
    def covered(items: tuple[PortRange, ...] | list[PortRange]) -> set[tuple[str, int]]:
        return {(r.protocol, p) for r in items for p in range(r.first, r.last + 1)}

    merged = merge_ranges(ranges)
    assert covered(merged) == covered(ranges)
    for before, after in zip(merged, merged[1:], strict=False):
        if before.protocol == after.protocol:
            assert after.first > before.last + 1
        else:
            assert (before.protocol, after.protocol) == ("tcp", "udp")
    assert merge_ranges(merged) == merged


def test_by_protocol_splits_and_always_has_both_keys():
    split = by_protocol([pr("udp:6081"), pr("tcp:80"), pr("tcp:81")])
    assert {k: texts(v) for k, v in split.items()} == {"tcp": ["tcp:80-81"], "udp": ["udp:6081"]}
    assert by_protocol([]) == {"tcp": (), "udp": ()}


# The catalogue


def test_catalogue_has_only_the_roles_of_the_presets():
    assert {role for role, _ in CATALOGUE} <= set(PRESET_ROLES)


def test_catalogue_never_lists_ssh():
    # tcp/22 is the firewall's failsafe, kept apart from the port policy.
    for ranges in CATALOGUE.values():
        for r in ranges:
            assert not (r.protocol == "tcp" and r.first <= 22 <= r.last)


def test_catalogue_entries_are_merged():
    for ranges in CATALOGUE.values():
        assert merge_ranges(ranges) == ranges


@pytest.mark.parametrize(
    ("role", "network", "must_have"),
    [
        ("juju-controller", Network.MANAGEMENT, ["tcp:17070", "tcp:17022", "tcp:37017"]),
        ("juju-controller", Network.MANAGEMENT, ["tcp:17666", "udp:68"]),
        ("sunbeam", Network.MANAGEMENT, ["tcp:7000", "udp:68"]),
        ("control", Network.MANAGEMENT, ["tcp:6443", "tcp:6686", "tcp:6641", "tcp:6644"]),
        ("control", Network.INTERNAL, ["tcp:10250", "udp:8472", "tcp:4244"]),
        ("control", Network.INTERNAL, ["tcp:7946", "udp:7946", "tcp:2379", "tcp:2380"]),
        ("region-controller", Network.INTERNAL, ["tcp:6443", "tcp:7946", "udp:7946"]),
        ("control", Network.DATA, ["udp:6081"]),
        ("network", Network.DATA, ["udp:6081"]),
        ("network", Network.MANAGEMENT, ["tcp:6686"]),
        ("compute", Network.MANAGEMENT, ["tcp:6686", "tcp:5900", "tcp:6099"]),
        ("compute", Network.MANAGEMENT, ["tcp:8301", "udp:8301"]),
        ("compute", Network.DATA, ["udp:6081", "tcp:16509", "tcp:16514", "tcp:10099"]),
        ("compute", Network.DATA, ["tcp:49152", "tcp:49215", "tcp:8311", "udp:8311"]),
        ("compute", Network.STORAGE, ["tcp:8321", "udp:8321"]),
        ("storage", Network.MANAGEMENT, ["tcp:7443"]),
        ("storage", Network.STORAGE, ["tcp:3300", "tcp:6789", "tcp:6800", "tcp:7568"]),
        ("storage", Network.STORAGE, ["tcp:9283", "tcp:80", "tcp:2049"]),
        ("storage", Network.STORAGE_CLUSTER, ["tcp:6800", "tcp:7568"]),
    ],
)
def test_catalogue_has_the_services_of_the_port_table(
    role: str, network: Network, must_have: list[str]
):
    ranges = catalogue_ports([role], network)
    for text in must_have:
        port = pr(text)
        assert any(
            r.protocol == port.protocol and r.first <= port.first <= r.last for r in ranges
        ), f"{role} on {network} lacks {text}"


@pytest.mark.parametrize(
    ("role", "network", "must_not_have"),
    [
        # Live migration is between hypervisors; a control node only carries Geneve on data.
        ("control", Network.DATA, ["tcp:16509", "tcp:49152", "tcp:10099"]),
        # OVN central lives on control nodes, not on hypervisors.
        ("compute", Network.INTERNAL, ["tcp:6641", "tcp:80"]),
        # Ceph daemons run on storage nodes; the others are clients only.
        ("compute", Network.STORAGE, ["tcp:6789", "tcp:6800"]),
        ("control", Network.STORAGE, ["tcp:6789", "tcp:6800"]),
        ("juju-controller", Network.MANAGEMENT, ["tcp:6443", "tcp:7000"]),
        # VXLAN only when chosen: through extra-ports.
        ("compute", Network.DATA, ["udp:4789"]),
        # Corrected: clusterd runs only on the `sunbeam` machines in MAAS mode.
        ("control", Network.MANAGEMENT, ["tcp:7000"]),
        ("compute", Network.MANAGEMENT, ["tcp:7000"]),
        ("storage", Network.MANAGEMENT, ["tcp:7000"]),
        # Corrected: the metadata agent reaches Nova metadata on the host's own address (lo).
        ("compute", Network.INTERNAL, ["tcp:8775"]),
        # Corrected: Traefik and RabbitMQ listen on VIPs (forwarded), not on the hosts.
        ("control", Network.INTERNAL, ["tcp:80", "tcp:443", "tcp:5671", "tcp:5672"]),
        ("control", Network.PUBLIC, ["tcp:80", "tcp:443"]),
        # Corrected: OVN raft meets on the MicroOVN cluster address, not on internal.
        ("control", Network.INTERNAL, ["tcp:6643", "tcp:6644"]),
        # Corrected: MicroCeph's RGW listens on 80 only; Ceph's daemons stop at 7568.
        ("storage", Network.STORAGE, ["tcp:443", "tcp:7569"]),
        ("storage", Network.STORAGE_CLUSTER, ["tcp:7569"]),
        # Corrected: OVN NB/SB are published at the MicroOVN cluster (management) address.
        ("control", Network.INTERNAL, ["tcp:6641", "tcp:6642"]),
        # NFS is a storage node's service on storage; nobody else's.
        ("control", Network.STORAGE, ["tcp:2049"]),
        ("storage", Network.STORAGE_CLUSTER, ["tcp:2049"]),
        # MetalLB speakers and the Kubernetes datastore are on the Kubernetes nodes only.
        ("compute", Network.INTERNAL, ["tcp:7946", "udp:7946", "tcp:2379"]),
    ],
)
def test_catalogue_is_per_role(role: str, network: Network, must_not_have: list[str]):
    ranges = catalogue_ports([role], network)
    for text in must_not_have:
        port = pr(text)
        assert not any(
            r.protocol == port.protocol and r.first <= port.first <= r.last for r in ranges
        ), f"{role} on {network} should not accept {text}"


def test_catalogue_ports_of_unknown_or_custom_role_is_empty():
    assert catalogue_ports(["edge"], Network.DATA) == ()
    assert catalogue_ports([], Network.MANAGEMENT) == ()


def test_catalogue_ports_is_the_union_over_roles():
    both = catalogue_ports(["compute", "storage"], Network.MANAGEMENT)
    assert set(catalogue_ports(["storage"], Network.MANAGEMENT)) <= set(both)
    assert "tcp:7443" in texts(both)
    assert "tcp:6686" in texts(both)


# machine_ports


def test_compute_machine_gets_only_its_allowed_networks():
    ports = machine_ports(make_plan({"compute"})).host
    assert set(ports) == {Network.MANAGEMENT, Network.INTERNAL, Network.DATA, Network.STORAGE}
    assert texts(ports[Network.INTERNAL]) == []
    assert texts(ports[Network.DATA]) == [
        "tcp:8311",
        "tcp:10099",
        "tcp:16509",
        "tcp:16514",
        "tcp:49152-49215",
        "udp:6081",
        "udp:8311",
    ]
    # Allowed, but nothing of the host listens there: the network stays, nothing to accept.
    assert ports[Network.INTERNAL] == ()
    assert texts(ports[Network.STORAGE]) == ["tcp:8321", "udp:8321"]


def test_control_machine_has_no_data_ports_by_default():
    ports = machine_ports(make_plan({"control"})).host
    assert Network.DATA not in ports
    assert set(ports) == {Network.MANAGEMENT, Network.INTERNAL, Network.PUBLIC, Network.STORAGE}
    # The public APIs are VIPs: forwarded to pods, never the host's own input.
    assert ports[Network.PUBLIC] == ()


def test_sunbeam_control_machine_has_geneve_on_data():
    plan = make_plan({"control"}, {"role-table": "sunbeam"})
    assert texts(machine_ports(plan).host[Network.DATA]) == ["udp:6081"]


def test_control_given_data_by_role_networks_gets_geneve_only():
    options = {"role-networks": "control=management,internal,public,storage,data"}
    ports = machine_ports(make_plan({"control"}, options)).host
    assert texts(ports[Network.DATA]) == ["udp:6081"]


def test_custom_role_has_allowed_networks_without_ports():
    options = {"role-networks": "edge=management,internal,data"}
    ports = machine_ports(make_plan({"edge"}, options)).host
    # management keeps only this charm's exporter
    assert ports == {
        Network.MANAGEMENT: (pr("tcp:9479"),),
        Network.INTERNAL: (),
        Network.DATA: (),
    }


def test_custom_role_with_extra_ports():
    options = {
        "role-networks": "edge=management,internal,data",
        "extra-ports": "data=udp:6081,udp:4789",
    }
    ports = machine_ports(make_plan({"edge"}, options)).host
    assert texts(ports[Network.DATA]) == ["udp:4789", "udp:6081"]


@pytest.mark.parametrize(
    ("table", "role"), [(t, r) for t, rows in ROLE_TABLES.items() for r in sorted(rows)]
)
def test_the_exporter_port_is_accepted_on_management_only(table: str, role: str):
    ports = machine_ports(make_plan({role}, {"metrics-port": 9100, "role-table": table})).host
    assert "tcp:9100" in texts(ports[Network.MANAGEMENT])
    assert all("tcp:9100" not in texts(p) for net, p in ports.items() if net != Network.MANAGEMENT)


def test_metrics_port_0_opens_no_exporter_port():
    with_exporter = machine_ports(make_plan({"compute"})).host[Network.MANAGEMENT]
    without = machine_ports(make_plan({"compute"}, {"metrics-port": 0})).host[Network.MANAGEMENT]
    assert set(texts(with_exporter)) - set(texts(without)) == {"tcp:9479"}
    assert len(with_exporter) == len(without) + 1


def test_extra_ports_merge_with_the_catalogue():
    options = {"extra-ports": "internal=tcp:8770-8780,tcp:3306 data=udp:4789"}
    ports = machine_ports(make_plan({"compute"}, options)).host
    assert texts(ports[Network.INTERNAL]) == ["tcp:3306", "tcp:8770-8780"]
    assert "udp:4789" in texts(ports[Network.DATA])


def test_declared_ports_merge_and_deduplicate():
    declared = {
        Network.INTERNAL: (pr("tcp:8775"), pr("tcp:8776"), pr("udp:8776")),
        Network.STORAGE: (pr("tcp:9000-9010"), pr("tcp:9005-9020")),
    }
    ports = machine_ports(make_plan({"compute"}), declared).host
    assert texts(ports[Network.INTERNAL]) == ["tcp:8775-8776", "udp:8776"]
    # Merged with the catalogue's Consul serf port on storage, too.
    assert texts(ports[Network.STORAGE]) == ["tcp:8321", "tcp:9000-9020", "udp:8321"]


# forwarded: the Services behind load-balancer VIPs and NodePorts


def test_control_nodes_forward_the_services_sunbeam_puts_behind_vips():
    forwarded = machine_ports(make_plan({"control"})).forwarded
    internal = texts(forwarded[Network.INTERNAL])
    for service in ("tcp:80", "tcp:443", "tcp:5672", "tcp:6446-6447", "tcp:30301", "udp:30301"):
        assert service in internal
    assert texts(forwarded[Network.PUBLIC]) == ["tcp:53", "tcp:80", "tcp:443", "udp:53"]
    assert "tcp:30321" in texts(forwarded[Network.STORAGE])
    # Designate's rndc shares the public VIP but is not the public's.
    assert all(not r.first <= 953 <= r.last for r in forwarded[Network.PUBLIC])


def test_host_and_forwarded_ports_are_kept_apart():
    ports = machine_ports(make_plan({"control"}))
    assert "tcp:443" not in texts(ports.host[Network.INTERNAL])
    assert "tcp:10250" not in texts(ports.forwarded[Network.INTERNAL])
    assert texts(ports.host[Network.PUBLIC]) == []


def test_machines_without_kubernetes_forward_nothing_but_what_is_given():
    options = {"extra-ports": "internal=tcp:9101"}
    declared = {Network.STORAGE: (pr("tcp:9000"),)}
    forwarded = machine_ports(make_plan({"compute"}, options), declared).forwarded
    assert {n: texts(r) for n, r in forwarded.items() if r} == {
        Network.INTERNAL: ["tcp:9101"],
        Network.STORAGE: ["tcp:9000"],
    }
    assert Network.PUBLIC not in forwarded  # denied to compute


def test_ports_on_denied_networks_are_not_opened_and_are_reported():
    options = {"extra-ports": "public=tcp:8080 internal=tcp:3306"}
    declared = {Network.STORAGE_CLUSTER: (pr("tcp:6800-7300"),)}
    plan = make_plan({"compute"}, options)
    ports = machine_ports(plan, declared).host
    assert Network.PUBLIC not in ports
    assert Network.STORAGE_CLUSTER not in ports
    notes = ignored_ports(plan, declared)
    assert len(notes) == 2
    assert "extra-ports" in notes[0] and "'public'" in notes[0] and "tcp:8080" in notes[0]
    assert "declared" in notes[1] and "'storage-cluster'" in notes[1]
    assert ignored_ports(make_plan({"compute"})) == []


def test_a_machine_with_several_roles_gets_the_union():
    ports = machine_ports(make_plan({"compute", "storage"})).host
    assert set(ports) == {
        Network.MANAGEMENT,
        Network.INTERNAL,
        Network.DATA,
        Network.STORAGE,
        Network.STORAGE_CLUSTER,
    }
    assert "tcp:6800-7568" in texts(ports[Network.STORAGE])
    assert "tcp:7443" in texts(ports[Network.MANAGEMENT])
    assert "tcp:6686" in texts(ports[Network.MANAGEMENT])


def test_roles_from_config_count():
    ports = machine_ports(make_plan(set(), {"roles": "juju-controller"})).host
    assert set(ports) == {Network.MANAGEMENT}
    assert "tcp:17070" in texts(ports[Network.MANAGEMENT])


def test_no_role_no_ports():
    assert machine_ports(make_plan(set())) == MachinePorts({}, {})


def test_every_result_is_merged():
    options = {"extra-ports": "storage=tcp:7000-7500,tcp:6000-6800 management=tcp:7001"}
    for roles in [{"control"}, {"compute"}, {"storage"}, {"juju-controller"}, {"storage"}]:
        for ranges in machine_ports(make_plan(roles, options)).host.values():
            assert merge_ranges(ranges) == ranges


# declared_ports


def test_declared_ports_from_the_library_shape():
    declared = declared_ports(
        {
            "internal": [("tcp", 5672, 5672), ("tcp", 5671, 5671)],
            "nowhere": [("tcp", 80, 80)],
            "data": [("tcp", 0, 0), ("udp", 6081, 6081)],
        }
    )
    assert {k: texts(v) for k, v in declared.items()} == {
        Network.INTERNAL: ["tcp:5671-5672"],
        Network.DATA: ["udp:6081"],
    }


# domain_ports


def test_networks_sharing_a_space_share_their_ports():
    shared = ipaddress.ip_network("10.20.0.0/24")
    views = {
        Network.INTERNAL: NetworkView(subnets=(shared,), space="internal-space"),
        Network.PUBLIC: NetworkView(subnets=(shared,), space="internal-space"),
        Network.MANAGEMENT: NetworkView(subnets=(ipaddress.ip_network("10.10.0.0/24"),)),
    }
    plan = make_plan({"region-controller"}, {"role-table": "sunbeam"}, views)
    ports = machine_ports(plan).host
    by_domain = domain_ports(plan, ports)
    internal_public = (Network.INTERNAL, Network.PUBLIC)
    assert internal_public in by_domain
    # Both networks are allowed to a region controller: the domain gets the union (public has
    # no ports of its own, internal has the Kubernetes ones).
    assert texts(by_domain[internal_public]) == texts(ports[Network.INTERNAL])
    assert "udp:7946" in texts(by_domain[internal_public])
    # Compute is denied public, but the domain is allowed through internal, whose ports it has.
    plan = make_plan({"compute"}, {"extra-ports": "internal=tcp:9101"}, views)
    ports = machine_ports(plan).host
    by_domain = domain_ports(plan, ports)
    assert texts(by_domain[internal_public]) == ["tcp:9101"]
    assert texts(by_domain[(Network.MANAGEMENT,)]) == texts(ports[Network.MANAGEMENT])
    assert (Network.STORAGE_CLUSTER,) not in by_domain
