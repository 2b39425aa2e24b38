"""Rendering: golden files, the real `nft` and `netplan`, and the issue's semantics by example.

Expected values are written out by hand from the issue and the example topologies; golden files
are regenerated with `python tools/regen_dumps.py` and reviewed as diffs.
"""

from __future__ import annotations

import ipaddress
import re
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from render_helpers import (
    DUMPS,
    EXAMPLES,
    REGEN_COMMAND,
    address_conflicts,
    expected_input,
    golden_files,
    golden_plans,
    listed_ports,
    maas_netplan,
    missing_tool,
    netplan_generate,
    nft_exercise,
    nft_rule_count,
    partial_topology,
    require_tool,
    stored_files,
    verdict,
)

from network_isolation import cli
from network_isolation import render as render_module
from network_isolation.config import CharmConfig
from network_isolation.model import Network
from network_isolation.planner import (
    InterfaceAddress,
    MachinePlan,
    NetworkView,
    PlanInput,
    plan_machine,
)
from network_isolation.ports import PortRange, machine_ports
from network_isolation.render import (
    NETPLAN_FILE_NAME,
    NETPLAN_TEMPLATE,
    NFTABLES_TEMPLATE,
    TABLE_FAMILY,
    TABLE_NAME,
    TEMPLATE_DIRS,
    Artefacts,
    PolicyRule,
    RenderError,
    Route,
    RoutedInterface,
    RoutingView,
    check_policy_routing,
    exclude,
    firewall_view,
    normalize,
    render,
    routing_view,
    strict_ports,
    templates_dir,
)
from network_isolation.topology import Topology, load_topology

GOLDEN = golden_files()
PLANS = golden_plans()
NFT_CASES = sorted(k for k in GOLDEN if k.endswith("/nftables.conf"))


def _unique_netplan_cases() -> list[str]:
    """Netplan golden files, each (MAAS file, ours) pair once: variants share most of them."""
    seen: set[tuple[str, str]] = set()
    cases = []
    for path in sorted(k for k in GOLDEN if k.endswith("/netplan.yaml")):
        topology, machine, _ = PLANS[path.removesuffix("/netplan.yaml")]
        key = (maas_netplan(topology.plan_input(machine)), GOLDEN[path])
        if key not in seen:
            seen.add(key)
            cases.append(path)
    return cases


NETPLAN_CASES = _unique_netplan_cases()
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def _if(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(text)


def _plan(topology: Topology, machine: str) -> MachinePlan:
    return plan_machine(topology.plan_input(machine))


@pytest.fixture(scope="module")
def maas() -> Topology:
    return load_topology(EXAMPLES / "microstack-maas.yaml")


@pytest.fixture(scope="module")
def single() -> Topology:
    return load_topology(EXAMPLES / "single-space.yaml")


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
    artefacts = render(_plan(maas, "storage-3"))
    assert artefacts.nftables == GOLDEN["microstack-maas/storage-3/nftables.conf"]
    assert artefacts.netplan == GOLDEN["microstack-maas/storage-3/netplan.yaml"]


def test_missing_templates_are_a_render_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_environment: None, maas: Topology
):
    monkeypatch.setattr(render_module, "TEMPLATE_DIRS", (tmp_path / "a", tmp_path / "b"))
    with pytest.raises(RenderError, match="templates not found"):
        render(_plan(maas, "juju-1"))


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
    plan = _plan(topology, "control-1")
    wrong = plan.model_copy(update={"interface_kinds": {}})
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
    assert "storage-3 (storage)" in capsys.readouterr().out  # the plan is still printed


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
# Firewall semantics, by example


def test_rule_layout_of_a_storage_node(maas: Topology):
    text = render(_plan(maas, "storage-3")).nftables
    order = [
        'iifname "lo" accept',
        "ct state established,related accept",
        'ct state invalid counter name "drop_in_invalid" drop',
        "ip saddr @failsafe_v4 tcp dport 22 accept",
        "ip6 saddr @failsafe_v6 tcp dport 22 accept",
        'ip saddr @net_data_v4 counter name "drop_in_data" drop',
        "iifname @if_storage ip saddr @net_storage_v4 accept",
        'iifname @if_storage ip saddr @cross_storage_v4 counter name "drop_in_storage" drop',
        'iifname @if_storage counter name "drop_in_storage" drop',
        "chain output {",
        'ip daddr @net_public_v4 counter name "drop_out_public" drop',
    ]
    assert_in_order(text[text.index("chain input") :], order)
    assert "table inet network_isolation\ndelete table inet network_isolation\n" in text
    assert "flush" not in text
    assert "forward" not in text
    assert re.search(r"\biif |\boif ", text) is None
    assert text.startswith("# network-isolation: nftables ruleset of machine 'storage-3'")
    assert "do not edit" in text


