"""The exporter's metrics from a host view: parsing our counters, the plan, the history.

And its server, on 127.0.0.1 in a thread of the test with a faked host: silent and half-sent
requests neither hold up a scrape nor add threads, concurrent scrapes share one reading of the
host, and only `GET /metrics` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from network_isolation.host import Applied, HostError, RejectedRecord, fingerprint
from network_isolation.host.metrics import (
    CACHE_TTL,
    MAX_CONNECTIONS,
    Limits,
    MetricsServer,
    ReadingCache,
    ReadingError,
    drop_labels,
    listening_socket,
    read,
    registry_for,
)
from network_isolation.observed import (
    HISTORY_FILE,
    PLAN_SUMMARY_FILE,
    ApplyHistory,
    PlanSummary,
)
from tests.plan_summaries import plan_summary

RULESET = "table inet network_isolation {}\n"


@dataclass(frozen=True)
class _Artefacts:
    nftables: str
    netplan: str | None


@dataclass
class FakeHost:
    """A host view whose answers the test sets."""

    state: Path
    counters_seen: dict[str, dict[str, int]] = field(default_factory=lambda: {})
    counters_fail: bool = False
    drift_seen: str | None = None
    applied_seen: Applied = Applied(RULESET, None)
    rejected_seen: RejectedRecord | None = None

    def counters(self) -> dict[str, dict[str, int]]:
        if self.counters_fail:
            raise HostError("nft -j list table: permission denied")
        return self.counters_seen

    def drift(self) -> str | None:
        return self.drift_seen

    def applied(self) -> Applied:
        return self.applied_seen

    def rejected(self) -> RejectedRecord | None:
        return self.rejected_seen


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(host: FakeHost) -> Samples:
    text = generate_latest(registry_for(host)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def summary(**changes: object) -> PlanSummary:
    base = plan_summary(
        networks={"management": True, "storage": True, "storage-cluster": False},
        wanted=fingerprint(_Artefacts(RULESET, None)),
    )
    return base.model_copy(update=changes)


def write(host: FakeHost, plan: PlanSummary | None = None, history: ApplyHistory | None = None):
    host.state.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        (host.state / PLAN_SUMMARY_FILE).write_text(plan.model_dump_json())
    if history is not None:
        (host.state / HISTORY_FILE).write_text(history.model_dump_json())


@pytest.mark.parametrize(
    ("counter", "labels"),
    [
        ("drop_in_storage_cluster", ("storage-cluster", "in")),
        ("drop_out_public", ("public", "out")),
        ("drop_fwd_storage", ("storage", "fwd")),
        ("drop_in_invalid", ("ct-invalid", "in")),
        ("drop_fwd_misdirected", ("misdirected", "fwd")),
        ("drop_in_nowhere", None),
        ("accept_in_storage", None),
        ("a rule's comment", None),
    ],
)
def test_drop_counter_names_map_to_network_and_direction(
    counter: str, labels: tuple[str, str] | None
) -> None:
    assert drop_labels(counter) == labels


def test_drop_counters_become_counters_per_network_and_direction(tmp_path: Path) -> None:
    host = FakeHost(
        tmp_path,
        counters_seen={
            "drop_in_storage_cluster": {"packets": 7, "bytes": 420},
            "drop_out_storage_cluster": {"packets": 2, "bytes": 120},
            "drop_in_invalid": {"packets": 1, "bytes": 40},
            "some comment": {"packets": 99, "bytes": 99},
        },
    )
    samples = scrape(host)
    packets = {
        k[1]: v for k, v in samples.items() if k[0] == "network_isolation_dropped_packets_total"
    }
    assert packets == {
        (("direction", "in"), ("network", "storage-cluster")): 7,
        (("direction", "out"), ("network", "storage-cluster")): 2,
        (("direction", "in"), ("network", "ct-invalid")): 1,
    }
    assert (
        samples[
            (
                "network_isolation_dropped_bytes_total",
                (("direction", "in"), ("network", "storage-cluster")),
            )
        ]
        == 420
    )
    assert samples[("network_isolation_table_present", ())] == 1


def test_no_counters_means_no_table(tmp_path: Path) -> None:
    samples = scrape(FakeHost(tmp_path))
    assert samples[("network_isolation_table_present", ())] == 0
    assert samples[("network_isolation_scrape_errors", ())] == 0


def test_a_failing_read_is_counted_not_raised(tmp_path: Path) -> None:
    samples = scrape(FakeHost(tmp_path, counters_fail=True))
    assert samples[("network_isolation_scrape_errors", ())] == 1


def test_plan_summary_gives_mode_isolation_access_and_planned(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    write(host, summary(enforcement="audit"))
    samples = scrape(host)
    modes = {
        k[1][0][1]: v for k, v in samples.items() if k[0] == "network_isolation_enforcement_mode"
    }
    assert modes == {"enforce": 0, "audit": 1, "off": 0}
    levels = {
        k[1][0][1]: v for k, v in samples.items() if k[0] == "network_isolation_isolation_level"
    }
    assert levels == {"none": 0, "partial": 0, "maximum": 1}
    assert samples[("network_isolation_network_allowed", (("network", "storage"),))] == 1
    assert samples[("network_isolation_network_allowed", (("network", "storage-cluster"),))] == 0
    assert samples[("network_isolation_network_allowed", (("network", "data"),))] == 0
    assert samples[("network_isolation_ruleset_planned", ())] == 1
    assert samples[("network_isolation_isolation_domains", ())] == 6
    assert samples[("network_isolation_plan_blocked", ())] == 0
    write(host, summary(status="blocked"))
    assert scrape(host)[("network_isolation_plan_blocked", ())] == 1


def test_applied_differs_from_planned(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, applied_seen=Applied(RULESET + "# older\n", None))
    write(host, summary())
    assert scrape(host)[("network_isolation_ruleset_planned", ())] == 0
    host.applied_seen = Applied(None, None)
    assert scrape(host)[("network_isolation_ruleset_planned", ())] == 0
    host.applied_seen = Applied(RULESET, "network: {}\n")  # our netplan file counts too
    assert scrape(host)[("network_isolation_ruleset_planned", ())] == 0


def test_without_a_summary_there_are_no_plan_metrics(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    write(host)
    (tmp_path / PLAN_SUMMARY_FILE).write_text("{not json")
    names = {name for name, _ in scrape(host)}
    assert "network_isolation_enforcement_mode" not in names
    assert "network_isolation_table_present" in names


def test_history_drift_and_held_back_changes(tmp_path: Path) -> None:
    history = ApplyHistory().applied(1_700_000_000.5).rolled_back().rolled_back()
    host = FakeHost(
        tmp_path,
        drift_seen="table inet network_isolation is missing",
        rejected_seen=RejectedRecord("f" * 64, "probe", "unreachable"),
    )
    write(host, history=history)
    samples = scrape(host)
    assert samples[("network_isolation_last_apply_timestamp_seconds", ())] == 1_700_000_000.5
    assert samples[("network_isolation_rollbacks_total", ())] == 2
    assert samples[("network_isolation_drift", ())] == 1
    assert samples[("network_isolation_change_held_back", ())] == 1


def test_nothing_applied_yet_has_no_last_apply(tmp_path: Path) -> None:
    reading = read(FakeHost(tmp_path))
    assert reading.history == ApplyHistory()
    names = {name for name, _ in scrape(FakeHost(tmp_path))}
    assert "network_isolation_last_apply_timestamp_seconds" not in names
    assert "network_isolation_rollbacks_total" in names


# -- the cache and the server ------------------------------------------------------------------

READING_THREAD = "network-isolation-reading"


@dataclass
class CountingHost(FakeHost):
    """A host whose counters take `delay` (or wait for `gate`) and count their readings."""

    delay: float = 0.0
    gate: threading.Event | None = None
    readings: int = 0
    drift_readings: int = 0
    most_reading_threads: int = 0

    def counters(self) -> dict[str, dict[str, int]]:
        self.readings += 1
        threads = sum(t.name == READING_THREAD for t in threading.enumerate())
        self.most_reading_threads = max(self.most_reading_threads, threads)
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.delay)
        return super().counters()

    def drift(self) -> str | None:
        self.drift_readings += 1
        return super().drift()


@contextlib.contextmanager
def serving(host: FakeHost, limits: Limits | None = None, ttl: float = CACHE_TTL) -> Iterator[int]:
    """The exporter's server on 127.0.0.1 and a free port, in a thread; its port."""
    sock = listening_socket("127.0.0.1", 0)
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    started = threading.Event()

    async def serve() -> None:
        stop = asyncio.Event()
        running.append((asyncio.get_running_loop(), stop))
        started.set()
        await MetricsServer(ReadingCache(host, ttl), limits).serve(sock, stop)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="exporter-under-test")
    thread.start()
    try:
        assert started.wait(5)
        port = sock.getsockname()[1]
        assert raw(port, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")  # accepting
        yield port
    finally:
        for loop, stop in running:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


def get(port: int, path: str = "/metrics", method: str = "GET", **headers: str):
    """(status, headers, body) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw(port: int, request: bytes) -> bytes:
    """What the server answers to these bytes, up to its closing the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        chunks: list[bytes] = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def idle_connections(port: int, count: int) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


def still_open(sockets: list[socket.socket]) -> int:
    """How many of the client's sockets the server has neither closed nor reset."""
    count = 0
    for client in sockets:
        client.setblocking(False)
        try:
            if client.recv(1):
                count += 1  # an answer: open until read to the end (never to a silent client)
        except BlockingIOError:
            count += 1
        except OSError:
            pass  # reset by the server
    return count


def test_the_cache_reads_the_host_once_per_ttl(tmp_path: Path) -> None:
    now = [100.0]
    host = CountingHost(tmp_path, counters_seen={"drop_in_storage": {"packets": 1, "bytes": 2}})
    cache = ReadingCache(host, ttl=1.0, clock=lambda: now[0])
    assert cache.fresh() is None
    first = cache.get()
    now[0] += 0.9
    assert cache.get() is first and cache.fresh() is first
    assert host.readings == 1
    now[0] += 0.1
    assert cache.fresh() is None
    assert cache.get() is not first
    assert host.readings == 2


class BrokenHost(CountingHost):
    """A host whose reading raises something `read` does not expect."""

    def applied(self) -> Applied:
        raise RuntimeError("unreadable")


def test_a_failing_reading_is_remembered_for_the_ttl_too(tmp_path: Path) -> None:
    now = [0.0]
    host = BrokenHost(tmp_path)
    cache = ReadingCache(host, ttl=1.0, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(ReadingError, match="unreadable"):
            cache.get()
    assert host.readings == 1
    now[0] += 1.0
    with pytest.raises(ReadingError):
        cache.get()
    assert host.readings == 2


def test_the_server_answers_what_prometheus_client_formats(tmp_path: Path) -> None:
    host = CountingHost(tmp_path, counters_seen={"drop_in_storage": {"packets": 7, "bytes": 9}})
    write(host, summary(), ApplyHistory().applied(1_700_000_000.0))
    with serving(host) as port:
        status, headers, body = get(port)
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert body == generate_latest(registry_for(host))
        status, headers, body = get(
            port,
            Accept="application/openmetrics-text; version=1.0.0",
            **{"Accept-Encoding": "gzip"},
        )
        assert status == 200
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert headers["Content-Encoding"] == "gzip"


def test_a_failing_reading_answers_500_once_read_per_ttl(tmp_path: Path) -> None:
    host = BrokenHost(tmp_path)
    with serving(host) as port:
        assert [get(port)[0] for _ in range(3)] == [500, 500, 500]
    assert host.readings == 1


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"GET /metrics/x HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"HEAD /metrics HTTP/1.0\r\n\r\n", b"405"),
        (b"hello\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n", b"431"),
    ],
)
def test_only_get_metrics_reads_the_host(tmp_path: Path, request_bytes: bytes, status: bytes):
    host = CountingHost(tmp_path)
    with serving(host) as port:
        answer = raw(port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert host.readings == 0


def test_concurrent_scrapes_within_the_ttl_share_one_reading(tmp_path: Path) -> None:
    """32 scrapes at once while the host is read (0.3 s): one reading, one pair of nft runs."""
    host = CountingHost(
        tmp_path, counters_seen={"drop_in_storage": {"packets": 3, "bytes": 4}}, delay=0.3
    )
    scrapes = 32
    with serving(host, ttl=2.0) as port, ThreadPoolExecutor(scrapes) as clients:
        started = time.perf_counter()
        answers = list(clients.map(lambda _: get(port), range(scrapes)))
        took = time.perf_counter() - started
        assert {status for status, _, _ in answers} == {200}
        assert len({body for _, _, body in answers}) == 1
        assert (host.readings, host.drift_readings) == (1, 1)
        assert host.most_reading_threads == 1
        print(f"exporter: {scrapes} concurrent scrapes, {host.readings} reading, {took:.2f} s")
        time.sleep(2.0)  # the reading has aged past the TTL: the next scrape reads again
        assert get(port)[0] == 200
        assert host.readings == 2


def test_idle_and_half_sent_requests_neither_hold_up_a_scrape_nor_add_threads(tmp_path: Path):
    """200 silent connections and 20 half-sent requests: a scrape answers at once, no thread.

    The server keeps at most MAX_CONNECTIONS of them open, and closes the rest when their
    request head is late (2 s here).
    """
    host = CountingHost(tmp_path, counters_seen={"drop_in_storage": {"packets": 3, "bytes": 4}})
    head_timeout = 2.0
    threads_before = threading.active_count()
    with serving(host, Limits(request_head_timeout=head_timeout), ttl=0) as port:
        threads_serving = threading.active_count()
        with contextlib.ExitStack() as stack:
            connecting = time.perf_counter()
            idle = idle_connections(port, 200)
            half = idle_connections(port, 20)
            connected = time.perf_counter() - connecting
            for client in idle + half:
                stack.callback(client.close)
            for client in half:
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            time.sleep(0.2)
            threads_loaded = threading.active_count()
            held = still_open(idle + half)
            started = time.perf_counter()
            status, _, body = get(port)
            took = time.perf_counter() - started
            assert status == 200 and b"network_isolation_table_present 1.0" in body
            assert took < 2.0
            assert threads_loaded == threads_serving == threads_before + 1  # the loop's thread
            assert held <= MAX_CONNECTIONS
            deadline = time.monotonic() + head_timeout + 2.0
            while still_open(idle + half) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert still_open(idle + half) == 0
            print(
                f"exporter: 220 idle or half-sent connections (made in {connected:.2f} s);"
                f" threads {threads_before}"
                f" -> {threads_loaded} (the server's loop: 1); {held} held open"
                f" (at most {MAX_CONNECTIONS}); a scrape took {took * 1000:.1f} ms"
            )
    assert threading.active_count() == threads_before


def test_a_full_server_refuses_a_new_connection_at_once(tmp_path: Path) -> None:
    """Every connection being answered (the host is slow): a new one is closed, not queued."""
    gate = threading.Event()
    host = CountingHost(tmp_path, gate=gate)
    with serving(host, Limits(max_connections=2)) as port, ThreadPoolExecutor(2) as clients:
        answers = [clients.submit(get, port) for _ in range(2)]
        deadline = time.monotonic() + 5
        while host.readings == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # both requests are in
        with socket.create_connection(("127.0.0.1", port), timeout=2) as third:
            started = time.perf_counter()
            with contextlib.suppress(ConnectionResetError):
                assert third.recv(1) == b""
            assert time.perf_counter() - started < 1.0
        gate.set()
        assert [a.result(10)[0] for a in answers] == [200, 200]
    assert host.readings == 1
