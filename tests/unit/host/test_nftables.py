"""Our nftables table: checks, load errors, drift and counters.

Driven through the fake machine of `host_fakes`; expected values are written out here,
never taken from the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from host_fakes import NFT, OFF, REMOVAL, A, Art, B, FakeMachine, ruleset, tree

from network_isolation import host as host_module
from network_isolation.host import Host, HostError, InvalidArtefactsError, first_error

# -- validation failures: nothing changes ------------------------------------------------------


def test_a_ruleset_nft_rejects_changes_nothing(host: Host, machine: FakeMachine, root: Path):
    host.apply(A)
    before = tree(root)
    machine.calls.clear()
    machine.fail(
        NFT, "-c", stderr="{arg}:3:1-4: Error: syntax error, unexpected junk\njunk\n^^^^\n"
    )

    with pytest.raises(InvalidArtefactsError) as raised:
        host.apply(B)

    assert raised.value.stage == "validate-nftables"
    assert str(raised.value) == (
        "nftables ruleset rejected: ruleset.nft:3:1-4: Error: syntax error, unexpected junk"
    )
    assert machine.commands() == [f"{NFT} -c -f TMP"]
    assert tree(root) == before
    assert machine.table == A.nftables


def test_tool_paths_in_errors_name_the_file_not_the_temporary_directory():
    line = first_error(
        "** WARNING **: Permissions for /tmp/x/etc/netplan/50.yaml are too open\n"
        "/tmp/x/etc/netplan/90-network-isolation.yaml:5:21: Error in network definition: "
        "invalid IP family '-1'\n      routes: [{to: x}]\n",
        strip=["/tmp/x"],
    )
    assert line == (
        "/etc/netplan/90-network-isolation.yaml:5:21: Error in network definition: "
        "invalid IP family '-1'"
    )


# -- audit: drift and counters -----------------------------------------------------------------


def test_drift(host: Host, machine: FakeMachine):
    assert host.drift() is None
    assert machine.calls == []  # nothing applied yet: nothing to compare, no command
    host.apply(A)
    machine.calls.clear()
    assert host.drift() is None
    assert machine.commands() == [f"{NFT} -s list table inet network_isolation"]
    machine.table = ruleset(4444)
    assert host.drift() == "table inet network_isolation differs from the applied ruleset"
    machine.table = None
    assert host.drift() == "table inet network_isolation is missing"
    host.apply(A, force=True)
    assert host.drift() is None


def test_drift_when_enforcement_is_off_but_our_table_is_back(host: Host, machine: FakeMachine):
    host.apply(OFF)
    machine.table = A.nftables
    assert host.drift() == "table inet network_isolation exists but enforcement is off"


def test_nft_errors_other_than_a_missing_table_are_host_errors(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.fail(NFT, "-s", stderr="Error: Operation not permitted")
    with pytest.raises(HostError, match="Operation not permitted"):
        host.drift()


NFT_JSON = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "network_isolation", "handle": 4}},
        {"counter": {"family": "inet", "name": "data_in_drop", "table": "network_isolation",
                     "handle": 2, "packets": 7, "bytes": 420}},
        {"chain": {"family": "inet", "table": "network_isolation", "name": "input"}},
        {"rule": {"chain": "input", "expr": [{"counter": "data_in_drop"}, {"drop": None}]}},
        {"rule": {"chain": "input", "comment": "storage out", "expr": [
            {"counter": {"packets": 3, "bytes": 180}}, {"drop": None}]}},
        {"rule": {"chain": "output", "comment": "storage out", "expr": [
            {"counter": {"packets": 1, "bytes": 60}}, {"accept": None}]}},
        {"rule": {"chain": "output", "expr": [{"counter": {"packets": 9, "bytes": 9}}]}},
    ]
}  # fmt: skip


def test_counters(host: Host, machine: FakeMachine):
    assert host.counters() == {}  # no table
    host.apply(A)
    machine.json_listing = json.dumps(NFT_JSON)
    assert host.counters() == {
        "data_in_drop": {"packets": 7, "bytes": 420},
        "storage out": {"packets": 4, "bytes": 240},
    }
    machine.json_listing = "not json"
    with pytest.raises(HostError, match="unreadable"):
        host.counters()


def test_counters_report_nft_errors(host: Host, machine: FakeMachine):
    host.apply(A)
    machine.fail(NFT, "-j", stderr="Error: Operation not permitted")
    with pytest.raises(HostError, match="nft -j list table: Error: Operation not permitted"):
        host.counters()


@pytest.mark.parametrize(
    "extra",
    [
        "flush ruleset",
        "table inet lxd {\n}",
        "delete table ip filter",
        'include "/etc/nftables.conf"',
        "add rule inet network_isolation_other input drop",
    ],
)
def test_a_ruleset_that_reaches_beyond_our_table_is_refused(
    host: Host, machine: FakeMachine, extra: str
):
    with pytest.raises(InvalidArtefactsError, match="reaches beyond table inet network_isolation"):
        host.apply(Art(A.nftables + extra + "\n", None))
    assert machine.calls == []


def test_statements_on_our_table_are_accepted(host: Host):
    extra = "add element inet network_isolation blocked { 192.0.2.1 }\n# a comment\n"
    assert host.apply(Art(A.nftables + extra, None)).changed


def test_names_match_the_renderer():
    render = pytest.importorskip("network_isolation.render")
    assert (render.TABLE_FAMILY, render.TABLE_NAME) == ("inet", "network_isolation")
    assert render.NETPLAN_FILE_NAME == host_module.NETPLAN_FILE_NAME
    assert host_module.REMOVAL_RULESET == REMOVAL
