"""Everything this charm does to the host it runs on; nothing else touches the host.

So far: the per-machine registry of this charm's co-located units, through which units that
share a machine agree on one plan.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

STATE_DIR_ENV = "NETWORK_ISOLATION_STATE_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/network-isolation")


def state_dir() -> Path:
    """Where this charm keeps its per-machine state (overridable for tests)."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def write_atomically(path: Path, content: str, mode: int = 0o644) -> None:
    """Write via a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MachineRegistry:
    """One small file per unit of this charm on the machine, naming the roles it brings.

    A subordinate related to several principals on one machine has one unit per principal;
    the registry lets each of them compute the plan for the union of all their roles.
    """

    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, unit: str) -> Path:
        return self.directory / (re.sub(r"[^A-Za-z0-9-]", "-", unit) + ".json")

    def record(self, unit: str, roles: frozenset[str]) -> None:
        """Register a unit's roles; a no-op when they are already recorded."""
        content = json.dumps({"unit": unit, "roles": sorted(roles)}, sort_keys=True) + "\n"
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

    def entries(self) -> dict[str, frozenset[str]]:
        """Every registered unit and its roles; an unreadable entry is skipped and logged."""
        entries: dict[str, frozenset[str]] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                unit, roles = data["unit"], data["roles"]
                if not isinstance(unit, str) or not all(isinstance(r, str) for r in roles):
                    raise TypeError("unit must be a string and roles a list of strings")
            except (OSError, ValueError, KeyError, TypeError) as e:
                logger.warning("ignoring unreadable registry entry %s: %s", path, e)
                continue
            entries[unit] = frozenset(roles)
        return entries

    def roles_except(self, unit: str) -> frozenset[str]:
        """The union of the roles of the other units on this machine."""
        return frozenset().union(*(r for u, r in self.entries().items() if u != unit))
