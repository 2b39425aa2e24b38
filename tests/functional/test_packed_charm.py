"""The charm as packed: a deploy's hooks and the three actions through `dispatch`.

The charm directory is built as charmcraft 4 builds it (packed.py), once per session, and
deployed as unit network-isolation/0 on compute-1 of examples/microstack-maas.yaml: a private
mount namespace inside the machine's network namespace (machine.py), the host's system commands
and Juju's hook tools replaced by boundary.py, everything else real: the venv `dispatch` finds,
ops, the charm's code as the uv plugin lays it out, `nft` loading the table into the namespace,
`netplan generate`, the controller and gateway probes.

The model: the six bindings of compute-1, its principal openstack-hypervisor over
`compute-node` (joining after config-changed, as Juju orders a subordinate's hooks), the
`cluster` peers on storage-1 and control-1. Needs root, nft, ip, netplan, unshare and nsenter:
skipped with a message without them, failed under CI=true.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import resource
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from network_isolation.host import SubprocessRunner

from .conftest import ROOT, need
from .machine import (
    CONFIG,
    CONTROLLER_ADDRESS,
    IP,
    MACHINE,
    MACHINE_ADDRESS,
    MACHINE_NS,
    NFT,
    STORAGE_CLUSTER_SOURCE,
    addresses_by_network,
    connects,
    counter_names,
    foreign,
    listen,
    loaded_like,
    machine_namespaces,
    our_table,
    peer_record,
    table_json,
    verdicts,
)
from .netns import in_netns
from .packed import APP, UNIT, Hook, Machine, build_charm, copy_charm, machine, network_get

PRINCIPAL = {"endpoint": "compute-node", "id": 3, "remote_app": "openstack-hypervisor"}
PRINCIPAL_UNIT = "openstack-hypervisor/0"
PEERS = {"endpoint": "cluster", "id": 1, "remote_app": APP}
EXPORTER = "network-isolation-exporter.service"
# What the charm reads of the host, by running a command, when its inputs did not change
# (written out here, never taken from the code): the look for BPF programs before netfilter
# (`tc` once per space interface of compute-1), the default gateways (the probe targets of an
# apply or a drift repair) and the drift check.
SPACE_INTERFACES = ("enp1s0", "enp2s0", "enp4s0", "enp5s0")
BPF_LOOK = [
    ["ip", "-details", "-json", "link", "show"],
    *(["tc", "-json", "filter", "show", "dev", nic, "ingress"] for nic in SPACE_INTERFACES),
    ["bpftool", "--json", "net", "show"],
]
GATEWAYS = [
    ["ip", "-j", "-4", "route", "show", "default"],
    ["ip", "-j", "-6", "route", "show", "default"],
]
DRIFT_CHECK = [["nft", "-s", "list", "table", "inet", "network_isolation"]]
COUNTERS = [["nft", "-j", "list", "table", "inet", "network_isolation"]]
# Each hook or action with unchanged inputs, and every host command it may run: nothing but
# update-status's reads and the two read-only actions'.
QUIET: dict[str, list[list[str]]] = {
    "config-changed": [],
    "compute-node-relation-changed": [],
    "cluster-relation-changed": [],
    "leader-elected": [],
    "upgrade-charm": [],
    "start": [],
    "update-status": BPF_LOOK + GATEWAYS + DRIFT_CHECK,
    "show-plan": BPF_LOOK,
    "show-counters": COUNTERS,
}


def _prerequisites() -> None:
    if os.geteuid() != 0:
        need("the packed charm test needs root for namespaces and mounts")
    for tool in ("/usr/sbin/nft", "/usr/sbin/netplan", "unshare", "nsenter"):
        if not shutil.which(tool):
            need(f"missing {tool}: apt-get install nftables netplan.io util-linux")


@pytest.fixture(scope="session")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The charm directory, built once per session."""
    _prerequisites()
    return build_charm(tmp_path_factory.mktemp("packed") / "charm")