def test_semantics_of_a_control_node(maas: Topology):
    view = firewall_view(_plan(maas, "control-1"))
    # own subnets on own interface; another cloud network on it; a denied network anywhere
    assert verdict(view, "input", "enp2s0", "10.20.0.99", 5672) == "accept"
    assert verdict(view, "input", "enp2s0", "10.30.0.99", 5672) == "drop"
    assert verdict(view, "input", "enp1s0", "10.60.0.99", 80) == "drop"
    assert verdict(view, "input", "tap1234", "10.40.0.7", 80) == "drop"
    # other sources: accepted on public, on management only from client-cidrs, else dropped
    assert verdict(view, "input", "enp3s0", "203.0.113.9", 443) == "accept"
    assert verdict(view, "input", "enp1s0", "10.99.0.9", 17070) == "accept"
    assert verdict(view, "input", "enp1s0", "203.0.113.9", 17070) == "drop"
    assert verdict(view, "input", "enp2s0", "203.0.113.9", 5672) == "drop"
    # the failsafe wins over every drop: SSH from management or a client, even on storage
    assert verdict(view, "input", "enp4s0", "10.10.0.9", 22) == "accept"
    assert verdict(view, "input", "enp2s0", "fd00:99::9", 22) == "accept"
    # interfaces of no cloud network (OVS, br-ex, taps) are not ours to decide
    assert verdict(view, "input", "br-ex", "198.51.100.7", 80) == "accept"
    # output: only denied networks are dropped
    assert verdict(view, "output", "enp1s0", "10.60.0.31") == "drop"
    assert verdict(view, "output", "enp4s0", "10.50.1.33") == "accept"
    assert address_conflicts(view, ["enp1s0", "enp2s0", "enp3s0", "enp4s0"]) == []


def test_denied_nic_is_dropped_on_input_and_output():
    plan = _plan(partial_topology(), "storage-1")  # a tenant NIC, but no compute role
    view = firewall_view(plan)
    assert plan.denied_interfaces == ("enp3s0",)
    assert verdict(view, "input", "enp3s0", "198.51.100.1", 80) == "drop"
    assert verdict(view, "output", "enp3s0", "198.51.100.1") == "drop"
    assert verdict(view, "input", "enp3s0", "10.1.0.9", 22) == "accept"  # failsafe


def test_shared_nic_accepts_every_allowed_network_it_carries():
    view = firewall_view(_plan(partial_topology(), "edge-1"))  # oam and api on enp1s0
    assert verdict(view, "input", "enp1s0", "10.1.0.9", 80) == "accept"
    assert verdict(view, "input", "enp1s0", "10.2.0.9", 80) == "accept"
    assert verdict(view, "input", "enp1s0", "10.5.0.9", 80) == "drop"
    assert verdict(view, "input", "enp2s0", "10.2.0.9", 80) == "drop"
    assert address_conflicts(view, ["enp1s0", "enp2s0"]) == []


def test_sole_space_drops_nothing_but_invalid_packets(single: Topology):
    for machine in single.machines:
        view = firewall_view(_plan(single, machine))
        drops = [r for c in view.chains for r in c.rules if r.verdict == "drop"]
        assert [r.extra for r in drops] == ["ct state invalid"]


def test_client_cidrs_overlapping_a_cloud_subnet_stay_consistent():
    plan = _plan(partial_topology(), "juju-1")
    view = firewall_view(plan)
    # 10.1.0.128/25 (a client range) lies inside oam: accepted there as oam
    assert "10.1.0.128/25" not in view.set("clients_v4").elements
    assert view.set("failsafe_v4").elements == ("10.1.0.0/24", "192.0.2.0/24")
    assert address_conflicts(view, ["enp1s0"]) == []


def test_counters_are_named_per_network_and_direction(maas: Topology):
    view = firewall_view(_plan(maas, "compute-1"))
    assert set(view.counters) == {
        "drop_in_invalid",
        "drop_in_public",
        "drop_in_storage_cluster",
        "drop_in_data",
        "drop_in_internal",
        "drop_in_management",
        "drop_in_storage",
        "drop_out_public",
        "drop_out_storage_cluster",
    }
    for path in NFT_CASES:
        counters = re.findall(r"^\tcounter (\S+) \{$", GOLDEN[path], re.M)
        assert all(IDENTIFIER.match(c) for c in counters), counters
        used = set(re.findall(r'counter name "([^"]+)"', GOLDEN[path]))
        assert used == set(counters)


