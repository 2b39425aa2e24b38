"""The Terraform module and `plan --emit-terraform`, parsed for real, against charmcraft.yaml.

Both are read with python-hcl2. Every endpoint, binding and option the module names is checked
against charmcraft.yaml in both directions, so a rename on either side fails here instead of at
`terraform apply`; the emitted relations must give every machine its roles and no network more.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from network_isolation.cli import main
from network_isolation.model import Network, networks_for_roles
from network_isolation.terraform import hcl_string
from network_isolation.topology import Topology, load_topology

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "terraform"
META: dict[str, Any] = yaml.safe_load((ROOT / "charmcraft.yaml").read_text())
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MODULE_FILES = {"main.tf", "variables.tf", "outputs.tf", "versions.tf"}
ENDPOINT_KINDS = ("requires", "provides", "peers")

_READ = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, preserve_heredocs=False, strip_string_quotes=True
)
_LITERAL = re.compile(r'"([^"\\]*)"')
_REFERENCE = re.compile(r"^\$\{module\.([\w-]+)\.(\w+)(?:\.(\w+))?\}$")


def parse(text: str) -> dict[str, Any]:
    return hcl2.loads(text, serialization_options=_READ)


def blocks(parsed: dict[str, Any], kind: str) -> dict[str, Any]:
    """Blocks of one kind by label: hcl2 gives a list of one-key dicts per kind."""
    found: dict[str, Any] = {}
    for block in parsed.get(kind, []):
        found.update(block)
    return found


def resources(parsed: dict[str, Any], kind: str) -> dict[str, Any]:
    """Resources of one type by name: each resource block is a dict of its own."""
    found: dict[str, Any] = {}
    for block in parsed.get("resource", []):
        found.update(block.get(kind, {}))
    return found


def read_module(directory: Path) -> dict[str, Any]:
    """Every .tf file of a module, merged as Terraform merges them."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        for kind, items in parse(path.read_text()).items():
            merged.setdefault(kind, []).extend(items)
    return merged


MODULE = read_module(MODULE_DIR)
VARIABLES = blocks(MODULE, "variable")
OUTPUTS = blocks(MODULE, "output")


def literals(expression: str) -> set[str]:
    """The string literals of an expression, as a validation's list of accepted names."""
    return set(_LITERAL.findall(expression))


def accepted(variable: dict[str, Any]) -> set[str]:
    return literals(variable["validation"][0]["condition"])


def differences(what: str, declared: set[str], named: set[str]) -> list[str]:
    """What charmcraft.yaml declares and the module misses, and what the module names in vain."""
    return [
        *(
            f"{what}: {n} is in charmcraft.yaml, not in the module"
            for n in sorted(declared - named)
        ),
        *(
            f"{what}: {n} is in the module, not in charmcraft.yaml"
            for n in sorted(named - declared)
        ),
    ]


def module_drift(meta: dict[str, Any], module: dict[str, Any]) -> list[str]:
    """Where the module and charmcraft.yaml disagree; empty when they agree."""
    outputs, variables = blocks(module, "output"), blocks(module, "variable")
    problems: list[str] = []
    for kind in ENDPOINT_KINDS:
        declared = {f"{k.replace('-', '_')}={k}" for k in meta.get(kind, {})}
        value = outputs.get(kind, {}).get("value", {})
        problems += differences(f"output {kind}", declared, {f"{k}={v}" for k, v in value.items()})
    options = set(meta["config"]["options"])
    problems += differences("config", options, accepted(variables["config"]))
    bindable = {e for kind in ENDPOINT_KINDS for e in meta.get(kind, {})}
    bindable |= set(meta.get("extra-bindings", {}))
    problems += differences(
        "endpoint_bindings", bindable, accepted(variables["endpoint_bindings"])
    )
    bases = {platform.split(":")[0] for platform in meta["platforms"]}
    problems += differences("base", bases, accepted(variables["base"]))
    (application,) = resources(module, "juju_application").values()
    if application["charm"][0]["name"] != meta["name"]:
        problems.append(f"charm: {application['charm'][0]['name']} is not {meta['name']}")
    if meta.get("subordinate"):
        problems += [
            f"a subordinate takes no {key}" for key in ("units", "machines") if key in application
        ]
    return problems


def test_module_has_the_files_of_a_charm_module():
    assert {p.name for p in MODULE_DIR.glob("*.tf")} == MODULE_FILES
    assert (MODULE_DIR / "README.md").is_file()


def test_module_agrees_with_charmcraft_yaml():
    assert module_drift(META, MODULE) == []


# (section of charmcraft.yaml, a name in it, its new name)
RENAMES = [
    ("requires", "compute-node", "hypervisor-node"),
    ("provides", "cos-agent", "cos-agent-v2"),
    ("peers", "cluster", "members"),
    ("extra-bindings", "storage-cluster", "replication"),
    ("options", "strict-ports", "strict-port-list"),
]