def model(charm: Path) -> dict[str, Any]:
    """What Juju knows of the unit: config with its defaults, bindings, relations, status."""
    options = yaml.safe_load((charm / "config.yaml").read_text())["options"]
    relation_data = {name: {} for name in (PRINCIPAL_UNIT, PRINCIPAL["remote_app"], UNIT, APP)}
    return {
        "unit": UNIT,
        "leader": True,
        "config": {name: o["default"] for name, o in options.items()} | CONFIG,
        "networks": {
            net: network_get(found) for net, found in addresses_by_network(MACHINE).items()
        },
        "relations": [
            {**PRINCIPAL, "units": [], "data": relation_data},
            {
                "endpoint": "cluster",
                "id": 1,
                "remote_app": APP,
                "units": [f"{APP}/1", f"{APP}/2", f"{APP}/3", f"{APP}/4"],
                "data": {
                    f"{APP}/1": {"machine": peer_record("storage-1", 31)},
                    f"{APP}/2": {"machine": peer_record("control-1", 11)},
                    # storage-1's rack has a second machine: two units teach its subnets (and a
                    # second compute machine keeps compute the commonest kind: this unit is
                    # the first of it, the canary)
                    f"{APP}/3": {"machine": peer_record("storage-2", 32)},
                    f"{APP}/4": {"machine": peer_record("compute-2", 22)},
                    UNIT: {},
                    APP: {},
                },
            },
        ],
        "status": {"unit": {"status": "maintenance", "message": "installing charm software"}},
    }


@contextlib.contextmanager
def deployed(packed: Path, tmp_path: Path, leave_out: str = "") -> Iterator[Machine]:
    """A copy of the packed charm on compute-1, in namespaces removed again at the end."""
    charm = copy_charm(packed, tmp_path / "charm", leave_out=leave_out)
    with machine_namespaces(tmp_path), machine(tmp_path / "bed", charm, model(charm)) as unit:
        yield unit


@pytest.fixture
def unit(packed: Path, tmp_path: Path) -> Iterator[Machine]:
    with deployed(packed, tmp_path) as unit:
        yield unit


def children_cpu() -> float:
    """CPU seconds (user and system) of every finished child process: the hooks' real cost."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def quiet(unit: Machine) -> None:
    """Every hook kind and read-only action with unchanged inputs: only what QUIET lists."""
    remote = {"compute-node": (PRINCIPAL, PRINCIPAL_UNIT), "cluster": (PEERS, f"{APP}/1")}
    seen: dict[str, list[list[str]]] = {}
    for name in QUIET:
        if name.startswith("show-"):
            done = ran(
                unit.dispatch("", action=name), f"{name.replace('-', '_')}_action", "active"
            )
        else:
            relation, remote_unit = remote.get(name.removesuffix("-relation-changed"), (None, ""))
            done = unit.dispatch(name, relation=relation, remote_unit=remote_unit)
            ran(done, name.replace("-", "_"), "active")
        seen[name] = done.host_calls()
    assert seen == QUIET
    each = ", ".join(f"{name} {len(calls)}" for name, calls in seen.items())
    print(f"host commands per hook, unchanged inputs: {each}")


def read_costs(commands: list[list[str]]) -> dict[str, float]:
    """Median wall time (ms, of 5 runs) of each command, run as the charm runs it.

    The real binary (not the stand-in), through the host module's own runner, in compute-1's
    namespace with our table loaded there.
    """
    real = {"nft": NFT, "ip": IP, "tc": shutil.which("tc") or "tc"}
    real["bpftool"] = shutil.which("bpftool") or "/usr/sbin/bpftool"

    def median_ms(argv: list[str]) -> float:
        runner, times = SubprocessRunner(), list[float]()
        for _ in range(5):
            began = time.perf_counter()
            runner.run(argv)
            times.append((time.perf_counter() - began) * 1000)
        return round(statistics.median(times), 1)

    return {
        " ".join(argv): in_netns(
            MACHINE_NS, functools.partial(median_ms, [real[argv[0]], *argv[1:]])
        )
        for argv in commands
    }


def upgrade_exporter_code(charm: Path) -> None:
    """A new revision's exporter code in the deployed copy (a new file: the packed one stays)."""
    metrics = charm / "src/network_isolation/host/metrics.py"
    new = metrics.with_suffix(".new")
    new.write_text(metrics.read_text() + "# a new revision\n")
    os.replace(new, metrics)


def ran(hook: Hook, event: str, status: str) -> Hook:
    """The hook exited 0, ops emitted `event`, every call was answered, the status is `status`."""
    assert hook.returncode == 0, f"{hook.name} failed:\n{hook.stderr}"
    assert f"Emitting Juju event {event}." in hook.logged(), hook.logged()[:5]
    assert hook.unanswered() == [], "the stand-in could not answer these"
    assert hook.status["status"] == status, hook.status
    return hook


def join_principal(unit: Machine) -> None:
    unit.state["relations"][0]["units"] = [PRINCIPAL_UNIT]
    unit.state["relations"][0]["data"][PRINCIPAL_UNIT] = {"private-address": "10.10.0.21"}
    unit.save()


