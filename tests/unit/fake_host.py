"""A stand-in for `Host` at the charm's boundary: the host's own network cannot be used here.

It keeps what is "applied" in memory and records every call, so charm tests can assert what
the charm asked of the host, and can make any step fail.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any, ClassVar

from network_isolation.base import IPAddress
from network_isolation.bypass import Bypass
from network_isolation.host import (
    Applied,
    ApplyResult,
    ExporterSpec,
    HostError,
    ProbeTarget,
    RejectedError,
    RejectedRecord,
    RolledBackError,
    fingerprint,
)
from network_isolation.host.first_enforcement import FirstEnforcement, FirstEnforcementRecord
from network_isolation.host.guard import cut_off_networks
from network_isolation.observed import PlanSummary

MAAS_NICS = tuple(f"enp{k}s0" for k in range(1, 7))


class FakeHost:
    """Shared by every charm instance of a test (one machine), like the real host."""

    applied_state: ClassVar[Applied] = Applied(None, None)
    rejected_state: ClassVar[RejectedRecord | None] = None
    calls: ClassVar[list[tuple[str, Any]]] = []
    fail_apply: ClassVar[str | None] = None  # probe failure message to inject
    # addresses that answer the probes before an apply and not after it (a rogue neighbour):
    # judged by the host's own rule, so only most of a network's neighbours roll it back
    silent_after: ClassVar[frozenset[str]] = frozenset()
    drift_reason: ClassVar[str | None] = None
    counters_state: ClassVar[dict[str, dict[str, int]]] = {}
    # packets per counter that the loaded form counts, by form ("audit" or "enforce"): what
    # `counters()` shows once a ruleset of that form is applied (else `counters_state`)
    traffic: ClassVar[dict[str, dict[str, int]]] = {}
    gateways: ClassVar[list[str]] = []
    # What MAAS's netplan file defines: the NICs the tests' bindings use.
    kinds: ClassVar[dict[str, str]] = dict.fromkeys(MAAS_NICS, "ethernets")
    bypasses: ClassVar[list[Bypass]] = []  # BPF programs on the machine's interfaces
    removed: ClassVar[bool] = False
    vias: ClassVar[dict[str, list[str]]] = {}  # gateways per interface in MAAS's netplan file
    unconfirmed: ClassVar[Applied | None] = None  # what an apply killed unconfirmed replaced
    plan_summary: ClassVar[PlanSummary | None] = None
    exporter: ClassVar[ExporterSpec | None] = None

    def __init__(self, *_: Any, state: Path | None = None, **__: Any):
        self.state = state

    @classmethod
    def reset(cls) -> None:
        cls.applied_state = Applied(None, None)
        cls.silent_after = frozenset()
        cls.rejected_state = None
        cls.calls = []
        cls.fail_apply = None
        cls.drift_reason = None
        cls.counters_state = {}
        cls.traffic = {}
        cls.gateways = []
        cls.kinds = dict.fromkeys(MAAS_NICS, "ethernets")
        cls.bypasses = []
        cls.removed = False
        cls.vias = {}
        cls.unconfirmed = None
        cls.plan_summary = None
        cls.exporter = None

    @classmethod
    def names(cls) -> list[str]:
        return [name for name, _ in cls.calls]

    def install_prerequisites(self) -> bool:
        self.calls.append(("install_prerequisites", None))
        return False

    def recover_unconfirmed(self) -> bool:
        if self.unconfirmed is None:
            return False
        self.calls.append(("recover_unconfirmed", None))
        type(self).applied_state, type(self).unconfirmed = self.unconfirmed, None
        return True

    def applied(self) -> Applied:
        return self.applied_state

    def is_applied(self, artefacts: Any) -> bool:
        current = self.applied_state
        return (current.nftables, current.netplan) == (artefacts.nftables, artefacts.netplan)

    def rejected(self) -> RejectedRecord | None:
        return self.rejected_state

    def apply(
        self, artefacts: Any, targets: Sequence[ProbeTarget] = (), *, force: bool = False
    ) -> ApplyResult:
        self.calls.append(("apply", (artefacts, tuple(targets), force)))
        rejected = self.rejected_state
        if not force and rejected and rejected.fingerprint == fingerprint(artefacts):
            raise RejectedError(f"not retrying: {rejected.reason}", stage="rejected")
        lost = [t for t in targets if t.host in self.silent_after]
        hard = [t for t in lost if t.neighbour_on is None]
        failure = self.fail_apply
        if failure is None and (hard or cut_off_networks(targets, lost)):
            failure = f"unreachable after applying: {', '.join(map(str, lost))}"
        if failure is not None:
            type(self).rejected_state = RejectedRecord(fingerprint(artefacts), "probe", failure)
            raise RolledBackError(f"{failure}; previous state restored", stage="probe")
        type(self).applied_state = Applied(artefacts.nftables, artefacts.netplan)
        type(self).rejected_state = None
        return ApplyResult(changed=True, message="applied ruleset")

    def repair_drift(self, targets: Sequence[ProbeTarget] = ()) -> str | None:
        self.calls.append(("repair_drift", tuple(targets)))
        return self.drift_reason

    def counters(self) -> dict[str, dict[str, int]]:
        ruleset = self.applied_state.nftables
        if ruleset is None:
            raise HostError("no table inet network_isolation")
        form = "audit" if "enforcement: audit" in ruleset else "enforce"
        if form in self.traffic:
            return {n: {"packets": p, "bytes": 60 * p} for n, p in self.traffic[form].items()}
        return self.counters_state

    # a machine's first enforcement: the real record, in the unit's state directory

    @property
    def _first(self) -> FirstEnforcementRecord:
        assert self.state is not None, "FakeHost(state=...) keeps the first-enforcement record"
        return FirstEnforcementRecord(self.state)

    def first_enforcement(self) -> FirstEnforcement | None:
        return self._first.read()

    def never_enforced(self) -> bool:
        return self.applied_state.nftables is None or self._first.read() is not None

    def begin_audit(self, now: float) -> None:
        self.calls.append(("begin_audit", now))
        self._first.begin_audit(now)

    def before_enforcing(self, now: float) -> None:
        self.calls.append(("before_enforcing", now))
        self._first.before_enforcing(
            now, lambda: self.counters() if self.applied_state.nftables else {}
        )

    def confirm_enforcement(self) -> None:
        self.calls.append(("confirm_enforcement", None))
        self._first.remove()

    def diff(self, artefacts: Any) -> str:
        return "" if self.is_applied(artefacts) else "--- applied\n+++ planned\n"

    def default_gateways(self) -> list[str]:
        return list(self.gateways)

    def packet_bypasses(self, interfaces: Iterable[str]) -> list[Bypass]:
        asked = tuple(interfaces)
        self.calls.append(("packet_bypasses", asked))
        return [b for b in self.bypasses if b.interface in asked]

    def interface_kinds(self) -> dict[str, str]:
        return dict(self.kinds)

    def interface_gateways(self) -> dict[str, tuple[IPAddress, ...]]:
        return {name: tuple(ip_address(g) for g in vias) for name, vias in self.vias.items()}

    def record_plan(self, summary: PlanSummary) -> None:
        type(self).plan_summary = summary

    def ensure_exporter(self, spec: ExporterSpec | None) -> bool:
        changed = spec != self.exporter
        type(self).exporter = spec
        return changed

    def remove(self) -> None:
        self.calls.append(("remove", None))
        type(self).removed = True
        type(self).applied_state = Applied(None, None)
