"""The `plan` command, run as a user runs it: a subprocess reading a topology file.

The error cases also run in-process through `main()`, which must end in SystemExit and never
in another exception.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import markupsafe
import pytest
import yaml

from network_isolation import cli
from network_isolation.planner import plan_machine
from network_isolation.report_html import cloud_html
from network_isolation.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MICROSTACK = EXAMPLES / "microstack-maas.yaml"
SINGLE_SPACE = EXAMPLES / "single-space.yaml"
SUNBEAM = EXAMPLES / "sunbeam-maas.yaml"


def run_plan(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-m", "network_isolation.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def run_main(
    capsys: pytest.CaptureFixture[str], *args: str | Path
) -> subprocess.CompletedProcess[str]:
    """`cli.main` in this process, reported like a finished subprocess."""
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(map(str, args)), status, out, err)


@functools.cache
def run_example(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`run_plan` on the bundled examples, run once per argument list."""
    return run_plan(*args)


def plan_json(*args: str | Path, blocked: bool = False) -> dict[str, Any]:
    run = run_example if args[0] in (MICROSTACK, SINGLE_SPACE, SUNBEAM) else run_plan
    result = run(*args, "--format", "json")
    assert result.returncode == (1 if blocked else 0), result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)  # the whole of stdout is one JSON document


def roles_in(path: Path) -> dict[str, list[str]]:
    """Each machine's roles as the topology file states them (the input, not the output)."""
    machines = yaml.safe_load(path.read_text())["machines"]
    return {name: machine.get("roles", []) for name, machine in machines.items()}


def access(machine: dict[str, Any]) -> set[str]:
    return {net for net, item in machine["networks"].items() if item["access"]}


def expected_access(table: dict[str, frozenset[str]], roles: list[str]) -> set[str]:
    return set().union(*(table[r] for r in roles))


@pytest.mark.parametrize("path", [MICROSTACK, SINGLE_SPACE], ids=lambda p: p.stem)
def test_every_machine_gets_the_union_of_its_roles_rows(
    path: Path, guide_table: dict[str, frozenset[str]], guide_networks: tuple[str, ...]
):
    plan = plan_json(path)
    stated = roles_in(path)
    assert set(plan["machines"]) == set(stated)
    for name, roles in stated.items():
        machine = plan["machines"][name]
        assert set(machine["networks"]) == set(guide_networks)
        assert access(machine) == expected_access(guide_table, roles), name
        assert sorted(machine["roles"]) == sorted(roles)
        assert machine["status"] == "active", (name, machine["problems"])


def test_sunbeam_example_gets_sunbeams_rows_without_warnings(
    sunbeam_table: dict[str, frozenset[str]],
):
    plan = plan_json(SUNBEAM)
    stated = roles_in(SUNBEAM)
    assert {"network", "sunbeam"} <= {r for roles in stated.values() for r in roles}
    for name, roles in stated.items():
        machine = plan["machines"][name]
        assert machine["role_table"] == "sunbeam"
        assert access(machine) == expected_access(sunbeam_table, roles), name
        assert (machine["status"], machine["warnings"]) == ("active", []), name
    assert run_example(SUNBEAM).stdout.splitlines()[1] == "role table: sunbeam"


def sunbeam_with_the_guide_table(directory: Path, accept_denials: str = "") -> Path:
    """The Sunbeam example with `role-table: guide`, without the roles the guide's table lacks."""
    data = yaml.safe_load(SUNBEAM.read_text())
    data["config"]["role-table"] = "guide"
    if accept_denials:
        data["config"]["accept-denials"] = accept_denials
    for name in ("infra-1", "network-1"):  # roles the guide's table does not have
        del data["machines"][name]
    path = directory / "guide.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sunbeam_example_with_the_guide_table_blocks_the_principals_it_breaks(tmp_path: Path):
    machines = plan_json(sunbeam_with_the_guide_table(tmp_path), blocked=True)["machines"]
    fix = "role-table=sunbeam allows it, or accept it in 'accept-denials'"
    expected = {
        "control-1": [
            f"microovn needs 'data', which role table 'guide' denies to control: {fix}",
        ],
        "storage-1": [
            f"cinder-volume needs 'internal', which role table 'guide' denies to storage: {fix}"
        ],
        "compute-1": [],
        "juju-1": [],
    }
    for name, problems in expected.items():
        machine = machines[name]
        assert (machine["status"], machine["problems"]) == (
            "blocked" if problems else "active",
            problems,
        ), name
        assert machine["warnings"] == [], name
    assert machines["control-1"]["message"] == expected["control-1"][0]
    assert machines["storage-1"]["message"] == expected["storage-1"][0]


