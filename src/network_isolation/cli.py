"""`plan`: show what the charm would enforce on every machine of a cloud, offline."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .planner import plan_machine
from .report import cloud_dict, cloud_text
from .topology import TopologyError, load_topology


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """Usage errors as one line and exit status 2, like every other bad input."""
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `plan`; the interface is fixed for other tools."""
    parser = _Parser(
        prog="plan", description="Show the network isolation plan of every machine of a cloud."
    )
    parser.add_argument("topology", type=Path, help="topology file (YAML)")
    parser.add_argument("--machine", help="only this machine")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; exit 0 when every machine is active, 1 when any is blocked."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        topology = load_topology(args.topology)
    except TopologyError as e:
        parser.error(str(e))
    names = list(topology.machines)
    if args.machine is not None:
        if args.machine not in topology.machines:
            parser.error(f"{args.topology}: no machine '{args.machine}'")
        names = [args.machine]
    plans = {name: plan_machine(topology.plan_input(name)) for name in names}
    isolation = topology.isolation()
    if args.format == "json":
        sys.stdout.write(json.dumps(cloud_dict(isolation, plans), indent=2) + "\n")
    else:
        sys.stdout.write(cloud_text(isolation, plans))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