@pytest.mark.parametrize(("section", "old", "new"), RENAMES)
def test_a_rename_in_charmcraft_yaml_is_reported(tmp_path: Path, section: str, old: str, new: str):
    text = (ROOT / "charmcraft.yaml").read_text()
    renamed, count = re.subn(rf"^(\s+){re.escape(old)}:", rf"\g<1>{new}:", text, flags=re.M)
    assert count == 1
    copy = tmp_path / "charmcraft.yaml"
    copy.write_text(renamed)
    meta: dict[str, Any] = yaml.safe_load(copy.read_text())
    where = meta["config"]["options"] if section == "options" else meta[section]
    assert new in where and old not in where
    problems = module_drift(meta, MODULE)
    assert any(f" {new} is in charmcraft.yaml" in p or f"={new} is in" in p for p in problems)
    assert any(f" {old} is in the module" in p or f"={old} is in" in p for p in problems)


def test_module_follows_the_juju_provider_1_conventions():
    (settings,) = MODULE["terraform"]
    (providers,) = settings["required_providers"]
    assert providers["juju"]["source"] == "juju/juju"
    assert providers["juju"]["version"].startswith(">= 1.0")  # model_uuid, not model
    (application,) = resources(MODULE, "juju_application").values()
    assert application["model_uuid"] == "${var.model_uuid}" and "model" not in application
    assert {"app_name", "model_uuid", "channel", "revision", "base", "config"} <= set(VARIABLES)
    assert {"constraints", "endpoint_bindings"} <= set(VARIABLES)
    assert VARIABLES["app_name"]["default"] == META["name"]
    assert "default" not in VARIABLES["model_uuid"]
    assert OUTPUTS["app_name"]["value"] == "${juju_application.network_isolation.name}"