def test_sunbeam_example_with_the_guide_table_and_accepted_denials_warns(tmp_path: Path):
    accepted = "cinder-volume=internal microovn=data"
    path = sunbeam_with_the_guide_table(tmp_path, accepted)
    machines = plan_json(path)["machines"]
    expected = {
        "control-1": ["microovn needs 'data'"],
        "storage-1": ["cinder-volume needs 'internal'"],
        "compute-1": [],
        "juju-1": [],
    }
    for name, starts in expected.items():
        machine = machines[name]
        assert machine["status"] == "active", name
        assert [w.split(" (")[0] for w in machine["warnings"]] == starts, name
        assert all(w.endswith(": role-table=sunbeam allows it") for w in machine["warnings"])
    text = run_plan(path).stdout
    assert "role table: guide" in text
    assert "  warning: cinder-volume needs 'internal' (Sunbeam binds" in text


def test_microstack_example_has_maximum_isolation(guide_networks: tuple[str, ...]):
    isolation = plan_json(MICROSTACK)["isolation"]
    assert isolation["level"] == "maximum"
    assert sorted(n for d in isolation["domains"] for n in d) == sorted(guide_networks)
    assert all(len(d) == 1 for d in isolation["domains"])


def test_single_space_example_has_no_isolation(guide_networks: tuple[str, ...]):
    isolation = plan_json(SINGLE_SPACE)["isolation"]
    assert isolation["level"] == "none"
    assert [sorted(d) for d in isolation["domains"]] == [sorted(guide_networks)]


def test_machine_option_filters(guide_table: dict[str, frozenset[str]]):
    plan = plan_json(MICROSTACK, "--machine", "storage-3")
    assert list(plan["machines"]) == ["storage-3"]
    assert access(plan["machines"]["storage-3"]) == set(guide_table["storage"])
    # The cloud's isolation does not depend on the filter.
    assert plan["isolation"] == plan_json(MICROSTACK)["isolation"]


def test_unknown_machine_is_an_error():
    result = run_plan(MICROSTACK, "--machine", "no-such-machine")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("plan: error:")
    assert "no-such-machine" in lines[0]


def test_text_format_has_a_table_and_a_verdict_per_machine(
    guide_table: dict[str, frozenset[str]], guide_networks: tuple[str, ...]
):
    result = run_example(MICROSTACK)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert "maximum" in lines[0]
    stated = roles_in(MICROSTACK)
    for name, roles in stated.items():
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
        header, *rows = lines[start + 1 : start + 2 + len(guide_networks)]
        verdict = lines[start + 2 + len(guide_networks)]
        assert header.split() == ["network", "access", "space", "interface", "address"]
        cells = {row.split()[0]: row.split()[1] for row in rows}
        assert set(cells) == set(guide_networks)
        want = expected_access(guide_table, roles)
        assert cells == {net: "allow" if net in want else "deny" for net in guide_networks}
        assert verdict.strip().startswith("=> active:"), verdict


def test_json_and_text_agree_on_the_verdict():
    plan = plan_json(MICROSTACK)
    text = run_example(MICROSTACK).stdout
    for machine in plan["machines"].values():
        assert f"=> {machine['status']}: {machine['message']}" in text


def test_role_networks_in_the_config_change_the_plan(
    tmp_path: Path, guide_table: dict[str, frozenset[str]]
):
    data = yaml.safe_load(MICROSTACK.read_text())
    data["config"]["role-networks"] = "control=management,internal,public,storage,data"
    path = tmp_path / "control-with-data.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = plan_json(path, blocked=True)
    for name, roles in roles_in(path).items():
        machine = plan["machines"][name]
        if "control" in roles:
            assert access(machine) == set(guide_table["control"]) | {"data"} | expected_access(
                guide_table, roles
            )
        else:
            assert access(machine) == expected_access(guide_table, roles)
    # control-1 has no NIC in the data space: now it misses a network it needs.
    control = plan["machines"]["control-1"]
    assert control["status"] == "blocked"
    assert any("control" in p and "'data'" in p for p in control["problems"])
    # hyper-1 has every network: still fine.
    assert plan["machines"]["hyper-1"]["status"] == "active"


def blocked_example(tmp_path: Path) -> Path:
    """The example cloud with compute-1 blocked: it loses its NIC on data, which it needs."""
    data = yaml.safe_load(MICROSTACK.read_text())
    del data["machines"]["compute-1"]["interfaces"]["enp5s0"]
    path = tmp_path / "blocked.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_exit_status_is_1_when_a_machine_is_blocked(tmp_path: Path):
    path = blocked_example(tmp_path)
    result = run_plan(path, "--format", "json")
    assert json.loads(result.stdout)["machines"]["compute-1"]["status"] == "blocked"
    assert result.returncode == 1


GOOD = """\
spaces:
  oam: [10.10.0.0/24]
  cloud: [10.20.0.0/24]
default-space: cloud
bindings: {management: oam}
machines:
  m1:
    roles: [compute]
    interfaces: {enp1s0: [10.10.0.5/24], enp2s0: [10.20.0.5/24]}
"""

