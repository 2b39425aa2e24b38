"""The machine's first enforcement: from its audit form to its enforcing form, confirmed.

A machine that has never enforced loads its audit form first and its enforcing form only when
the rolling apply reaches it. Until the roll confirms that enforcement, the state directory
keeps `first-enforcement.json`: when the audit form loaded, and once the enforcing form
replaced it, the audit form's counters at that moment and when the enforcing form loaded. The
canary's counter rule compares those with the enforcing form's own counters. The record is
per machine, like the table: the units that share a machine agree on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pydantic

from ..first_deployment import FirstEnforcement
from .system import read_text, write_atomically

RECORD_NAME = "first-enforcement.json"


class FirstEnforcementRecord:
    """`first-enforcement.json` in the state directory."""

    def __init__(self, state: Path):
        self.path = state / RECORD_NAME

    def read(self) -> FirstEnforcement | None:
        """The record; None when there is none (or it cannot be read: start again)."""
        text = read_text(self.path)
        if text is None:
            return None
        try:
            return FirstEnforcement.model_validate_json(text)
        except pydantic.ValidationError:
            return None

    def write(self, record: FirstEnforcement) -> None:
        """Keep the record for the next hook."""
        write_atomically(self.path, record.model_dump_json(), 0o600)

    def remove(self) -> None:
        """The first enforcement is confirmed: nothing more to keep."""
        self.path.unlink(missing_ok=True)

    def begin_audit(self, now: float) -> None:
        """The audit form is being loaded: a new audit starts unless one is running."""
        record = self.read()
        if record is None or record.enforcing_since is not None:
            self.write(FirstEnforcement(audit_since=now))

    def before_enforcing(
        self, now: float, counters: Callable[[], Mapping[str, Mapping[str, int]]]
    ) -> None:
        """The enforcing form is about to be loaded: keep the audit form's `counters`.

        An enforcing form replacing another one (the plan changed meanwhile) restarts the
        window, since loading resets the counters, and keeps the audit form's figures.
        """
        record = self.read() or FirstEnforcement(audit_since=now)
        if record.enforcing_since is not None:
            self.write(record.model_copy(update={"enforcing_since": now}))
            return
        packets = {name: int(c.get("packets", 0)) for name, c in counters().items()}
        self.write(
            record.model_copy(
                update={
                    "enforcing_since": now,
                    "audit_packets": packets,
                    "audit_seconds": max(0.0, now - record.audit_since),
                }
            )
        )
