"""Rendering: the templates, golden files, the real `nft` and `netplan`, the `plan` files.

The firewall's rules and the policy routing by example are in test_render_firewall and
test_render_routing. Golden files are regenerated with `python tools/regen_dumps.py` and
reviewed as diffs.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from goldens import DUMPS, REGEN_COMMAND, golden_files, golden_plans, netplan_cases, stored_files
from netns_runner import nft_exercise
from netplan_merge import maas_netplan, netplan_generate
from tools_available import missing_tool, require_tool
from topologies import EXAMPLES, partial_topology, plan_of

from network_isolation import cli
from network_isolation import render as render_module
from network_isolation.render import (
    NETPLAN_FILE_NAME,
    NETPLAN_TEMPLATE,
    NFTABLES_TEMPLATE,
    TABLE_FAMILY,
    TABLE_NAME,
    TEMPLATE_DIRS,
    Artefacts,
    RenderError,
    render,
    templates_dir,
)
from network_isolation.topology import Topology, load_topology

GOLDEN = golden_files()
PLANS = golden_plans()
NFT_CASES = sorted(k for k in GOLDEN if k.endswith("/nftables.conf"))
NETPLAN_CASES = netplan_cases()


# ---------------------------------------------------------------------------------------------
# API and files


def test_api_names():
    assert (TABLE_FAMILY, TABLE_NAME) == ("inet", "network_isolation")
    assert NETPLAN_FILE_NAME == "90-network-isolation.yaml"
    assert sorted(["50-cloud-init.yaml", NETPLAN_FILE_NAME])[-1] == NETPLAN_FILE_NAME
    artefacts = Artefacts(nftables="x", netplan=None)
    with pytest.raises(ValueError):
        artefacts.nftables = "y"  # type: ignore[misc]


def test_templates_are_the_repository_ones_then_the_package_ones():
    repo = Path(__file__).resolve().parents[2] / "templates"
    package = Path(render_module.__file__).resolve().parent / "templates"
    assert TEMPLATE_DIRS == (repo, package)
    assert templates_dir() == repo


@pytest.fixture
def fresh_environment():
    """Forget the cached jinja2 environment before and after the test."""
    render_module._environment.cache_clear()
    yield
    render_module._environment.cache_clear()


def test_templates_fall_back_to_the_package_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_environment: None, maas: Topology
):
    """An installed wheel has no top-level templates/: the package's copy is used."""
    package = tmp_path / "site-packages" / "network_isolation" / "templates"
    package.mkdir(parents=True)
    for name in (NFTABLES_TEMPLATE, NETPLAN_TEMPLATE):
        (package / name).write_text((TEMPLATE_DIRS[0] / name).read_text())
    partial_copy = tmp_path / "charm" / "templates"  # exists, but without the templates
    partial_copy.mkdir(parents=True)
    (partial_copy / NFTABLES_TEMPLATE).write_text("not ours")
    monkeypatch.setattr(
        render_module, "TEMPLATE_DIRS", (tmp_path / "missing", partial_copy, package)
    )
    assert templates_dir() == package
    artefacts = render(plan_of(maas, "storage-3"))
    assert artefacts.nftables == GOLDEN["microstack-maas/storage-3/nftables.conf"]
    assert artefacts.netplan == GOLDEN["microstack-maas/storage-3/netplan.yaml"]


def test_missing_templates_are_a_render_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_environment: None, maas: Topology
):
    monkeypatch.setattr(render_module, "TEMPLATE_DIRS", (tmp_path / "a", tmp_path / "b"))
    with pytest.raises(RenderError, match="templates not found"):
        render(plan_of(maas, "juju-1"))


@pytest.mark.parametrize("path", sorted(GOLDEN))
def test_golden_file(path: str):
    stored = DUMPS / path
    assert stored.exists(), f"missing golden file {path}: run `{REGEN_COMMAND}`"
    assert stored.read_bytes() == GOLDEN[path].encode(), (
        f"{path} differs from its golden file: review the change, then run `{REGEN_COMMAND}`"
    )


def test_no_stale_golden_files():
    assert set(stored_files()) == set(GOLDEN), f"run `{REGEN_COMMAND}`"


def test_golden_cases_cover_examples_and_role_combinations():
    cases = {key.split("/")[0] for key in PLANS}
    assert {"microstack-maas", "single-space", "roles", "partial"} <= cases
    assert {"strict-microstack-maas", "strict-single-space", "strict-extra-ports"} <= cases
    roles = {key.split("/")[1] for key in PLANS if key.startswith("roles/")}
    assert len(roles) == 16  # every subset of the guide's four roles, the empty one included
    for example in EXAMPLES.glob("*.yaml"):
        topology = load_topology(example)
        assert {f"{example.stem}/{m}" for m in topology.machines} <= set(PLANS)


# ---------------------------------------------------------------------------------------------
# The real tools


@pytest.mark.parametrize("path", NFT_CASES)
def test_ruleset_loads_in_a_fresh_namespace(path: str):
    """`nft -c`, a real load twice over, then the `off` ruleset removes our table only."""
    topology, machine, plan = PLANS[path.removesuffix("/nftables.conf")]
    off = plan.model_copy(update={"config": plan.config.model_copy(update={"enforcement": "off"})})
    nft_exercise(
        GOLDEN[path], off=render(off).nftables, interfaces=topology.machines[machine].interfaces
    )


