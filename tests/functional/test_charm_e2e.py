"""The charm's apply path end to end: ops.testing drives the charm, the real Host applies.

`NetworkIsolationCharm` runs under ops.testing as unit 0 of the charm on machine compute-1 of
examples/microstack-maas.yaml: its six bindings, its principal (over `compute-node`) and the
`cluster` peers storage-1 and control-1, whose records give the cloud's storage-cluster and
public subnets. `charm.Host` is patched to a factory of the REAL `Host` with:

- a temporary root holding MAAS's `etc/netplan/50-cloud-init.yaml` for compute-1, and the
  state directory (NETWORK_ISOLATION_STATE_DIR) under it;
- a runner that runs `nft` in the network namespace `ni-e2e-m-*` (the machine: its NIC
  `enp1s0` at 10.10.0.21/24, default route via 10.10.0.1), the real `netplan generate` (it
  writes only under its --root-dir) and the read-only `ip -j route show default` in that
  namespace too, the read-only look for BPF programs (`ip -details link`, `tc filter show`,
  `bpftool net`) and the deletion of stale rules and routes of ours there; `netplan apply`,
  `systemctl` and `systemd-run` are faked (they would touch this machine) and any other
  command is refused;
- the real TCP probe, run inside the machine's namespace.

The namespaces, the controller and gateway in them and the foreign `inet lxd` table that must
stay byte-identical are described in machine.py.

This machine's own ruleset and policy routing are never touched: checked at the end. Needs
root, nft, ip, netplan and ops[testing]: skipped with a message without them, failed under
CI=true.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ops
import pytest
from ops import testing

import charm
from charm import NetworkIsolationCharm
from network_isolation.host import Host, ProbeTarget, Result, Tools, tcp_probe
from tests.charm_context import context

from .boundary import fake_systemctl
from .conftest import need
from .machine import (
    CONFIG,
    CONTROLLER_ADDRESS,
    CONTROLLER_PORT,
    GATEWAY_ADDRESS,
    IP,
    MACHINE,
    MACHINE_ADDRESS,
    MACHINE_ID,
    MACHINE_NS,
    SCRATCH_NS,
    STORAGE_CLUSTER_SOURCE,
    addresses_by_network,
    cloud_init,
    connects,
    counter_names,
    foreign,
    loaded_like,
    machine_namespaces,
    nft_in,
    our_table,
    peer_record,
    table_json,
    verdicts,
)
from .netns import in_netns

TOOLS = Tools()  # what the charm's Host calls: the runner below answers for these paths
UNIT = 0

# -- the example cloud, as Juju would show it to the charm -------------------------------------


def bindings(machine: str) -> list[testing.Network]:
    """All six bindings, as `network-get` gives them (none for a space the machine is not in)."""
    networks: list[testing.Network] = []
    for name, found in addresses_by_network(machine).items():
        nics = sorted({nic for nic, _ in found})
        networks.append(
            testing.Network(
                name,
                bind_addresses=[
                    testing.BindAddress(
                        [
                            testing.Address(str(a.ip), cidr=str(a.network))
                            for n, a in found
                            if n == nic
                        ],
                        interface_name=nic,
                    )
                    for nic in nics
                ],
                ingress_addresses=[str(a.ip) for _, a in found],
                egress_subnets=sorted({str(a.network) for _, a in found}),
            )
        )
    assert len(networks) == 6
    return networks


def first_state() -> testing.State:
    peers = testing.PeerRelation(
        "cluster",
        peers_data={
            1: {"machine": peer_record("storage-1", 31)},
            2: {"machine": peer_record("control-1", 11)},
            # storage-1's rack has a second machine: two units teach its subnets (and a second
            # compute machine keeps compute the commonest kind, whose first unit is the canary)
            3: {"machine": peer_record("storage-2", 32)},
            4: {"machine": peer_record("compute-2", 22)},
        },
    )
    return testing.State(
        leader=True,
        config=dict(CONFIG),
        networks=bindings(MACHINE),
        relations=[
            testing.SubordinateRelation("compute-node", remote_app_name="openstack-hypervisor"),
            peers,
        ],
    )


# -- the boundary ------------------------------------------------------------------------------


class Boundary:
    """The Host's runner: nft in the machine's namespace; what would touch this machine, faked."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[list[str]] = []
        self.refused: list[list[str]] = []
        self.netplan_applies = 0

    def nft_calls(self, since: int = 0) -> list[list[str]]:
        return [c for c in self.calls[since:] if c[0] == TOOLS.nft]

    def run(self, argv: Sequence[str]) -> Result:
        argv = list(argv)
        self.calls.append(argv)
        tool, args = argv[0], argv[1:]
        if tool == TOOLS.nft:
            return self._real([IP, "netns", "exec", MACHINE_NS, *argv])
        if tool == TOOLS.netplan and args[:1] == ["generate"] and "--root-dir" in args:
            return self._real(argv)  # writes only under its --root-dir
        if tool == TOOLS.netplan and args == ["apply"]:
            self.netplan_applies += 1
            return Result(0)
        if tool in (TOOLS.systemctl, TOOLS.systemd_run):
            return self._systemd(args)
        if tool == TOOLS.ip and args in (
            ["-j", v, "route", "show", "default"] for v in ("-4", "-6")
        ):
            return self._real([IP, "-n", MACHINE_NS, *args])  # read-only, in the namespace
        if tool == TOOLS.ip and args[1:2] in (["rule"], ["route"]) and args[2:3] == ["del"]:
            return self._real([IP, "-n", MACHINE_NS, *args])  # stale routing of ours, if any
        if self.reads_bpf(argv):
            return self._real([IP, "netns", "exec", MACHINE_NS, *argv])  # read-only
        self.refused.append(argv)
        return Result(127, "", f"{tool}: refused by the test")

    @staticmethod
    def reads_bpf(argv: Sequence[str]) -> bool:
        """The read-only look for BPF programs on the machine's interfaces."""
        tool, args = argv[0], list(argv[1:])
        return (
            (tool == TOOLS.ip and args == ["-details", "-json", "link", "show"])
            or (tool == TOOLS.tc and args[:4] == ["-json", "filter", "show", "dev"])
            or (tool == TOOLS.bpftool and args == ["--json", "net", "show"])
        )

    @staticmethod
    def _real(argv: list[str]) -> Result:
        env = {**os.environ, "LC_ALL": "C"}
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        return Result(done.returncode, done.stdout, done.stderr)

    def _systemd(self, args: list[str]) -> Result:
        fake_systemctl(self.root, args)
        return Result(0)


