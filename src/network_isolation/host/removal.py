"""Removal: the host as it was before this charm, every step tried."""

from __future__ import annotations

import contextlib
from pathlib import Path

from .boot import BootUnit
from .exporter import Exporter
from .first_enforcement import FirstEnforcementRecord
from .guard import Guard
from .netplan import NetplanFile
from .nftables import Table
from .outcomes import HostError


def remove(
    state: Path,
    table: Table,
    netplan: NetplanFile,
    boot: BootUnit,
    guard: Guard,
    exporter: Exporter,
    first: FirstEnforcementRecord,
) -> None:
    """Remove our table, netplan file, units and state; HostError lists the steps that failed."""
    if guard.is_armed():
        guard.claim()
    errors = table.remove() + netplan.remove() + boot.remove() + exporter.remove()
    first.remove()
    _remove_state(state, table, guard)
    if errors:
        raise HostError("removal incomplete: " + "; ".join(errors))


def _remove_state(state: Path, table: Table, guard: Guard) -> None:
    guard.clean()
    for path in (
        table.ruleset_file,
        table.live_file,
        guard.rejected_file,
        table.pending_file,
        guard.armed_file,
        guard.fired_file,
        guard.restoring_file,
    ):
        path.unlink(missing_ok=True)
    # The registry's directory goes too once it is empty (the last unit has left).
    for directory in (state / "units", state):
        with contextlib.suppress(OSError):
            directory.rmdir()
