"""The `network-isolation` interface library, with a tiny principal and a tiny subordinate.

Both test charms are defined here with `meta=` dicts, as a principal author would write them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import network_isolation_interface as lib
import ops
import pytest
from network_isolation_interface import (
    Declarations,
    NetworkIsolationData,
    NetworkIsolationProvider,
    NetworkIsolationRequirer,
    PortDeclaration,
)
from ops import testing

PRINCIPAL_META: dict[str, Any] = {
    "name": "principal",
    "provides": {
        "network-isolation": {"interface": "network-isolation", "scope": "container"},
    },
}
PRINCIPAL_CONFIG: dict[str, Any] = {"options": {"ports": {"type": "string", "default": ""}}}

SUBORDINATE_META: dict[str, Any] = {
    "name": "sub",
    "subordinate": True,
    "requires": {
        "service-ports": {"interface": "network-isolation", "scope": "container"},
        "juju-info": {"interface": "juju-info", "scope": "container"},
    },
}

JUJU_KEYS = {"private-address": "10.0.0.5", "ingress-address": "10.0.0.5"}


def parse_option(text: str) -> list[PortDeclaration]:
    """`internal:tcp:5672 storage:tcp:6800-7300` as declarations."""
    ports: list[PortDeclaration] = []
    for item in text.split():
        network, protocol, numbers = item.split(":")
        first, _, last = numbers.partition("-")
        make = PortDeclaration.tcp if protocol == "tcp" else PortDeclaration.udp
        ports.append(make(network, int(first), int(last) if last else None))
    return ports


class AutoPrincipal(ops.CharmBase):
    """Gives the provider a callable: it publishes on relation-created/joined and config."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.isolation = NetworkIsolationProvider(
            self, ports=lambda: parse_option(str(self.config["ports"]))
        )


class ManualPrincipal(ops.CharmBase):
    """Declares from its own config-changed handler and records what declare() returned."""

    changed: ClassVar[list[bool]] = []

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.isolation = NetworkIsolationProvider(self)
        framework.observe(self.on.config_changed, self._on_config_changed)

    def _on_config_changed(self, _: ops.ConfigChangedEvent) -> None:
        ports = [
            PortDeclaration.tcp("internal", 5672, description="RabbitMQ"),
            PortDeclaration.tcp("internal", 5671, description="RabbitMQ (TLS)"),
            PortDeclaration.tcp("storage", 6800, 7300, description="Ceph OSD"),
            PortDeclaration.udp("data", 6081, description="Geneve"),
        ]
        type(self).changed.append(self.isolation.declare(ports))


class Subordinate(ops.CharmBase):
    """Reads the declarations on every ports-changed event and keeps the last result."""

    seen: ClassVar[list[Declarations]] = []

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.ports = NetworkIsolationRequirer(self)
        framework.observe(self.ports.on.ports_changed, self._on_ports_changed)
        framework.observe(self.on.config_changed, self._on_ports_changed)

    def _on_ports_changed(self, _: ops.EventBase) -> None:
        declarations = self.ports.declarations()
        type(self).seen.append(declarations)
        status = ops.BlockedStatus if declarations.problems else ops.ActiveStatus
        self.unit.status = status(f"{len(declarations.ports)} ports")


@pytest.fixture(autouse=True)
def _reset_records():
    ManualPrincipal.changed.clear()
    Subordinate.seen.clear()


@pytest.fixture
def relation_sets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys of every relation-set the charm makes, in order."""
    import scenario.mocking

    backend = scenario.mocking._MockModelBackend  # pyright: ignore[reportPrivateUsage]
    original = backend.relation_set
    keys: list[str] = []

    def counting(self: Any, relation_id: int, data: dict[str, str], *args: Any, **kw: Any):
        keys.extend(data)
        return original(self, relation_id, data, *args, **kw)

    monkeypatch.setattr(backend, "relation_set", counting)
    return keys


def principal_relation(**kwargs: Any) -> testing.SubordinateRelation:
    return testing.SubordinateRelation(
        "network-isolation", remote_app_name="network-isolation", **kwargs
    )


def sub_relation(bag: dict[str, str], **kwargs: Any) -> testing.SubordinateRelation:
    return testing.SubordinateRelation(
        "service-ports", remote_app_name="principal", remote_unit_data=bag, **kwargs
    )


def read(bag: dict[str, str], *more: dict[str, str]) -> Declarations:
    """What the subordinate reads from its principal's databag(s)."""
    ctx = testing.Context(Subordinate, meta=SUBORDINATE_META)
    relations = [sub_relation(bag)] + [
        testing.SubordinateRelation(
            "service-ports", remote_app_name=f"other{i}", remote_unit_data=b
        )
        for i, b in enumerate(more)
    ]
    ctx.run(ctx.on.relation_changed(relations[0]), testing.State(relations=relations))
    assert len(Subordinate.seen) == 1
    return Subordinate.seen[0]


