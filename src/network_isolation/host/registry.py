"""The machine's state directory, and the registry of this charm's units in it.

Units that share a machine agree on one plan through the registry.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .system import write_atomically

logger = logging.getLogger(__name__)

STATE_DIR_ENV = "NETWORK_ISOLATION_STATE_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/network-isolation")
# Where Juju keeps each unit agent of the machine (`unit-<app>-<n>/`); the machine agent
# removes a unit's directory when the unit leaves the machine, even a forced removal.
JUJU_AGENTS_DIR = Path("/var/lib/juju/agents")


def state_dir() -> Path:
    """Where this charm keeps its per-machine state (overridable for tests)."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


class UnitEntry(BaseModel):
    """What one unit of this charm brings to its machine: its principal, roles, declared ports."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    unit: str
    principal: str | None = None  # the principal unit it is attached to (JUJU_PRINCIPAL_UNIT)
    roles: tuple[str, ...]
    # network -> ports as "tcp:5672" or "udp:6800-7300", as principals declared them
    ports: dict[str, tuple[str, ...]] = {}


class MachineRegistry:
    """One small file per unit of this charm on the machine, naming what it brings.

    A subordinate related to several principals on one machine has one unit per principal;
    the registry lets each of them compute the plan for the union of all their roles,
    principals and declared ports.
    """

    def __init__(self, directory: Path, agents: Path | None = None):
        self.directory = directory
        self.agents = agents or JUJU_AGENTS_DIR

    def _path(self, unit: str) -> Path:
        return self.directory / (re.sub(r"[^A-Za-z0-9-]", "-", unit) + ".json")

    def record(
        self,
        unit: str,
        roles: frozenset[str],
        ports: Mapping[str, Iterable[str]] | None = None,
        principal: str | None = None,
    ) -> None:
        """Register a unit's roles and ports; a no-op when they are already recorded."""
        entry: dict[str, object] = {"unit": unit, "roles": sorted(roles)}
        if principal:
            entry["principal"] = principal
        if ports:
            entry["ports"] = {net: sorted(set(p)) for net, p in sorted(ports.items()) if p}
        content = json.dumps(entry, sort_keys=True) + "\n"
        path = self._path(unit)
        try:
            if path.read_text() == content:
                return
        except OSError:
            pass
        write_atomically(path, content)

    def forget(self, unit: str) -> None:
        """Drop a departing unit's entry."""
        self._path(unit).unlink(missing_ok=True)

    def _on_machine(self, entry: UnitEntry) -> bool:
        """Whether the entry's unit (and its principal) still have an agent on the machine.

        An entry outlives its unit when the unit was removed with `--force` or its remove
        hook failed. Without Juju's agents directory nothing can be told: every entry counts.
        """
        if not self.agents.is_dir():
            return True
        units = [entry.unit, *([entry.principal] if entry.principal else [])]
        return all((self.agents / f"unit-{u.replace('/', '-')}").is_dir() for u in units)

    def _entries(self) -> list[UnitEntry]:
        entries: list[UnitEntry] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = UnitEntry.model_validate_json(path.read_text())
            except (OSError, ValueError) as e:
                logger.warning("ignoring unreadable registry entry %s: %s", path, e)
                continue
            if self._on_machine(entry):
                entries.append(entry)
            else:
                logger.warning("ignoring %s: its unit is no longer on this machine", path)
        return entries

    def entries(self) -> dict[str, frozenset[str]]:
        """Every registered unit and its roles; an unreadable entry is skipped and logged."""
        return {entry.unit: frozenset(entry.roles) for entry in self._entries()}

    def roles_except(self, unit: str) -> frozenset[str]:
        """The union of the roles of the other units on this machine."""
        return frozenset().union(*(r for u, r in self.entries().items() if u != unit))

    def principals_except(self, unit: str) -> frozenset[str]:
        """The applications of the other units' principals: what each of them needs counts."""
        return frozenset(
            entry.principal.split("/")[0]
            for entry in self._entries()
            if entry.unit != unit and entry.principal
        )

    def ports_except(self, unit: str) -> dict[str, frozenset[str]]:
        """The ports the other units' principals declared, per network."""
        merged: dict[str, set[str]] = {}
        for entry in self._entries():
            if entry.unit != unit:
                for network, ports in entry.ports.items():
                    merged.setdefault(network, set()).update(ports)
        return {network: frozenset(ports) for network, ports in merged.items()}
