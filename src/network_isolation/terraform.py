"""`plan --emit-terraform`: the Terraform that deploys the charm on a topology file's cloud.

Sunbeam deploys with Terraform's juju provider, so an operator adds this to such a plan: per
model that holds machines of the cloud, a `juju_model` data source and a module block (the
charm's `terraform/` directory) with the file's config and a binding per network, then a
`juju_integration` per principal and role endpoint.

Relating a principal over `<role>-node` gives every machine it runs on that role. A principal is
therefore related over a role's endpoint when every machine listing it has that role. A role a
machine still lacks then takes one of the machine's principals whose other machines may already
use every network of that role (the network node's MicroOVN, which also runs on control and
compute nodes): that relation adds the role there and no network. What neither covers, say a
file that names no principal, is left as a comment that says what to relate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .model import NETWORKS, ROLE_ENDPOINTS, Network, networks_for_roles
from .topology import Topology

# Where `source` of the module block points: the charm's module, beside the operator's plan.
MODULE_SOURCE = "./terraform"
# Juju application names: what a principal must be called to be related.
_APPLICATION = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]*[a-z][a-z0-9]*)*$")
_ENDPOINT_OF_ROLE = {role: endpoint for endpoint, role in ROLE_ENDPOINTS.items()}


class TerraformError(ValueError):
    """A topology that names its principals in a way no plan can relate."""


@dataclass(frozen=True)
class Model:
    """A Juju model that holds machines of the cloud, and the module block deployed into it."""

    name: str
    owner: str
    module: str


MACHINES_MODEL = Model("openstack-machines", "admin", "network-isolation")
# Sunbeam keeps these roles' machines in models of their own, and a subordinate relates only
# within its model (docs/how-to/first-deployment.md): one application per model.
ROLE_MODELS: Mapping[str, Model] = {
    "sunbeam": Model("openstack-infra", "admin", "network-isolation-infra"),
    "juju-controller": Model("controller", "admin", "network-isolation-controller"),
}


@dataclass(frozen=True)
class Integration:
    """A principal related over a role endpoint; `note` says why when it is not obvious."""

    principal: str
    endpoint: str
    note: str = ""


@dataclass(frozen=True)
class Deployment:
    """The charm in one model: the relations it takes and the roles they leave uncovered."""

    model: Model
    integrations: tuple[Integration, ...]
    uncovered: tuple[str, ...]


def model_of(roles: Iterable[str]) -> Model:
    """The model a machine with these roles lives in."""
    found = set(roles)
    return next((m for r, m in ROLE_MODELS.items() if r in found), MACHINES_MODEL)


def _hosts(topology: Topology, names: Sequence[str]) -> dict[str, list[str]]:
    hosts: dict[str, list[str]] = {}
    for name in names:
        for app in topology.machines[name].principals:
            if not _APPLICATION.match(app):
                raise TerraformError(
                    f"machines.{name}.principals: '{app}' is not a Juju application name"
                )
            hosts.setdefault(app, []).append(name)
    return hosts


class _Relating:
    """The relations of one model's machines, chosen role by role."""

    def __init__(self, topology: Topology, names: Sequence[str]):
        config = topology.charm_config()
        self.table = config.networks_by_role
        self.roles = {n: set(topology.machines[n].roles) | config.roles for n in names}
        self.needed = {
            n: [r for r in topology.machines[n].roles if r not in config.roles] for n in names
        }
        self.hosts = _hosts(topology, names)
        self.principals = {n: topology.machines[n].principals for n in names}
        self.chosen: dict[tuple[str, str], Integration] = {}

    def covered(self, machine: str, role: str) -> bool:
        endpoint = _ENDPOINT_OF_ROLE[role]
        return any((app, endpoint) in self.chosen for app in self.principals[machine])

    def relate_exclusive(self) -> None:
        """Every principal over every role all of its machines have."""
        for app, machines in sorted(self.hosts.items()):
            for role, endpoint in _ENDPOINT_OF_ROLE.items():
                if all(role in self.roles[m] for m in machines):
                    self.chosen[(app, endpoint)] = Integration(app, endpoint)

    def adds_no_network(self, app: str, role: str) -> bool:
        need = self.table[role]
        return all(need <= networks_for_roles(self.roles[h], self.table) for h in self.hosts[app])

    def relate_contained(self, machine: str, role: str) -> bool:
        """The principal that adds the role to fewest other machines, none gaining a network."""
        fits = [a for a in self.principals[machine] if self.adds_no_network(a, role)]
        if not fits:
            return False
        app = min(fits, key=lambda a: (len(self.hosts[a]), a))
        others = [h for h in self.hosts[app] if role not in self.roles[h]]
        endpoint = _ENDPOINT_OF_ROLE[role]
        note = (
            f"{app} also runs on {', '.join(others)}, which may already use every network of"
            f" role {role}: the role adds no network there"
        )
        self.chosen[(app, endpoint)] = Integration(app, endpoint, note)
        return True

    def uncovered(self) -> list[str]:
        """Each machine role left without a relation, and why; relates what it can first."""
        left: dict[tuple[str, str], list[str]] = {}
        for machine, roles in self.needed.items():
            for role in roles:
                if self.covered(machine, role):
                    continue
                if role not in _ENDPOINT_OF_ROLE:
                    why = "a custom role has no endpoint: set it in the roles option"
                elif not self.principals[machine]:
                    why = "the topology names no principal: relate the one that runs only there"
                elif self.relate_contained(machine, role):
                    continue
                else:
                    why = "no principal runs only on machines of this role"
                left.setdefault((role, why), []).append(machine)
        return [f"{role} on {', '.join(ms)}: {why}" for (role, why), ms in left.items()]


