"""Prometheus metrics of this machine's isolation: drops, mode, plan, applies, drift.

Runs as a small service of its own (`python3 -m network_isolation.host.metrics`), which the charm
starts, enables and removes through the host module, listening on the machine's management
address only. A scrape reads the live table through `Host.counters()`, the code behind the
`show-counters` action, so both show the same numbers (read at most a second apart, see below);
the rest comes from the state files the charm and `Host` keep (see `observed`).

`read` gathers one scrape's inputs (commands and files), `families` turns them into metrics
(pure), `ReadingCache` shares one reading among the scrapes of a second, and `MetricsServer`
serves them; `main` runs it until SIGTERM.

Reading the host runs two `nft` processes as root, and the management network may hold a slow
or hostile client, so the server is bounded whatever its clients do. It is one asyncio event
loop (standard library) rather than a thread per connection (prometheus-client's
`start_http_server`) or a pool of blocking workers: a connection that sends nothing, or half a
request, costs a socket and a coroutine, never a thread, and cannot hold a worker a real scrape
is waiting for (a pool of N workers is held by N silent clients). Its bounds:

- a request's head must arrive within `REQUEST_HEAD_TIMEOUT` of the connection, and the answer
  must have left within `REQUEST_TIMEOUT`; otherwise the connection is dropped;
- at most `MAX_CONNECTIONS` connections are open: a new one closes the one that has waited
  longest for its request (a scraper sends its request as soon as it connects, so the silent
  ones go first), or is itself closed at once when every open one is being answered; the
  listen backlog is `LISTEN_BACKLOG`, a request's head at most `MAX_REQUEST_HEAD` bytes;
- the host is read by one thread at a time, at most once per `CACHE_TTL`: concurrent and
  back-to-back scrapes share one reading (one pair of `nft` runs);
- threads: the loop's, and at most one reading the host (a daemon, so that SIGTERM stops the
  service at once even while an `nft` hangs).

The exposition format stays prometheus-client's: each answer is its WSGI app's, called with the
cached metrics, so content negotiation (text or OpenMetrics) and gzip are as before.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, get_args
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..base import Enforcement
from ..model import MISDIRECTED, NETWORK_NAMES, IsolationLevel
from ..observed import HISTORY_FILE, PLAN_SUMMARY_FILE, ApplyHistory, PlanSummary, load_record
from . import Applied, Host, HostError, RejectedRecord, fingerprint, state_dir

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9479
METRICS_PATH = "/metrics"
# The server's bounds (see the module's docstring).
REQUEST_HEAD_TIMEOUT = 5.0  # seconds from the connection to the end of the request's head
REQUEST_TIMEOUT = 10.0  # seconds from the connection to the answer's last byte
MAX_CONNECTIONS = 64
LISTEN_BACKLOG = 128
MAX_REQUEST_HEAD = 8192  # bytes: the request line and headers
# A Prometheus scrapes every 15 s or more: a second's staleness costs it nothing.
CACHE_TTL = 1.0
ENFORCEMENT_MODES: tuple[str, ...] = get_args(Enforcement)
# Counter names in our table: drop_in_storage_cluster, drop_out_public, drop_fwd_public (the
# forward hook), drop_in_invalid.
_DROP_COUNTER = re.compile(r"^drop_(in|out|fwd)_(\w+)$")
# The label of the connection-tracking `invalid` drop, as the audit log prefix names it.
CT_INVALID = "ct-invalid"


class HostView(Protocol):
    """What a scrape reads of the host: the `Host` methods the charm's actions use too."""

    state: Path

    def counters(self) -> dict[str, dict[str, int]]:
        """`show-counters`: packets and bytes of every named counter of our table."""
        ...

    def drift(self) -> str | None:
        """Why the live table differs from the last confirmed apply, or None."""
        ...

    def applied(self) -> Applied:
        """The confirmed ruleset and our netplan file."""
        ...

    def rejected(self) -> RejectedRecord | None:
        """The change that failed last and is held back, if any."""
        ...


@dataclass(frozen=True)
class _AppliedArtefacts:
    nftables: str
    netplan: str | None


@dataclass(frozen=True)
class Reading:
    """One scrape's view of the machine."""

    counters: Mapping[str, Mapping[str, int]]
    drift: str | None = None
    applied_fingerprint: str | None = None
    held_back: bool = False
    summary: PlanSummary | None = None
    history: ApplyHistory = ApplyHistory()
    errors: tuple[str, ...] = ()


