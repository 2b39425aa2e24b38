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
from urllib.parse import urlsplit

from . import maas, maas_api
from .host import write_atomically
from .model import Network
from .planner import MachinePlan, plan_machine
from .render import Artefacts, RenderError, render
from .report import cloud_dict, cloud_text
from .report_html import cloud_html
from .terraform import TerraformError, emit_terraform
from .topology import Topology, TopologyError, load_topology


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
    parser.add_argument(
        "topology", type=Path, nargs="?", help="topology file (YAML); or --maas, --maas-json"
    )
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
    parser.add_argument(
        "--emit-terraform",
        action="store_true",
        help="print the Terraform (juju provider) that deploys the charm and relates it",
    )
    _add_maas_arguments(parser)
    return parser


# Where Sunbeam keeps its deployments, under the home (sunbeam-python/sunbeam/core/deployments.py).
DEPLOYMENTS_YAML = ".local/share/openstack/deployments.yaml"


def _add_maas_arguments(parser: argparse.ArgumentParser) -> None:
    """The cloud read from MAAS instead of a topology file (see `maas` and `maas_api`)."""
    group = parser.add_argument_group("a cloud read from MAAS (instead of TOPOLOGY.yaml)")
    group.add_argument("--maas", metavar="URL", help="MAAS URL, e.g. http://HOST:5240/MAAS")
    group.add_argument("--api-key", metavar="KEY", help="MAAS API key, with --maas")
    group.add_argument(
        "--maas-json", type=Path, metavar="FILE", help="a saved dump of machines, subnets, spaces"
    )
    group.add_argument(
        "--deployments-yaml",
        type=Path,
        metavar="FILE",
        help=f"Sunbeam's deployments.yaml (default: ~/{DEPLOYMENTS_YAML} if it exists)",
    )
    group.add_argument(
        "--space-map",
        action="append",
        default=[],
        metavar="NETWORK=SPACE,...",
        help="the space of each network (over deployments.yaml's network_mapping)",
    )
    group.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a charm option (role-table is sunbeam unless set here)",
    )


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


def _emit_terraform(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    topology: Topology,
    plans: dict[str, MachinePlan],
) -> int:
    """The whole cloud's Terraform; blocked machines are named in it and fail the exit status."""
    if args.machine is not None or args.render_dir is not None:
        parser.error("--emit-terraform covers the whole cloud: no --machine or --render-dir")
    blocked = {n: p.message for n, p in plans.items() if p.status == "blocked"}
    try:
        sys.stdout.write(emit_terraform(topology, args.source_name, blocked))
    except TerraformError as e:
        parser.error(f"{args.source}: {e}")
    return 1 if blocked else 0


def _maas_topology(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Topology:
    """Read MAAS (or its dump) and Sunbeam's space map into the cloud's topology."""
    deployments = args.deployments_yaml
    if deployments is None and (Path.home() / DEPLOYMENTS_YAML).is_file():
        deployments = Path.home() / DEPLOYMENTS_YAML
    try:
        space_map: dict[Network, str] = {}
        tag = None
        if deployments is not None:
            deployment = maas.load_deployment(deployments)
            space_map = maas.deployment_space_map(deployment, str(deployments))
            tag = deployment.resource_tag
        space_map |= maas.parse_space_map(args.space_map)
        config = maas.parse_config(args.config)
        if args.maas_json is not None:
            cloud = maas.load_dump(args.maas_json)
        else:
            raw = maas_api.read_cloud(args.maas, maas_api.ApiKey.parse(args.api_key or ""))
            cloud = maas.cloud_from_json(raw, args.source)
        return maas.topology_from_maas(cloud, args.source, space_map, config, tag)
    except (TopologyError, maas_api.MaasApiError) as e:
        parser.error(str(e))


def _load(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Topology:
    """The cloud from its one source, then named by `args.source`, `source_name`, `title`."""
    sources = [s for s in (args.topology, args.maas, args.maas_json) if s is not None]
    if len(sources) != 1:
        parser.error("give one of TOPOLOGY.yaml, --maas URL or --maas-json FILE")
    if (args.maas is None) != (args.api_key is None):
        parser.error("--maas and --api-key go together")
    if args.maas is not None:
        args.source = args.source_name = args.maas
        args.title = urlsplit(args.maas).hostname or args.maas
        return _maas_topology(parser, args)
    if args.maas_json is not None:
        args.source, args.source_name = str(args.maas_json), args.maas_json.name
        args.title = args.maas_json.stem
        return _maas_topology(parser, args)
    if args.deployments_yaml or args.space_map or args.config:
        parser.error("--deployments-yaml, --space-map and --config go with --maas or --maas-json")
    args.source, args.source_name = str(args.topology), args.topology.name
    args.title = args.topology.stem
    try:
        return load_topology(args.topology)
    except TopologyError as e:
        parser.error(str(e))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; exit 0 when every machine is active, 1 when any is blocked."""
    parser = build_parser()
    args = parser.parse_args(argv)
    topology = _load(parser, args)
    names = list(topology.machines)
    if args.machine is not None:
        if args.machine not in topology.machines:
            parser.error(f"{args.source}: no machine '{args.machine}'")
        names = [args.machine]
    plans = {name: plan_machine(topology.plan_input(name)) for name in names}
    if args.emit_terraform:
        return _emit_terraform(parser, args, topology, plans)
    rendered = _render_each(parser, plans) if args.render_dir or args.format == "html" else {}
    if args.render_dir is not None:
        _write_all(parser, args.render_dir, rendered)
    isolation = topology.isolation()
    warnings = {name: plan.warnings for name, plan in plans.items()}
    if args.format == "json":
        sys.stdout.write(json.dumps(cloud_dict(isolation, plans, warnings), indent=2) + "\n")
    elif args.format == "html":
        active = {n: rendered[n] if plans[n].status == "active" else None for n in plans}
        sys.stdout.write(cloud_html(args.title, isolation, plans, active))
    else:
        sys.stdout.write(cloud_text(isolation, plans, warnings))
    return 1 if any(plan.status == "blocked" for plan in plans.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
