"""The record of a machine's first enforcement, from its audit form to its confirmation."""

from __future__ import annotations

import json
from pathlib import Path

from host_fakes import A, FakeMachine

from network_isolation.host import Host
from network_isolation.host.first_enforcement import RECORD_NAME

COUNTERS = {
    "nftables": [
        {"counter": {"family": "inet", "name": "drop_in_storage", "table": "network_isolation",
                     "handle": 2, "packets": 12, "bytes": 720}},
        {"counter": {"family": "inet", "name": "drop_in_internal", "table": "network_isolation",
                     "handle": 3, "packets": 40, "bytes": 2400}},
    ]
}  # fmt: skip


def test_a_machine_with_nothing_applied_has_never_enforced(host: Host):
    assert host.never_enforced() and host.first_enforcement() is None


def test_a_machine_that_enforced_before_this_record_existed_is_not_held_back(host: Host):
    host.apply(A)
    assert not host.never_enforced()


def test_audit_then_enforcing_keeps_the_audit_counters_until_confirmed(
    host: Host, machine: FakeMachine, root: Path
):
    host.begin_audit(now=1000.0)
    host.apply(A)
    assert host.never_enforced()
    host.begin_audit(now=1300.0)  # a later audit apply of the same first enforcement
    first = host.first_enforcement()
    assert first is not None and first.audit_since == 1000.0
    machine.json_listing = json.dumps(COUNTERS)
    host.before_enforcing(now=1600.0)
    record = host.first_enforcement()
    assert record is not None
    assert record.audit_packets == {"drop_in_storage": 12, "drop_in_internal": 40}
    assert (record.audit_seconds, record.enforcing_since) == (600.0, 1600.0)
    assert oct(next(root.rglob(RECORD_NAME)).stat().st_mode & 0o777) == "0o600"
    machine.json_listing = json.dumps({"nftables": []})  # the enforcing form, reloaded
    host.before_enforcing(now=1700.0)
    again = host.first_enforcement()
    assert again is not None and again.enforcing_since == 1700.0
    assert (again.audit_packets, again.audit_seconds) == (record.audit_packets, 600.0)
    host.confirm_enforcement()
    assert not host.never_enforced() and host.first_enforcement() is None


def test_back_to_audit_after_a_halt_starts_a_new_audit(host: Host, machine: FakeMachine):
    host.begin_audit(now=1000.0)
    host.apply(A)
    machine.json_listing = json.dumps(COUNTERS)
    host.before_enforcing(now=1600.0)
    host.begin_audit(now=2000.0)
    record = host.first_enforcement()
    assert record is not None and record.audit_since == 2000.0
    assert record.enforcing_since is None and record.audit_packets == {}


def test_an_unreadable_record_starts_again(host: Host, root: Path):
    host.begin_audit(now=5.0)
    path = next(root.rglob(RECORD_NAME))
    path.write_text("{not json")
    assert host.first_enforcement() is None
    host.begin_audit(now=9.0)
    record = host.first_enforcement()
    assert record is not None and record.audit_since == 9.0


def test_removal_takes_the_record_with_the_rest(host: Host, root: Path):
    host.begin_audit(now=5.0)
    host.apply(A)
    host.remove()
    assert not list(root.rglob(RECORD_NAME))
    assert not host.state.exists()
