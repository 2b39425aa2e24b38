"""`plan`: show what the charm would enforce on every machine of a cloud, offline.

With `--render-dir DIR` it also writes each machine's artefacts, at fixed paths that other
tools load: `DIR/<machine>/nftables.conf` and, when the machine has policy routing,
`DIR/<machine>/netplan.yaml` (both mode 0600).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .host import write_atomically
from .planner import MachinePlan, plan_machine
from .render import Artefacts, RenderError, render
from .report import cloud_dict, cloud_text
from .report_html import cloud_html
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
    parser.add_argument(
        "--format",
        choices=("text", "json", "html"),
        default="text",
        help="html: one self-contained page, a grid of machines by networks",
    )
    parser.add_argument(
        "--render-dir",
        type=Path,
        metavar="DIR",
        help="write DIR/<machine>/nftables.conf and DIR/<machine>/netplan.yaml",
    )
    return parser


NFTABLES_FILE = "nftables.conf"
NETPLAN_FILE = "netplan.yaml"


def write_artefacts(directory: Path, artefacts: Artefacts) -> None:
    """Write one machine's artefacts (mode 0600); drop a netplan file it no longer has."""
    write_atomically(directory / NFTABLES_FILE, artefacts.nftables, mode=0o600)
    if artefacts.netplan is None:
        (directory / NETPLAN_FILE).unlink(missing_ok=True)
    else:
        write_atomically(directory / NETPLAN_FILE, artefacts.netplan, mode=0o600)


def _render_each(
    parser: argparse.ArgumentParser, plans: dict[str, MachinePlan]
) -> dict[str, Artefacts]:
    rendered: dict[str, Artefacts] = {}
    for name, plan in plans.items():
        try:
            rendered[name] = render(plan)
        except RenderError as e:
            parser.error(f"cannot render machine '{name}': {e}")
    return rendered


def _write_all(
    parser: argparse.ArgumentParser, directory: Path, rendered: dict[str, Artefacts]
) -> None:
    for name in rendered:
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            parser.error(f"machine name '{name}' cannot be a directory name")
    for name, artefacts in rendered.items():
        try:
            write_artefacts(directory / name, artefacts)
        except OSError as e:
            parser.error(f"cannot write {directory / name}: {e.strerror or e}")


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
    rendered = _render_each(parser, plans) if args.render_dir or args.format == "html" else {}
    if args.render_dir is not None:
        _write_all(parser, args.render_dir, rendered)
    isolation = topology.isolation()
    warnings = {name: plan.warnings for name, plan in plans.items()}
    if args.format == "json":
        sys.stdout.write(json.dumps(cloud_dict(isolation, plans, warnings), indent=2) + "\n")
    elif args.format == "html":
        active = {n: rendered[n] if plans[n].status == "active" else None for n in plans}
        sys.stdout.write(cloud_html(args.topology.stem, isolation, plans, active))
    else:
        sys.stdout.write(cloud_text(isolation, plans, warnings))
    return 1 if any(plan.status == "blocked" for plan in plans.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
