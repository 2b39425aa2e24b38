"""Hooks under ops.testing: their time, the hook-tool calls they make and their writes."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops import testing

import charm
from network_isolation.host import registry as host_module

from .cloud import granted_turn, hook_state

CHANGED_CONFIG = {"client-cidrs": "192.0.2.0/24"}
MAX_PRIMING_HOOKS = 4
SKIP_CHECKS_ENV = "SCENARIO_SKIP_CONSISTENCY_CHECKS"

# ops' model backend method -> the Juju hook tool it runs.
HOOK_TOOLS: dict[str, str] = {
    "relation_ids": "relation-ids",
    "relation_list": "relation-list",
    "relation_remote_app_name": "relation-list --app",
    "relation_get": "relation-get",
    "relation_set": "relation-set",
    "relation_model_get": "relation-model-get",
    "config_get": "config-get",
    "is_leader": "is-leader",
    "resource_get": "resource-get",
    "status_get": "status-get",
    "status_set": "status-set",
    "storage_list": "storage-list",
    "storage_get": "storage-get",
    "storage_add": "storage-add",
    "action_get": "action-get",
    "action_set": "action-set",
    "action_log": "action-log",
    "action_fail": "action-fail",
    "application_version_set": "application-version-set",
    "juju_log": "juju-log",
    "network_get": "network-get",
    "planned_units": "goal-state",
    "secret_get": "secret-get",
    "secret_info_get": "secret-info-get",
    "secret_set": "secret-set",
    "secret_add": "secret-add",
    "secret_grant": "secret-grant",
    "secret_revoke": "secret-revoke",
    "secret_remove": "secret-remove",
    "open_port": "open-port",
    "close_port": "close-port",
    "opened_ports": "opened-ports",
    "reboot": "juju-reboot",
    "credential_get": "credential-get",
}


class HookToolCounter:
    """Counts the hook-tool calls the charm makes through ops' model backend.

    Only outermost calls count (a backend method calling another is one hook tool), and only
    the first is-leader of a hook: ops caches it for the leadership lease.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._depth = 0

    def reset(self) -> None:
        """Start counting a new hook."""
        self.calls = Counter()
        self._depth = 0

    @property
    def total(self) -> int:
        """All hook-tool calls counted since the last reset."""
        return sum(self.calls.values())

    def _wrap(self, func: Callable[..., Any], tool: str) -> Callable[..., Any]:
        counter = self

        @functools.wraps(func)
        def counted(backend: Any, *args: Any, **kwargs: Any) -> Any:
            if counter._depth == 0 and not (tool == "is-leader" and counter.calls[tool]):
                counter.calls[tool] += 1
            counter._depth += 1
            try:
                return func(backend, *args, **kwargs)
            finally:
                counter._depth -= 1

        return counted

    @contextlib.contextmanager
    def installed(self, backend_class: type | None = None) -> Iterator[HookToolCounter]:
        """Count the calls of `backend_class` (ops.testing's model backend by default)."""
        cls = backend_class or mock_backend_class()
        saved: dict[str, Any] = {}
        for method, tool in HOOK_TOOLS.items():
            if not hasattr(cls, method):
                continue
            saved[method] = cls.__dict__.get(method)
            setattr(cls, method, self._wrap(getattr(cls, method), tool))
        try:
            yield self
        finally:
            for method, original in saved.items():
                if original is None:
                    delattr(cls, method)
                else:
                    setattr(cls, method, original)


def mock_backend_class() -> type:
    """ops.testing's model backend (scenario's `_MockModelBackend`)."""
    return importlib.import_module("scenario.mocking")._MockModelBackend


@dataclass
class HookRun:
    """One hook: its wall time, hook-tool calls and writes."""

    seconds: float
    calls: Counter[str]
    applies: int
    file_writes: int

    @property
    def databag_writes(self) -> int:
        """relation-set calls."""
        return self.calls["relation-set"]

    @property
    def writes(self) -> int:
        """Everything the hook changed: databags, the host's ruleset, files on the host."""
        return self.databag_writes + self.applies + self.file_writes


@dataclass
class Scenario:
    """Median time and the (deterministic) calls and writes of one kind of hook."""

    runs: list[HookRun]

    @property
    def seconds(self) -> float:
        """The median wall time."""
        return statistics.median(r.seconds for r in self.runs)

    @property
    def last(self) -> HookRun:
        """The last run, for its counts."""
        return self.runs[-1]


@dataclass
class RoleResult:
    """A leader's or a non-leader's hooks at one N."""

    priming_hooks: int
    noop: Scenario
    changed: Scenario
    ruleset: str