def assert_in_order(text: str, statements: list[str]) -> None:
    """Every statement is a line of text (stripped), and they come in this order."""
    lines = [line.strip() for line in text.splitlines()]
    positions = [lines.index(statement) for statement in statements]
    assert positions == sorted(positions)


def _statements(ruleset: str) -> list[str]:
    return [line.strip() for line in ruleset.splitlines() if not line.strip().startswith("#")]


def test_every_drop_has_a_counter():
    for path in NFT_CASES:
        for line in _statements(GOLDEN[path]):
            if re.search(r"\sdrop$", line):
                assert 'counter name "drop_' in line, line


def test_audit_logs_and_counts_instead_of_dropping(maas: Topology):
    plan = _plan(maas, "storage-3")
    audit = plan.model_copy(
        update={"config": plan.config.model_copy(update={"enforcement": "audit"})}
    )
    enforce_view, audit_view = firewall_view(plan), firewall_view(audit)
    text = render(audit).nftables
    assert all(re.search(r"(^|\s)drop(\s|$)", line) is None for line in _statements(text))
    assert 'log prefix "network-isolation audit in storage-cluster: "' in text
    assert "limit rate 10/minute" in text
    # same rules in the base chains, same counters
    assert enforce_view.counters == audit_view.counters
    for name in ("input", "output"):
        enforce, audited = enforce_view.chain(name), audit_view.chain(name)
        assert enforce is not None and audited is not None
        assert len(enforce.rules) == len(audited.rules)
    nft_exercise(text)


def test_off_only_removes_our_table(maas: Topology):
    plan = _plan(maas, "hyper-1")
    off = plan.model_copy(update={"config": plan.config.model_copy(update={"enforcement": "off"})})
    text = render(off).nftables
    statements = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert statements == [
        "table inet network_isolation",
        "delete table inet network_isolation",
    ]


def _control_node(
    extra_v4: int, extra_v6: int = 0, config: Mapping[str, object] | None = None
) -> MachinePlan:
    """A control node of a six-space cloud whose storage space has extra subnets."""
    spaces = {
        name: [f"10.{n}0.0.0/24", f"fd00:{n}0::/64"]
        for n, name in enumerate(("oam", "int", "pub", "ten", "cph", "rep"), start=1)
    }
    spaces["cph"] += [f"10.5.{k // 256}.{k % 256}/32" for k in range(extra_v4)]
    spaces["cph"] += [f"fd00:5::{k:x}:0/112" for k in range(extra_v6)]
    topology = Topology.model_validate(
        {
            "spaces": spaces,
            "bindings": {
                "data": "ten",
                "internal": "int",
                "management": "oam",
                "public": "pub",
                "storage": "cph",
                "storage-cluster": "rep",
            },
            "config": {"client-cidrs": "192.0.2.0/24", **(config or {})},
            "machines": {
                "m": {
                    "roles": ["control"],
                    "interfaces": {f"enp{n}s0": [f"10.{n}0.0.5/24"] for n in range(1, 7)},
                }
            },
        }
    )
    return _plan(topology, "m")


def test_rule_count_does_not_grow_with_subnets():
    """1 subnet per family in the storage space, then 1,000 more of each: same rules."""

    def plan(count: int) -> MachinePlan:
        return _control_node(count, count)

    small, large = plan(0), plan(1000)
    assert len(large.domain_of(Network.STORAGE).subnets) == 2002
    views = [firewall_view(small), firewall_view(large)]
    assert views[0].rule_count == views[1].rule_count
    assert sum(len(s.elements) for s in views[1].sets) > 4000
    kernel = [nft_rule_count(render(p).nftables) for p in (small, large)]
    assert kernel == [views[0].rule_count] * 2


# ---------------------------------------------------------------------------------------------
# strict-ports


def _strict(plan: MachinePlan, **options: object) -> MachinePlan:
    config = plan.config.model_copy(update={"strict_ports": True, **options})
    return plan.model_copy(update={"config": config})