def bag(ports: Any, version: Any = 1) -> dict[str, str]:
    data = dict(JUJU_KEYS)
    if version is not None:
        data["version"] = version if isinstance(version, str) else json.dumps(version)
    if ports is not None:
        data["ports"] = ports if isinstance(ports, str) else json.dumps(ports)
    return data


def entry(network: str = "internal", protocol: str = "tcp", **ports: Any) -> dict[str, Any]:
    return {"network": network, "protocol": protocol, **(ports or {"port": 5672})}


# Versioning


def test_version_constants():
    assert lib.LIBAPI == 1
    assert isinstance(lib.LIBPATCH, int)
    assert NetworkIsolationData().version == lib.LIBAPI


def test_the_distribution_version_is_libapi_dot_libpatch_dot_fix():
    major, minor, fix = lib.__version__.split(".")
    assert (int(major), int(minor)) == (lib.LIBAPI, lib.LIBPATCH)
    assert fix.isdigit()


def test_the_changelog_names_the_version():
    changelog = (Path(__file__).parents[2] / "CHANGELOG.md").read_text()
    assert f"## {lib.__version__} " in changelog


# The models


def test_port_declaration_helpers():
    single = PortDeclaration.tcp("internal", 5672, description="RabbitMQ")
    span = PortDeclaration.udp("storage", 6800, 7300)
    assert (single.triple, str(single)) == (("tcp", 5672, 5672), "internal:tcp:5672")
    assert (span.triple, str(span)) == (("udp", 6800, 7300), "storage:udp:6800-7300")
    assert single.to_json_dict() == {
        "network": "internal",
        "protocol": "tcp",
        "port": 5672,
        "description": "RabbitMQ",
    }
    assert span.to_json_dict() == {"network": "storage", "protocol": "udp", "range": [6800, 7300]}
    assert PortDeclaration.tcp("data", 10, 10).port == 10


@pytest.mark.parametrize(
    "data",
    [
        entry(network="nowhere"),
        entry(protocol="sctp"),
        entry(port=0),
        entry(port=70000),
        entry(port=-1),
        entry(port="5672"),
        entry(port=True),
        entry(port=5672.0),
        entry(range=[7300, 6800]),
        entry(range=[1, 70000]),
        entry(range=[1]),
        entry(port=1, range=[1, 2]),
        {"network": "internal", "protocol": "tcp"},
        entry(port=80, description="x" * 201),
    ],
)
def test_port_declaration_rejects(data: dict[str, Any]):
    with pytest.raises(ValueError):
        PortDeclaration.model_validate(data)


def test_provider_side_mistakes_raise_at_once():
    with pytest.raises(ValueError):
        PortDeclaration.tcp("internet", 80)
    with pytest.raises(ValueError):
        PortDeclaration.udp("data", 0)


def test_unknown_keys_of_a_newer_minor_version_are_ignored():
    port = PortDeclaration.model_validate(entry(port=80, weight=3))
    assert port.triple == ("tcp", 80, 80)


def test_databag_dump_is_canonical():
    a = PortDeclaration.tcp("internal", 5672)
    b = PortDeclaration.udp("data", 6081)
    first = NetworkIsolationData(ports=(a, b, a)).dump()
    second = NetworkIsolationData(ports=(b, a)).dump()
    assert first == second
    assert first["version"] == "1"
    assert len(json.loads(first["ports"])) == 2


# The provider (principal side)


def test_provider_publishes_on_relation_created():
    ctx = testing.Context(AutoPrincipal, meta=PRINCIPAL_META, config=PRINCIPAL_CONFIG)
    relation = principal_relation()
    state = testing.State(
        relations=[relation], config={"ports": "internal:tcp:5672 storage:tcp:6800-7300"}
    )
    out = ctx.run(ctx.on.relation_created(relation), state)
    data = out.get_relation(relation.id).local_unit_data
    assert data["version"] == "1"
    assert json.loads(data["ports"]) == [
        {"network": "internal", "port": 5672, "protocol": "tcp"},
        {"network": "storage", "protocol": "tcp", "range": [6800, 7300]},
    ]


def test_provider_republishes_on_config_changed():
    ctx = testing.Context(AutoPrincipal, meta=PRINCIPAL_META, config=PRINCIPAL_CONFIG)
    relation = principal_relation()
    state = testing.State(relations=[relation], config={"ports": "internal:tcp:5672"})
    out = ctx.run(ctx.on.relation_joined(relation, remote_unit=0), state)
    out = dataclasses.replace(out, config={"ports": "data:udp:6081"})
    out = ctx.run(ctx.on.config_changed(), out)
    data = out.get_relation(relation.id).local_unit_data
    assert json.loads(data["ports"]) == [{"network": "data", "port": 6081, "protocol": "udp"}]