class NsProbe:
    """The real TCP probe, from inside the machine's namespace; records what it was given."""

    def __init__(self) -> None:
        self.targets: list[list[str]] = []

    def __call__(self, targets: Sequence[ProbeTarget], budget: float) -> Mapping[ProbeTarget, str]:
        self.targets.append([str(t) for t in targets])
        return in_netns(
            MACHINE_NS, lambda: tcp_probe(targets, budget, connect_timeout=0.5, interval=0.2)
        )


def refuse_install(packages: Sequence[str]) -> None:
    raise AssertionError(f"the test never installs packages: {packages}")


@dataclasses.dataclass
class Bed:
    root: Path
    state: Path
    runner: Boundary
    probe: NsProbe
    make_host: Callable[..., Host]

    def files(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.root)): p.read_bytes()
            for p in sorted(self.root.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }


@pytest.fixture
def bed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bed]:
    if not hasattr(testing, "Context"):
        need("ops.testing has no Context: add ops[testing] to the functional dependency group")
    if os.geteuid() != 0:
        need("the charm end-to-end test needs root to create network namespaces (ip netns)")
    for tool in (TOOLS.nft, IP, TOOLS.netplan):
        if not Path(tool).exists():
            need(f"missing {tool}: apt-get install nftables iproute2 netplan.io")
    root = tmp_path / "root"
    (root / "etc/netplan").mkdir(parents=True)
    (root / "etc/netplan/50-cloud-init.yaml").write_text(cloud_init(MACHINE))
    (root / "etc/netplan/50-cloud-init.yaml").chmod(0o600)
    state = root / "var/lib/network-isolation"
    monkeypatch.setenv("NETWORK_ISOLATION_STATE_DIR", str(state))
    monkeypatch.setenv("JUJU_API_ADDRESSES", f"{CONTROLLER_ADDRESS}:{CONTROLLER_PORT}")
    runner, probe = Boundary(root), NsProbe()

    def make_host(*_: object, state: Path | None = None, **__: object) -> Host:
        return Host(
            root,
            runner,
            probe=probe,
            state=state,
            installer=refuse_install,
            rollback_after=120,
            probe_budget=2.0,
            baseline_budget=1.0,
        )

    monkeypatch.setattr(charm, "Host", make_host)
    with machine_namespaces(tmp_path):
        yield Bed(root, state, runner, probe, make_host)


