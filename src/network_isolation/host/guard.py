"""The guard around an apply: probes, the dead-man timer, rollback and rejected artefacts.

Before a change: the targets that answer now, and a snapshot of the previous state with a
transient systemd timer (the dead-man) that restores it unless the change is confirmed. After
it: the same targets probed again; a failure restores the snapshot at once and remembers the
artefacts as rejected, so they are not tried again until they change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .netplan import NetplanFile
from .nftables import REMOVAL_RULESET, Table
from .outcomes import ApplyError, HostError, RejectedError, RejectedRecord, RolledBackError
from .probes import Probe, ProbeTarget
from .system import System, first_error, read_text, write_atomically

logger = logging.getLogger(__name__)

ROLLBACK_UNIT = "network-isolation-rollback"


@dataclass
class Progress:
    """How far an apply got, so a rollback undoes exactly that."""

    loading: bool = False  # `nft -f` may have run: the change counts, it can be rejected
    loaded: bool = False
    netplan_written: bool = False
    errors: list[str] = field(default_factory=lambda: list[str]())


def cut_off_networks(
    reachable: Sequence[ProbeTarget], failures: Iterable[ProbeTarget]
) -> list[str]:
    """The networks on which the neighbours lost say the change cut this machine off.

    Per network, since a cut of one must not hide behind healthy neighbours on another: most
    of the neighbours that answered before (more than half), and at least two, so that no
    single neighbour, a compromised machine publishing its address, can veto an apply.
    """
    answered = Counter(t.neighbour_on for t in reachable if t.neighbour_on is not None)
    lost = Counter(t.neighbour_on for t in failures if t.neighbour_on is not None)
    return [
        network for network, count in lost.items() if count >= 2 and 2 * count > answered[network]
    ]


class Guard:
    """Confirms an apply or rolls it back; its files live in the state directory.

    - `rejected.json`: the fingerprint of artefacts that failed, and why;
    - during an apply only: `rollback/` (the previous state; `rollback/loading` once `nft -f`
      may have run, so that a change that never reached the kernel is neither restored nor
      rejected), `rollback.sh` (the dead-man's restore script) and one marker. `armed`:
      whoever takes it first wins, the charm confirming (deletes it) or restoring (renames it
      `restoring`), or the dead-man (renames it `fired`). A marker stays until its restore is
      done; a restore that fails puts `armed` back, for the timer or the next hook to retry.
      While `fired` or `restoring` exists, nothing is armed: a restore may be reading the
      snapshot.
    """

    def __init__(
        self,
        system: System,
        state: Path,
        table: Table,
        netplan: NetplanFile,
        probe: Probe,
        *,
        rollback_after: int,
        probe_budget: float,
        baseline_budget: float,
    ):
        self.system = system
        self.table = table
        self.netplan = netplan
        self.probe = probe
        self.rollback_after = rollback_after
        self.probe_budget = probe_budget
        self.baseline_budget = baseline_budget
        self.rejected_file = state / "rejected.json"
        self.rollback_dir = state / "rollback"
        self.rollback_script = state / "rollback.sh"
        self.armed_file = state / "armed"
        self.fired_file = state / "fired"
        self.restoring_file = state / "restoring"
        self.loading_file = self.rollback_dir / "loading"
        self.settle_budget = 60.0  # how long a hook waits for a running dead-man

    # -- rejected artefacts ----------------------------------------------------------------

    def rejected(self) -> RejectedRecord | None:
        """The artefacts that failed last, if any."""
        try:
            data = json.loads(self.rejected_file.read_text())
            return RejectedRecord(
                str(data["fingerprint"]), str(data["stage"]), str(data["reason"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def refuse_rejected(self, wanted: str) -> None:
        """RejectedError if these artefacts (by fingerprint) failed last time."""
        rejected = self.rejected()
        if rejected and rejected.fingerprint == wanted:
            raise RejectedError(
                f"not retrying the change that failed at {rejected.stage}: {rejected.reason}",
                stage="rejected",
            )

    def _reject(self, wanted: str, error: ApplyError) -> None:
        record = {"fingerprint": wanted, "stage": error.stage, "reason": str(error)[:300]}
        write_atomically(self.rejected_file, json.dumps(record) + "\n", 0o600)

    def forget_rejection(self) -> None:
        """A new change worked: the inputs moved on."""
        self.rejected_file.unlink(missing_ok=True)

    # -- probes ----------------------------------------------------------------------------

    def baseline(self, targets: Sequence[ProbeTarget]) -> tuple[list[ProbeTarget], list[str]]:
        """Targets that answer before the change: only those are held against it."""
        if not targets:
            return [], []
        before = self.probe(targets, self.baseline_budget)
        for target, why in before.items():
            logger.warning(
                "not probing %s after the apply: unreachable before it (%s)", target, why
            )
        return [t for t in targets if t not in before], [str(t) for t in before]

    def still_reachable(self, reachable: Sequence[ProbeTarget]) -> None:
        """RolledBackError naming every target lost, if the change cut this machine off.

        A controller or a gateway lost is enough. Neighbours come from peer data, so one of
        them must not be able to veto every apply: see `cut_off_networks`.
        """
        failures = self.probe(reachable, self.probe_budget) if reachable else {}
        if not failures:
            return
        lost = ", ".join(f"{t} ({why})" for t, why in failures.items())
        hard = [t for t in failures if not t.judged_by_majority]
        if hard or cut_off_networks(reachable, failures):
            raise RolledBackError(f"unreachable after applying: {lost}", stage="probe")
        logger.warning(
            "neighbours unreachable after applying, too few to roll back (at least two, and"
            " most of a network's): %s",
            lost,
        )

    # -- the dead-man ----------------------------------------------------------------------

    def rollback_command(self) -> list[str]:
        """What the dead-man timer runs: restores the state from before the unconfirmed apply."""
        return [self.system.tools.sh, str(self.rollback_script)]

    def is_armed(self) -> bool:
        """Whether an apply is under way, died unconfirmed, or is being restored."""
        return any(m.exists() for m in (self.armed_file, self.fired_file, self.restoring_file))

    def arm(self, wanted: str, netplan_changes: bool) -> None:
        """Snapshot the previous state and start the dead-man timer, before changing anything."""
        if self.is_armed():
            raise ApplyError(
                "a rollback of an earlier apply is still running, not applying", stage="arm"
            )
        self.table.pending_file.unlink(missing_ok=True)  # its presence says a change started
        shutil.rmtree(self.rollback_dir, ignore_errors=True)
        self.rollback_dir.mkdir(parents=True)
        previous = self.table.confirmed()
        write_atomically(self.rollback_dir / "ruleset.nft", previous or REMOVAL_RULESET, 0o600)
        if self.netplan.path.exists():
            shutil.copy2(self.netplan.path, self.rollback_dir / "netplan.yaml")
        reason = f"the apply was not confirmed within {self.rollback_after} s"
        rejected = {"fingerprint": wanted, "stage": "confirm", "reason": reason}
        write_atomically(self.rollback_dir / "rejected.json", json.dumps(rejected) + "\n", 0o600)
        if netplan_changes:
            (self.rollback_dir / "netplan-changes").touch()
        script = self._rollback_script(wanted, netplan_changes)
        write_atomically(self.rollback_script, script, 0o700)
        write_atomically(self.armed_file, wanted + "\n", 0o600)
        why = self._start_timer()
        if why is not None:
            self.armed_file.unlink(missing_ok=True)
            self.clean()
            raise ApplyError(f"cannot arm the rollback timer, not applying: {why}", stage="arm")

    def loading(self, progress: Progress) -> None:
        """`nft -f` of the change is about to run: from now on it may be live.

        Recorded in the snapshot for the dead-man and the next hook, and in `progress`.
        """
        write_atomically(self.loading_file, "", 0o600)
        progress.loading = True

    def _start_timer(self) -> str | None:
        """Start the dead-man's transient timer; why it failed, or None."""
        argv = [
            self.system.tools.systemd_run,
            f"--unit={ROLLBACK_UNIT}",
            f"--on-active={self.rollback_after}",
            "--timer-property=AccuracySec=1s",
            "--collect",
            "--quiet",
            "--description=network-isolation: restore the state before an unconfirmed apply",
            *self.rollback_command(),
        ]
        result = self.system.run(*argv)
        if result.returncode != 0:
            # A leftover timer of a killed hook holds the name: stop it and try once more.
            self._disarm_timer()
            result = self.system.run(*argv)
        return None if result.returncode == 0 else first_error(result.stderr + result.stdout)

    def _rollback_script(self, wanted: str, netplan_changes: bool) -> str:
        q = shlex.quote
        tools = self.system.tools
        armed, fired = q(str(self.armed_file)), q(str(self.fired_file))
        snapshot = self.rollback_dir
        lines = [
            "#!/bin/sh",
            "# network-isolation dead-man: armed before an apply, cancelled when it is",
            "# confirmed. Whoever takes the marker first wins: the charm (confirm) or this.",
            "# `boot`: run by the boot unit, before any network is up; nothing else runs, so",
            "# a restore that the reboot cut short is taken over.",
            "set -u",
            'mode="${1:-timer}"',
            'if [ "$mode" = boot ]; then',
            f"  mv {fired} {armed} 2>/dev/null",
            f"  mv {q(str(self.restoring_file))} {armed} 2>/dev/null",
            "fi",
            f"mv {armed} {fired} 2>/dev/null || exit 0",
            "# a change whose `nft -f` never ran changed nothing: nothing to restore or reject",
            f"[ -e {q(str(self.loading_file))} ] || {{ rm -f {fired}; exit 0; }}",
            "status=0",
            f"{q(tools.nft)} -f {q(str(snapshot / 'ruleset.nft'))} || status=1",
        ]
        if netplan_changes:
            ours, tmp = q(str(self.netplan.path)), q(f"{self.netplan.path}.rollback")
            if (self.rollback_dir / "netplan.yaml").exists():
                saved = q(str(snapshot / "netplan.yaml"))
                lines.append(
                    f"cp -p {saved} {tmp} && chmod 0600 {tmp} && mv -f {tmp} {ours} || status=1"
                )
            else:
                lines.append(f"rm -f {ours} || status=1")
            # At boot networkd has not started yet: generating its files is enough.
            netplan = q(tools.netplan)
            lines.append(
                f'if [ "$mode" = boot ]; then {netplan} generate || status=1;'
                f" else {netplan} apply || status=1; fi"
            )
        rejected = q(str(snapshot / "rejected.json"))
        # Keep the reason of a failure the charm already recorded for these artefacts.
        lines += [
            f"grep -qs {wanted} {q(str(self.rejected_file))} ||"
            f" mv -f {rejected} {q(str(self.rejected_file))}",
            # A failed restore leaves the marker armed: the next hook retries it.
            f'if [ "$status" = 0 ]; then rm -f {fired}; else mv -f {fired} {armed}; fi',
            'exit "$status"',
        ]
        return "\n".join(lines) + "\n"

    def _disarm_timer(self) -> None:
        systemctl = self.system.tools.systemctl
        self.system.run(systemctl, "stop", f"{ROLLBACK_UNIT}.timer")
        self.system.run(
            systemctl, "reset-failed", f"{ROLLBACK_UNIT}.timer", f"{ROLLBACK_UNIT}.service"
        )

    def claim(self) -> bool:
        """Take the marker to confirm; False if a restore took it first."""
        try:
            self.armed_file.unlink()
        except FileNotFoundError:
            return False
        self._stop_timer()
        return True

    def _stop_timer(self) -> None:
        self.system.run(self.system.tools.systemctl, "stop", f"{ROLLBACK_UNIT}.timer")

    def confirm(self) -> None:
        """Cancel the dead-man; RolledBackError if it fired first."""
        if not self.claim():
            self._settle()
            self.table.pending_file.unlink(missing_ok=True)
            raise RolledBackError(
                f"the rollback timer fired before the apply was confirmed (after "
                f"{self.rollback_after} s); the previous state was restored",
                stage="confirm",
            )

    def _settle(self) -> None:
        """Wait for a running dead-man; a dead one (`fired`, no service) hands its restore back.

        Our own `restoring` marker left by a killed hook is handed back too: only one hook
        runs at a time on a unit, and the units of a machine apply one after the other.
        """
        deadline = time.monotonic() + self.settle_budget
        running = False
        while self.fired_file.exists():
            result = self.system.run(
                self.system.tools.systemctl, "is-active", "--quiet", f"{ROLLBACK_UNIT}.service"
            )
            running = result.returncode == 0
            if not running or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if self.fired_file.exists() and not running and not self.armed_file.exists():
            os.replace(self.fired_file, self.armed_file)
        if self.restoring_file.exists() and not self.armed_file.exists():
            os.replace(self.restoring_file, self.armed_file)

    def _take(self) -> bool:
        """Take the marker to restore (it stays until the restore is done); False if taken."""
        try:
            os.replace(self.armed_file, self.restoring_file)
        except FileNotFoundError:
            return False
        self._stop_timer()
        return True

    def _restored(self, errors: Sequence[str]) -> None:
        """Release the marker: done, or back to `armed` (and the timer) to retry a failure."""
        if not errors:
            self.restoring_file.unlink(missing_ok=True)
            self.table.pending_file.unlink(missing_ok=True)
            self.clean()
            return
        logger.error("rollback incomplete, armed again to retry it: %s", errors)
        os.replace(self.restoring_file, self.armed_file)
        why = self._start_timer()
        if why is not None:
            logger.error("cannot restart the rollback timer (the next hook retries): %s", why)

    def clean(self) -> None:
        """Drop the snapshot and the dead-man's script."""
        shutil.rmtree(self.rollback_dir, ignore_errors=True)
        self.rollback_script.unlink(missing_ok=True)

    # -- rolling back ----------------------------------------------------------------------

    @contextlib.contextmanager
    def rolling_back(self, wanted: str, netplan_changes: bool) -> Iterator[Progress]:
        """Any failure inside: undo what was done, RolledBackError.

        The artefacts are rejected once their `nft -f` may have run (`progress.loading`):
        a failure before that says nothing about them.
        """
        progress = Progress()
        try:
            yield progress
        except Exception as e:
            error = e if isinstance(e, ApplyError) else RolledBackError(str(e), stage="apply")
            self._roll_back(progress, netplan_changes)
            if progress.loading:
                self._reject(wanted, error)
            outcome = "previous state restored"
            if progress.errors:
                outcome = (
                    f"rollback failed ({'; '.join(progress.errors)}): the rollback timer "
                    f"retries it within {self.rollback_after} s"
                )
            raise RolledBackError(f"{error}; {outcome}", stage=error.stage) from e

    def _roll_back(self, progress: Progress, netplan_changes: bool) -> None:
        """Undo what the apply did, holding the marker so the dead-man cannot run meanwhile."""
        if not self._take():
            self._settle()  # the dead-man took it first: it restores, not us
            if self.armed_file.exists():  # and failed: take its restore over
                self._roll_back(progress, netplan_changes)
            return
        if progress.loaded:
            error = self.table.restore(self.rollback_dir / "ruleset.nft")
            if error:
                progress.errors.append(error)
        if progress.netplan_written and netplan_changes:
            error = self.netplan.restore(self.rollback_dir / "netplan.yaml")
            if error:
                progress.errors.append(error)
        self._restored(progress.errors)

    def recover_unconfirmed(self) -> bool:
        """An apply that never confirmed (its hook died, a reboot): restore its snapshot now.

        True when something was restored. Artefacts whose `nft -f` never ran (no
        `rollback/loading`) changed nothing: they are disarmed, neither restored nor rejected.
        """
        self._settle()
        if not self.armed_file.exists():
            return False
        if not (self.rollback_dir / "ruleset.nft").exists():
            logger.warning("an unconfirmed apply left no snapshot: disarming only")
            self.claim()
            return False
        if not self.loading_file.exists():
            logger.warning("an apply was armed but never loaded: disarming only")
            if self.claim():
                self.clean()
                self.table.pending_file.unlink(missing_ok=True)
            return False
        logger.warning("an earlier apply was not confirmed: restoring the state before it")
        netplan_changes = (self.rollback_dir / "netplan-changes").exists()
        saved = read_text(self.rollback_dir / "rejected.json")
        progress = Progress(loading=True, loaded=True, netplan_written=netplan_changes)
        self._roll_back(progress, netplan_changes)
        if progress.errors:
            raise HostError(f"cannot restore after an unconfirmed apply: {progress.errors}")
        known = self.rejected()
        if saved and not (known and known.fingerprint in saved):
            write_atomically(self.rejected_file, saved, 0o600)
        return True