def test_provider_without_relation_does_nothing():
    ctx = testing.Context(ManualPrincipal, meta=PRINCIPAL_META)
    ctx.run(ctx.on.config_changed(), testing.State())
    assert ManualPrincipal.changed == [False]


def test_provider_writes_are_idempotent(relation_sets: list[str]):
    ctx = testing.Context(ManualPrincipal, meta=PRINCIPAL_META)
    relation = principal_relation()
    out = ctx.run(ctx.on.config_changed(), testing.State(relations=[relation]))
    assert ManualPrincipal.changed == [True]
    assert sorted(relation_sets) == ["ports", "version"]
    written = dict(out.get_relation(relation.id).local_unit_data)

    relation_sets.clear()
    out = ctx.run(ctx.on.config_changed(), out)
    assert ManualPrincipal.changed == [True, False]
    assert relation_sets == []
    assert dict(out.get_relation(relation.id).local_unit_data) == written


def test_provider_rewrites_only_what_changed(relation_sets: list[str]):
    ctx = testing.Context(ManualPrincipal, meta=PRINCIPAL_META)
    relation = principal_relation(local_unit_data={"version": "1", "ports": "[]"})
    ctx.run(ctx.on.config_changed(), testing.State(relations=[relation]))
    assert relation_sets == ["ports"]


def test_provider_refuses_too_many_declarations():
    ports = [PortDeclaration.tcp("internal", p) for p in range(1000, 1000 + lib.MAX_ENTRIES + 1)]
    ctx = testing.Context(ManualPrincipal, meta=PRINCIPAL_META)
    with ctx(ctx.on.update_status(), testing.State(relations=[principal_relation()])) as mgr:
        with pytest.raises(ValueError, match="more than"):
            mgr.charm.isolation.declare(ports)


def test_what_the_provider_writes_the_requirer_reads():
    ctx = testing.Context(ManualPrincipal, meta=PRINCIPAL_META)
    relation = principal_relation()
    out = ctx.run(ctx.on.config_changed(), testing.State(relations=[relation]))
    written = dict(out.get_relation(relation.id).local_unit_data)
    declarations = read({**JUJU_KEYS, **written})
    assert declarations.problems == ()
    assert declarations.by_network() == {
        "data": (("udp", 6081, 6081),),
        "internal": (("tcp", 5671, 5671), ("tcp", 5672, 5672)),
        "storage": (("tcp", 6800, 7300),),
    }
    assert declarations.sources == ("principal/0",)


def test_the_wire_format_is_what_ops_relation_load_reads():
    written = NetworkIsolationData(ports=(PortDeclaration.tcp("public", 443),)).dump()
    decoded = {key: json.loads(value) for key, value in written.items()}
    assert NetworkIsolationData.model_validate(decoded).ports[0].triple == ("tcp", 443, 443)


# The requirer (our side): untrusted data in, valid entries and problems out


def test_requirer_reads_valid_declarations():
    declarations = read(
        bag(
            [
                entry(port=5672, description="RabbitMQ"),
                entry("storage", range=[6800, 7300]),
                entry("data", "udp", port=6081),
            ]
        )
    )
    assert declarations.problems == ()
    assert [str(p) for p in declarations.ports] == [
        "data:udp:6081",
        "internal:tcp:5672",
        "storage:tcp:6800-7300",
    ]


def test_requirer_drops_duplicates():
    declarations = read(bag([entry(port=80), entry(port=80, description="again")]))
    assert [str(p) for p in declarations.ports] == ["internal:tcp:80"]


def test_nothing_declared_is_not_a_problem():
    declarations = read(dict(JUJU_KEYS))
    assert declarations == Declarations(sources=("principal/0",))


def test_a_version_without_ports_declares_nothing():
    assert read(bag(None)) == Declarations(sources=("principal/0",))


def test_a_failing_relation_get_is_a_problem(monkeypatch: pytest.MonkeyPatch):
    import scenario.mocking

    def refuse(*_: Any, **__: Any) -> dict[str, str]:
        raise ops.ModelError("permission denied")

    backend = scenario.mocking._MockModelBackend  # pyright: ignore[reportPrivateUsage]
    monkeypatch.setattr(backend, "relation_get", refuse)
    declarations = read(bag([entry()]))
    assert declarations.ports == ()
    assert declarations.problems == ("principal/0: cannot read the data: permission denied",)


def test_no_relation_no_declarations():
    ctx = testing.Context(Subordinate, meta=SUBORDINATE_META)
    ctx.run(ctx.on.config_changed(), testing.State())
    assert Subordinate.seen == [Declarations()]