def test_strict_rule_layout_of_a_control_node(maas: Topology):
    text = render(_strict(_plan(maas, "control-1"))).nftables
    order = [
        'iifname "lo" accept',
        "ct state established,related accept",
        'ct state invalid counter name "drop_in_invalid" drop',
        "ip saddr @failsafe_v4 tcp dport 22 accept",
        'ip saddr @net_data_v4 counter name "drop_in_data" drop',
        "iifname @if_internal ip saddr @net_internal_v4 tcp dport @ports_internal_tcp accept",
        "iifname @if_internal ip saddr @net_internal_v4 udp dport @ports_internal_udp accept",
        "iifname @if_internal ip6 saddr @net_internal_v6 tcp dport @ports_internal_tcp accept",
        'iifname @if_internal ip saddr @cross_internal_v4 counter name "drop_in_internal" drop',
        'iifname @if_internal counter name "drop_in_internal" drop',
        "iifname @if_management ip saddr @clients_v4 tcp dport @ports_management_tcp accept",
        'iifname @if_management counter name "drop_in_management" drop',
        'iifname @if_public ip saddr @cross_public_v4 counter name "drop_in_public" drop',
        "iifname @if_public tcp dport @ports_public_tcp accept",
        "iifname @if_public udp dport @ports_public_udp accept",
        'iifname @if_public counter name "drop_in_public" drop',
    ]
    assert_in_order(text[text.index("chain input") :], order)
    assert "\tset ports_public_tcp {\n\t\ttype inet_service\n\t\tflags interval\n" in text
    view = firewall_view(_strict(_plan(maas, "control-1")))
    assert view.set("ports_internal_tcp").elements == (
        "80", "443", "4240", "5671-5672", "6400", "6443", "6641-6644", "9000", "10250"
    )  # fmt: skip
    assert view.set("ports_internal_udp").elements == ("8472",)
    assert view.set("ports_storage_tcp").elements == ()  # a Ceph client only: nothing listens


def test_strict_semantics_of_a_control_node(maas: Topology):
    plan = _strict(_plan(maas, "control-1"))
    view = firewall_view(plan)
    cases = [
        # own subnets: the network's ports only, per protocol
        ("enp2s0", "10.20.0.99", "tcp", 5672, "accept"),
        ("enp2s0", "fd00:20::99", "tcp", 6642, "accept"),
        ("enp2s0", "10.20.0.99", "udp", 8472, "accept"),
        ("enp2s0", "10.20.0.99", "tcp", 8472, "drop"),
        ("enp2s0", "10.20.0.99", "tcp", 3306, "drop"),
        ("enp4s0", "10.50.0.99", "tcp", 6789, "drop"),
        # public: any source, public ports only
        ("enp3s0", "203.0.113.9", "tcp", 443, "accept"),
        ("enp3s0", "10.30.0.99", "tcp", 80, "accept"),
        ("enp3s0", "203.0.113.9", "tcp", 8080, "drop"),
        ("enp3s0", "203.0.113.9", "udp", 443, "drop"),
        ("enp3s0", "10.20.0.99", "tcp", 443, "drop"),  # another cloud network's subnets
        # management: own subnets and client-cidrs, management ports only
        ("enp1s0", "10.99.0.9", "tcp", 6443, "accept"),
        ("enp1s0", "10.10.0.9", "udp", 68, "accept"),
        ("enp1s0", "10.99.0.9", "tcp", 17070, "drop"),  # not a controller
        ("enp1s0", "203.0.113.9", "tcp", 6443, "drop"),
        # the failsafe wins, and interfaces of no cloud network are not ours
        ("enp4s0", "10.10.0.9", "tcp", 22, "accept"),
        ("enp2s0", "fd00:99::9", "tcp", 22, "accept"),
        ("br-ex", "198.51.100.7", "tcp", 8080, "accept"),
        ("enp1s0", "10.40.0.7", "tcp", 6443, "drop"),  # a denied network, listed port or not
    ]
    for nic, source, protocol, port, expected in cases:
        assert verdict(view, "input", nic, source, port, protocol) == expected, (nic, source, port)
        assert expected_input(plan, nic, source, protocol, port) == expected, (nic, source, port)
    assert address_conflicts(view, ["enp1s0", "enp2s0", "enp3s0", "enp4s0"]) == []


def test_strict_without_ports_uses_the_catalogue_and_extra_ports(maas: Topology):
    plan = _strict(_plan(maas, "compute-1"), extra_ports={Network.DATA: (("udp", 4789, 4789),)})
    assert render(plan) == render(plan, machine_ports(plan))
    view = firewall_view(plan)
    assert view.set("ports_data_udp").elements == ("4789", "6081")
    assert verdict(view, "input", "enp5s0", "10.40.0.9", 4789, "udp") == "accept"
    assert strict_ports(plan) == {n: machine_ports(plan)[n] for n in machine_ports(plan)}


