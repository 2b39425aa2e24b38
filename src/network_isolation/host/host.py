"""`Host`: the one entry point to the machine; each step is done by the module that owns it."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import InterfaceKind, IPAddress
from ..bypass import Bypass
from ..observed import ApplyHistory, PlanSummary
from . import removal
from .boot import BootUnit
from .bypasses import packet_bypasses
from .exporter import Exporter, ExporterSpec
from .first_enforcement import FirstEnforcement, FirstEnforcementRecord
from .guard import Guard, Progress
from .netplan import NETPLAN_FILE_NAME, NetplanFile
from .nftables import Table
from .outcomes import (
    Applied,
    ApplyResult,
    ArtefactsLike,
    HostError,
    RejectedRecord,
    RolledBackError,
    fingerprint,
)
from .probes import Probe, ProbeTarget, default_gateways, tcp_probe
from .registry import DEFAULT_STATE_DIR
from .system import Runner, SubprocessRunner, System, Tools, apt_install


@dataclass(frozen=True)
class _Artefacts:
    """Artefacts read back from the host (what `repair_drift` reloads)."""

    nftables: str
    netplan: str | None


class Host:
    """Every side effect of the charm on its machine: files, nft, netplan, systemd.

    State kept in the state directory (default `ROOT/var/lib/network-isolation`):

    - `ruleset.nft`: the confirmed ruleset, the one the boot unit loads (0600);
    - `live.nft`: `nft -s list table` right after the last confirmed apply, for drift checks;
    - `rejected.json`: the fingerprint of artefacts that failed, and why;
    - `plan-summary.json` and `history.json`: what the metrics exporter reads (see `exporter`);
    - `first-enforcement.json`: until the machine's first enforcement is confirmed, when its
      audit form loaded and what it had counted when the enforcing form replaced it;
    - during an apply only: `pending.nft`, `rollback/` (the previous state, and `loading` once
      `nft -f` may have run), `rollback.sh` (the dead-man's restore script, which the boot unit
      also runs after a reboot) and a marker, `armed`, then `restoring` or `fired` while a
      restore holds it (see `Guard`).
    """

    def __init__(
        self,
        root: Path = Path("/"),
        runner: Runner | None = None,
        *,
        probe: Probe = tcp_probe,
        tools: Tools | None = None,
        state: Path | None = None,
        installer: Callable[[Sequence[str]], None] = apt_install,
        rollback_after: int = 300,
        probe_budget: float = 20.0,
        baseline_budget: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        self.root = root
        self.runner: Runner = runner or SubprocessRunner()
        self.tools = tools or Tools()
        self.system = System(root, self.runner, self.tools)
        self.state = state or self.system.at(DEFAULT_STATE_DIR)
        self.installer = installer
        self.clock = clock
        self.table = Table(self.system, self.state)
        self.netplan = NetplanFile(self.system)
        self.exporter = Exporter(self.system, self.state)
        self.guard = Guard(
            self.system,
            self.state,
            self.table,
            self.netplan,
            probe,
            rollback_after=rollback_after,
            probe_budget=probe_budget,
            baseline_budget=baseline_budget,
        )
        self.boot = BootUnit(
            self.system, self.state, self.table.ruleset_file, self.guard.rollback_script
        )
        self.rollback_dir = self.guard.rollback_dir
        self.first = FirstEnforcementRecord(self.state)

    # -- read-only views -------------------------------------------------------------------

    def applied(self) -> Applied:
        """The confirmed ruleset and our netplan file, as they are on the host."""
        return Applied(self.table.confirmed(), self.netplan.read())

    def packet_bypasses(self, interfaces: Iterable[str]) -> list[Bypass]:
        """BPF programs that see these interfaces' packets before netfilter (read-only)."""
        return packet_bypasses(self.system, interfaces)

    def default_gateways(self) -> list[str]:
        """The gateways of the host's default routes (IPv4 and IPv6), read-only."""
        return default_gateways(self.system)

    def interface_kinds(self) -> dict[str, InterfaceKind]:
        """Which netplan section (ethernets, vlans, bonds, bridges) defines each interface."""
        return self.netplan.interface_kinds()

    def interface_gateways(self) -> dict[str, tuple[IPAddress, ...]]:
        """The gateways the host's netplan files give each interface (files only)."""
        return self.netplan.interface_gateways()

    def is_applied(self, artefacts: ArtefactsLike) -> bool:
        """Whether these artefacts are what is applied (files only: runs no command)."""
        return (
            not self.guard.is_armed()
            and self.table.confirmed() == artefacts.nftables
            and self.netplan.matches(artefacts.netplan)
        )

    def rejected(self) -> RejectedRecord | None:
        """The artefacts that failed last, if any."""
        return self.guard.rejected()

    def diff(self, artefacts: ArtefactsLike) -> str:
        """A unified diff from what is applied to these artefacts ("" when they are equal)."""
        now = self.applied()
        parts: list[str] = []
        for name, old, new in [
            ("ruleset.nft", now.nftables, artefacts.nftables),
            (NETPLAN_FILE_NAME, now.netplan, artefacts.netplan),
        ]:
            parts += difflib.unified_diff(
                (old or "").splitlines(keepends=True),
                (new or "").splitlines(keepends=True),
                f"applied/{name}" if old is not None else "/dev/null",
                f"wanted/{name}" if new is not None else "/dev/null",
            )
        return "".join(parts)

    def drift(self) -> str | None:
        """Why the live table differs from the last confirmed apply; None when it does not."""
        return self.table.drift()

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets and bytes of each named counter (and of each commented rule's counter)."""
        return self.table.counters()

    # -- a machine's first enforcement ------------------------------------------------------

    def first_enforcement(self) -> FirstEnforcement | None:
        """The record of a first enforcement not yet confirmed (files only: no command)."""
        return self.first.read()

    def never_enforced(self) -> bool:
        """Nothing applied yet, or a first enforcement not yet confirmed."""
        return self.table.confirmed() is None or self.first.read() is not None

    def begin_audit(self, now: float) -> None:
        """The audit form of a machine that never enforced is loaded: remember since when."""
        self.first.begin_audit(now)

    def before_enforcing(self, now: float) -> None:
        """The enforcing form is about to be loaded: keep the audit form's counters."""
        self.first.before_enforcing(now, self.table.counters)

    def confirm_enforcement(self) -> None:
        """The roll went past this machine: its enforcement is no longer a first one."""
        self.first.remove()

    def rollback_command(self) -> list[str]:
        """What the dead-man timer runs: restores the state from before the unconfirmed apply."""
        return self.guard.rollback_command()

    def boot_command(self) -> list[str]:
        """What the boot unit runs (its ExecStart)."""
        return self.boot.command()

    # -- validate and apply ----------------------------------------------------------------

    def recover_unconfirmed(self) -> bool:
        """Undo an apply that never confirmed (its hook died); True if something was restored.

        Every hook calls it first, before it waits for its turn to apply: nothing else runs
        while an unconfirmed change is live. Raises HostError if the restore fails.
        """
        recovered = self.guard.recover_unconfirmed()
        if recovered:
            self.exporter.note(ApplyHistory.rolled_back)
        return recovered

    def validate(self, artefacts: ArtefactsLike) -> None:
        """Check the artefacts with the real tools; changes nothing on the host.

        Raises InvalidArtefactsError with the tool's first error line.
        """
        self.table.check(artefacts.nftables)
        if artefacts.netplan is not None:
            self.netplan.check(artefacts.netplan)

    def apply(
        self,
        artefacts: ArtefactsLike,
        targets: Sequence[ProbeTarget] = (),
        *,
        force: bool = False,
    ) -> ApplyResult:
        """Make the artefacts the running state, or leave the previous one running.

        No-op (no write, no command) when they are already applied, unless `force` (the
        `reapply` action: also retries rejected artefacts). Raises `ApplyError`:
        `InvalidArtefactsError` (nothing changed), `RejectedError` (failed before, not tried
        again until the artefacts change), `RolledBackError` (applied, failed, previous state
        restored). `targets` must stay reachable: those that answer before the change must
        answer after it. A success forgets an earlier rejection.
        """
        return self._apply(artefacts, targets, force=force, repair=False)

    def repair_drift(self, targets: Sequence[ProbeTarget] = ()) -> str | None:
        """If the live table drifted, reload what was confirmed last; return why (or None).

        Reloads the recorded ruleset (and our netplan file as it is), not newer wanted
        artefacts, so a change rejected earlier is not retried behind the operator's back.
        Goes through `apply(force=True)`: validated, dead-man armed, probed, rolled back.
        """
        reason = self.drift()
        if reason is None:
            return None
        recorded = self.applied()
        if recorded.nftables is None:
            return None
        wanted = _Artefacts(recorded.nftables, recorded.netplan)
        self._apply(wanted, targets, force=True, repair=True)
        return reason

    def _apply(
        self,
        artefacts: ArtefactsLike,
        targets: Sequence[ProbeTarget],
        *,
        force: bool,
        repair: bool,
    ) -> ApplyResult:
        # The steps of an apply, as docs/explanation/safety.md lists them.
        recovered = self.recover_unconfirmed()  # a killed apply is undone first
        if not force and not recovered and self.is_applied(artefacts):  # nothing changed
            self.boot.ensure()
            return ApplyResult(changed=False)
        wanted = fingerprint(artefacts)
        if not force:
            self.guard.refuse_rejected(wanted)
        self.validate(artefacts)  # validate before anything changes
        reachable, skipped = self.guard.baseline(targets)
        netplan_changes = not self.netplan.matches(artefacts.netplan)
        self.boot.ensure()  # a reboot before the confirmation restores the snapshot
        self.guard.arm(wanted, netplan_changes)  # arm the dead-man timer
        try:
            with self.guard.rolling_back(wanted, netplan_changes) as progress:  # or roll back
                self._change(artefacts, netplan_changes, progress)  # apply atomically
                self.guard.still_reachable(reachable)  # confirm
            self.guard.confirm()
        except RolledBackError:
            self.exporter.note(ApplyHistory.rolled_back)
            raise
        self._persist(forget_rejection=not repair)
        self.exporter.note(lambda history: history.applied(self.clock()))
        what = "ruleset and netplan" if netplan_changes else "ruleset"
        return ApplyResult(True, netplan_changes, f"applied {what}", tuple(skipped))

    def _change(self, artefacts: ArtefactsLike, netplan_changes: bool, progress: Progress):
        """The ruleset in one transaction, then our netplan file if it changes.

        The snapshot is marked `loading` right before `nft -f` starts: a hook that dies
        before that changed nothing, and neither the dead-man nor the next hook restores or
        rejects its change.
        """
        self.table.stage(artefacts.nftables)
        self.guard.loading(progress)
        self.table.load()
        progress.loaded = True
        if netplan_changes:
            progress.netplan_written = True
            self.netplan.install(artefacts.netplan)

    def _persist(self, *, forget_rejection: bool) -> None:
        """Make the confirmed ruleset the boot ruleset and record it for drift checks."""
        self.table.commit()
        if forget_rejection:
            self.guard.forget_rejection()
        self.guard.clean()
        self.boot.ensure()

    # -- what the metrics exporter reads, and its service ---------------------------------

    def history(self) -> ApplyHistory:
        """What applies have done on this machine (zeros before the first)."""
        return self.exporter.history()

    def record_plan(self, summary: PlanSummary) -> None:
        """What the exporter reports of the plan; written only when it changed."""
        self.exporter.record_plan(summary)

    def ensure_exporter(self, spec: ExporterSpec | None) -> bool:
        """The exporter service as `spec` says (None: removed); True if something changed."""
        return self.exporter.ensure(spec)

    # -- removal and prerequisites ---------------------------------------------------------

    def remove(self) -> None:
        """Remove our table, netplan file, unit and state: the host is as it was before us.

        Every step is tried; HostError lists those that failed.
        """
        removal.remove(
            self.state, self.table, self.netplan, self.boot, self.guard, self.exporter, self.first
        )

    def install_prerequisites(self) -> bool:
        """Install nftables when `nft` is missing; True if something was installed."""
        if Path(self.tools.nft).exists():
            return False
        self.installer(["nftables"])
        if not Path(self.tools.nft).exists():
            raise HostError(f"nftables installed but {self.tools.nft} is still missing")
        return True
