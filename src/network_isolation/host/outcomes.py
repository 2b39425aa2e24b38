"""What the host package takes in (artefacts) and gives back: results, records and errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Protocol


class ArtefactsLike(Protocol):
    """What `Host` needs of `render.Artefacts`: the ruleset and the netplan file (or none)."""

    @property
    def nftables(self) -> str:
        """A ruleset that replaces our table (and nothing else) in one `nft -f` transaction."""
        ...

    @property
    def netplan(self) -> str | None:
        """Our netplan file's content; None when the machine needs no netplan file of ours."""
        ...


class Fingerprinted(Protocol):
    """What a fingerprint hashes: artefacts, or what is applied (None: nothing of ours)."""

    @property
    def nftables(self) -> str | None:
        """A ruleset, or None."""
        ...

    @property
    def netplan(self) -> str | None:
        """A netplan file's content, or None."""
        ...


def fingerprint(artefacts: Fingerprinted) -> str:
    """A stable hash of the artefacts, or of what is applied (64 hex digits)."""
    doc = json.dumps({"nftables": artefacts.nftables, "netplan": artefacts.netplan})
    return hashlib.sha256(doc.encode()).hexdigest()


class HostError(RuntimeError):
    """A host operation failed in a way that is not about the artefacts (removal, audit...)."""


class PortInUseError(HostError):
    """The exporter's port is taken by another process: the operator must choose another."""


class ApplyError(ValueError):
    """The artefacts were not applied; what is running is what ran before.

    `stage` says where it stopped: `validate-nftables`, `validate-netplan`, `validate-routing`,
    `rejected`, `arm`, `load`, `netplan-apply`, `probe`, `confirm`.
    """

    def __init__(self, message: str, *, stage: str):
        super().__init__(message)
        self.stage = stage


class InvalidArtefactsError(ApplyError):
    """Validation failed: nothing on the host changed."""


class RolledBackError(ApplyError):
    """Applied, then failed (load, netplan apply, probe): the previous state was restored.

    The artefacts are remembered as rejected and not tried again until they change (or a
    forced apply).
    """


class RejectedError(ApplyError):
    """The same artefacts failed before; not tried again until the inputs change."""


@dataclass(frozen=True)
class ApplyResult:
    """What `Host.apply` did."""

    changed: bool
    netplan_applied: bool = False
    message: str = "unchanged"
    skipped_targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class RejectedRecord:
    """Artefacts that failed after being applied, and why."""

    fingerprint: str
    stage: str
    reason: str


@dataclass(frozen=True)
class Applied:
    """What is applied now, as recorded on the host (None: nothing of ours)."""

    nftables: str | None
    netplan: str | None