def test_declared_ports_open_only_with_the_declaration(maas: Topology):
    plan = _strict(_plan(maas, "compute-1"))
    declared = {Network.INTERNAL: (PortRange.parse("tcp:7777"),)}
    with_declared = firewall_view(plan, machine_ports(plan, declared))
    without = firewall_view(plan)
    assert verdict(with_declared, "input", "enp2s0", "10.20.0.9", 7777) == "accept"
    assert verdict(without, "input", "enp2s0", "10.20.0.9", 7777) == "drop"
    assert verdict(with_declared, "input", "enp2s0", "10.20.0.9", 8775) == "accept"
    assert with_declared.rule_count == without.rule_count
    assert expected_input(plan, "enp2s0", "10.20.0.9", "tcp", 7777, machine_ports(plan, declared))
    assert listed_ports(plan, "enp2s0", machine_ports(plan, declared)) == [
        PortRange.parse("tcp:7777"),
        PortRange.parse("tcp:8775"),
    ]


def test_ports_of_networks_the_machine_may_not_use_are_never_opened(maas: Topology):
    plan = _strict(_plan(maas, "storage-1"))  # no public, internal or data
    ports = {Network.PUBLIC: (PortRange.parse("tcp:443"),)}
    view = firewall_view(plan, ports)
    assert all("public" not in s.name for s in view.sets if s.type == "inet_service")
    assert verdict(view, "input", "enp1s0", "10.30.0.9", 443) == "drop"
    assert strict_ports(plan, ports) == {
        Network.MANAGEMENT: (),
        Network.STORAGE: (),
        Network.STORAGE_CLUSTER: (),
    }


def test_ports_are_ignored_without_strict_ports(maas: Topology):
    plan = _plan(maas, "control-1")
    ports = {Network.INTERNAL: (PortRange.parse("tcp:1-65535"),)}
    assert render(plan, ports).nftables == GOLDEN["microstack-maas/control-1/nftables.conf"]
    assert strict_ports(plan, ports) is None


def test_strict_audit_logs_instead_of_dropping_on_public(maas: Topology):
    plan = _strict(_plan(maas, "control-1"), enforcement="audit")
    text = render(plan).nftables
    assert all(re.search(r"(^|\s)drop(\s|$)", line) is None for line in _statements(text))
    assert "iifname @if_public goto audit_drop_in_public" in text
    view = firewall_view(plan)
    assert verdict(view, "input", "enp3s0", "203.0.113.9", 8080) == "drop"  # would drop


def test_strict_rule_count_constant_in_subnets_and_ports():
    """1 subnet and no extra port, then 1,000 more subnets and 1,000 port ranges: same rules."""

    def plan(count: int, strict: bool = True) -> MachinePlan:
        ports = ",".join(f"tcp:{20000 + 3 * k}-{20001 + 3 * k}" for k in range(count))
        config: dict[str, object] = {"strict-ports": strict}
        if count:
            config["extra-ports"] = f"internal={ports} public={ports.replace('tcp', 'udp')}"
        return _control_node(count, config=config)

    small, large = plan(0), plan(1000)
    views = [firewall_view(small), firewall_view(large)]
    assert len(views[1].set("ports_internal_tcp").elements) > 1000
    assert len(views[1].set("ports_public_udp").elements) == 1000
    assert views[0].rule_count == views[1].rule_count
    assert firewall_view(plan(0, strict=False)).rule_count < views[0].rule_count
    kernel = [nft_rule_count(render(p).nftables) for p in (small, large)]
    assert kernel == [views[0].rule_count] * 2


# ---------------------------------------------------------------------------------------------
# Policy routing


def test_routing_of_a_storage_node_in_rack_two(maas: Topology):
    doc = yaml.safe_load(render(_plan(maas, "storage-3")).netplan or "")
    storage = doc["network"]["ethernets"]["enp4s0"]
    assert storage["routes"] == [
        {"to": "10.50.0.0/24", "via": "10.50.1.1", "table": 104},
        {"to": "10.50.1.0/24", "scope": "link", "table": 104},
        {"to": "fd00:50::/64", "via": "fd00:51::1", "table": 104},
        {"to": "fd00:51::/64", "scope": "link", "table": 104},
    ]
    assert storage["routing-policy"] == [
        {"from": "10.50.1.33", "table": 104, "priority": 17000},
        {"from": "fd00:51::33", "table": 104, "priority": 17001},
        {"to": "10.50.0.0/24", "table": 104, "priority": 17002},
        {"to": "fd00:50::/64", "table": 104, "priority": 17003},
    ]
    assert set(doc["network"]["ethernets"]) == {"enp1s0", "enp4s0", "enp6s0"}
    assert doc["network"]["ethernets"]["enp1s0"]["routing-policy"][0]["table"] == 102
    assert doc["network"]["ethernets"]["enp6s0"]["routing-policy"][0]["table"] == 105
    for interface in doc["network"]["ethernets"].values():
        assert "addresses" not in interface