def drop_labels(counter: str) -> tuple[str, str] | None:
    """(network, direction) of one of our drop counters; None for any other counter."""
    match = _DROP_COUNTER.match(counter)
    if not match:
        return None
    direction, name = match.groups()
    network = name.replace("_", "-")
    if network == "invalid":
        return CT_INVALID, direction
    if network == MISDIRECTED:
        return MISDIRECTED, direction
    return (network, direction) if network in NETWORK_NAMES else None


def read(host: HostView) -> Reading:
    """Everything one scrape reports; a failing part is reported, never raised."""
    errors: list[str] = []
    try:
        counters = host.counters()
    except HostError as e:
        counters, errors = {}, [f"counters: {e}"]
    try:
        drift = host.drift()
    except HostError as e:
        drift, errors = None, [*errors, f"drift: {e}"]
    applied = host.applied()
    applied_fingerprint = (
        fingerprint(_AppliedArtefacts(applied.nftables, applied.netplan))
        if applied.nftables is not None
        else None
    )
    return Reading(
        counters=counters,
        drift=drift,
        applied_fingerprint=applied_fingerprint,
        held_back=host.rejected() is not None,
        summary=load_record(PlanSummary, _read_text(host.state / PLAN_SUMMARY_FILE)),
        history=load_record(ApplyHistory, _read_text(host.state / HISTORY_FILE)) or ApplyHistory(),
        errors=tuple(errors),
    )


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"network_isolation_{name}", documentation, value=value)


def _states(name: str, documentation: str, label: str, states: Sequence[str], current: str):
    """One series per possible state, 1 for the current one (Prometheus' state-set idiom)."""
    family = GaugeMetricFamily(f"network_isolation_{name}", documentation, labels=[label])
    for state in states:
        family.add_metric([state], 1.0 if state == current else 0.0)
    return family


def _drop_families(counters: Mapping[str, Mapping[str, int]]) -> list[Metric]:
    labels = ["network", "direction"]
    packets = CounterMetricFamily(
        "network_isolation_dropped_packets",
        "Packets dropped by the isolation table (in audit mode: that it would drop).",
        labels=labels,
    )
    size = CounterMetricFamily(
        "network_isolation_dropped_bytes",
        "Bytes dropped by the isolation table (in audit mode: that it would drop).",
        labels=labels,
    )
    for name, counter in sorted(counters.items()):
        found = drop_labels(name)
        if found is not None:
            packets.add_metric(list(found), counter.get("packets", 0))
            size.add_metric(list(found), counter.get("bytes", 0))
    return [packets, size]


def _plan_families(summary: PlanSummary, reading: Reading) -> list[Metric]:
    allowed = GaugeMetricFamily(
        "network_isolation_network_allowed",
        "1 when the machine's roles allow it to use the network, 0 when it must stay off.",
        labels=["network"],
    )
    for network in NETWORK_NAMES:
        allowed.add_metric([network], 1.0 if summary.networks.get(network) else 0.0)
    planned = bool(summary.wanted) and summary.wanted == reading.applied_fingerprint
    return [
        _states(
            "enforcement_mode",
            "The enforcement option in effect: enforce, audit (count only) or off.",
            "mode",
            ENFORCEMENT_MODES,
            summary.enforcement,
        ),
        _states(
            "isolation_level",
            "The cloud's degree of isolation: none, partial or maximum.",
            "level",
            [level.value for level in IsolationLevel],
            summary.isolation,
        ),
        _gauge(
            "isolation_domains",
            "Traffic domains (networks sharing a space count once).",
            summary.domains,
        ),
        _gauge(
            "plan_blocked",
            "1 when the machine's plan is blocked (its status names the problem).",
            1.0 if summary.status == "blocked" else 0.0,
        ),
        _gauge(
            "strict_ports",
            "1 when strict-ports accepts only catalogued ports.",
            1.0 if summary.strict_ports else 0.0,
        ),
        allowed,
        _gauge(
            "ruleset_planned",
            "1 when what is applied is what the current plan renders, 0 when it is not.",
            1.0 if planned else 0.0,
        ),
    ]


def families(reading: Reading) -> list[Metric]:
    """The metrics of one reading (pure)."""
    metrics: list[Metric] = _drop_families(reading.counters)
    metrics += [
        _gauge(
            "table_present",
            "1 when the table inet network_isolation is loaded in the kernel.",
            # every ruleset we render has named counters: none listed means no table
            1.0 if reading.counters else 0.0,
        ),
        _gauge(
            "drift",
            "1 when the live table differs from the last confirmed apply (changed or missing).",
            1.0 if reading.drift else 0.0,
        ),
        _gauge(
            "change_held_back",
            "1 while a change that was rolled back is held back until the inputs change.",
            1.0 if reading.held_back else 0.0,
        ),
        CounterMetricFamily(
            "network_isolation_rollbacks",
            "Applies the charm undid (a failed load, netplan apply or probe; an unconfirmed one).",
            value=reading.history.rollbacks,
        ),
        _gauge(
            "scrape_errors",
            "Parts of this scrape that could not be read (see the exporter's log).",
            len(reading.errors),
        ),
    ]
    if reading.history.last_apply is not None:
        metrics.append(
            _gauge(
                "last_apply_timestamp_seconds",
                "Unix time of the last confirmed apply.",
                reading.history.last_apply,
            )
        )
    if reading.summary is not None:
        metrics += _plan_families(reading.summary, reading)
    return metrics