# -- the charm's life on compute-1 -------------------------------------------------------------


def rendered(ctx: testing.Context[NetworkIsolationCharm], state: testing.State) -> dict[str, str]:
    """What the charm renders for a state (its show-plan action: applies nothing)."""
    ctx.run(ctx.on.action("show-plan"), state)
    return dict(ctx.action_results or {})


def counters(ctx: testing.Context[NetworkIsolationCharm], state: testing.State) -> dict[str, Any]:
    ctx.run(ctx.on.action("show-counters"), state)
    return json.loads((ctx.action_results or {})["counters"])


def test_config_changed_audit_off_and_remove_drive_the_real_host(bed: Bed, tmp_path: Path):
    began = time.monotonic()
    foreign_before = foreign()
    start_files = bed.files()
    ctx = context(UNIT, machine_id=MACHINE_ID)

    # config-changed: the charm loads its table into the machine's namespace
    out = ctx.run(ctx.on.config_changed(), first_state())
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    calls = len(bed.runner.calls)
    want = rendered(ctx, out)  # (the leader's cloud view is in the databag from now on)
    looked = bed.runner.calls[calls:]
    assert looked and all(map(bed.runner.reads_bpf, looked)), "show-plan changed something"
    assert want["bypasses"] == "none found on the space interfaces"
    assert our_table() is not None
    assert table_json(MACHINE_NS) == loaded_like(want["nftables"], tmp_path)
    assert "10.60.0.0/24" in want["nftables"]  # storage-1's subnet came over the peer relation
    host = bed.make_host(state=bed.state)
    assert host.drift() is None
    assert (bed.state / "ruleset.nft").read_text() == want["nftables"]
    netplan = bed.root / "etc/netplan/90-network-isolation.yaml"
    assert netplan.read_text() == want["netplan"] and netplan.stat().st_mode & 0o777 == 0o600
    assert bed.runner.netplan_applies == 1
    assert bed.probe.targets[0] == [
        f"juju controller {CONTROLLER_ADDRESS}:{CONTROLLER_PORT}",
        f"gateway {GATEWAY_ADDRESS}:22",
    ]
    assert bed.probe.targets[-1] == bed.probe.targets[0]  # both answered before and after
    assert rendered(ctx, out)["diff"] == "(none: this plan is what is applied)"
    assert foreign() == foreign_before
    # the exporter service, on the management address, and what it reports of the plan
    exporter = (bed.root / "etc/systemd/system/network-isolation-exporter.service").read_text()
    assert f"--address {MACHINE_ADDRESS} --port 9479" in exporter
    summary = json.loads((bed.state / "plan-summary.json").read_text())
    assert summary["enforcement"] == "enforce" and summary["networks"]["storage-cluster"] is False

    # the same config again: nothing to do, not a single nft command (nor any other)
    calls = len(bed.runner.calls)
    out = ctx.run(ctx.on.config_changed(), out)
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    assert bed.runner.calls[calls:] == []

    # a second unit of the charm on the machine (another principal) agrees: nothing to do
    other = context(5, machine_id=MACHINE_ID)
    cluster = out.get_relations("cluster")[0]
    assert isinstance(cluster, testing.PeerRelation)
    other_state = testing.State(
        config=dict(CONFIG),
        networks=bindings(MACHINE),
        relations=[
            testing.SubordinateRelation("compute-node", remote_app_name="sunbeam-machine"),
            testing.PeerRelation("cluster", local_app_data=dict(cluster.local_app_data)),
        ],
    )
    other_out = other.run(other.on.config_changed(), other_state)
    assert isinstance(other_out.unit_status, ops.ActiveStatus), other_out.unit_status
    assert bed.runner.calls[calls:] == []

    # enforce: a packet from storage-1's storage-cluster address is dropped, and counted
    names = counter_names(want["nftables"])
    seen = counters(ctx, out)
    assert set(seen) == names and "drop_in_storage_cluster" in names
    assert connects(CONTROLLER_ADDRESS), "management traffic must pass"
    assert not connects(STORAGE_CLUSTER_SOURCE), "storage-cluster traffic must be dropped"
    after = counters(ctx, out)
    assert after["drop_in_storage_cluster"]["packets"] > seen["drop_in_storage_cluster"]["packets"]
    netplan_applies = {"enforce": bed.runner.netplan_applies}

    # drift: a rule added behind the charm's back; update-status puts the ruleset back
    nft_in(MACHINE_NS, "add", "rule", "inet", "network_isolation", "input", "tcp", "dport",
           "11", "drop")  # fmt: skip
    assert host.drift() == "table inet network_isolation differs from the applied ruleset"
    out = ctx.run(ctx.on.update_status(), out)
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    assert "drift repaired: table inet network_isolation differs" in out.unit_status.message
    assert table_json(MACHINE_NS) == loaded_like(want["nftables"], tmp_path)
    assert host.drift() is None

    # enforcement=audit: the table is replaced; it counts but drops nothing
    out = ctx.run(
        ctx.on.config_changed(),
        dataclasses.replace(out, config={**CONFIG, "enforcement": "audit"}),
    )
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    audit = rendered(ctx, out)["nftables"]
    live = table_json(MACHINE_NS)
    assert live == loaded_like(audit, tmp_path)
    assert verdicts(live, "drop") == [] and verdicts(table_json(SCRATCH_NS), "goto")
    assert {i["counter"]["name"] for i in live if "counter" in i} == names
    assert host.drift() is None
    seen = counters(ctx, out)
    assert set(seen) == names
    assert seen["drop_in_storage_cluster"]["packets"] == 0  # a new table: new counters
    assert connects(STORAGE_CLUSTER_SOURCE), "audit must let the packet through"
    assert counters(ctx, out)["drop_in_storage_cluster"]["packets"] >= 1
    assert foreign() == foreign_before
    netplan_applies["audit"] = bed.runner.netplan_applies

    # enforcement=off: our table goes; show-counters has nothing to show
    out = ctx.run(
        ctx.on.config_changed(), dataclasses.replace(out, config={**CONFIG, "enforcement": "off"})
    )
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    assert our_table() is None
    assert host.drift() is None
    assert counters(ctx, out) == {}
    assert foreign() == foreign_before
    netplan_applies["off"] = bed.runner.netplan_applies

    # enforce again, then the charm leaves: the table, the netplan file and the state go
    out = ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config=dict(CONFIG)))
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    assert table_json(MACHINE_NS) == loaded_like(want["nftables"], tmp_path)
    assert not connects(STORAGE_CLUSTER_SOURCE)
    other.run(other.on.remove(), other_out)
    assert our_table() is not None, "the other unit of the charm still runs on the machine"
    assert netplan.exists()
    applies = bed.runner.netplan_applies
    ctx.run(ctx.on.remove(), out)
    assert our_table() is None
    assert bed.runner.netplan_applies == applies + 1
    assert bed.files() == start_files
    assert not bed.state.exists()
    assert not list(bed.root.rglob("*network-isolation*"))
    assert connects(STORAGE_CLUSTER_SOURCE)
    assert foreign() == foreign_before
    assert bed.runner.refused == []
    took = time.monotonic() - began
    print(f"charm end to end: {took:.1f} s, {len(bed.runner.calls)} commands")
    print(f"netplan applies (cumulative) after each phase: {netplan_applies}")