class Harness:
    """Runs the charm's hooks under ops.testing with the host faked at its boundary."""

    def __init__(self, fake_host: Any, counter: HookToolCounter):
        self.fake_host = fake_host
        self.counter = counter
        self.file_writes = 0
        self._state_dir: Path | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[Harness]:
        """Patch the charm's Host, count hook tools and host file writes; undo on exit."""
        original_host = charm.Host
        original_write = host_module.write_atomically
        saved_env = {k: os.environ.get(k) for k in (host_module.STATE_DIR_ENV, SKIP_CHECKS_ENV)}

        def counted_write(*args: Any, **kwargs: Any) -> None:
            self.file_writes += 1
            original_write(*args, **kwargs)

        charm.Host = self.fake_host
        host_module.write_atomically = counted_write
        try:
            with self.counter.installed(), tempfile.TemporaryDirectory() as tmp:
                self._state_dir = Path(tmp)
                yield self
        finally:
            charm.Host = original_host
            host_module.write_atomically = original_write
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def new_machine(self) -> None:
        """A fresh machine: nothing applied, an empty state directory."""
        if self._state_dir is None:
            raise RuntimeError("Harness.installed() first")
        self.fake_host.reset()
        directory = Path(tempfile.mkdtemp(dir=self._state_dir))
        os.environ[host_module.STATE_DIR_ENV] = str(directory)

    def run(self, state: testing.State, check: bool = False) -> tuple[testing.State, HookRun]:
        """One config-changed hook on unit 0; `check` runs ops.testing's consistency checks."""
        if check:
            os.environ.pop(SKIP_CHECKS_ENV, None)
        else:
            os.environ[SKIP_CHECKS_ENV] = "1"
        ctx = testing.Context(charm.NetworkIsolationCharm, unit_id=0, machine_id="0")
        self.counter.reset()
        self.fake_host.calls.clear()
        self.file_writes = 0
        start = time.perf_counter()
        out = ctx.run(ctx.on.config_changed(), state)
        seconds = time.perf_counter() - start
        applies = sum(1 for name, _ in self.fake_host.calls if name == "apply")
        return out, HookRun(seconds, Counter(self.counter.calls), applies, self.file_writes)

    def applied(self) -> Any:
        """What the fake host has applied."""
        return self.fake_host.applied_state

    def prime(self, state: testing.State) -> tuple[testing.State, int]:
        """Run hooks until one writes nothing; the settled state and the hooks it took."""
        for hooks in range(1, MAX_PRIMING_HOOKS + 1):
            state, run = self.run(state, check=hooks == 1)
            if run.writes == 0:
                return state, hooks - 1
        raise RuntimeError(f"no unchanged-input hook after {MAX_PRIMING_HOOKS} hooks")

    def scenario(self, state: testing.State, runs: int, applied: Any) -> Scenario:
        """`runs` hooks on the same input, each from the same applied state."""
        results = []
        for _ in range(runs):
            self.fake_host.applied_state = applied
            self.fake_host.rejected_state = None
            results.append(self.run(state)[1])
        self.fake_host.applied_state = applied
        return Scenario(results)

    def role(self, peers: int, leader: bool, runs: int) -> RoleResult:
        """Prime a unit, then time its no-op hook and a hook on a changed config.

        A non-leader applies a change only in its turn (rolling apply): its changed hook is
        timed with the turn granted, so it applies as the leader's does.
        """
        self.new_machine()
        settled, priming = self.prime(hook_state(peers, leader))
        applied = self.applied()
        noop = self.scenario(settled, runs, applied)
        changed_state = dataclasses.replace(settled, config=dict(CHANGED_CONFIG))
        if not leader:
            changed_state = granted_turn(changed_state)
        changed = self.scenario(changed_state, runs, applied)
        return RoleResult(priming, noop, changed, applied.nftables or "")

    def ruleset(self, peers: int, extra_racks: int = 0) -> str:
        """The table a non-leader enforces in a cloud of `peers` + 1 machines.

        A new machine loads the audit form first; the enforcing form, what a settled cloud
        runs, comes when the roll reaches its wave.
        """
        self.new_machine()
        audited, _ = self.run(hook_state(peers, leader=False, extra_racks=extra_racks))
        self.run(granted_turn(audited))
        ruleset = self.applied().nftables or ""
        if "enforcement: enforce" not in ruleset:
            raise RuntimeError("the granted turn did not load the enforcing form")
        return ruleset


def load_fake_host() -> Any:
    """The unit tests' stand-in for Host (tests/unit/fake_host.py)."""
    return importlib.import_module("fake_host").FakeHost