def test_routing_tables_are_the_same_on_every_machine(maas: Topology):
    tables: dict[str, set[int]] = {}
    for machine in maas.machines:
        view = routing_view(_plan(maas, machine))
        assert view is not None
        for table in view.tables:
            tables.setdefault(table.networks[0].value, set()).add(table.number)
    assert tables == {
        "management": {102},
        "internal": {101},
        "public": {103},
        "data": {100},
        "storage": {104},
        "storage-cluster": {105},
    }


def test_no_routing_for_a_sole_space_or_when_disabled(maas: Topology, single: Topology):
    for machine in single.machines:
        assert render(_plan(single, machine)).netplan is None
    plan = _plan(maas, "hyper-1")
    off = plan.model_copy(
        update={"config": plan.config.model_copy(update={"manage_routing": False})}
    )
    assert render(off).netplan is None
    assert render(plan).netplan is not None


def test_remote_subnet_without_gateway_gets_no_route_and_no_rule():
    netplan = render(_plan(partial_topology(), "compute-1")).netplan or ""
    doc = yaml.safe_load(netplan)
    tenant = doc["network"]["bridges"]["br-tenant"]
    assert tenant["routes"] == [{"to": "10.4.1.0/24", "scope": "link", "table": 100}]
    assert tenant["routing-policy"] == [{"from": "10.4.1.21", "table": 100, "priority": 1000}]
    assert "10.4.0.0/24" not in yaml.safe_dump(doc)
    assert "# no route to 10.4.0.0/24 (tenant)" in netplan


def test_interfaces_keep_their_netplan_section():
    doc = yaml.safe_load(render(_plan(partial_topology(), "control-1")).netplan or "")
    assert set(doc["network"]) == {"version", "bonds", "vlans"}
    assert set(doc["network"]["vlans"]) == {"bond0.20", "bond0.50"}
    assert set(doc["network"]["bonds"]) == {"bond0"}


def test_link_local_addresses_and_subnets_are_not_routed():
    plan_input = PlanInput(
        machine="m",
        roles=frozenset({"juju-controller"}),
        networks={
            Network.MANAGEMENT: NetworkView(
                interfaces=(
                    InterfaceAddress(name="enp1s0", address=_if("10.10.0.5/24")),
                    InterfaceAddress(name="enp1s0", address=_if("fe80::5/64")),
                ),
            ),
            Network.STORAGE: NetworkView(subnets=(_net("10.50.0.0/24"),)),
        },
        config=CharmConfig(),
    )
    doc = yaml.safe_load(render(plan_machine(plan_input)).netplan or "")
    assert doc["network"]["ethernets"]["enp1s0"] == {
        "routes": [{"to": "10.10.0.0/24", "scope": "link", "table": 102}],
        "routing-policy": [{"from": "10.10.0.5", "table": 102, "priority": 9000}],
    }


def test_domain_on_several_interfaces_gets_a_table_per_interface():
    """Space ceph on enp2s0 (rack 1) and enp3s0 (rack 2): each address leaves by its NIC."""
    view = routing_view(_plan(partial_topology(), "storage-2"))
    assert view is not None
    assert [(t.number, t.interface) for t in view.tables] == [
        (102, "enp1s0"),
        (104, "enp2s0"),
        (110, "enp3s0"),
    ]
    doc = yaml.safe_load(render(_plan(partial_topology(), "storage-2")).netplan or "")
    nics = doc["network"]["ethernets"]
    assert nics["enp2s0"] == {
        "routes": [
            {"to": "10.5.0.0/24", "scope": "link", "table": 104},
            {"to": "10.5.1.0/24", "via": "10.5.0.1", "table": 104},
        ],
        "routing-policy": [{"from": "10.5.0.32", "table": 104, "priority": 17000}],
    }
    assert nics["enp3s0"] == {
        "routes": [
            {"to": "10.5.0.0/24", "via": "10.5.1.1", "table": 110},
            {"to": "10.5.1.0/24", "scope": "link", "table": 110},
        ],
        "routing-policy": [{"from": "10.5.1.32", "table": 110, "priority": 17001}],
    }


def _two_nic_storage(subnets: list[str], gateways: dict[str, str]) -> MachinePlan:
    return plan_machine(
        PlanInput(
            machine="m",
            roles=frozenset({"storage"}),
            networks={
                Network.MANAGEMENT: NetworkView(
                    interfaces=(InterfaceAddress(name="enp1s0", address=_if("10.10.0.5/24")),),
                ),
                Network.STORAGE: NetworkView(
                    interfaces=(
                        InterfaceAddress(name="enp5s0", address=_if("10.50.1.5/24")),
                        InterfaceAddress(name="enp4s0", address=_if("10.50.0.5/24")),
                        InterfaceAddress(name="enp4s0", address=_if("fe80::5/64")),
                    ),
                    subnets=tuple(_net(s) for s in subnets),
                    gateways={_net(k): ipaddress.ip_address(v) for k, v in gateways.items()},
                ),
            },
            config=CharmConfig(),
        )
    )


