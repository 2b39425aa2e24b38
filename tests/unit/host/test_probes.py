"""Probe targets, the TCP probe on loopback, the default gateways.

The probe runs against real sockets on loopback; expected values are written out here, never
taken from the code.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from host_fakes import RouteRunner

from network_isolation.host import Host, ProbeTarget, controller_targets, tcp_probe


def test_controller_targets_from_juju_api_addresses():
    assert controller_targets(
        "10.10.0.2:17070 10.10.0.3:17070,[fd00::2]:17070 10.10.0.2:17070"
    ) == [
        ProbeTarget("10.10.0.2", 17070, label="juju controller"),
        ProbeTarget("10.10.0.3", 17070, label="juju controller"),
        ProbeTarget("fd00::2", 17070, label="juju controller"),
    ]
    assert controller_targets(None) == []
    assert controller_targets("garbage :1 host:") == []
    assert str(ProbeTarget("fd00::2", 17070)) == "[fd00::2]:17070"


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_probe_on_loopback(listener: int):
    up = ProbeTarget("127.0.0.1", listener)
    down = ProbeTarget("127.0.0.1", closed_port())
    answers_with_reset = ProbeTarget("127.0.0.1", down.port, refused_ok=True)
    start = time.monotonic()
    failures = tcp_probe([up, down, answers_with_reset], 0.6, interval=0.1)
    took = time.monotonic() - start
    assert set(failures) == {down}
    assert "refused" in failures[down].lower()
    assert 0.4 < took < 1.5  # retried until the budget ran out, and no longer
    assert tcp_probe([], 10) == {}


def test_default_gateways_are_read_from_both_families(root: Path):
    runner = RouteRunner(
        '[{"dst":"default","gateway":"10.10.0.1","dev":"enp1s0"}]',
        '[{"dst":"default","gateway":"fd00:10::1","dev":"enp1s0"},{"dst":"default","dev":"x"}]',
    )
    assert Host(root, runner).default_gateways() == ["10.10.0.1", "fd00:10::1"]
    assert all(call[:3] == ["/sbin/ip", "-j", call[2]] for call in runner.calls)


@pytest.mark.parametrize("garbage", ["not json", '{"gateway": 1}', '[{"gateway": 5}]', "[1]"])
def test_default_gateways_ignore_what_they_cannot_read(root: Path, garbage: str):
    runner = RouteRunner(garbage, "", v6_rc=1)
    assert Host(root, runner).default_gateways() == []