# (name, file content, a token the error line must carry to locate the problem)
BAD_FILES = [
    ("invalid-yaml", "spaces: [10.0.0.0/24\nmachines: {}\n", "line "),
    ("unknown-key", GOOD + "colour: blue\n", "colour"),
    ("bad-cidr", GOOD.replace("[10.20.0.0/24]", "[10.20.0.300/24]"), "spaces.cloud"),
    ("unbound-network", GOOD.replace("default-space: cloud\n", ""), "default-space"),
    ("undefined-space", GOOD.replace("{management: oam}", "{management: oam2}"), "oam2"),
    ("unknown-role", GOOD.replace("[compute]", "[boss]"), "machines.m1.roles"),
    (
        "gateway-outside",
        GOOD.replace(
            "oam: [10.10.0.0/24]",
            "oam: {subnets: [10.10.0.0/24], gateway: {10.10.0.0/24: 10.99.0.1}}",
        ),
        "spaces.oam",
    ),
    (
        "long-interface",
        GOOD.replace("enp1s0:", "enp1s0-very-long:"),
        "machines.m1.interfaces",
    ),
    ("bad-config", GOOD + "config: {enforcement: block}\n", "config.enforcement"),
    ("bad-role-table", GOOD + "config: {role-table: sunbeem}\n", "config.role-table"),
    ("role-of-the-other-table", GOOD.replace("[compute]", "[network]"), "role table 'guide'"),
    ("bad-config-cidr", GOOD + "config: {client-cidrs: 0.0.0.0/0}\n", "config.client-cidrs"),
    (
        "client-cidrs-overlap",
        GOOD + "config: {client-cidrs: 10.20.0.0/16}\n",
        "config.client-cidrs: 10.20.0.0/16 overlaps",
    ),
    (
        "client-cidrs-all-of-ipv6",
        GOOD + 'config: {client-cidrs: "::/1 8000::/1"}\n',
        "config.client-cidrs: together they cover 2^128 IPv6 addresses",
    ),
    ("not-a-mapping", "- spaces\n", ""),
]


@pytest.mark.parametrize("where", ["subprocess", "in-process"])
@pytest.mark.parametrize(
    ("content", "token"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_topology_is_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, content: str, token: str
):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = run_plan(path) if where == "subprocess" else run_main(capsys, path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("plan: error:")
    assert str(path) in lines[0]
    assert token in lines[0]


def test_good_file_of_the_bad_file_tests_is_good(tmp_path: Path):
    # The bad files are small edits of this one: it must pass, or they prove nothing.
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = run_plan(path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("where", ["subprocess", "in-process"])
def test_missing_file_is_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
):
    path = tmp_path / "nowhere.yaml"
    result = run_plan(path) if where == "subprocess" else run_main(capsys, path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("plan: error:")
    assert str(path) in lines[0]


def test_unknown_format_is_a_usage_error():
    result = run_plan(MICROSTACK, "--format", "xml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("plan: error:")


@pytest.mark.parametrize("path", [MICROSTACK, SINGLE_SPACE], ids=lambda p: p.stem)
@pytest.mark.parametrize("fmt", ["json", "text", "html"])
def test_main_in_process_prints_what_the_command_prints(
    capsys: pytest.CaptureFixture[str], path: Path, fmt: str
):
    inside = run_main(capsys, path, "--format", fmt)
    outside = run_example(path, "--format", fmt)
    assert inside.returncode == outside.returncode == 0
    assert inside.stderr == ""
    assert inside.stdout == outside.stdout


def test_main_in_process_unknown_machine(capsys: pytest.CaptureFixture[str]):
    result = run_main(capsys, MICROSTACK, "--machine", "nope")
    assert result.returncode == 2
    assert result.stderr.startswith("plan: error:")
    assert len(result.stderr.splitlines()) == 1


def test_html_page_is_self_contained(tmp_path: Path):
    data = yaml.safe_load(MICROSTACK.read_text())
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_plan(path, "--format", "html")
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"(?:src|href)=|@import|url\(|<script|<link", page)
    assert "default-src 'none'" in page
    assert page.count('class="machine-row') == len(data["machines"])
    # every machine's ruleset is in the page, exactly as `--render-dir` writes it
    render_dir = tmp_path / "render"
    run_plan(path, "--render-dir", render_dir)
    ruleset = (render_dir / "compute-2" / "nftables.conf").read_text()
    assert str(markupsafe.escape(ruleset)) in page


def test_html_page_escapes_what_it_shows():
    """Topology files refuse such names; the page escapes whatever it is given all the same."""
    topology = load_topology(MICROSTACK)
    plans = {name: plan_machine(topology.plan_input(name)) for name in topology.machines}
    odd = plans.pop("compute-1").model_copy(update={"machine": "<i>odd&"})
    plans["<i>odd&"] = odd
    page = cloud_html("cloud", odd.isolation, plans, {})
    assert "<i>odd" not in page
    assert "&lt;i&gt;odd&amp;" in page


def test_html_marks_a_blocked_machine_and_renders_nothing_for_it(tmp_path: Path):
    path = blocked_example(tmp_path)
    result = run_plan(path, "--format", "html")
    assert result.returncode == 1
    row = re.search(
        r'<tr class="machine-row blocked" id="machine-compute-1">(.*?)</tr>', result.stdout, re.S
    )
    assert row is not None
    assert '<td class="blocked" data-network="data"' in row.group(1)
    assert "nothing rendered: the plan is blocked" in result.stdout
