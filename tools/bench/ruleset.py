"""The rendered ruleset: counting its rules and elements, and loading it with `nft -f`."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

from network_isolation.host.nftables import counters_of
from network_isolation.model import Network
from network_isolation.render.nft import TABLE_FAMILY, TABLE_NAME

from .cloud import machine_address

TABLE = (TABLE_FAMILY, TABLE_NAME)


def _inside(ruleset: str, opening: str) -> Iterator[str]:
    """The non-empty lines inside each block an `opening` line starts, up to its brace."""
    inside = False
    for line in ruleset.splitlines():
        text = line.strip()
        if text.startswith(opening):
            inside = True
        elif inside and text == "}":
            inside = False
        elif inside and text:
            yield text


def count_rules(ruleset: str) -> int:
    """Rules in the chains of an nft file (not comments, hooks, braces or set elements)."""
    return sum(1 for text in _inside(ruleset, "chain ") if not text.startswith(("#", "type ")))


def count_elements(ruleset: str) -> int:
    """Elements of the sets of an nft file."""
    elements = _inside(ruleset, "elements = {")
    return sum(len([e for e in text.split(",") if e.strip()]) for text in elements)


def conntrack_only(hook: str = "input") -> str:
    """The baseline: one chain on the hook that accepts replies, policy accept."""
    return (
        "table inet bench_conntrack {\n"
        f"\tchain {hook} {{\n"
        f"\t\ttype filter hook {hook} priority filter; policy accept;\n"
        "\t\tct state established,related accept\n"
        "\t}\n"
        "}\n"
    )


CONNTRACK_ONLY = conntrack_only()


def naive_ruleset(peers: int) -> str:
    """One accept rule per peer's address, as a linear iptables design has.

    The probe comes from the last taught peer (`cloud.taught_peer`), so every new connection
    walks all the rules, or all but the last.
    """
    lines = [
        "table inet bench_naive {",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        "\t\tct state established,related accept",
    ]
    lines += [
        f"\t\tip saddr {machine_address(Network.INTERNAL, u).ip} accept"
        for u in range(1, peers + 1)
    ]
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


class MeasurementError(RuntimeError):
    """A measurement could not run (a tool is missing or failed)."""


def missing_tools(tools: Sequence[str] = ("ip", "nft", "iperf3")) -> list[str]:
    """What the namespace measurements need and is not here (root included)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (ip netns)")
    return missing


class Namespaces:
    """Network namespaces of this process, named after its pid, and processes run in them."""

    def __init__(self, tag: str):
        self.prefix = f"nibench{os.getpid()}{tag}"
        self.names: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def add(self, suffix: str) -> str:
        """Create a namespace with its loopback up."""
        name = f"{self.prefix}{suffix}"
        must(["ip", "netns", "add", name])
        self.names.append(name)
        must(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def run(self, ns: str, *argv: str, timeout: float = 120) -> str:
        """Run a command in a namespace; its output, or MeasurementError."""
        return must(["ip", "netns", "exec", ns, *argv], timeout=timeout)

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        """Start a process in a namespace; stopped by close()."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)
        return process

    def load(self, ns: str, ruleset: str) -> float:
        """Load a ruleset with `nft -f` in a namespace; the seconds it took."""
        with tempfile.NamedTemporaryFile("w", prefix="bench-", suffix=".nft") as f:
            f.write(ruleset)
            f.flush()
            start = time.perf_counter()
            self.run(ns, "nft", "-f", f.name)
            return time.perf_counter() - start

    def close(self) -> None:
        """Stop our processes, delete our namespaces."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.names.clear()


def must(argv: Sequence[str], timeout: float = 120) -> str:
    """Run a command; its output, or MeasurementError saying what failed."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MeasurementError(f"{' '.join(argv[:6])}: {e}") from None
    if result.returncode != 0:
        raise MeasurementError(f"{' '.join(argv[:6])}: {result.stderr.strip()[:300]}")
    return result.stdout


def dropped_packets(spaces: Namespaces, ns: str) -> dict[str, int]:
    """Packets counted by each named counter of our table in a namespace (all count drops)."""
    listing = json.loads(spaces.run(ns, "nft", "-j", "list", "counters", "table", *TABLE))
    return {name: c["packets"] for name, c in counters_of(listing["nftables"]).items()}


def nft_times(first: str, update: str, repeats: int) -> tuple[float, float]:
    """Median seconds of loading `first` into a fresh namespace, then `update` over it."""
    loads: list[float] = []
    updates: list[float] = []
    for attempt in range(repeats):
        with Namespaces(f"n{attempt}") as spaces:
            ns = spaces.add("")
            loads.append(spaces.load(ns, first))
            updates.append(spaces.load(ns, update))
    return statistics.median(loads), statistics.median(updates)