class ReadingError(Exception):
    """Reading the host raised something other than a HostError (which a reading reports)."""


class ReadingCache:
    """The metrics of one reading of the host, shared by every scrape for `ttl` seconds.

    This bounds the `nft` runs to one pair per `ttl`, whatever the clients do. Concurrent callers
    wait on the lock for the reading in progress instead of starting their own; a reading that
    raised is remembered as long, so that a failing host is not read on every scrape either.
    """

    def __init__(
        self, host: HostView, ttl: float = CACHE_TTL, clock: Callable[[], float] = time.monotonic
    ):
        self.host = host
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, list[Metric] | str] | None = None  # metrics, or why not

    def fresh(self) -> list[Metric] | None:
        """The metrics read less than `ttl` ago, or None; never reads the host.

        ReadingError if that reading failed.
        """
        last = self._last
        if last is None or self.clock() - last[0] >= self.ttl:
            return None
        if isinstance(last[1], str):
            raise ReadingError(last[1])
        return last[1]

    def get(self) -> list[Metric]:
        """The metrics read less than `ttl` ago, reading the host if there are none."""
        with self._lock:
            metrics = self.fresh()
            if metrics is not None:
                return metrics
            try:
                reading = read(self.host)
            except Exception as e:
                logger.exception("reading the host")
                self._last = (self.clock(), repr(e))
                raise ReadingError(repr(e)) from e
            for error in reading.errors:
                logger.warning("%s", error)
            metrics = families(reading)
            self._last = (self.clock(), metrics)
            return metrics


class HostCollector(Collector):
    """The host's metrics for a registry, through a `ReadingCache` (`ttl` 0: read every time)."""

    def __init__(self, host: HostView, ttl: float = CACHE_TTL):
        self.cache = ReadingCache(host, ttl)

    def collect(self) -> Iterator[Metric]:
        """The metrics of the last `ttl` seconds."""
        yield from self.cache.get()


class _Snapshot(Collector):
    """Metrics already read, handed to prometheus-client to format."""

    def __init__(self, metrics: Sequence[Metric]):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """The same metrics every time."""
        return iter(self.metrics)


@dataclass(frozen=True)
class Limits:
    """What the server may spend, whatever its clients do (the module's docstring says why)."""

    request_head_timeout: float = REQUEST_HEAD_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    backlog: int = LISTEN_BACKLOG
    max_request_head: int = MAX_REQUEST_HEAD


@dataclass(frozen=True)
class Request:
    """What the server looks at in a request's head."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=lambda: {})  # lower-case names


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer; the server closes the connection after each."""

    status: str
    headers: Sequence[tuple[str, str]]
    body: bytes

    def encode(self) -> bytes:
        """The answer as sent."""
        lines = [
            f"HTTP/1.1 {self.status}",
            *(f"{name}: {value}" for name, value in self.headers),
            f"Content-Length: {len(self.body)}",
            "Connection: close",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _plain(status: str, text: str, *headers: tuple[str, str]) -> Answer:
    return Answer(status, [("Content-Type", "text/plain; charset=utf-8"), *headers], text.encode())


def parse_request(head: bytes) -> Request | None:
    """The request line and headers of a request's head; None when it is not HTTP/1."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in filter(None, lines[1:]):
        name, colon, value = line.partition(":")
        if not colon:
            return None
        headers[name.strip().lower()] = value.strip()
    method, target, _version = parts
    url = urlsplit(target)
    return Request(method, url.path, url.query, headers)


def exposition(metrics: Sequence[Metric], request: Request) -> Answer:
    """prometheus-client's answer to `request` for these metrics (its WSGI app, called here)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Snapshot(metrics))
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query,
        "HTTP_ACCEPT": request.headers.get("accept", ""),
        "HTTP_ACCEPT_ENCODING": request.headers.get("accept-encoding", ""),
    }
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        started.append((status, headers))

    body = b"".join(make_wsgi_app(registry)(environ, start_response))
    status, headers = started[0]
    return Answer(status, headers, body)


