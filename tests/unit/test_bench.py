"""The benchmark's pure helpers (tools/bench/): cloud generation, counting, a tiny run.

No timing is asserted: the benchmark measures, it does not test.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from network_isolation.model import NETWORKS, Network
from network_isolation.peers import MachineRecord, parse_record
from tools import bench

MIN_PREFIX = {4: 16, 6: 48}


def test_machines_of_a_rack_share_one_subnet_per_network():
    first, last, next_rack = (bench.machine_address(Network.INTERNAL, u) for u in (0, 19, 20))
    assert first.network == last.network
    assert next_rack.network != first.network
    assert first.ip != last.ip
    subnets = {bench.rack_subnet(net, 7) for net in NETWORKS}
    assert len(subnets) == len(NETWORKS), "networks never share a subnet"
    assert all(not a.overlaps(b) for a in subnets for b in subnets if a != b)


def test_the_address_plan_refuses_racks_it_cannot_number():
    with pytest.raises(ValueError):
        bench.rack_subnet(Network.DATA, 16 * 256)


def test_a_rack_has_compute_storage_and_control_nodes():
    roles = Counter(bench.role_of(u) for u in range(bench.RACK_SIZE))
    assert roles == {"compute": 14, "storage": 3, "control": 3}


def test_peer_databags_hold_records_the_charm_accepts():
    bag = bench.peer_databag(42)
    record = parse_record(bag["machine"], MIN_PREFIX)
    assert record == bench.machine_record(42)
    assert isinstance(record, MachineRecord)
    assert record.machine == "machine-42"
    assert set(record.subnets) == set(NETWORKS)
    assert ipaddress.ip_address(bag["private-address"]) in record.subnets[Network.MANAGEMENT][0]


def test_the_cloud_view_has_one_subnet_per_rack_per_network():
    view = bench.cloud_view(45)  # units 0-45: racks 0, 1 and 2
    assert view.machines == 46
    assert all(len(view.subnets_of(net)) == 3 for net in NETWORKS)
    assert len(bench.cloud_view(45, extra_racks=1).subnets_of(Network.DATA)) == 4


def test_rules_and_set_elements_are_counted_from_the_nft_text():
    text = """\
table inet t {
\tset s {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = {
\t\t\t10.0.0.0/24,
\t\t\t10.0.1.0/24
\t\t}
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\t# a comment
\t\tct state established,related accept
\t\tip saddr @s accept
\t}
}
"""
    assert bench.count_rules(text) == 2
    assert bench.count_elements(text) == 2
    assert bench.count_rules(bench.naive_ruleset(3)) == 4  # conntrack + one per peer


class _Backend:
    def is_leader(self) -> bool:
        return True

    def relation_list(self, relation_id: int) -> tuple[str, ...]:
        self.relation_remote_app_name(relation_id)  # nested: not a hook tool of its own
        return ("app/1",)

    def relation_remote_app_name(self, relation_id: int) -> str:
        return "app"


def test_the_counter_counts_outermost_calls_and_one_is_leader_per_hook():
    counter = bench.HookToolCounter()
    original = _Backend.relation_list
    with counter.installed(_Backend):
        backend = _Backend()
        backend.is_leader()
        backend.is_leader()
        backend.relation_list(1)
        backend.relation_remote_app_name(1)
        assert counter.calls == {"is-leader": 1, "relation-list": 1, "relation-list --app": 1}
        counter.reset()
        backend.is_leader()
        assert counter.total == 1
    assert _Backend.relation_list is original
    assert "is_leader" in _Backend.__dict__


def test_a_tiny_run_counts_calls_and_writes():
    harness = bench.Harness(bench.load_fake_host(), bench.HookToolCounter())
    with harness.installed():
        small = bench.reconcile(harness, 1, runs=1)
        large = bench.reconcile(harness, 3, runs=1)
    for row in (small, large):
        assert row.leader.noop.last.writes == 0
        assert row.follower.noop.last.writes == 0
        assert row.leader.changed.last.applies == 1
        assert row.follower.changed.last.applies == 1
        assert row.rules == bench.count_rules(row.follower.ruleset) > 0
    assert small.follower.noop.last.calls == large.follower.noop.last.calls
    # The leader reads only the peer whose change woke it: none on a config hook.
    grown = large.leader.noop.last.calls - small.leader.noop.last.calls
    assert grown == {}
    lines = bench.report(bench.Results(rows=[small, large]), {"cpus": "2"})
    assert any(line.startswith("- PASS: unchanged-input hook does zero writes") for line in lines)
