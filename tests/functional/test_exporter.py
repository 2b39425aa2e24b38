"""The exporter service against a real table in a namespace, scraped over the management network.

The bed is compute-1 of examples/microstack-maas.yaml in network namespaces (`machine.py`, the
charm's end-to-end bed): its NIC `enp1s0` at 10.10.0.21/24 on management, joined to a peer
namespace with a management neighbour (10.10.0.1) and storage-1's storage-cluster address
(10.60.0.31), a network compute-1 may not hear. The ruleset the planner renders for it is
loaded with the real nft.

The exporter runs as the service runs it (`python -m network_isolation.host.metrics`) inside the
machine's namespace, so it reads the table through the real `Host.counters()` there. A probe
from storage-cluster is dropped; a scrape (an HTTP client, then a real Prometheus when it is
installed) shows the drop counter grow to exactly what `Host.counters()` (`show-counters`)
reports. This machine's own ruleset is never touched: `machine_namespaces` checks it.

Its bounds, from the management network: 200 silent connections and 20 half-sent requests
neither hold up a scrape nor add a thread, and are closed when their request is late; a second
exporter, whose `nft` is a wrapper counting its runs (bound over the real one in a mount
namespace of its own), shows concurrent and back-to-back scrapes sharing one reading per second,
and stops at once on SIGTERM with connections open.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from network_isolation.host import Host, Result, fingerprint
from network_isolation.host.metrics import (
    CACHE_TTL,
    MAX_CONNECTIONS,
    REQUEST_HEAD_TIMEOUT,
    drop_labels,
)
from network_isolation.observed import HISTORY_FILE, PLAN_SUMMARY_FILE, ApplyHistory, PlanSummary
from network_isolation.planner import plan_machine
from network_isolation.render import render
from network_isolation.topology import load_topology

from .conftest import MAAS, ROOT, need, need_tool
from .machine import (
    GATEWAY_ADDRESS,
    IP,
    MACHINE,
    MACHINE_ADDRESS,
    MACHINE_NS,
    NFT,
    PEER_NS,
    SERVICE_PORT,
    STORAGE_CLUSTER_SOURCE,
    connects,
    machine_namespaces,
    nft_in,
)
from .netns import in_netns

NEIGHBOUR = GATEWAY_ADDRESS  # a scraper on the management network
DENIED_SOURCE = STORAGE_CLUSTER_SOURCE
METRICS_PORT, PROMETHEUS_PORT = 9479, 9090
COUNTED_PORT = 9480  # the exporter whose nft runs are counted
T = TypeVar("T")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class NetnsRunner:
    """`Host`'s runner with every command in the machine's namespace (what the service sees)."""

    def run(self, argv: Sequence[str]) -> Result:
        done = subprocess.run(
            [IP, "netns", "exec", MACHINE_NS, *argv], capture_output=True, text=True, check=False
        )
        return Result(done.returncode, done.stdout, done.stderr)


@dataclass
class Bed:
    state: Path
    host: Host  # show-counters' code, in the machine's namespace
    exporter: subprocess.Popen[str]


def load_planned_ruleset(state: Path) -> None:
    """compute-1's plan rendered and loaded; the state files the charm and Host keep.

    Without policy routing: the exporter's Host reads our netplan file from this machine's
    /etc/netplan, where there is none.
    """
    planned = load_topology(MAAS).plan_input(MACHINE)
    config = planned.config.model_copy(update={"manage_routing": False})
    plan = plan_machine(planned.model_copy(update={"config": config}))
    artefacts = render(plan)
    assert artefacts.netplan is None
    assert not Path("/etc/netplan/90-network-isolation.yaml").exists()
    state.mkdir(parents=True)
    table = Host(runner=NetnsRunner(), state=state).table
    table.pending_file.write_text(artefacts.nftables)
    nft_in(MACHINE_NS, "-f", str(table.pending_file))
    table.commit()  # ruleset.nft, and live.nft for the drift check, as a confirmed apply does
    (state / PLAN_SUMMARY_FILE).write_text(
        PlanSummary.of(plan, fingerprint(artefacts)).model_dump_json()
    )
    (state / HISTORY_FILE).write_text(ApplyHistory().applied(1_700_000_000.0).model_dump_json())


def wait_listening(exporter: subprocess.Popen[str], port: int = METRICS_PORT) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if exporter.poll() is not None:
            pytest.fail(f"the exporter exited {exporter.returncode}: {exporter.stderr}")
        if connects(NEIGHBOUR, port, 0.3):
            return
        time.sleep(0.1)
    pytest.fail(f"the exporter does not listen on {MACHINE_ADDRESS}:{port}")


def start_exporter(
    state: Path, port: int = METRICS_PORT, wrapper: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """The service's command, in the machine's namespace (behind `wrapper`, which execs it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "network_isolation.host.metrics",
               "--address", MACHINE_ADDRESS, "--port", str(port),
               "--state-dir", str(state)]  # fmt: skip
    return subprocess.Popen(
        [IP, "netns", "exec", MACHINE_NS, *wrapper, *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """One machine for the module's tests, in file order (the last one deletes the table)."""
    if os.geteuid() != 0:
        need("the exporter test needs root to create network namespaces (ip netns)")
    for tool in (NFT, IP):
        if not Path(tool).exists():
            need(f"missing {tool}: apt-get install nftables iproute2")
    base = tmp_path_factory.mktemp("exporter")
    with machine_namespaces(base):
        load_planned_ruleset(base / "state")
        exporter = start_exporter(base / "state")
        try:
            wait_listening(exporter)
            yield Bed(base / "state", Host(runner=NetnsRunner(), state=base / "state"), exporter)
        finally:
            exporter.terminate()
            exporter.communicate(timeout=10)


def get_metrics(port: int = METRICS_PORT) -> str:
    """GET /metrics of the exporter (from the namespace of the calling thread)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://{MACHINE_ADDRESS}:{port}/metrics"
    with opener.open(url, timeout=5) as response:
        return response.read().decode()


def scrape(port: int = METRICS_PORT) -> Samples:
    """GET /metrics from the peer namespace, as a scraper on management does."""
    text = in_netns(PEER_NS, lambda: get_metrics(port))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def drops(samples: Samples, network: str, what: str = "packets") -> float:
    key = (
        f"network_isolation_dropped_{what}_total",
        (("direction", "in"), ("network", network)),
    )
    return samples[key]


def test_scrape_shows_real_drops_as_show_counters_does(bed: Bed) -> None:
    before = scrape()
    assert before[("network_isolation_table_present", ())] == 1
    assert before[("network_isolation_ruleset_planned", ())] == 1
    assert before[("network_isolation_enforcement_mode", (("mode", "enforce"),))] == 1
    assert before[("network_isolation_network_allowed", (("network", "storage-cluster"),))] == 0
    assert before[("network_isolation_last_apply_timestamp_seconds", ())] == 1_700_000_000.0
    assert before[("network_isolation_drift", ())] == 0
    assert drops(before, "storage-cluster") == 0

    assert not connects(DENIED_SOURCE, SERVICE_PORT)  # dropped
    assert connects(NEIGHBOUR, SERVICE_PORT)  # management: accepted

    time.sleep(CACHE_TTL)  # the exporter shares a reading among the scrapes of a second
    after = scrape()
    counters = bed.host.counters()  # what show-counters answers
    assert drops(after, "storage-cluster") >= 1
    assert drops(after, "storage-cluster") == counters["drop_in_storage_cluster"]["packets"]
    assert drops(after, "storage-cluster", "bytes") == counters["drop_in_storage_cluster"]["bytes"]
    for name, counter in counters.items():
        found = drop_labels(name)
        assert found is not None, f"the exporter does not report {name}"
        network, direction = found
        key = (
            "network_isolation_dropped_packets_total",
            (("direction", direction), ("network", network)),
        )
        assert after[key] == counter["packets"], name


def test_scrape_duration_is_printed(bed: Bed) -> None:
    """What a scrape costs, reading the host (nft and state files) or not: printed."""
    reading = 0.0
    for _ in range(3):
        time.sleep(CACHE_TTL)
        started = time.perf_counter()
        assert scrape()[("network_isolation_table_present", ())] == 1
        reading += (time.perf_counter() - started) / 3
    started = time.perf_counter()
    for _ in range(20):
        assert scrape()[("network_isolation_table_present", ())] == 1
    cached = (time.perf_counter() - started) / 20
    print(
        f"exporter: a scrape of compute-1's table takes {reading * 1000:.1f} ms reading it,"
        f" {cached * 1000:.1f} ms within the {CACHE_TTL:g} s it is cached"
    )


def test_only_the_management_network_reaches_the_exporter(bed: Bed) -> None:
    assert connects(NEIGHBOUR, METRICS_PORT)
    assert not connects(DENIED_SOURCE, METRICS_PORT)
    # it listens on the management address only, not on every address of the machine
    assert not in_netns(MACHINE_NS, lambda: connects_locally("127.0.0.1", METRICS_PORT))


# compute-1's second NIC (internal), and a host on that segment that sends to the management
# address through it, as any host sharing a segment with the machine can.
OTHER_NIC, OTHER_ADDRESS = "enp2s0", "10.20.0.21"
STRAY_NS, STRAY_ADDRESS = f"ni-e2e-x-{os.getpid()}", "10.20.0.235"


@contextlib.contextmanager
def stray_on_internal() -> Iterator[None]:
    """compute-1's internal NIC joined to a namespace that routes the management address via it.

    Deleting the namespace removes the veth pair, the machine's enp2s0 with it.
    """
    sh_ip = [IP, "-n"]
    try:
        subprocess.run([IP, "netns", "add", STRAY_NS], check=True)
        subprocess.run(
            [IP, "-n", STRAY_NS, "link", "add", "eth0", "type", "veth",
             "peer", "name", OTHER_NIC, "netns", MACHINE_NS],
            check=True,
        )  # fmt: skip
        for namespace, device, address in (
            (MACHINE_NS, OTHER_NIC, OTHER_ADDRESS),
            (STRAY_NS, "eth0", STRAY_ADDRESS),
        ):
            subprocess.run(
                [*sh_ip, namespace, "addr", "add", f"{address}/24", "dev", device], check=True
            )
            subprocess.run([*sh_ip, namespace, "link", "set", device, "up"], check=True)
        subprocess.run([*sh_ip, STRAY_NS, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            [*sh_ip, STRAY_NS, "route", "add", f"{MACHINE_ADDRESS}/32", "via", OTHER_ADDRESS],
            check=True,
        )
        yield
    finally:
        subprocess.run([IP, "netns", "del", STRAY_NS], check=False)


def listening(address: str, port: int) -> socket.socket:
    """A listening TCP socket (the kernel completes handshakes without an accept)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(4)
    return server


def stray_connects(port: int, address: str = MACHINE_ADDRESS, timeout: float = 1.0) -> bool:
    """A TCP connection from the stray to the machine (by default its management address)."""

    def attempt() -> bool:
        with socket.socket() as client:
            client.settimeout(timeout)
            client.bind((STRAY_ADDRESS, 0))
            try:
                client.connect((address, port))
            except OSError:
                return False
            return True

    return in_netns(STRAY_NS, attempt)


def test_the_exporter_answers_on_management_only(bed: Bed) -> None:
    """Its management address through another network's NIC: dropped as misdirected.

    The stray is on internal, where compute-1 accepts its own subnet: only the destination's
    network and the NIC it comes in on tell this packet apart.
    """
    misdirected = bed.host.counters()["drop_in_misdirected"]["packets"]
    with stray_on_internal():
        # The link works: a listener on the same port of the machine's internal address
        # answers the stray (compute-1 accepts its internal subnet on its internal NIC).
        listener = in_netns(MACHINE_NS, lambda: listening(OTHER_ADDRESS, METRICS_PORT))
        with listener:
            assert stray_connects(METRICS_PORT, OTHER_ADDRESS)
        assert not stray_connects(METRICS_PORT)
        assert not stray_connects(SERVICE_PORT)
        assert connects(NEIGHBOUR, METRICS_PORT)  # from management: answered
        counted = bed.host.counters()["drop_in_misdirected"]["packets"]
    assert counted >= misdirected + 2
    print(
        f"exporter from internal through {OTHER_NIC}: no answer"
        f" ({counted - misdirected} packets counted as misdirected); from management: answered"
    )


def test_a_real_prometheus_scrapes_the_counters(bed: Bed, tmp_path: Path) -> None:
    prometheus = need_tool("prometheus", "prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ROOT / "src/prometheus_alert_rules/network_isolation.rules")],
                "scrape_configs": [
                    {
                        "job_name": "network_isolation_exporter",
                        "static_configs": [{"targets": [f"{MACHINE_ADDRESS}:{METRICS_PORT}"]}],
                    }
                ],
            }
        )
    )
    assert not connects(DENIED_SOURCE, SERVICE_PORT)
    expected = bed.host.counters()["drop_in_storage_cluster"]["packets"]
    server = subprocess.Popen(
        [
            IP,
            "netns",
            "exec",
            PEER_NS,
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={NEIGHBOUR}:{PROMETHEUS_PORT}",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        query = (
            'network_isolation_dropped_packets_total{network="storage-cluster", direction="in"}'
        )
        found = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and found is None:
            time.sleep(0.5)
            found = prometheus_value(query)
        assert found == expected
        assert prometheus_value('up{job="network_isolation_exporter"}') == 1
        rules = prometheus_api("rules")["data"]["groups"][0]["rules"]
        assert {r["name"] for r in rules} >= {"NetworkIsolationExporterDown"}
        assert all(r["health"] == "ok" for r in rules), rules
    finally:
        server.terminate()
        server.communicate(timeout=20)


def prometheus_api(path: str, **params: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://{NEIGHBOUR}:{PROMETHEUS_PORT}/api/v1/{path}{query}"
        with opener.open(url, timeout=5) as response:
            return json.loads(response.read())

    return in_netns(PEER_NS, get)


def prometheus_value(query: str) -> float | None:
    try:
        answer = prometheus_api("query", query=query)
    except urllib.error.HTTPError as e:  # up, not ready yet: its answer holds a socket
        e.close()
        return None
    except OSError:
        return None  # not up yet
    results = answer["data"]["result"]
    return float(results[0]["value"][1]) if results else None


def connects_locally(address: str, port: int) -> bool:
    """A TCP connect from inside the machine itself."""
    with socket.socket() as client:
        client.settimeout(0.5)
        try:
            client.connect((address, port))
        except OSError:
            return False
        return True


def process_status(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of a process."""
    threads = re.search(r"^Threads:\s+(\d+)$", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert threads is not None
    return int(threads.group(1)), len(os.listdir(f"/proc/{pid}/fd"))


def open_connections(port: int, count: int, request: bytes = b"") -> list[socket.socket]:
    """Connections from the neighbour that send `request` (a part of one) and then nothing."""

    def connect() -> list[socket.socket]:
        sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                client = socket.create_connection((MACHINE_ADDRESS, port), timeout=5)
                sockets.append(client)
                if request:
                    client.sendall(request)
        except BaseException:
            for client in sockets:
                client.close()
            raise
        return sockets

    return in_netns(PEER_NS, connect)


def still_open(sockets: list[socket.socket]) -> int:
    """How many of the client's sockets the exporter has neither closed nor reset."""
    count = 0
    for client in sockets:
        client.setblocking(False)
        try:
            count += bool(client.recv(1))  # b"": closed by the exporter
        except BlockingIOError:
            count += 1
        except OSError:
            pass  # reset by the exporter
    return count


def test_silent_and_half_sent_requests_neither_hold_up_a_scrape_nor_add_threads(bed: Bed):
    """200 silent connections and 20 half-sent requests from management, as a slow client's.

    A scrape still answers at once; the exporter keeps its one thread (two while it reads the
    host), holds at most MAX_CONNECTIONS of the connections open and closes them all when their
    request is REQUEST_HEAD_TIMEOUT late.
    """
    pid = bed.exporter.pid  # `ip netns exec` execs the exporter
    threads_before, fds_before = process_status(pid)
    with contextlib.ExitStack() as stack:
        connecting = time.perf_counter()
        clients = open_connections(METRICS_PORT, 200)
        stack.callback(lambda: [client.close() for client in clients])
        half = open_connections(METRICS_PORT, 20, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        stack.callback(lambda: [client.close() for client in half])
        connected = time.perf_counter() - connecting
        clients += half
        time.sleep(0.3)
        threads_loaded, fds_loaded = process_status(pid)
        held = still_open(clients)
        time.sleep(CACHE_TTL)
        started = time.perf_counter()
        assert scrape()[("network_isolation_table_present", ())] == 1  # a reading of the host
        took = time.perf_counter() - started
        threads_after, _ = process_status(pid)
        closing = time.perf_counter()
        while still_open(clients) and time.perf_counter() - closing < REQUEST_HEAD_TIMEOUT + 3:
            time.sleep(0.2)
        assert still_open(clients) == 0, "the exporter keeps silent connections open"
        closed_after = time.perf_counter() - connecting
    print(
        f"exporter: 220 silent or half-sent connections (made in {connected:.2f} s):"
        f" threads {threads_before} before, {threads_loaded} with them open, {threads_after}"
        f" after a scrape; {held} held open (at most {MAX_CONNECTIONS}), fds {fds_before} ->"
        f" {fds_loaded}; a scrape reading the host took {took * 1000:.0f} ms; all closed by"
        f" the exporter {closed_after:.1f} s after the first connected"
    )
    assert took < 2.0
    assert threads_loaded <= 2 and threads_after <= 2  # the loop, and one reading the host
    assert held <= MAX_CONNECTIONS
    assert fds_loaded <= fds_before + MAX_CONNECTIONS


# Bound over /usr/sbin/nft in the counted exporter's own mount namespace: it logs, then runs
# the real nft (bound beside it first).
NFT_COUNTER = """#!/bin/sh
echo "$*" >> {calls}
exec {real} "$@"
"""
BIND_NFT = (
    'mount --bind /usr/sbin/nft "$1" && mount --bind "$2" /usr/sbin/nft && shift 2 && exec "$@"'
)


@contextlib.contextmanager
def counted_exporter(state: Path, scratch: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A second exporter on COUNTED_PORT whose nft runs are logged; (process, the log)."""
    calls, real, counter = scratch / "nft-calls", scratch / "nft-real", scratch / "nft"
    real.touch()
    counter.write_text(NFT_COUNTER.format(calls=calls, real=real))
    counter.chmod(0o755)
    unshare = need_tool("unshare", "util-linux")
    wrapper = [unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", BIND_NFT,
               "sh", str(real), str(counter)]  # fmt: skip
    exporter = start_exporter(state, COUNTED_PORT, wrapper)
    try:
        wait_listening(exporter, COUNTED_PORT)
        yield exporter, calls
    finally:
        if exporter.poll() is None:
            exporter.terminate()
            exporter.communicate(timeout=10)


def concurrently(clients: int, work: Callable[[], T]) -> list[T]:
    """`work` by that many clients at once, from the peer namespace."""

    def run() -> list[T]:
        with ThreadPoolExecutor(clients) as pool:  # its threads start in the peer namespace
            return [f.result() for f in [pool.submit(work) for _ in range(clients)]]

    return in_netns(PEER_NS, run)


def nft_runs(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_concurrent_scrapes_share_one_reading_of_the_table(bed: Bed, tmp_path: Path) -> None:
    """32 scrapes at once: one reading (one pair of nft runs); back-to-back: one per second."""
    with counted_exporter(bed.state, tmp_path) as (exporter, calls):
        assert scrape(COUNTED_PORT)[("network_isolation_table_present", ())] == 1
        per_reading = nft_runs(calls)
        assert per_reading == 2  # counters, and the drift check's listing

        time.sleep(CACHE_TTL)
        scrapes = 32
        before = nft_runs(calls)
        texts = concurrently(scrapes, lambda: get_metrics(COUNTED_PORT))
        assert len(set(texts)) == 1
        concurrent = nft_runs(calls) - before

        time.sleep(CACHE_TTL)
        before, seconds = nft_runs(calls), 3.0

        def hammer() -> int:
            done, end = 0, time.monotonic() + seconds
            while time.monotonic() < end:
                get_metrics(COUNTED_PORT)
                done += 1
            return done

        hammered = sum(concurrently(8, hammer))
        back_to_back = nft_runs(calls) - before
        print(
            f"exporter: {per_reading} nft runs per reading; {scrapes} concurrent scrapes ran nft"
            f" {concurrent} times; {hammered} back-to-back scrapes in {seconds:g} s ran it"
            f" {back_to_back} times"
        )
        assert concurrent == per_reading
        assert back_to_back <= per_reading * (seconds / CACHE_TTL + 2)
        assert exporter.poll() is None


def test_sigterm_stops_the_exporter_at_once_with_connections_open(bed: Bed, tmp_path: Path):
    with counted_exporter(bed.state, tmp_path) as (exporter, _calls):
        clients = open_connections(COUNTED_PORT, 50)
        try:
            time.sleep(0.3)
            started = time.perf_counter()
            exporter.send_signal(signal.SIGTERM)
            _, stderr = exporter.communicate(timeout=10)
            took = time.perf_counter() - started
        finally:
            for client in clients:
                client.close()
    print(f"exporter: stopped {took * 1000:.0f} ms after SIGTERM, 50 connections open")
    assert exporter.returncode == 0, stderr
    assert took < 2.0


def test_a_missing_table_shows(bed: Bed) -> None:
    nft_in(MACHINE_NS, "delete", "table", "inet", "network_isolation")
    time.sleep(CACHE_TTL)
    samples = scrape()
    assert samples[("network_isolation_table_present", ())] == 0
    assert samples[("network_isolation_ruleset_planned", ())] == 1  # the files say so
    assert not any(name == "network_isolation_dropped_packets_total" for name, _ in samples)