T = TypeVar("T")


def _in_daemon_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """`work` on a thread of its own, a daemon so that it never holds up the service's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # none left unretrieved

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # pyright: ignore[reportArgumentType]

    def run() -> None:
        result, error = None, None
        try:
            result = work()
        except BaseException as e:  # handed to whoever awaits the future
            error = e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop is closed: the service is stopping

    threading.Thread(target=run, name="network-isolation-reading", daemon=True).start()
    return future


class MetricsServer:
    """`GET /metrics` from a `ReadingCache`, within `Limits`, on one asyncio event loop."""

    def __init__(self, cache: ReadingCache, limits: Limits | None = None):
        self.cache = cache
        self.limits = limits or Limits()
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # no request yet; oldest first
        self._answering: set[asyncio.StreamWriter] = set()
        self._reading: asyncio.Future[list[Metric]] | None = None

    async def serve(self, sock: socket.socket, stop: asyncio.Event) -> None:
        """Serve on a bound socket until `stop` is set, then drop every connection."""
        server = await asyncio.start_server(
            self._connection,
            sock=sock,
            backlog=self.limits.backlog,
            limit=self.limits.max_request_head,
        )
        try:
            await stop.wait()
        finally:
            server.close()
            for writer in [*self._waiting, *self._answering]:
                writer.transport.abort()
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                logger.warning("connections still open at exit")

    def _make_room(self) -> bool:
        """Room for one more connection, if need be by dropping the longest without a request."""
        if len(self._waiting) + len(self._answering) < self.limits.max_connections:
            return True
        if not self._waiting:
            return False  # every open connection is being answered
        oldest = next(iter(self._waiting))
        del self._waiting[oldest]
        oldest.transport.abort()
        return True

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not self._make_room():
            writer.transport.abort()
            return
        self._waiting[writer] = None
        try:
            await asyncio.wait_for(self._exchange(reader, writer), self.limits.request_timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # a slow, silent or vanished client: dropped
        except Exception:
            logger.exception("answering a scrape")
        finally:
            self._waiting.pop(writer, None)
            self._answering.discard(writer)
            writer.transport.abort()  # a no-op once the answer is sent and the connection closed

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), self.limits.request_head_timeout
            )
        except asyncio.LimitOverrunError:
            head = None
        self._waiting.pop(writer, None)
        self._answering.add(writer)
        if head is None:
            answer = _plain("431 Request Header Fields Too Large", "request head too large\n")
        else:
            answer = await self._answer(parse_request(head))
        writer.write(answer.encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def _answer(self, request: Request | None) -> Answer:
        if request is None:
            return _plain("400 Bad Request", "not an HTTP/1 request\n")
        if request.path != METRICS_PATH:
            return _plain("404 Not Found", f"the metrics are at {METRICS_PATH}\n")
        if request.method != "GET":
            return _plain("405 Method Not Allowed", "use GET\n", ("Allow", "GET"))
        try:
            metrics = await self._metrics()
        except Exception:  # logged by the cache, once per reading
            return _plain("500 Internal Server Error", "could not read the host\n")
        return exposition(metrics, request)

    async def _metrics(self) -> list[Metric]:
        """The cached metrics, or those of the one reading of the host in progress or started."""
        metrics = self.cache.fresh()
        if metrics is not None:
            return metrics
        if self._reading is None or self._reading.done():
            self._reading = _in_daemon_thread(self.cache.get)
        # shielded: a client that gives up does not cancel the reading the others wait for
        return await asyncio.shield(self._reading)


def listening_socket(address: str, port: int, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A TCP socket bound to address and port (IPv4 or IPv6), listening with `backlog`."""
    family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def build_parser() -> argparse.ArgumentParser:
    """The service's command line (the host module writes it into the unit)."""
    parser = argparse.ArgumentParser(
        prog="network-isolation-exporter",
        description="Serve this machine's network isolation metrics for Prometheus.",
    )
    parser.add_argument("--address", required=True, help="address to listen on (management)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--state-dir", type=Path, default=None)
    return parser


def registry_for(host: HostView, ttl: float = CACHE_TTL) -> CollectorRegistry:
    """A registry with only our collector (no process or platform metrics of the exporter)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(host, ttl))
    return registry


async def serve_until_signalled(server: MetricsServer, sock: socket.socket) -> None:
    """Serve until SIGTERM (systemd's stop) or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.serve(sock, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    host = Host(state=args.state_dir or state_dir())
    sock = listening_socket(args.address, args.port)
    logger.info("serving metrics on %s port %s", args.address, args.port)
    asyncio.run(serve_until_signalled(MetricsServer(ReadingCache(host)), sock))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
