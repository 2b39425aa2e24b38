"""Topology files: what each machine would see, and where a bad file goes wrong."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from network_isolation.config import CharmConfig
from network_isolation.model import IsolationLevel, Network
from network_isolation.planner import plan_machine
from network_isolation.topology import TopologyError, load_topology

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def small_cloud(**changes: Any) -> dict[str, Any]:
    """Two spaces: management alone, everything else on a second space."""
    data: dict[str, Any] = {
        "spaces": {"oam": ["10.10.0.0/24"], "cloud": ["10.20.0.0/24", "fd00:20::/64"]},
        "default-space": "cloud",
        "bindings": {"management": "oam"},
        "machines": {
            "m1": {
                "roles": ["compute"],
                "interfaces": {"enp1s0": ["10.10.0.5/24"], "enp2s0": ["10.20.0.5/24"]},
            }
        },
    }
    data.update(changes)
    return data


def test_examples_load_with_their_machines():
    raw = yaml.safe_load((EXAMPLES / "microstack-maas.yaml").read_text())
    topology = load_topology(EXAMPLES / "microstack-maas.yaml")
    assert set(topology.machines) == set(raw["machines"])
    for name, machine in raw["machines"].items():
        assert set(topology.machines[name].roles) == set(machine["roles"])


def test_plan_input_sees_bound_spaces_and_local_addresses():
    topology = load_topology(EXAMPLES / "microstack-maas.yaml")
    seen = topology.plan_input("storage-3")
    storage = seen.networks[Network.STORAGE]
    assert storage.space == "ceph-public"
    # Both racks' subnets of the space are known; the machine sits in rack 2.
    assert ipaddress.ip_network("10.50.0.0/24") in storage.subnets
    assert ipaddress.ip_network("10.50.1.0/24") in storage.subnets
    assert {(i.name, str(i.address)) for i in storage.interfaces} == {
        ("enp4s0", "10.50.1.33/24"),
        ("enp4s0", "fd00:51::33/64"),
    }
    # storage-3 has no NIC in the tenant space.
    assert seen.networks[Network.DATA].interfaces == ()
    assert seen.networks[Network.DATA].space == "tenant"
    assert seen.roles == frozenset({"storage"})


def test_gateways_follow_the_space():
    topology = load_topology(EXAMPLES / "microstack-maas.yaml")
    view = topology.plan_input("compute-1").networks[Network.DATA]
    assert view.gateways[ipaddress.ip_network("10.40.0.0/24")] == ipaddress.ip_address("10.40.0.1")


def test_default_space_binds_unbound_networks(tmp_path: Path):
    topology = load_topology(write(tmp_path, small_cloud()))
    assert topology.space_of(Network.MANAGEMENT) == "oam"
    for net in set(Network) - {Network.MANAGEMENT}:
        assert topology.space_of(net) == "cloud"
    assert topology.isolation().level == IsolationLevel.PARTIAL
    seen = topology.plan_input("m1")
    assert [i.name for i in seen.networks[Network.MANAGEMENT].interfaces] == ["enp1s0"]
    assert [i.name for i in seen.networks[Network.DATA].interfaces] == ["enp2s0"]


def test_single_space_example_has_no_isolation():
    assert load_topology(EXAMPLES / "single-space.yaml").isolation().level == IsolationLevel.NONE


def test_address_outside_every_space_belongs_to_no_network(tmp_path: Path):
    data = small_cloud()
    data["machines"]["m1"]["interfaces"]["enp9s0"] = ["192.168.1.5/24"]
    seen = load_topology(write(tmp_path, data)).plan_input("m1")
    assert all(i.name != "enp9s0" for v in seen.networks.values() for i in v.interfaces)
    assert seen.interface_kinds["enp9s0"] == "ethernets"


def test_long_interface_form_keeps_its_kind(tmp_path: Path):
    data = small_cloud()
    data["machines"]["m1"]["interfaces"]["bond0"] = {
        "addresses": ["fd00:20::5/64"],
        "type": "bonds",
    }
    seen = load_topology(write(tmp_path, data)).plan_input("m1")
    assert seen.interface_kinds == {"enp1s0": "ethernets", "enp2s0": "ethernets", "bond0": "bonds"}
    assert {i.name for i in seen.networks[Network.INTERNAL].interfaces} == {"enp2s0", "bond0"}


def test_fifteen_character_interface_name_is_accepted(tmp_path: Path):
    data = small_cloud()
    data["machines"]["m1"]["interfaces"] = {"a" * 15: ["10.10.0.5/24"]}
    assert "a" * 15 in load_topology(write(tmp_path, data)).machines["m1"].interfaces


def test_config_is_parsed_as_the_charm_parses_it(tmp_path: Path):
    options = {"client-cidrs": "10.99.0.0/24", "enforcement": "audit", "strict-ports": True}
    topology = load_topology(write(tmp_path, small_cloud(config=options)))
    assert topology.charm_config() == CharmConfig.from_options(options)


def test_integer_options_are_written_as_yaml_integers(tmp_path: Path):
    options = {"client-cidrs-max-size-v4": 16, "metrics-port": 9500, "rolling-wave-timeout": 600}
    topology = load_topology(write(tmp_path, small_cloud(config=options)))
    config = topology.charm_config()
    assert (config.client_cidrs_max_size_v4, config.metrics_port) == (16, 9500)
    assert config.rolling_wave_timeout == 600


def test_custom_role_from_the_config_is_accepted(tmp_path: Path):
    data = small_cloud(config={"role-networks": "network=management,internal,data"})
    data["machines"]["m1"]["roles"] = ["network"]
    topology = load_topology(write(tmp_path, data))
    machine = plan_machine(topology.plan_input("m1"))
    assert {n.value for n, item in machine.networks.items() if item.access} == {
        "management",
        "internal",
        "data",
    }


def test_network_cidrs_in_the_config_count_for_the_cloud_isolation(tmp_path: Path):
    # Every network on its own space, then network-cidrs makes data overlap internal.
    spaces = {f"s{i}": [f"10.{i}.0.0/24"] for i in range(6)}
    bindings = {net.value: f"s{i}" for i, net in enumerate(Network)}
    data = {"spaces": spaces, "bindings": bindings, "machines": {"m1": {"roles": ["storage"]}}}
    assert load_topology(write(tmp_path, data)).isolation().level == IsolationLevel.MAXIMUM
    internal = spaces[bindings["internal"]][0]
    data["config"] = {"network-cidrs": f"data={internal}"}
    assert load_topology(write(tmp_path, data)).isolation().level == IsolationLevel.PARTIAL


@pytest.mark.parametrize(
    ("data", "where", "token"),
    [
        (small_cloud(bogus=1), "bogus", ""),
        (
            small_cloud(spaces={"oam": ["10.10.0.1/24"], "cloud": ["10.20.0.0/24"]}),
            "spaces.oam",
            "",
        ),
        (
            small_cloud(spaces={"oam": ["10.10.0.0/24"], "cloud": {"subnets": ["10.20.0.0/24"]}})
            | {"bindings": {"management": "oam", "data": "tenant"}},
            "",
            "tenant",
        ),
        (small_cloud(config={"extra-ports": "internal=tcp:0"}), "config.extra-ports", "tcp:0"),
        (small_cloud(config={"no-such-option": "x"}), "config.no-such-option", ""),
        (small_cloud(machines={"m1": {"roles": ["boss"]}}), "machines.m1.roles", "boss"),
        (
            small_cloud(machines={"m1": {"roles": ["compute"], "interfaces": {"a" * 16: []}}}),
            "machines.m1.interfaces",
            "a" * 16,
        ),
        (
            small_cloud(
                spaces={
                    "oam": {"subnets": ["10.10.0.0/24"], "gateway": {"10.10.0.0/24": "10.11.0.1"}},
                    "cloud": ["10.20.0.0/24"],
                }
            ),
            "spaces.oam",
            "10.11.0.1",
        ),
        (
            small_cloud(
                spaces={
                    "oam": {"subnets": ["10.10.0.0/24"], "gateway": {"10.12.0.0/24": "10.12.0.1"}},
                    "cloud": ["10.20.0.0/24"],
                }
            ),
            "spaces.oam",
            "10.12.0.0/24",
        ),
    ],
    ids=[
        "unknown-key",
        "host-bits",
        "undefined-space",
        "bad-config",
        "unknown-option",
        "unknown-role",
        "long-interface",
        "gateway-outside",
        "gateway-of-other-subnet",
    ],
)
def test_bad_topology_names_the_place(
    tmp_path: Path, data: dict[str, Any], where: str, token: str
):
    path = write(tmp_path, data)
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    assert caught.value.source == str(path)
    assert caught.value.where.startswith(where)
    assert token in caught.value.problem
    assert str(path) in str(caught.value)


def test_bad_interface_address_names_a_clean_place(tmp_path: Path):
    data = small_cloud()
    data["machines"]["m1"]["interfaces"] = {"enp1s0": ["not-an-address"]}
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, data))
    assert caught.value.where == "machines.m1.interfaces.enp1s0.addresses.0"


EVIL_NAME = "oam\nnetwork:\n  ethernets: {}\n#"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (small_cloud(spaces={EVIL_NAME: ["10.10.0.0/24"], "cloud": ["10.20.0.0/24"]}), "spaces"),
        (small_cloud(machines={EVIL_NAME: {"roles": ["compute"]}}), "machines"),
        (small_cloud(machines={"../m1": {"roles": ["compute"]}}), "machines"),
        (small_cloud(spaces={"": ["10.10.0.0/24"], "cloud": ["10.20.0.0/24"]}), "spaces"),
    ],
    ids=["space-with-newlines", "machine-with-newlines", "machine-path", "empty-space"],
)
def test_names_that_reach_the_files_are_checked(tmp_path: Path, data: dict[str, Any], where: str):
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, data))
    assert caught.value.where.startswith(where)
    assert "is not a valid" in caught.value.problem
