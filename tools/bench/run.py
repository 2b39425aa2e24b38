"""Benchmark the charm against the number of peers: reconcile cost, rules, nft and packets.

The command line (`python -m tools.bench`): what to measure, in which order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from network_isolation.model import Network

from . import rollout
from .cloud import cloud_view
from .hooks import Harness, HookToolCounter, load_fake_host
from .packets import packet_path, packet_settings
from .report import PeerResult, Results, raw_results, report
from .ruleset import MeasurementError, count_elements, count_rules, missing_tools, nft_times

FULL_PEERS = (1, 10, 100, 1000, 5000)
QUICK_PEERS = (1, 10, 100, 1000)
PACKET_PEERS = (1000, 10000)


def reconcile(harness: Harness, peers: int, runs: int) -> PeerResult:
    """The charm's hooks at one N, leader and non-leader."""
    leader = harness.role(peers, leader=True, runs=runs)
    follower = harness.role(peers, leader=False, runs=runs)
    ruleset = follower.ruleset
    return PeerResult(
        peers=peers,
        leader=leader,
        follower=follower,
        rules=count_rules(ruleset),
        elements=count_elements(ruleset),
        subnets_per_network=len(cloud_view(peers).subnets_of(Network.INTERNAL)),
    )


def machine() -> dict[str, str]:
    """What the benchmark ran on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    if shutil.which("free"):
        rows = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()
        memory = next((" ".join(r.split()[:2]) for r in rows if r.startswith("Mem:")), memory)
    nft = "missing"
    if shutil.which("nft"):
        nft = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "memory": memory.replace("Mem: ", "") + " total",
        "kernel": f"{platform.system()} {platform.release()}",
        "nft": nft,
        "python": platform.python_version(),
    }


def run(args: argparse.Namespace, log: Callable[[str], None]) -> Results:
    """Measure everything the arguments ask for."""
    results = Results()
    start = time.perf_counter()
    harness = Harness(load_fake_host(), HookToolCounter())
    tools_missing = missing_tools()
    if tools_missing:
        results.failures.append(f"nft and packet measurements skipped: missing {tools_missing}")
    rulesets: dict[int, str] = {}
    with harness.installed():
        for peers in args.peers:
            runs = args.runs if args.runs else (3 if args.quick or peers > 1000 else 5)
            row = reconcile(harness, peers, runs)
            results.rows.append(row)
            log(f"reconcile: {peers} peers done ({time.perf_counter() - start:.0f} s)")
            if not tools_missing:
                update = harness.ruleset(peers, extra_racks=1)
                try:
                    row.nft_load, row.nft_update = nft_times(
                        row.follower.ruleset, update, 1 if args.quick else 3
                    )
                except MeasurementError as e:
                    results.failures.append(f"nft at {peers} peers: {e}")
        if not tools_missing and args.packet_peers:
            for peers in args.packet_peers:
                rulesets[peers] = harness.ruleset(peers)
    if rulesets:
        try:
            results.paths = packet_path(rulesets, packet_settings(args.quick), log)
        except MeasurementError as e:
            results.failures.append(f"packet path: {e}")
    results.seconds = time.perf_counter() - start
    return results


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    parser.add_argument("--peers", type=_int_list, help="peer counts (default 1,10,100,1000,5000)")
    parser.add_argument(
        "--packet-peers", type=_int_list, help="peer counts of the packet path (1000,10000)"
    )
    parser.add_argument("--runs", type=int, default=0, help="hooks per median")
    parser.add_argument(
        "--rollout-machines",
        type=_int_list,
        help="cloud sizes of the modelled rollout (default 10,32,100,1000; quick: up to 100)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results there")
    args = parser.parse_args(argv)
    if args.peers is None:
        args.peers = QUICK_PEERS if args.quick else FULL_PEERS
    if args.packet_peers is None:
        args.packet_peers = PACKET_PEERS
    if args.rollout_machines is None:
        args.rollout_machines = (10, 32, 100) if args.quick else (10, 32, 100, 1000)
    return args


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print, and exit 1 only when a measurement could not run (unless --quick)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def log(message: str) -> None:
        print(f"# {message}", file=sys.stderr, flush=True)

    results = run(args, log)
    print("\n".join(report(results, machine())))
    log("rolling apply: the real charm for 10 machines, then the model")
    print("\n" + "\n".join(rollout.main(args.rollout_machines)))
    if args.json:
        args.json.write_text(json.dumps(raw_results(results), indent=2) + "\n")
    return 1 if results.failures and not args.quick else 0