@pytest.mark.parametrize(
    ("ports", "version", "problem"),
    [
        ("{not json", 1, "not valid JSON"),
        ('{"network": "internal"}', 1, "not a list"),
        ("null", 1, "not a list"),
        ([entry()], 2, "interface version 2 is newer"),
        ([entry()], None, "no 'version'"),
        ([entry()], "one", "not a positive integer"),
        ([entry()], 0, "not a positive integer"),
        ([entry()], True, "not a positive integer"),
        ([entry()], "[1]", "not a positive integer"),
        ("[" + " " * lib.MAX_RAW_BYTES + "]", 1, "larger than"),
        ("[" * 100_000 + "]" * 100_000, 1, "larger than"),
    ],
)
def test_malformed_databag_is_a_problem_not_an_exception(ports: Any, version: Any, problem: str):
    declarations = read(bag(ports, version))
    assert declarations.ports == ()
    assert len(declarations.problems) == 1
    assert declarations.problems[0].startswith("principal/0: ")
    assert problem in declarations.problems[0]


def test_deeply_nested_json_is_a_problem_not_an_exception():
    ports = "[" * 10_000 + "]" * 10_000  # under the size cap, deeper than the JSON parser goes
    declarations = read(bag(ports))
    assert declarations.ports == ()
    assert len(declarations.problems) == 1


def test_a_newer_major_version_is_not_parsed():
    # Even valid-looking entries are not taken from data of an unknown major version.
    declarations = read(bag([entry(port=5672)], version=lib.LIBAPI + 1))
    assert declarations.ports == ()
    assert "newer" in declarations.problems[0]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (entry(network="nowhere"), "unknown network 'nowhere'"),
        (entry(port=0), "port 0 is not in 1-65535"),
        (entry(port=70000), "port 70000 is not in 1-65535"),
        (entry(range=[1, 70000]), "port 70000 is not in 1-65535"),
        (entry(range=[9, 3]), "ends before it starts"),
        (entry(protocol="icmp"), "protocol"),
        (entry(port="22"), "port"),
        ("internal:tcp:22", "valid dictionary"),
        ({"network": "internal", "protocol": "tcp"}, "exactly one of 'port' and 'range'"),
    ],
)
def test_bad_entries_are_skipped_and_the_good_ones_kept(bad: Any, problem: str):
    declarations = read(bag([entry(port=5672), bad, entry("data", "udp", port=6081)]))
    assert [str(p) for p in declarations.ports] == ["data:udp:6081", "internal:tcp:5672"]
    assert len(declarations.problems) == 1
    assert declarations.problems[0].startswith("principal/0: entry 1 ignored")
    assert problem in declarations.problems[0]


def test_entries_are_capped():
    many = [entry(port=p) for p in range(1000, 1000 + lib.MAX_ENTRIES + 44)]
    declarations = read(bag(many))
    assert len(declarations.ports) == lib.MAX_ENTRIES
    assert declarations.ports[-1].port == 1000 + lib.MAX_ENTRIES - 1
    assert len(declarations.problems) == 1
    assert "only the first 256" in declarations.problems[0]
    assert "44 ignored" in declarations.problems[0]


def test_several_principals_are_read_and_blamed_by_name():
    declarations = read(bag([entry(port=5672)]), bag([entry("data", "udp", port=6081)], 9))
    assert [str(p) for p in declarations.ports] == ["internal:tcp:5672"]
    assert declarations.sources == ("other0/0", "principal/0")
    assert len(declarations.problems) == 1
    assert declarations.problems[0].startswith("other0/0: interface version 9")


def test_requirer_status_shows_problems_without_error():
    ctx = testing.Context(Subordinate, meta=SUBORDINATE_META)
    relation = sub_relation(bag("{oops"))
    out = ctx.run(ctx.on.relation_changed(relation), testing.State(relations=[relation]))
    assert out.unit_status == testing.BlockedStatus("0 ports")


def test_requirer_emits_ports_changed_on_departed_and_broken():
    ctx = testing.Context(Subordinate, meta=SUBORDINATE_META)
    relation = sub_relation(bag([entry()]))
    state = testing.State(relations=[relation])
    ctx.run(ctx.on.relation_departed(relation, remote_unit=0), state)
    ctx.run(ctx.on.relation_broken(relation), state)
    assert len(Subordinate.seen) == 2
    # On relation-broken the relation is gone from the model: nothing is declared any more.
    assert Subordinate.seen[1].ports == ()


def test_other_endpoints_do_not_emit_ports_changed():
    ctx = testing.Context(Subordinate, meta=SUBORDINATE_META)
    relation = testing.SubordinateRelation("juju-info", remote_app_name="principal")
    ctx.run(ctx.on.relation_changed(relation), testing.State(relations=[relation]))
    assert Subordinate.seen == []