def emitted(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([str(path), "--emit-terraform"])
    return code, capsys.readouterr().out


def emitted_drift(parsed: dict[str, Any], topology: Topology) -> list[str]:
    """Where the emitted blocks use the module or the topology wrongly; empty when right."""
    problems: list[str] = []
    modules = blocks(parsed, "module")
    options, networks = set(META["config"]["options"]), set(META["extra-bindings"])
    for name, block in modules.items():
        if block["source"] != "./terraform":
            problems.append(f"module {name}: source {block['source']}")
        problems += [
            f"module {name}: no variable {k}" for k in set(block) - {"source"} - set(VARIABLES)
        ]
        problems += [
            f"module {name}: no option {k}" for k in set(block.get("config", {})) - options
        ]
        bound = {b.get("endpoint"): b["space"] for b in block["endpoint_bindings"]}
        if None not in bound:
            problems.append(f"module {name}: no default space")
        if set(bound) - {None} != networks:
            problems.append(f"module {name}: binds {sorted(set(bound) - {None})}")
        problems += [
            f"module {name}: {net} on {space}"
            for net, space in bound.items()
            if net is not None and space != topology.space_of(Network(net))
        ]
    principals = {p for m in topology.machines.values() for p in m.principals}
    for label, integration in resources(parsed, "juju_integration").items():
        ours, theirs = integration["application"]
        match = _REFERENCE.match(ours["endpoint"])
        if not match or match.group(1) not in modules or match.group(2) != "requires":
            problems.append(f"{label}: endpoint {ours['endpoint']}")
        elif match.group(3) not in OUTPUTS["requires"]["value"]:
            problems.append(f"{label}: the module requires no {match.group(3)}")
        if theirs["name"] not in principals:
            problems.append(f"{label}: {theirs['name']} is no principal of the topology")
    return problems


def implied_roles(parsed: dict[str, Any]) -> dict[str, set[str]]:
    """The roles each principal's relations give its machines, read back from the HCL."""
    requires: dict[str, str] = OUTPUTS["requires"]["value"]
    roles: dict[str, set[str]] = {}
    for integration in resources(parsed, "juju_integration").values():
        ours, theirs = integration["application"]
        match = _REFERENCE.match(ours["endpoint"])
        assert match
        roles.setdefault(theirs["name"], set()).add(requires[match.group(3)].removesuffix("-node"))
    return roles


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_emitted_terraform_parses_and_uses_the_module_as_declared(
    example: Path, capsys: pytest.CaptureFixture[str]
):
    code, text = emitted(example, capsys)
    assert code in (0, 1)
    parsed = parse(text)
    assert blocks(parsed, "module")
    assert emitted_drift(parsed, load_topology(example)) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_emitted_relations_give_each_machine_its_roles_and_no_more_networks(
    example: Path, capsys: pytest.CaptureFixture[str]
):
    topology = load_topology(example)
    config = topology.charm_config()
    table = config.networks_by_role
    implied = implied_roles(parse(emitted(example, capsys)[1]))
    for name, machine in topology.machines.items():
        if not machine.principals:
            continue
        gets = set().union(*(implied.get(p, set()) for p in machine.principals)) | config.roles
        assert set(machine.roles) <= gets, name
        declared = networks_for_roles({*machine.roles, *config.roles}, table)
        assert networks_for_roles(gets, table) == declared, name


def write_topology(path: Path, machines: dict[str, Any], config: dict[str, Any] | None = None):
    """A cloud of two spaces (storage on its own), every machine with a NIC in each."""
    for number, machine in enumerate(machines.values(), start=10):
        machine["interfaces"] = {"eth0": [f"10.0.0.{number}/24"], "eth1": [f"10.1.0.{number}/24"]}
    cloud = {"spaces": {"oam": ["10.0.0.0/24"], "ceph": ["10.1.0.0/24"]}, "default-space": "oam"}
    cloud |= {"bindings": {"storage": "ceph"}, "config": config or {}, "machines": machines}
    path.write_text(yaml.safe_dump(cloud))
    return path


def test_without_principals_the_module_is_emitted_and_the_roles_are_left_as_comments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    cloud = write_topology(
        tmp_path / "cloud.yaml",
        {"c1": {"roles": ["control"]}, "j1": {"roles": ["juju-controller"]}},
    )
    code, text = emitted(cloud, capsys)
    parsed = parse(text)
    assert code == 0
    assert set(blocks(parsed, "module")) == {"network-isolation", "network-isolation-controller"}
    assert not resources(parsed, "juju_integration")
    assert "#   control on c1: the topology names no principal" in text
    assert "#   juju-controller on j1: the topology names no principal" in text


def test_a_principal_of_several_roles_is_not_related_over_either(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    machines = {
        "c1": {"roles": ["control"], "principals": ["shared", "k8s"]},
        "s1": {"roles": ["storage"], "principals": ["shared"]},
    }
    code, text = emitted(write_topology(tmp_path / "cloud.yaml", machines), capsys)
    assert code == 0
    assert set(implied_roles(parse(text))) == {"k8s"}
    assert "#   storage on s1: no principal runs only on machines of this role" in text


def test_a_role_contained_elsewhere_takes_a_shared_principal_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    machines = {
        "c1": {"roles": ["control"], "principals": ["k8s", "microovn"]},
        "n1": {"roles": ["network"], "principals": ["microovn"]},
    }
    cloud = write_topology(tmp_path / "cloud.yaml", machines, {"role-table": "sunbeam"})
    code, text = emitted(cloud, capsys)
    assert code == 0
    assert implied_roles(parse(text)) == {"k8s": {"control"}, "microovn": {"network"}}
    assert (
        "# microovn also runs on c1, which may already use every network of role network" in text
    )


@pytest.mark.parametrize(
    ("machines", "message"),
    [
        ({"c1": {"roles": ["control"], "principals": ["K8s!"]}}, "'K8s!' is not a Juju"),
        (
            {
                "c1": {"roles": ["control"], "principals": ["ubuntu"]},
                "j1": {"roles": ["juju-controller"], "principals": ["ubuntu"]},
            },
            "principal 'ubuntu' runs on machines of models openstack-machines and controller",
        ),
    ],
)
def test_principals_no_plan_can_relate_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], machines: dict[str, Any], message: str
):
    cloud = write_topology(tmp_path / "cloud.yaml", machines)
    with pytest.raises(SystemExit) as exit_:
        main([str(cloud), "--emit-terraform"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--machine", "c1"], ["--render-dir", "out"]])
def test_emit_terraform_is_for_the_whole_cloud(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
):
    cloud = write_topology(tmp_path / "cloud.yaml", {"c1": {"roles": ["control"]}})
    with pytest.raises(SystemExit) as exit_:
        main([str(cloud), "--emit-terraform", *extra])
    assert exit_.value.code == 2
    assert "--emit-terraform covers the whole cloud" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_blocked_machine_is_named_and_fails_the_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    machines = {"s1": {"roles": ["storage"], "principals": ["cinder-volume"]}}
    code, text = emitted(write_topology(tmp_path / "cloud.yaml", machines), capsys)
    assert code == 1
    assert "# blocked by the plan: s1: cinder-volume needs 'internal'" in text
    parse(text)


@pytest.mark.parametrize("value", ['a "quoted" value', "back\\slash", "two\nlines", "tab\there"])
def test_strings_keep_their_value(value: str):
    assert parse(f"x = {hcl_string(value)}\n")["x"] == value


def test_template_sequences_are_escaped():
    assert hcl_string("${var.x} %{if}") == '"$${var.x} %%{if}"'
