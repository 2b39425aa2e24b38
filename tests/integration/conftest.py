"""Fixtures of the Juju integration tests, and the check that skips them where Juju is missing.

The tests need a real Juju controller on MAAS, with a space for each cloud network and machines
that have NICs in them, and a packed charm. Without a controller every test here is skipped at
collection, with a message saying what is needed: `tox -e integration` stays green on machines
without Juju.

Environment variables (all optional but CHARM_PATH, which has a fallback):

- CHARM_PATH: the packed charm; else the newest `*.charm` in the repository root.
- NETWORK_ISOLATION_CONTROLLER: the controller to use; else the current one.
- NETWORK_ISOLATION_MODEL: an existing model to deploy into (kept); else a temporary model.
- NETWORK_ISOLATION_KEEP_MODEL=1: keep the temporary model after the tests.
- NETWORK_ISOLATION_SPACES: `network=space` entries, space-separated; each network not named
  is bound to the space of its own name (`internal` to `internal`, ...).
- NETWORK_ISOLATION_BASE: the principal's base, `ubuntu@24.04` by default.
- NETWORK_ISOLATION_TIMEOUT: seconds to wait for the deployment, 1800 by default.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jubilant
import pytest

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NETWORKS = ("data", "internal", "management", "public", "storage", "storage-cluster")
# The guide's table: what a compute node may use.
COMPUTE_NETWORKS = ("management", "internal", "data", "storage")

SKIPPED = pytest.StashKey[str]()

NEEDS = (
    "the Juju integration tests need a bootstrapped Juju controller on MAAS (`juju` on PATH and"
    " `juju show-controller` working; NETWORK_ISOLATION_CONTROLLER to pick one), MAAS spaces"
    " for the six networks (NETWORK_ISOLATION_SPACES maps them, default: spaces named after"
    " the networks) with machines that have NICs in the compute node's spaces, and the packed"
    " charm (CHARM_PATH, or a *.charm in the repository root)"
)


@functools.cache
def controller_problem() -> str | None:
    """Why there is no usable Juju controller here, or None when there is one."""
    juju = shutil.which("juju")
    if juju is None:
        return "`juju` is not on PATH"
    command = [juju, "show-controller"]
    if controller := os.environ.get("NETWORK_ISOLATION_CONTROLLER"):
        command.append(controller)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`juju show-controller` did not run: {e}"
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`juju show-controller` failed: {error}"
    return None


def find_charm() -> Path | None:
    """CHARM_PATH, or the newest packed charm in the repository root."""
    if path := os.environ.get("CHARM_PATH"):
        return Path(path).resolve()
    charms = sorted(ROOT.glob("*.charm"), key=lambda p: p.stat().st_mtime)
    return charms[-1].resolve() if charms else None


def skip_reason() -> str | None:
    """Why the integration tests cannot run here, with what they need; None if they can."""
    problem = controller_problem()
    if problem is None:
        charm = find_charm()
        if charm is None:
            problem = "no packed charm: set CHARM_PATH or run `charmcraft pack`"
        elif not charm.is_file():
            problem = f"CHARM_PATH {charm} is not a file"
    return None if problem is None else f"{problem}; {NEEDS}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every integration test, with the reason, where they cannot run."""
    ours = [item for item in items if HERE in item.path.resolve().parents]
    reason = skip_reason() if ours else None
    if reason is None:
        return
    config.stash[SKIPPED] = reason
    marker = pytest.mark.skip(reason=reason)
    for item in ours:
        item.add_marker(marker)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config):
    """Say once, at the end, why the integration tests were skipped."""
    if reason := config.stash.get(SKIPPED, None):
        terminalreporter.write_line(f"integration tests skipped: {reason}", yellow=True)


@dataclass(frozen=True)
class Spaces:
    """Where each of the six networks is bound."""

    by_network: dict[str, str]

    @property
    def bind(self) -> str:
        """The `--bind` value: management's space as the default, then every network."""
        pairs = " ".join(f"{net}={self.by_network[net]}" for net in NETWORKS)
        return f"{self.by_network['management']} {pairs}"

    def of(self, networks: tuple[str, ...]) -> list[str]:
        """The distinct spaces of some networks, in order."""
        return list(dict.fromkeys(self.by_network[n] for n in networks))


def parse_spaces(text: str) -> Spaces:
    """NETWORK_ISOLATION_SPACES: `network=space` entries; others keep their own name."""
    spaces = {net: net for net in NETWORKS}
    for entry in text.split():
        network, _, space = entry.partition("=")
        if network not in NETWORKS or not space:
            raise ValueError(f"NETWORK_ISOLATION_SPACES: {entry!r} is not network=space")
        spaces[network] = space
    return Spaces(spaces)


@pytest.fixture(scope="session")
def charm_path() -> Path:
    """The packed charm under test."""
    charm = find_charm()
    assert charm is not None and charm.is_file(), "checked at collection"
    return charm


@pytest.fixture(scope="session")
def spaces() -> Spaces:
    """The space of each network."""
    return parse_spaces(os.environ.get("NETWORK_ISOLATION_SPACES", ""))


@pytest.fixture(scope="session")
def bind(spaces: Spaces) -> str:
    """Our charm's `--bind` value."""
    return spaces.bind


@pytest.fixture(scope="session")
def compute_constraints(spaces: Spaces) -> dict[str, str]:
    """Constraints that give the principal's machine a NIC in each compute node's space."""
    return {"spaces": ",".join(spaces.of(COMPUTE_NETWORKS))}


@pytest.fixture(scope="session")
def base() -> str:
    """The base of the principal's machine."""
    return os.environ.get("NETWORK_ISOLATION_BASE", "ubuntu@24.04")


@pytest.fixture(scope="module")
def juju(request: pytest.FixtureRequest, spaces: Spaces) -> Iterator[jubilant.Juju]:
    """A model to deploy into: a temporary one unless NETWORK_ISOLATION_MODEL names one."""
    timeout = float(os.environ.get("NETWORK_ISOLATION_TIMEOUT", "1800"))
    existing = os.environ.get("NETWORK_ISOLATION_MODEL")
    if existing:
        juju = jubilant.Juju(model=existing, wait_timeout=timeout)
        yield from _checked(juju, spaces, request)
        return
    keep = os.environ.get("NETWORK_ISOLATION_KEEP_MODEL") == "1"
    controller = os.environ.get("NETWORK_ISOLATION_CONTROLLER")
    with jubilant.temp_model(keep=keep, controller=controller) as juju:
        juju.wait_timeout = timeout
        yield from _checked(juju, spaces, request)


def _checked(
    juju: jubilant.Juju, spaces: Spaces, request: pytest.FixtureRequest
) -> Iterator[jubilant.Juju]:
    known = _model_spaces(juju)
    missing = sorted(set(spaces.by_network.values()) - known)
    if missing:
        pytest.skip(
            f"the model has no space {', '.join(missing)} (it has: {', '.join(sorted(known))});"
            f" {NEEDS}"
        )
    yield juju
    if request.session.testsfailed:
        logger.error("last lines of the model's debug log:\n%s", juju.debug_log(limit=500))


def _model_spaces(juju: jubilant.Juju) -> set[str]:
    data = json.loads(juju.cli("spaces", "--format", "json"))
    return {space["name"] for space in data.get("spaces", [])}