def test_remote_subnet_of_a_domain_on_several_interfaces_is_steered_once():
    plan = _two_nic_storage(
        ["10.50.0.0/24", "10.50.1.0/24", "10.50.2.0/24"],
        {"10.50.0.0/24": "10.50.0.1", "10.50.1.0/24": "10.50.1.1"},
    )
    doc = yaml.safe_load(render(plan).netplan or "")["network"]["ethernets"]
    # tables in the order of the interface names, not of the addresses
    assert doc["enp4s0"]["routing-policy"] == [
        {"from": "10.50.0.5", "table": 104, "priority": 17000},
        {"to": "10.50.2.0/24", "table": 104, "priority": 17001},
    ]
    assert doc["enp5s0"]["routing-policy"] == [
        {"from": "10.50.1.5", "table": 110, "priority": 17002},
    ]
    assert {"to": "10.50.2.0/24", "via": "10.50.1.1", "table": 110} in doc["enp5s0"]["routes"]
    assert all("fe80" not in str(r) for r in doc["enp4s0"]["routing-policy"])


def test_interface_without_gateway_notes_only_what_no_sibling_reaches():
    plan = _two_nic_storage(
        ["10.50.0.0/24", "10.50.1.0/24", "10.50.2.0/24"], {"10.50.0.0/24": "10.50.0.1"}
    )
    netplan = render(plan).netplan or ""
    assert "# no route to 10.50.2.0/24 (storage, enp5s0): no gateway on a local subnet" in netplan
    assert "no route to 10.50.0.0/24" not in netplan  # enp4s0 is on it
    doc = yaml.safe_load(netplan)["network"]["ethernets"]
    assert doc["enp5s0"]["routes"] == [{"to": "10.50.1.0/24", "scope": "link", "table": 110}]


def test_too_many_interfaces_for_a_domain():
    addresses = tuple(
        InterfaceAddress(name=f"enp{k}s0", address=_if(f"10.50.{k}.5/24")) for k in range(17)
    )
    plan = plan_machine(
        PlanInput(
            machine="m",
            roles=frozenset({"storage"}),
            networks={
                Network.MANAGEMENT: NetworkView(
                    interfaces=(InterfaceAddress(name="eth0", address=_if("10.10.0.5/24")),),
                ),
                Network.STORAGE: NetworkView(interfaces=addresses),
            },
            config=CharmConfig(),
        )
    )
    with pytest.raises(RenderError, match="17 interfaces"):
        render(plan)


def test_priorities_are_unique_and_tables_nonzero_everywhere():
    for path in NETPLAN_CASES:
        doc = yaml.safe_load(GOLDEN[path])
        rules = [
            rule
            for kind in ("ethernets", "bonds", "bridges", "vlans")
            for interface in doc["network"].get(kind, {}).values()
            for rule in interface["routing-policy"]
        ]
        priorities = [r["priority"] for r in rules]
        assert len(priorities) == len(set(priorities)), path
        assert all(r["table"] not in (0, 253, 254, 255) for r in rules), path
        assert all(("from" in r) != ("to" in r) for r in rules), path


def _routing(policy: list[PolicyRule], routes: list[Route] | None = None) -> RoutingView:
    routes = routes if routes is not None else [Route("10.0.0.0/24", 102, scope="link")]
    interface = RoutedInterface("enp1s0", "ethernets", tuple(routes), tuple(policy))
    return RoutingView(header=(), tables=(), sections=(("ethernets", (interface,)),))


@pytest.mark.parametrize(
    ("policy", "routes", "problem"),
    [
        ([PolicyRule("from", "10.0.0.5", 0, 9000)], None, "no usable table"),
        ([PolicyRule("from", "10.0.0.5", 254, 9000)], None, "no usable table"),
        ([PolicyRule("from", "10.0.0.5", 103, 9000)], None, "which has no route"),
        (
            [
                PolicyRule("from", "10.0.0.5", 102, 9000),
                PolicyRule("to", "10.1.0.0/24", 102, 9000),
            ],
            None,
            "same priority",
        ),
        ([PolicyRule("from", "", 102, 9000)], None, "matches every packet"),
        ([PolicyRule("from", "10.0.0.5", 102, 32766)], None, "outside"),
        ([], [Route("10.0.0.0/24", 0, scope="link")], "no table of ours"),
        ([], [Route("10.0.0.0/24", 102)], "either a gateway or scope link"),
        (
            [],
            [Route("10.0.0.0/24", 102, scope="link"), Route("10.0.0.0/24", 102, via="10.0.0.1")],
            "already has a route there",
        ),
        (
            [],
            [Route("default", 102, via="10.0.0.1"), Route("0.0.0.0/0", 102, via="10.0.0.2")],
            "already has a route there",
        ),
    ],
)
def test_policy_routing_checks(policy: list[PolicyRule], routes: list[Route] | None, problem: str):
    with pytest.raises(RenderError, match=problem):
        check_policy_routing(_routing(policy, routes))


