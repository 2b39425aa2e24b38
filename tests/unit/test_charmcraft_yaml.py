"""charmcraft.yaml agrees with the code: options, endpoints, bindings and actions."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from charm import ROLE_ENDPOINTS
from network_isolation.config import CharmConfig
from network_isolation.model import Network

ROOT = Path(__file__).resolve().parents[2]
META: dict[str, Any] = yaml.safe_load((ROOT / "charmcraft.yaml").read_text())
OPTIONS: dict[str, dict[str, Any]] = META["config"]["options"]
JUJU_TYPES = {"string": str, "boolean": bool, "int": int, "float": float}


def test_options_are_the_config_fields():
    assert set(OPTIONS) == {name.replace("_", "-") for name in CharmConfig.model_fields}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_option_has_a_type_a_default_and_a_description(option: str):
    spec = OPTIONS[option]
    assert spec["type"] in JUJU_TYPES
    assert "default" in spec
    assert isinstance(spec["default"], JUJU_TYPES[spec["type"]])
    assert spec.get("description", "").strip()


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_scalar_options_match_the_field_type(option: str):
    annotation = CharmConfig.model_fields[option.replace("-", "_")].annotation
    juju_type = OPTIONS[option]["type"]
    if juju_type in ("boolean", "int", "float"):
        # Juju hands these over typed: the field must take the same type.
        assert annotation is JUJU_TYPES[juju_type]
    else:
        # Strings are parsed into richer structures, never kept as booleans or numbers.
        assert annotation not in (bool, int, float)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_default_parses(option: str):
    CharmConfig.from_options({option: OPTIONS[option]["default"]})


def test_defaults_are_the_models_defaults():
    defaults = {name: spec["default"] for name, spec in OPTIONS.items()}
    assert CharmConfig.from_options(defaults) == CharmConfig()


def test_examples_in_option_descriptions_parse():
    examples = [
        (name, text)
        for name, spec in OPTIONS.items()
        for text in re.findall(r'Example: "([^"]*)"', spec.get("description", ""))
    ]
    assert len(examples) >= 3
    for name, text in examples:
        CharmConfig.from_options({name: text})


def test_role_endpoints_map_to_every_role_of_both_tables(
    guide_table: dict[str, frozenset[str]], sunbeam_table: dict[str, frozenset[str]]
):
    requires = META["requires"]
    role_endpoints = {name for name in requires if name.endswith("-node")}
    roles = set(guide_table) | set(sunbeam_table)
    assert role_endpoints == {f"{role}-node" for role in roles}
    assert ROLE_ENDPOINTS == {f"{role}-node": role for role in roles}
    assert "region-controller-node" in role_endpoints
    for endpoint in role_endpoints:
        assert requires[endpoint]["interface"] == "juju-info"
        assert requires[endpoint]["scope"] == "container"


def test_charm_is_a_subordinate():
    assert META["subordinate"] is True


def test_extra_bindings_are_the_six_networks(guide_networks: tuple[str, ...]):
    bindings = set(META["extra-bindings"])
    assert bindings == {n.value for n in Network}
    assert bindings == set(guide_networks)


def test_no_endpoint_shares_a_name_with_an_extra_binding():
    endpoints = {
        name for kind in ("requires", "provides", "peers") for name in META.get(kind) or {}
    }
    assert endpoints
    assert not endpoints & set(META["extra-bindings"])


def test_show_plan_action_formats():
    params = META["actions"]["show-plan"]["params"]
    assert set(params["format"]["enum"]) == {"json", "text", "html"}
    assert params["format"]["default"] in params["format"]["enum"]


def test_cos_agent_endpoint_is_provided_container_scoped():
    endpoint = META["provides"]["cos-agent"]
    assert endpoint["interface"] == "cos_agent"
    assert endpoint["scope"] == "container"


def test_charm_entry_point_is_executable():
    assert os.access(ROOT / "src" / "charm.py", os.X_OK)