def test_a_deploy_config_change_actions_and_removal_through_dispatch(unit: Machine):
    began, cpu = time.monotonic(), children_cpu()
    foreign_before = foreign()

    # a subordinate's first hooks, before its principal joins: no role yet, nothing applied
    for hook in ("install", "leader-elected", "config-changed", "start"):
        done = ran(unit.dispatch(hook), hook.replace("-", "_"), "blocked")
        assert "relate to a control, compute, storage" in done.status["message"]
        assert done.host_calls() == []
        assert our_table() is None
    assert (unit.charm / "venv/bin/python").is_symlink()  # made by dispatch on its first run
    # the leader folded its peers' records into the application databag: storage-1's subnet
    assert "10.60.0.0/24" in unit.state["relations"][1]["data"][APP]["cloud"]

    # the principal joins: compute-1 becomes a compute node and its table is loaded; it is the
    # canary of the cloud's first roll (a compute machine, in wave 1 of 3), so it enforces at
    # once and reports its counters after rolling-canary-window
    join_principal(unit)
    done = ran(
        unit.dispatch(
            "compute-node-relation-joined", relation=PRINCIPAL, remote_unit=PRINCIPAL_UNIT
        ),
        "compute_node_relation_joined",
        "active",
    )
    assert done.status["message"] == "canary: enforcing, its counters judged after 300 s"
    calls = done.host_calls()
    assert ["netplan", "apply"] in calls
    assert ["systemctl", "enable", "network-isolation.service"] in calls
    assert any(c[:2] == ["nft", "-f"] for c in calls)
    # what it wrote, under the overlays: the saved ruleset is the loaded one
    written = unit.written()
    netplan = written["/etc/netplan/90-network-isolation.yaml"]
    saved = written["/var/lib/network-isolation/ruleset.nft"]
    assert table_json(MACHINE_NS) == loaded_like(saved, unit.bed)
    assert "/etc/systemd/system/network-isolation.service" in written
    assert not Path("/etc/netplan/90-network-isolation.yaml").exists()  # only in the namespace
    assert connects(CONTROLLER_ADDRESS), "management traffic must pass"
    assert not connects(STORAGE_CLUSTER_SOURCE), "storage-cluster traffic must be dropped"

    # unchanged inputs: every hook kind runs exactly the host commands QUIET lists
    exporter_unit = written["/etc/systemd/system/" + EXPORTER]
    quiet(unit)
    assert unit.written()["/etc/systemd/system/" + EXPORTER] == exporter_unit  # never rewritten
    costs = read_costs(QUIET["update-status"])
    print("read-only commands, median wall time in ms:", costs)
    assert all(ms < 1000 for ms in costs.values()), costs

    # an upgrade that brings new exporter code restarts the exporter, and does nothing else
    upgrade_exporter_code(unit.charm)
    done = ran(unit.dispatch("upgrade-charm"), "upgrade_charm", "active")
    assert done.host_calls() == [["systemctl", "restart", EXPORTER]]
    assert ran(unit.dispatch("upgrade-charm"), "upgrade_charm", "active").host_calls() == []

    # a metrics-port another process listens on is refused before any change, and said
    busy = listen(MACHINE_NS, MACHINE_ADDRESS, 9100)
    try:
        unit.state["config"]["metrics-port"] = 9100
        unit.save()
        done = unit.dispatch("config-changed")
        assert done.returncode == 0, done.stderr
        assert (
            "metrics-port 9100 is in use by another process on 10.10.0.21"
            in (done.status["message"])
        ), done.status
        assert not [c for c in done.host_calls() if c[0] == "systemctl"], done.host_calls()
        assert "--port 9479" in unit.written()["/etc/systemd/system/" + EXPORTER]
    finally:
        busy.close()
    done = ran(unit.dispatch("config-changed"), "config_changed", "active")  # now free
    assert done.host_calls() == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "restart", EXPORTER],
    ]
    unit.state["config"]["metrics-port"] = 9479
    unit.save()
    ran(unit.dispatch("config-changed"), "config_changed", "active")

    # `juju config network-isolation enforcement=audit`: the table is replaced, drops nothing
    unit.state["config"]["enforcement"] = "audit"
    unit.save()
    done = ran(unit.dispatch("config-changed"), "config_changed", "active")
    assert "(audit only)" in done.status["message"]
    assert any(c[:2] == ["nft", "-f"] for c in done.host_calls())
    assert ["netplan", "apply"] not in done.host_calls(), "the netplan file did not change"

    # show-plan: the plan and the rendered table, which is the one loaded in the namespace
    done = ran(unit.dispatch("", action="show-plan", format="json"), "show_plan_action", "active")
    results = done.action or {}
    assert results["failed"] is None and results["results"]["diff"].startswith("(none")
    plan = json.loads(results["results"]["plan"])
    assert "compute" in json.dumps(plan["roles"]), plan
    nftables = results["results"]["nftables"]
    assert "10.60.0.0/24" in nftables  # storage-1's storage-cluster subnet, from the peers
    assert results["results"]["netplan"] == netplan
    assert table_json(MACHINE_NS) == loaded_like(nftables, unit.bed)
    live = table_json(MACHINE_NS)
    assert verdicts(live, "drop") == [] and verdicts(live, "goto"), "audit drops nothing"
    assert done.host_calls() == QUIET["show-plan"]
    assert connects(STORAGE_CLUSTER_SOURCE), "audit must let the packet through"

    # show-counters: every counter of the rendered table, the would-be drop counted
    done = ran(unit.dispatch("", action="show-counters"), "show_counters_action", "active")
    counters = json.loads((done.action or {})["results"]["counters"])
    assert set(counters) == counter_names(nftables)
    assert counters["drop_in_storage_cluster"]["packets"] >= 1
    assert done.host_calls() == QUIET["show-counters"]

    # reapply: applied again although nothing changed; the same table
    done = ran(unit.dispatch("", action="reapply"), "reapply_action", "active")
    assert (done.action or {})["results"] == {
        "result": "applied",
        "message": "applied ruleset (audit form)",  # it says what it applied, in which form
    }
    assert any(c[:2] == ["nft", "-f"] for c in done.host_calls())
    assert table_json(MACHINE_NS) == loaded_like(nftables, unit.bed)

    # remove: the table, the netplan file, the boot unit and the state directory go
    ran(unit.dispatch("remove"), "remove", "active")
    assert our_table() is None
    assert unit.written() == unit.baseline
    assert connects(STORAGE_CLUSTER_SOURCE)
    assert foreign() == foreign_before
    took = time.monotonic() - began
    each = ", ".join(f"{h.name} {h.seconds:.1f}" for h in unit.hooks)
    print(
        f"packed charm: {len(unit.hooks)} dispatches in {took:.1f} s wall,"
        f" {children_cpu() - cpu:.1f} s CPU ({each})"
    )