@pytest.mark.parametrize("path", NETPLAN_CASES)
def test_netplan_generate_accepts_our_file_over_maas(path: str):
    topology, machine, plan = PLANS[path.removesuffix("/netplan.yaml")]
    maas_file = maas_netplan(topology.plan_input(machine))
    ours = GOLDEN[path]
    networkd = netplan_generate(maas_file, ours)
    rules = yaml.safe_load(ours)
    expected = sum(
        len(interface["routing-policy"])
        for kind in ("ethernets", "bonds", "bridges", "vlans")
        for interface in rules["network"].get(kind, {}).values()
    )
    generated = "".join(networkd.values())
    assert generated.count("[RoutingPolicyRule]") == expected
    assert "Table=0" not in generated
    # Our file never redefines addresses: networkd gets exactly MAAS's addresses.
    maas_doc = yaml.safe_load(maas_file)["network"]
    addresses = sum(
        len(i.get("addresses", []))
        for k, v in maas_doc.items()
        if k != "version"
        for i in v.values()
    )
    assert generated.count("\nAddress=") == addresses
    assert all(
        "addresses" not in interface
        for kind, section in rules["network"].items()
        if kind != "version"
        for interface in section.values()
    )


def test_netplan_generate_refuses_a_wrong_interface_type():
    """Why the netplan section must be the machine's own: a vlan redefined as ethernet fails."""
    require_tool("netplan")
    topology = partial_topology()
    plan = plan_of(topology, "control-1")
    every_one_ethernet = dict.fromkeys(plan.interface_kinds, "ethernets")
    wrong = plan.model_copy(update={"interface_kinds": every_one_ethernet})
    with pytest.raises(AssertionError, match="changes device type"):
        netplan_generate(maas_netplan(topology.plan_input("control-1")), render(wrong).netplan)


def test_cli_writes_the_golden_files_with_mode_0600(tmp_path: Path):
    for example in ("microstack-maas", "single-space"):
        out = tmp_path / example
        stale = out / "control-1" / "netplan.yaml"
        stale.parent.mkdir(parents=True)
        stale.write_text("from an earlier render")
        assert cli.main([str(EXAMPLES / f"{example}.yaml"), "--render-dir", str(out)]) == 0
        written = {str(p.relative_to(out)): p for p in out.rglob("*") if p.is_file()}
        expected = {
            k.removeprefix(f"{example}/"): v for k, v in GOLDEN.items() if k.startswith(example)
        }
        assert set(written) == set(expected)  # a netplan file no longer rendered is removed
        for name, path in written.items():
            assert path.read_text() == expected[name]
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cli_render_dir_for_one_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = [str(EXAMPLES / "microstack-maas.yaml"), "--machine", "storage-3"]
    assert cli.main([*args, "--render-dir", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["storage-3"]
    assert sorted(p.name for p in (tmp_path / "storage-3").iterdir()) == [
        "netplan.yaml",
        "nftables.conf",
    ]
    out = capsys.readouterr().out
    assert "storage-3 (storage; role table guide)" in out  # the plan is still printed


def test_cli_reports_what_cannot_be_rendered_or_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    subnets = ", ".join(f"10.50.{k // 256}.{k % 256}/32" for k in range(4001))
    topology = tmp_path / "big.yaml"
    topology.write_text(
        "spaces: {oam: [10.10.0.0/24], ceph: {subnets: [10.60.0.0/24, " + subnets + "],"
        " gateway: {10.60.0.0/24: 10.60.0.1}}}\n"
        "default-space: oam\nbindings: {storage: ceph}\n"
        "machines: {s: {roles: [storage], interfaces: {e1: [10.10.0.5/24], e2: [10.60.0.5/24]}}}\n"
    )
    with pytest.raises(SystemExit) as exc:
        cli.main([str(topology), "--render-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "cannot render machine 's'" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exc:
        cli.main([str(EXAMPLES / "single-space.yaml"), "--render-dir", str(blocker)])
    assert exc.value.code == 2
    assert "cannot write" in capsys.readouterr().err


def test_cli_refuses_a_machine_name_that_is_no_directory(tmp_path: Path):
    topology = tmp_path / "t.yaml"
    text = (EXAMPLES / "single-space.yaml").read_text().replace("juju-1:", "'..':")
    topology.write_text(text)
    with pytest.raises(SystemExit) as exc:
        cli.main([str(topology), "--render-dir", str(tmp_path / "out")])
    assert exc.value.code == 2


# ---------------------------------------------------------------------------------------------
# Missing tools


def test_missing_tool_skips_naming_the_package(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian package 'nftables'"):
        missing_tool("nft")


def test_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Debian package 'netplan.io'"):
        missing_tool("netplan")


def test_the_enforcement_mode_does_not_touch_the_netplan_file(maas: Topology):
    """Switching to audit or off must not rewrite the netplan file (no `netplan apply`)."""
    plan = plan_of(maas, "storage-3")
    files = {
        mode: render(
            plan.model_copy(
                update={"config": plan.config.model_copy(update={"enforcement": mode})}
            )
        )
        for mode in ("enforce", "audit", "off")
    }
    assert len({a.netplan for a in files.values()}) == 1
    assert len({a.nftables for a in files.values()}) == 3
