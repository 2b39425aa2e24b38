"""The charm's options: every invalid value is refused by name, valid ones parse as documented."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from network_isolation.config import CharmConfig, ConfigError
from network_isolation.model import Network

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# (option, value, a token the problem must quote so the operator can find the mistake)
INVALID: list[tuple[str, Any, str]] = [
    # roles
    ("roles", "network", "network"),  # well-formed but not a role
    ("roles", "Bad_Name", "Bad_Name"),
    ("roles", "control,boss", "boss"),
    # role-networks
    ("role-networks", "control=management,bogus", "bogus"),
    ("role-networks", "network=data network=internal", "network"),
    ("role-networks", "control", "control"),
    ("role-networks", "control=", "control="),
    ("role-networks", "=management", "=management"),
    ("role-networks", "Control=management", "Control"),
    ("role-networks", "my_role=management", "my_role"),
    # network-cidrs
    ("network-cidrs", "bogus=10.0.0.0/24", "bogus"),
    ("network-cidrs", "internal=10.20.0.1/24", "10.20.0.1/24"),
    ("network-cidrs", "internal=fd00:20::1/64", "fd00:20::1/64"),
    ("network-cidrs", "internal=0.0.0.0/0", "0.0.0.0/0"),
    ("network-cidrs", "internal=::/0", "::/0"),
    ("network-cidrs", "internal=garbage", "garbage"),
    ("network-cidrs", "internal=10.20.0.0/24 internal=10.21.0.0/24", "internal"),
    ("network-cidrs", "internal", "internal"),
    # client-cidrs
    ("client-cidrs", "garbage", "garbage"),
    ("client-cidrs", "10.99.0.0/24,10.99.1.0/33", "10.99.1.0/33"),
    ("client-cidrs", "0.0.0.0/0", "0.0.0.0/0"),
    ("client-cidrs", "10.99.0.0/24 ::/0", "::/0"),
    ("client-cidrs", "::/1 8000::/1", "client-cidrs-max-size-v6"),  # all of IPv6, in halves
    ("client-cidrs", "0.0.0.0/1,128.0.0.0/1", "client-cidrs-max-size-v4"),
    ("client-cidrs", "10.0.0.0/7", "client-cidrs-max-size-v4"),
    # the bound on what client-cidrs cover together: never below /2
    ("client-cidrs-max-size-v4", 1, "2"),
    ("client-cidrs-max-size-v4", 0, "2"),
    ("client-cidrs-max-size-v4", 33, "32"),
    ("client-cidrs-max-size-v4", "nonsense", ""),
    ("client-cidrs-max-size-v6", 1, "2"),
    ("client-cidrs-max-size-v6", 129, "128"),
    # enforcement
    ("enforcement", "block", "enforce"),
    ("enforcement", "ENFORCE", "enforce"),
    ("enforcement", "", "enforce"),
    # extra-ports
    ("extra-ports", "internal=sctp:5672", "sctp:5672"),
    ("extra-ports", "internal=tcp:0", "tcp:0"),
    ("extra-ports", "internal=tcp:70000", "tcp:70000"),
    ("extra-ports", "storage=tcp:7300-6800", "tcp:7300-6800"),
    ("extra-ports", "internal=tcp:http", "tcp:http"),
    ("extra-ports", "bogus=tcp:80", "bogus"),
    ("extra-ports", "internal=tcp:80 internal=tcp:443", "internal"),
    # accept-denials
    ("accept-denials", "cinder-volume=bogus", "bogus"),
    ("accept-denials", "cinder-volume", "cinder-volume"),
    ("accept-denials", "cinder-volume=", "cinder-volume="),
    ("accept-denials", "Cinder=internal", "Cinder"),
    ("accept-denials", "cinder_volume=internal", "cinder_volume"),
    ("accept-denials", "microovn-2=data", "microovn-2"),
    ("accept-denials", "k8s=internal k8s=data", "k8s"),
    # booleans: Juju type-checks them, but the parser must not guess either
    ("strict-ports", "maybe", ""),
    ("strict-ports", [True], ""),
    ("manage-routing", "sometimes", ""),
    ("manage-routing", {"on": True}, ""),
    # prefix bounds of subnets learnt from peers
    ("peer-min-prefix-v4", 0, ""),
    ("peer-min-prefix-v4", 33, ""),
    ("peer-min-prefix-v4", "wide", ""),
    ("peer-min-prefix-v6", 0, ""),
    ("peer-min-prefix-v6", 129, ""),
    # the canary's counter rule of a first deployment
    ("rolling-canary-window", 29, "30"),
    ("rolling-canary-window", 3601, "3600"),
    ("rolling-canary-window", "soon", ""),
    ("rolling-canary-window", 900, "rolling-wave-timeout"),  # the default timeout
    ("rolling-canary-threshold", -1, "0"),
    ("rolling-canary-threshold", 1_000_001, "1000000"),
    ("rolling-canary-threshold", "few", ""),
]


@pytest.mark.parametrize(("option", "value", "token"), INVALID)
def test_invalid_value_is_refused_by_its_juju_name(option: str, value: Any, token: str):
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options({option: value})
    assert caught.value.option == option
    assert f"'{option}'" in str(caught.value)
    assert token in caught.value.problem


def test_invalid_value_is_named_among_valid_ones():
    options = {
        "roles": "control",
        "client-cidrs": "10.99.0.0/24",
        "extra-ports": "internal=tcp:99999",
        "enforcement": "audit",
    }
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options(options)
    assert caught.value.option == "extra-ports"


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options({"no-such-option": "x"})
    assert caught.value.option == "no-such-option"


def test_empty_options_parse_to_nothing():
    config = CharmConfig.from_options(
        {
            "roles": "",
            "role-networks": "",
            "network-cidrs": "",
            "client-cidrs": "",
            "extra-ports": "",
            "accept-denials": "",
        }
    )
    assert config.roles == frozenset()
    assert config.role_networks == {}
    assert config.network_cidrs == {}
    assert config.client_cidrs == ()
    assert config.extra_ports == {}
    assert config.accept_denials == {}


@pytest.mark.parametrize(
    "text", ["control,compute", "control compute", " compute , control ", "control,,compute"]
)
def test_roles_accept_commas_and_spaces(text: str):
    assert CharmConfig.from_options({"roles": text}).roles == frozenset({"control", "compute"})


@pytest.mark.parametrize("role", ["juju-controller", "control", "compute", "storage"])
def test_every_guide_role_is_a_valid_role(role: str):
    assert CharmConfig.from_options({"roles": role}).roles == frozenset({role})


def test_role_networks_parse_into_a_table(guide_table: dict[str, frozenset[str]]):
    config = CharmConfig.from_options(
        {
            "role-networks": "control=management,internal,public,storage,data"
            " network=management,data,internal"
        }
    )
    assert config.role_networks == {
        "control": frozenset(
            {Network.MANAGEMENT, Network.INTERNAL, Network.PUBLIC, Network.STORAGE, Network.DATA}
        ),
        "network": frozenset({Network.MANAGEMENT, Network.DATA, Network.INTERNAL}),
    }
    table = {role: {n.value for n in nets} for role, nets in config.networks_by_role.items()}
    # The overridden row and the custom row, and every other guide row untouched.
    assert table["control"] == guide_table["control"] | {"data"}
    assert table["network"] == {"management", "data", "internal"}
    for role in set(guide_table) - {"control"}:
        assert table[role] == guide_table[role]


def test_role_table_without_overrides_is_the_guide_table(guide_table: dict[str, frozenset[str]]):
    config = CharmConfig.from_options({})
    assert config.role_table == "guide"
    table = config.networks_by_role
    assert {role: {n.value for n in nets} for role, nets in table.items()} == guide_table


def test_role_table_sunbeam_is_sunbeams_table(sunbeam_table: dict[str, frozenset[str]]):
    table = CharmConfig.from_options({"role-table": "sunbeam"}).networks_by_role
    assert {role: {n.value for n in nets} for role, nets in table.items()} == sunbeam_table


def test_role_networks_override_the_sunbeam_table(sunbeam_table: dict[str, frozenset[str]]):
    config = CharmConfig.from_options(
        {"role-table": "sunbeam", "role-networks": "storage=management,storage,storage-cluster"}
    )
    table = {role: {n.value for n in nets} for role, nets in config.networks_by_role.items()}
    assert table["storage"] == {"management", "storage", "storage-cluster"}
    assert table["network"] == sunbeam_table["network"]


@pytest.mark.parametrize("value", ["bogus", "Sunbeam", "guide,sunbeam", ""])
def test_unknown_role_table_names_the_option_and_the_tables(value: str):
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options({"role-table": value})
    assert caught.value.option == "role-table"
    assert str(caught.value) == (
        f"invalid config 'role-table': unknown role table '{value}' (tables: guide, sunbeam)"
    )


@pytest.mark.parametrize(
    ("table", "role", "known"), [("guide", "network", False), ("sunbeam", "network", True)]
)
def test_roles_option_knows_the_roles_of_the_chosen_table(table: str, role: str, known: bool):
    options = {"role-table": table, "roles": role}
    if known:
        assert CharmConfig.from_options(options).roles == frozenset({role})
    else:
        with pytest.raises(ConfigError, match="unknown role 'network'"):
            CharmConfig.from_options(options)


@pytest.mark.parametrize(
    "options",
    [
        {"role-networks": "network=management,internal,data", "roles": "network,compute"},
        {"roles": "network,compute", "role-networks": "network=management,internal,data"},
    ],
    ids=["role-networks-first", "roles-first"],
)
def test_custom_role_defined_in_role_networks_can_be_used_in_roles(options: dict[str, str]):
    config = CharmConfig.from_options(options)
    assert config.roles == frozenset({"network", "compute"})
    assert config.networks_by_role["network"] == frozenset(
        {Network.MANAGEMENT, Network.INTERNAL, Network.DATA}
    )


def test_custom_role_of_an_invalid_role_networks_reports_role_networks():
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options({"role-networks": "network=bogus", "roles": "network"})
    assert caught.value.option == "role-networks"


def test_accept_denials_parse_per_application():
    config = CharmConfig.from_options(
        {"accept-denials": "cinder-volume=internal microovn-arm64=data,internal"}
    )
    assert config.accept_denials == {
        "cinder-volume": frozenset({Network.INTERNAL}),
        "microovn-arm64": frozenset({Network.DATA, Network.INTERNAL}),
    }


def test_network_cidrs_parse_per_network():
    config = CharmConfig.from_options(
        {"network-cidrs": "internal=10.20.1.0/24,10.20.2.0/24 storage=10.30.0.0/16,fd00:30::/48"}
    )
    assert config.network_cidrs == {
        Network.INTERNAL: (
            ipaddress.ip_network("10.20.1.0/24"),
            ipaddress.ip_network("10.20.2.0/24"),
        ),
        Network.STORAGE: (
            ipaddress.ip_network("10.30.0.0/16"),
            ipaddress.ip_network("fd00:30::/48"),
        ),
    }


@pytest.mark.parametrize("text", ["10.99.0.0/24,fd00:99::/64", "10.99.0.0/24 fd00:99::/64"])
def test_client_cidrs_parse_in_order(text: str):
    assert CharmConfig.from_options({"client-cidrs": text}).client_cidrs == (
        ipaddress.ip_network("10.99.0.0/24"),
        ipaddress.ip_network("fd00:99::/64"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "::/1 8000::/1",
            "together they cover 2^128 IPv6 addresses, more than one /32"
            " (client-cidrs-max-size-v6): list only the clients' own subnets",
        ),
        (
            "0.0.0.0/1 128.0.0.0/1",
            "together they cover 2^32 IPv4 addresses, more than one /8"
            " (client-cidrs-max-size-v4): list only the clients' own subnets",
        ),
        (
            "10.0.0.0/9,10.128.0.0/9,192.168.0.0/24",
            "together they cover over 2^24 IPv4 addresses, more than one /8"
            " (client-cidrs-max-size-v4): list only the clients' own subnets",
        ),
    ],
)
def test_client_cidrs_covering_more_than_the_bound_together_are_refused(text: str, message: str):
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options({"client-cidrs": text})
    assert caught.value.option == "client-cidrs"
    assert caught.value.problem == message
    assert len(str(caught.value)) <= 160  # one status line


def test_client_cidrs_up_to_the_bound_together_are_accepted():
    text = "10.0.0.0/9,10.128.0.0/9 2001:db8::/33,2001:db8:8000::/33"
    assert len(CharmConfig.from_options({"client-cidrs": text}).client_cidrs) == 4


def test_overlapping_client_cidrs_are_counted_once():
    # 2^24 + 2^23 + 2^16 addresses listed, but only the /8's 2^24 covered.
    text = "10.0.0.0/8,10.0.0.0/9,10.1.0.0/16"
    assert len(CharmConfig.from_options({"client-cidrs": text}).client_cidrs) == 3


def test_each_ip_version_has_its_own_bound():
    config = CharmConfig.from_options({"client-cidrs": "10.0.0.0/8,2001:db8::/32"})
    assert len(config.client_cidrs) == 2


@pytest.mark.parametrize(
    ("option", "bound", "wider", "within"),
    [
        ("client-cidrs-max-size-v4", 16, "10.98.0.0/15", "10.99.0.0/16"),
        ("client-cidrs-max-size-v6", 56, "fd00:99::/55", "fd00:99::/56"),
    ],
)
def test_a_custom_bound_refuses_what_is_wider(option: str, bound: int, wider: str, within: str):
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options({option: bound, "client-cidrs": wider})
    assert caught.value.option == "client-cidrs"
    assert f"more than one /{bound} ({option})" in caught.value.problem
    config = CharmConfig.from_options({option: bound, "client-cidrs": within})
    assert config.client_cidrs == (ipaddress.ip_network(within),)


@pytest.mark.parametrize("bound", [0, 1, 33, "nonsense"])
def test_an_invalid_bound_is_reported_on_its_own_name(bound: Any):
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options(
            {"client-cidrs-max-size-v4": bound, "client-cidrs": "0.0.0.0/1,128.0.0.0/1"}
        )
    assert caught.value.option == "client-cidrs-max-size-v4"


@given(bound=st.integers(min_value=2, max_value=32), prefix=st.integers(min_value=1, max_value=32))
def test_one_client_subnet_is_accepted_exactly_when_within_the_bound(bound: int, prefix: int):
    options = {"client-cidrs-max-size-v4": bound, "client-cidrs": f"0.0.0.0/{prefix}"}
    if prefix >= bound:
        assert CharmConfig.from_options(options).client_cidrs[0].prefixlen == prefix
    else:
        with pytest.raises(ConfigError) as caught:
            CharmConfig.from_options(options)
        assert caught.value.option == "client-cidrs"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_default_bounds_accept_the_example_clouds_client_cidrs(path: Path):
    text = yaml.safe_load(path.read_text())["config"]["client-cidrs"]
    assert CharmConfig.from_options({"client-cidrs": text}).client_cidrs


@pytest.mark.parametrize("mode", ["enforce", "audit", "off"])
def test_enforcement_modes(mode: str):
    assert CharmConfig.from_options({"enforcement": mode}).enforcement == mode


def test_extra_ports_parse_into_protocol_and_range():
    config = CharmConfig.from_options(
        {"extra-ports": "internal=tcp:5672,tcp:3306 storage=tcp:6800-7300 data=udp:6081"}
    )
    assert config.extra_ports == {
        Network.INTERNAL: (("tcp", 5672, 5672), ("tcp", 3306, 3306)),
        Network.STORAGE: (("tcp", 6800, 7300),),
        Network.DATA: (("udp", 6081, 6081),),
    }


@pytest.mark.parametrize("text", ["tcp:1", "tcp:65535", "udp:1-65535", "tcp:80-80"])
def test_extra_ports_bounds_are_inclusive(text: str):
    config = CharmConfig.from_options({"extra-ports": f"public={text}"})
    assert len(config.extra_ports[Network.PUBLIC]) == 1


@given(
    proto=st.sampled_from(["tcp", "udp"]),
    first=st.integers(min_value=0, max_value=99999),
    last=st.integers(min_value=0, max_value=99999),
)
def test_extra_port_range_is_accepted_exactly_within_1_to_65535(proto: str, first: int, last: int):
    text = f"internal={proto}:{first}-{last}"
    if 1 <= first <= last <= 65535:
        parsed = CharmConfig.from_options({"extra-ports": text}).extra_ports
        assert parsed == {Network.INTERNAL: ((proto, first, last),)}
    else:
        with pytest.raises(ConfigError) as caught:
            CharmConfig.from_options({"extra-ports": text})
        assert caught.value.option == "extra-ports"


@pytest.mark.parametrize("option", ["strict-ports", "manage-routing"])
@pytest.mark.parametrize("value", [True, False])
def test_boolean_options(option: str, value: bool):
    config = CharmConfig.from_options({option: value})
    assert getattr(config, option.replace("-", "_")) is value


def test_config_is_frozen():
    config = CharmConfig.from_options({"roles": "control"})
    with pytest.raises(ValueError, match="frozen"):
        config.roles = frozenset({"compute"})  # type: ignore[misc]


@pytest.mark.parametrize("option", ["strict-ports", "manage-routing"])
@pytest.mark.parametrize("text", ["yes", "on", "1", "true"])
def test_booleans_must_be_real_booleans(option: str, text: str):
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options({option: text})
    assert caught.value.option == option


def test_a_role_without_management_is_refused():
    with pytest.raises(ConfigError) as caught:
        CharmConfig.from_options({"role-networks": "compute=internal,data,storage"})
    assert caught.value.option == "role-networks"
    assert "must include management" in caught.value.problem


@pytest.mark.parametrize(
    ("port", "says"),
    [
        (22, "22 is SSH's port, which the firewall keeps open on every machine"),
        (
            17070,
            "taken on the management network by Juju controller API and SSH server, tcp:17070",
        ),
        (
            17022,
            "taken on the management network by Juju controller API and SSH server, tcp:17022",
        ),
        (6443, "by Kubernetes API, tcp:6443"),
        (5999, "by SPICE consoles, tcp:5900-6099"),  # inside a range
    ],
)
def test_metrics_port_is_not_a_management_port(port: int, says: str):
    with pytest.raises(ConfigError) as raised:
        CharmConfig.from_options({"metrics-port": port})
    assert raised.value.option == "metrics-port"
    assert says in raised.value.problem
    assert raised.value.problem.endswith("choose another (the default is 9479)")


@pytest.mark.parametrize("port", [0, 9479, 9100, 68, 6100])  # udp/68 is DHCP: TCP is free
def test_metrics_port_elsewhere_is_accepted(port: int):
    assert CharmConfig.from_options({"metrics-port": port}).metrics_port == port