def test_the_venv_holds_what_uv_lock_pins_and_the_interface_package(packed: Path) -> None:
    """The uv plugin installs uv.lock's versions, the interface package as a copy, not a link."""
    lock = (ROOT / "uv.lock").read_text()
    pinned = dict(re.findall(r'(?m)^name = "([^"]+)"\nversion = "([^"]+)"$', lock))
    site = next((packed / "venv/lib").glob("python3*/site-packages"))
    names = (d.name.removesuffix(".dist-info").split("-", 1) for d in site.glob("*.dist-info"))
    installed = {name.lower().replace("_", "-"): version for name, version in names}
    for name in ("ops", "pydantic", "jinja2"):
        assert installed[name] == pinned[name], name
    # a local package: uv.lock names its directory; the version is the package's own
    version = ROOT / "interface/src/network_isolation_interface/_version.py"
    assert f'"{installed["network-isolation-interface"]}"' in version.read_text()
    assert "network-isolation" not in installed  # the project itself is src/, not installed
    package = site / "network_isolation_interface"
    assert (package / "__init__.py").is_file() and not package.is_symlink()
    assert not list(site.glob("*network_isolation_interface*.pth"))
    assert not (packed / "lib").exists() and not (packed / "interface").exists()


@pytest.mark.parametrize("broken", ["templates", "dependency"])
def test_a_packed_layout_that_would_not_start_is_caught(
    broken: str, packed: Path, tmp_path: Path
) -> None:
    """Without the dump part's templates/, or with a dependency missing from pyproject.toml."""
    charm, leave_out = packed, "templates"
    if broken == "dependency":
        pyproject = (ROOT / "pyproject.toml").read_text()
        # jinja2: nothing else the charm depends on pulls it in (cosl brings tenacity along)
        without = re.sub(r'(?m)^\s*"jinja2[^"]*",\n', "", pyproject, count=1)
        assert without != pyproject, "jinja2 is no longer a dependency: drop another one"
        charm, leave_out = build_charm(tmp_path / "packed" / "charm", pyproject=without), ""
    with deployed(charm, tmp_path, leave_out) as unit:
        join_principal(unit)
        done = unit.dispatch("install")
        if broken == "templates":
            assert done.returncode == 0, done.stderr
            assert done.status["status"] == "blocked"
            assert "cannot render: templates not found" in done.status["message"], done.status
        else:
            assert done.returncode != 0
            assert "No module named 'jinja2'" in done.stderr, done.stderr
        last = (done.stderr.strip().splitlines() or [""])[-1]
        print(f"without {broken}: exit status {done.returncode}, {done.status}, stderr: {last}")
        assert our_table() is None