def deployments(topology: Topology) -> list[Deployment]:
    """The charm's application in each model that holds machines of the cloud."""
    by_model: dict[Model, list[str]] = {}
    for name, machine in topology.machines.items():
        by_model.setdefault(model_of(machine.roles), []).append(name)
    apps: dict[str, Model] = {}
    for model, names in by_model.items():
        for app in _hosts(topology, names):
            if apps.setdefault(app, model) != model:
                raise TerraformError(
                    f"principal '{app}' runs on machines of models {apps[app].name} and"
                    f" {model.name}: a subordinate relates only within its model"
                )
    found: list[Deployment] = []
    for model in (MACHINES_MODEL, *ROLE_MODELS.values()):
        if model not in by_model:
            continue
        relating = _Relating(topology, by_model[model])
        relating.relate_exclusive()
        uncovered = relating.uncovered()
        integrations = sorted(relating.chosen.values(), key=lambda i: (i.endpoint, i.principal))
        found.append(Deployment(model, tuple(integrations), tuple(uncovered)))
    return found


def hcl_string(value: str) -> str:
    """A quoted HCL string whose value is exactly `value` (no template sequence left)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
        .replace("${", "$${")
        .replace("%{", "%%{")
    )
    return f'"{escaped}"'


def _aligned(pairs: Sequence[tuple[str, str]], indent: str) -> list[str]:
    """Attributes with their `=` aligned, as `terraform fmt` leaves them."""
    width = max(len(key) for key, _ in pairs)
    return [f"{indent}{key.ljust(width)} = {value}" for key, value in pairs]


def _config_value(value: str | bool | int) -> str:
    """A config value as `juju config` takes it: booleans as true and false."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _bindings(topology: Topology) -> list[str]:
    default = topology.default_space or topology.space_of(Network.MANAGEMENT)
    lines = []
    if topology.default_space is None:
        lines.append("  # Default space: management's, as MAAS has no default space of its own.")
    lines.append("  endpoint_bindings = [")
    lines.append(f"    {{ space = {hcl_string(default)} }},")
    for net in sorted(NETWORKS, key=lambda n: n.value):
        space = hcl_string(topology.space_of(net))
        lines.append(f"    {{ endpoint = {hcl_string(net.value)}, space = {space} }},")
    lines.append("  ]")
    return lines


def _module(topology: Topology, model: Model) -> list[str]:
    uuid = f"data.juju_model.{model.name}.uuid"
    lines = [
        f'data "juju_model" "{model.name}" {{',
        *_aligned([("name", hcl_string(model.name)), ("owner", hcl_string(model.owner))], "  "),
        "}",
        "",
        f'module "{model.module}" {{',
        *_aligned([("source", hcl_string(MODULE_SOURCE)), ("model_uuid", uuid)], "  "),
    ]
    if topology.config:
        options = sorted(topology.config.items())
        pairs = [(hcl_string(k), hcl_string(_config_value(v))) for k, v in options]
        lines += ["", "  config = {", *_aligned(pairs, "    "), "  }"]
    return [*lines, "", *_bindings(topology), "}"]


def _integration(model: Model, integration: Integration) -> list[str]:
    key = integration.endpoint.replace("-", "_")
    ours = [
        ("name", f"module.{model.module}.app_name"),
        ("endpoint", f"module.{model.module}.requires.{key}"),
    ]
    theirs = [("name", hcl_string(integration.principal)), ("endpoint", '"juju-info"')]
    label = f"{model.module}-{integration.principal}-{integration.endpoint}"
    note = [f"# {integration.note}"] if integration.note else []
    return [
        *note,
        f'resource "juju_integration" "{label}" {{',
        f"  model_uuid = data.juju_model.{model.name}.uuid",
        "",
        "  application {",
        *_aligned(ours, "    "),
        "  }",
        "",
        "  application {",
        *_aligned(theirs, "    "),
        "  }",
        "}",
    ]


def emit_terraform(topology: Topology, source: str, blocked: Mapping[str, str]) -> str:
    """The data sources, module blocks and integrations for the cloud, as one HCL text."""
    lines = [
        f"# network-isolation on the cloud of {source}, from `plan --emit-terraform`.",
        "# Add it to a plan that configures the juju provider (>= 1.0). `source` is the",
        "# charm's terraform/ directory; each model's owner is its Juju user.",
    ]
    lines += [f"# blocked by the plan: {name}: {why}" for name, why in sorted(blocked.items())]
    for deployment in deployments(topology):
        model = deployment.model
        lines += ["", f"# Model {model.name}.", *_module(topology, model)]
        for integration in deployment.integrations:
            lines += ["", *_integration(model, integration)]
        if deployment.uncovered:
            requires = f"module.{model.module}.requires"
            lines += ["", f"# Not related here (relate over {requires}.<role>_node):"]
            lines += [f"#   {item}" for item in deployment.uncovered]
    return "\n".join(lines) + "\n"