def test_a_default_route_per_family_per_table_is_fine():
    routes = [
        Route("10.0.0.0/24", 102, scope="link"),
        Route("default", 102, via="10.0.0.1"),
        Route("default", 102, via="fd00::1"),
        Route("default", 103, via="10.0.0.1"),
    ]
    check_policy_routing(_routing([PolicyRule("from", "10.0.0.5", 102, 9000)], routes))


def test_too_many_rules_for_a_priority_block():
    subnets = [f"10.50.{k // 256}.{k % 256}/32" for k in range(4001)]
    plan_input = PlanInput(
        machine="m",
        roles=frozenset({"storage"}),
        networks={
            Network.MANAGEMENT: NetworkView(
                interfaces=(InterfaceAddress(name="enp1s0", address=_if("10.10.0.5/24")),),
            ),
            Network.STORAGE: NetworkView(
                interfaces=(InterfaceAddress(name="enp4s0", address=_if("10.60.0.5/24")),),
                subnets=tuple(_net(s) for s in subnets),
                gateways={_net("10.60.0.0/24"): ipaddress.ip_address("10.60.0.1")},
            ),
        },
        config=CharmConfig(),
    )
    with pytest.raises(RenderError, match="priority block"):
        render(plan_machine(plan_input))


def test_bad_interface_name_is_refused():
    plan_input = PlanInput(
        machine="m",
        roles=frozenset({"juju-controller"}),
        networks={
            Network.MANAGEMENT: NetworkView(
                interfaces=(InterfaceAddress(name='en"p1', address=_if("10.10.0.5/24")),),
            ),
            Network.STORAGE: NetworkView(subnets=(_net("10.50.0.0/24"),)),
        },
        config=CharmConfig(),
    )
    with pytest.raises(RenderError, match="not a valid interface name"):
        render(plan_machine(plan_input))


# ---------------------------------------------------------------------------------------------
# Subnet arithmetic


def test_normalize_keeps_adjacent_subnets_and_drops_nested_ones():
    nets = [_net(s) for s in ("10.0.1.0/24", "fd00::/64", "10.0.0.0/24", "10.0.0.128/25")]
    assert [str(n) for n in normalize(nets)] == ["10.0.0.0/24", "10.0.1.0/24", "fd00::/64"]


def test_exclude():
    nets = [_net("10.0.0.0/22"), _net("10.9.0.0/24"), _net("fd00::/64")]
    remove = [_net("10.0.1.0/24"), _net("10.9.0.0/16"), _net("fd00::/56")]
    assert [str(n) for n in exclude(nets, remove)] == ["10.0.0.0/24", "10.0.2.0/23"]
    assert exclude(nets, []) == normalize(nets)
    six = exclude([_net("fd00::/62")], [_net("fd00:0:0:1::/64"), _net("10.0.0.0/8")])
    assert [str(n) for n in six] == ["fd00::/64", "fd00:0:0:2::/63"]


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


@pytest.mark.parametrize("strict", [False, True])
def test_ipv6_link_local_is_accepted_on_allowed_interfaces(maas: Topology, strict: bool):
    plan = _plan(maas, "compute-1")
    if strict:
        plan = _strict(plan)
    view = firewall_view(plan)
    # enp2s0 is compute-1's internal NIC: a DHCPv6 server or router on that link is fine
    assert verdict(view, "input", "enp2s0", "fe80::1", 547, "udp") == (
        "drop" if strict else "accept"
    )
    # tcp/8775 (Nova metadata) is in compute's internal catalogue, so strict mode keeps it
    assert verdict(view, "input", "enp2s0", "fe80::1", 8775) == "accept"
    # an interface that belongs to no cloud network is not decided by this table
    assert verdict(view, "input", "tap0", "fe80::1", 22) == "accept"


def test_the_enforcement_mode_does_not_touch_the_netplan_file(maas: Topology):
    """Switching to audit or off must not rewrite the netplan file (no `netplan apply`)."""
    plan = _plan(maas, "storage-3")
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
