"""A small, deterministic stand-in for Juju that runs the real charm for N units.

Each unit is the charm under ops.testing on its own machine, with its own fake host (the
host's network cannot be used here). Peer events are delivered the way Juju delivers them: a
changed unit databag fires `relation-changed` on every other unit, a changed application
databag fires it on every non-leader; a change still pending for the same remote unit is not
queued twice (Juju runs one hook for the latest data). Time runs in rounds: in a round every
unit runs the hooks due to it, so applies in one round are concurrent. A `random.Random`
decides the order of units in a round and delays deliveries, so tests can draw event orders.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from bindings import DISJOINT_SUBNETS, GUIDE_NETWORKS, binding
from fake_host import FakeHost
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from ops import testing

import charm
import cluster
from charm import NetworkIsolationCharm
from network_isolation.host.first_enforcement import RECORD_NAME as FIRST_ENFORCEMENT
from network_isolation.rollout import Roll, UnitReport
from tests.charm_context import context

APP = "network-isolation"
# Drawn event orders: each example runs a whole cloud's hooks, so a few of them.
drawn_orders = settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SEEDS = st.integers(0, 2**16)  # the order of units in a round
DELAYS = st.integers(0, 2)  # rounds a delivery may be late
ENFORCING = "enforcement: enforce"  # in the header of an enforcing ruleset
PEER_ID, PRINCIPAL_ID = 1, 2
SECONDS_PER_ROUND = 30.0
UPDATE_STATUS_ROUNDS = 10  # Juju runs update-status every 5 minutes
ROLE_PRINCIPALS = {"control": "k8s", "storage": "microceph", "compute": "openstack-hypervisor"}
NICS = ["enp1s0", "enp2s0", "enp3s0", "enp4s0", "enp5s0", "enp6s0"]


def sunbeam_roles(machines: int) -> list[str]:
    """A small Sunbeam cloud's roles: 3 control, 3 storage (fewer when small), the rest compute."""
    quorum = min(3, max(1, machines // 4))
    return ["control"] * quorum + ["storage"] * quorum + ["compute"] * (machines - 2 * quorum)


@dataclass
class Event:
    """A hook due to one unit: its kind, the remote unit (peer index) and when it is due."""

    kind: str  # config | changed | departed | leader | update
    remote: int | None = None
    due: int = 0


@dataclass
class Unit:
    """One unit of the charm on its own machine."""

    index: int
    role: str
    host: type[FakeHost]
    state_dir: Path
    state: testing.State | None = None
    queue: list[Event] = field(default_factory=list)
    applies: list[tuple[int, str]] = field(default_factory=list)  # (round, nftables)
    down: bool = False
    ctx: testing.Context[NetworkIsolationCharm] | None = None

    @property
    def name(self) -> str:
        return f"{APP}/{self.index}"


def _fast_load(stream: Any) -> Any:
    return yaml.load(stream, Loader=yaml.CSafeLoader)


def _fast_dump(data: Any, stream: Any = None, **kwargs: Any) -> Any:
    return yaml.dump(data, stream, Dumper=yaml.CSafeDumper, **kwargs)


class Cloud:
    """N units, their databags as Juju holds them, and the rounds that run their hooks."""

    def __init__(self, machines: int, tmp: Path, rng: random.Random | None = None, delay: int = 0):
        self.rng = rng or random.Random(0)
        self.delay = delay
        self.round = 0
        self.hooks = 0
        self.leader = 0
        self.config: dict[str, str | int | bool] = {}
        self.unit_bags: dict[int, dict[str, str]] = {}
        self.app_bag: dict[str, str] = {}
        # What other units see during a round: the databags as they were when it started.
        self.seen_bags: dict[int, dict[str, str]] = {}
        self.seen_app_bag: dict[str, str] = {}
        self.units: dict[int, Unit] = {}
        self.leader_reads: list[int] = []  # relation-get calls per leader peer hook
        self.rogue: int | None = None  # a compromised machine's unit (see `compromise`)
        self.update_every = UPDATE_STATUS_ROUNDS  # Juju's update-status-hook-interval, in rounds
        self.rogue_every = 3  # rounds between its rewrites of its own record
        self.calls: list[tuple[bool, str, int]] = []  # (leader?, event kind, hook-tool calls)
        for i, role in enumerate(sunbeam_roles(machines)):
            host = type(f"Machine{i}Host", (FakeHost,), {})
            host.reset()
            self.units[i] = Unit(i, role, host, tmp / f"machine-{i}")
            self.unit_bags[i] = {}

    # Juju's side

    def networks(self, unit: Unit) -> list[testing.Network]:
        layout = {name: (NICS[k], DISJOINT_SUBNETS[name]) for k, name in enumerate(GUIDE_NETWORKS)}
        return [binding(name, layout[name], host=10 + unit.index) for name in GUIDE_NETWORKS]

    def _state(self, unit: Unit) -> testing.State:
        leader = unit.index == self.leader
        peer = testing.PeerRelation(
            "cluster",
            id=PEER_ID,
            local_app_data=dict(self.app_bag if leader else self.seen_app_bag),
            local_unit_data=dict(self.unit_bags[unit.index]),
            peers_data={
                i: dict(self.seen_bags.get(i, {})) for i in self.unit_bags if i != unit.index
            },
        )
        principal = testing.SubordinateRelation(
            f"{unit.role}-node",
            id=PRINCIPAL_ID,
            remote_app_name=ROLE_PRINCIPALS[unit.role],
            remote_unit_id=unit.index,
        )
        base = unit.state or testing.State(networks=self.networks(unit))
        return dataclasses.replace(
            base,
            relations=[principal, peer],
            config=dict(self.config),
            leader=leader,
        )

    def _deliver(self, to: Unit, event: Event) -> None:
        if to.down and event.kind != "departed":
            to.queue.append(event)
            return
        pending = [
            e
            for e in to.queue
            if e.kind == event.kind and e.remote == event.remote and e.due > self.round
        ]
        if event.kind in ("changed", "config", "update") and pending:
            return  # Juju runs one hook for the latest data (not yet seen by a due hook)
        event.due = self.round + 1 + (self.rng.randint(0, self.delay) if self.delay else 0)
        to.queue.append(event)

    def broadcast(self, kind: str) -> None:
        """An event every unit gets (config-changed, update-status)."""
        for unit in self.units.values():
            self._deliver(unit, Event(kind))

    def set_config(self, **options: str | int | bool) -> None:
        """`juju config`: every unit gets config-changed."""
        self.config.update({k.replace("_", "-"): v for k, v in options.items()})
        self.broadcast("config")

    def elect(self, index: int) -> None:
        """Leadership moves: the new leader gets leader-elected."""
        self.leader = index
        self._deliver(self.units[index], Event("leader"))

    def remove(self, index: int) -> None:
        """`juju remove-unit`: the unit leaves and every other unit sees it depart."""
        del self.units[index]
        del self.unit_bags[index]
        for unit in self.units.values():
            unit.queue = [e for e in unit.queue if e.remote != index]
            self._deliver(unit, Event("departed", index))

    # Running hooks

    def _event(self, ctx: testing.Context[NetworkIsolationCharm], unit: Unit, event: Event):
        state = self._state(unit)
        peer = state.get_relation(PEER_ID)
        if event.kind == "config":
            return ctx.on.config_changed()
        if event.kind == "update":
            return ctx.on.update_status()
        if event.kind == "leader":
            return ctx.on.leader_elected()
        if event.kind == "departed":
            return ctx.on.relation_departed(
                peer, remote_unit=event.remote, departing_unit=event.remote
            )
        remote = event.remote if event.remote in self.unit_bags else self.leader
        return ctx.on.relation_changed(peer, remote_unit=remote)

    @contextmanager
    def _machine(self, unit: Unit) -> Iterator[None]:
        """The unit's machine: its host, its state directory, the round's clock.

        ops.testing writes and reads the charm's metadata as YAML in every hook; libyaml's
        C parser keeps hundreds of hooks affordable.
        """
        saved_host, saved_dir = charm.Host, os.environ.get("NETWORK_ISOLATION_STATE_DIR")
        saved_clock, saved_yaml = cluster.clock, (yaml.safe_load, yaml.safe_dump)
        charm.Host = unit.host  # type: ignore[misc]
        os.environ["NETWORK_ISOLATION_STATE_DIR"] = str(unit.state_dir)
        cluster.clock = lambda: self.round * SECONDS_PER_ROUND
        if yaml.__with_libyaml__:
            yaml.safe_load = _fast_load  # type: ignore[assignment]
            yaml.safe_dump = _fast_dump  # type: ignore[assignment]
        try:
            yield
        finally:
            charm.Host = saved_host  # type: ignore[misc]
            cluster.clock = saved_clock
            yaml.safe_load, yaml.safe_dump = saved_yaml  # type: ignore[assignment]
            if saved_dir is None:
                os.environ.pop("NETWORK_ISOLATION_STATE_DIR", None)
            else:
                os.environ["NETWORK_ISOLATION_STATE_DIR"] = saved_dir

    def run_action(self, index: int, name: str) -> dict[str, Any]:
        """`juju run` of an action on one unit, at once; its results (ActionFailed raises)."""
        unit = self.units[index]
        if unit.ctx is None:
            unit.ctx = context(unit.index, machine_id=str(unit.index), app_name=APP)
        with self._machine(unit):
            out = unit.ctx.run(unit.ctx.on.action(name), self._state(unit))
        self.hooks += 1
        unit.state = out
        self._publish(unit, out)
        return dict(unit.ctx.action_results or {})

    def run_hook(self, unit: Unit, event: Event, counter: Any = None) -> None:
        """Run one hook on a unit; publish what it wrote, as Juju does at the hook's end."""
        if unit.ctx is None:
            unit.ctx = context(unit.index, machine_id=str(unit.index), app_name=APP)
        ctx = unit.ctx
        before = unit.host.applied_state.nftables
        with self._machine(unit):
            if counter is not None:
                counter.reset()
            out = ctx.run(self._event(ctx, unit, event), self._state(unit))
        self.hooks += 1
        if counter is not None:
            # a peer's databag ("changed") or the leader's application databag ("app")
            kind = "app" if event.kind == "changed" and event.remote is None else event.kind
            self.calls.append((unit.index == self.leader, kind, counter.total))
            if unit.index == self.leader and event.kind == "changed":
                self.leader_reads.append(counter.calls["relation-get"])
        unit.state = out
        after = unit.host.applied_state.nftables
        if after != before and after is not None:
            unit.applies.append((self.round, after))
        self._publish(unit, out)

    def _publish(self, unit: Unit, out: testing.State) -> None:
        """What a hook wrote reaches the other units as relation-changed, as Juju sends it."""
        peer = out.get_relation(PEER_ID)
        assert isinstance(peer, testing.PeerRelation)
        if dict(peer.local_unit_data) != self.unit_bags[unit.index]:
            self.unit_bags[unit.index] = dict(peer.local_unit_data)
            for other in self.units.values():
                if other is not unit:
                    self._deliver(other, Event("changed", unit.index))
        if unit.index == self.leader and dict(peer.local_app_data) != self.app_bag:
            self.app_bag = dict(peer.local_app_data)
            for other in self.units.values():
                if other is not unit:
                    self._deliver(other, Event("changed", None))

    def compromise(self, index: int, every: int = 3) -> None:
        """A root on unit `index`'s machine: it rewrites the unit's record every few rounds.

        The forged record names its machine "0" (first in any order by name), claims the
        lowest address of every subnet, and swaps its roles; every other machine's probes of
        those addresses answer before an apply and not after it.
        """
        self.rogue, self.rogue_every = index, every
        silent = {str(ipaddress.ip_network(s)[1]) for s in DISJOINT_SUBNETS.values()}
        silent |= {str(ipaddress.ip_network(s)[10 + index]) for s in DISJOINT_SUBNETS.values()}
        for unit in self.units.values():
            if unit.index != index:
                unit.host.silent_after = frozenset(silent)

    def _forge(self) -> None:
        if self.rogue is None or self.round % self.rogue_every:
            return
        flip = self.round // self.rogue_every % 2
        forged = {
            "machine": "0",
            "roles": [["compute"], ["storage"]][flip],
            "subnets": {n: [s] for n, s in DISJOINT_SUBNETS.items()},
            "addresses": {
                n: [str(ipaddress.ip_network(s)[1 + flip])] for n, s in DISJOINT_SUBNETS.items()
            },
        }
        self.unit_bags[self.rogue] = {**self.unit_bags[self.rogue], "machine": json.dumps(forged)}
        for other in self.units.values():
            if other.index != self.rogue:
                self._deliver(other, Event("changed", self.rogue))

    def step(self, counter: Any = None) -> int:
        """One round: every unit runs the hooks due to it, units in a drawn order."""
        self.round += 1
        self._forge()
        self.seen_bags = {i: dict(b) for i, b in self.unit_bags.items()}
        self.seen_app_bag = dict(self.app_bag)
        ran = 0
        order = list(self.units.values())
        self.rng.shuffle(order)
        for unit in order:
            if unit.down or unit.index not in self.units:
                continue
            due = [e for e in unit.queue if e.due <= self.round]
            unit.queue = [e for e in unit.queue if e.due > self.round]
            for event in due:
                self.run_hook(unit, event, counter)
                ran += 1
        return ran

    def pending(self) -> bool:
        return any(u.queue for u in self.units.values() if not u.down)

    def settle(self, limit: int = 200, counter: Any = None) -> int:
        """Run rounds until no hook is pending; the rounds it took."""
        start = self.round
        while self.pending():
            self.step(counter)
            assert self.round - start <= limit, "the cloud did not settle"
        return self.round - start

    def first_deployment_done(self) -> bool:
        """The first roll halted, or every machine enforces with its enforcement confirmed."""
        roll = self.roll()
        if roll.halted:
            return True
        return bool(roll.generation) and all(
            ENFORCING in (u.host.applied_state.nftables or "")
            and not (u.state_dir / FIRST_ENFORCEMENT).exists()
            for u in self.units.values()
        )

    def deploy(self, limit: int = 300, counter: Any = None) -> int:
        """`juju deploy` and its relations on a running cloud; the rounds it took.

        Every unit runs its first hooks, then rounds run, with update-status on every unit
        every 5 minutes as Juju runs it, until the first deployment is done (or halted) and no
        hook is pending.
        """
        self.broadcast("config")
        return self.finish_deployment(limit, counter)

    def finish_deployment(self, limit: int = 300, counter: Any = None) -> int:
        """Rounds until the first deployment is done and nothing is pending; how many."""
        start = self.round
        while not (self.first_deployment_done() and not self.pending()):
            if self.round % self.update_every == self.update_every - 1:
                self.broadcast("update")
            self.step(counter)
            assert self.round - start <= limit, "the first deployment did not finish"
        return self.round - start

    def clone(self, tmp: Path, rng: random.Random, delay: int) -> Cloud:
        """A copy of this cloud (hosts, databags, units' states) to run on independently."""
        copy = Cloud(0, tmp, rng, delay)
        copy.round, copy.hooks, copy.leader = self.round, self.hooks, self.leader
        copy.config = dict(self.config)
        copy.unit_bags = {i: dict(b) for i, b in self.unit_bags.items()}
        copy.app_bag = dict(self.app_bag)
        for i, unit in self.units.items():
            host = type(f"Machine{i}Host", (FakeHost,), {})
            host.reset()
            host.applied_state, host.rejected_state = unit.host.applied_state, None
            directory = tmp / unit.state_dir.name
            if unit.state_dir.exists():
                shutil.copytree(unit.state_dir, directory)
            copy.units[i] = dataclasses.replace(
                unit, host=host, state_dir=directory, queue=[], applies=list(unit.applies)
            )
        return copy

    # What the tests look at

    def roll(self) -> Roll:
        raw = self.app_bag.get("roll")
        return Roll.model_validate_json(raw) if raw else Roll()

    def report(self, index: int) -> UnitReport:
        raw = self.unit_bags[index].get("report")
        return UnitReport.model_validate_json(raw) if raw else UnitReport()

    def status(self, index: int) -> str:
        state = self.units[index].state
        return str(state.unit_status) if state else ""
