"""`plan` on a cloud read from MAAS: the conversion, the signed HTTP reads and the command.

A real HTTP server on 127.0.0.1, started and stopped by each test that needs it, answers as
MAAS API 2.0 does: each collection as one JSON list, from the recorded dump of
`recorded/maas/` (its README says where the shapes come from); every request must carry the
OAuth 1.0a PLAINTEXT signature of the test's key, else the answer is MAAS's 401.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from network_isolation import cli, maas, maas_api
from network_isolation.maas_api import ApiKey, MaasApiError
from network_isolation.model import Network
from network_isolation.topology import TopologyError, load_topology

ROOT = Path(__file__).resolve().parents[2]
RECORDED = Path(__file__).parent / "recorded" / "maas"
DUMP = RECORDED / "ten-machines.json"
TOPOLOGY = RECORDED / "ten-machines.yaml"
DEPLOYMENTS = RECORDED / "deployments.yaml"
CLIENTS = "client-cidrs=10.99.0.0/24,fd00:99::/64"
KEY = ApiKey("cOnSuMeRkEy0000001", "tOkEnKeY0000000001", "tOkEnSeCrEt00000000000000000001")
KEY_TEXT = f"{KEY.consumer_key}:{KEY.token_key}:{KEY.token_secret}"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY")


def dump() -> dict[str, Any]:
    return json.loads(DUMP.read_text())


@pytest.fixture(autouse=True)
def own_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A home of the test's own (no deployments.yaml of this machine's user) and no proxy."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return home


def signature_ok(header: str, key: ApiKey) -> bool:
    """MAAS's check: PLAINTEXT, the key's consumer and token, signature `&token_secret`."""
    scheme, _, rest = header.partition(" ")
    if scheme != "OAuth":
        return False
    fields = urllib.request.parse_keqv_list(urllib.request.parse_http_list(rest))
    values = {k: urllib.parse.unquote(v) for k, v in fields.items()}
    return (
        values.get("oauth_signature_method") == "PLAINTEXT"
        and values.get("oauth_consumer_key") == key.consumer_key
        and values.get("oauth_token") == key.token_key
        and values.get("oauth_signature") == f"&{key.token_secret}"
        and values.get("oauth_version") == "1.0"
        and bool(values.get("oauth_nonce"))
        and values.get("oauth_timestamp", "").isdigit()
    )


@dataclass
class FakeMaas:
    """What the server answers, and every request it was sent."""

    collections: dict[str, Any]
    key: ApiKey = KEY
    prefix: str = "/MAAS/api/2.0/"
    requests: list[tuple[str, str]] = field(default_factory=list)


def handler_for(state: FakeMaas) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads `state.requests`."""

        def answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            url = urllib.parse.urlsplit(self.path)
            state.requests.append((url.path, url.query))
            name = url.path.removeprefix(state.prefix).rstrip("/")
            if not url.path.startswith(state.prefix) or name not in state.collections:
                self.answer(404, b"<html><body>Not Found</body></html>", "text/html")
            elif not signature_ok(self.headers.get("Authorization", ""), state.key):
                self.answer(401, b"Authorization Error: 'Invalid access token'", "text/plain")
            elif isinstance(state.collections[name], bytes):
                self.answer(200, state.collections[name], "text/html")
            else:
                body = json.dumps(state.collections[name]).encode()
                self.answer(200, body, "application/json")

    return Handler


@dataclass
class Server:
    state: FakeMaas
    url: str


@pytest.fixture
def server() -> Iterator[Server]:
    """A MAAS stand-in on 127.0.0.1 serving the recorded dump, stopped after the test."""
    state = FakeMaas(collections=dump())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(state, f"http://127.0.0.1:{httpd.server_address[1]}/MAAS")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def refused(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """The one line of a run that must exit 2."""
    status, out, err = run_main(capsys, *args)
    assert (status, out) == (2, ""), err
    assert err.startswith("plan: error: ") and err.count("\n") == 1, err
    return err


def from_dump(path: Path = DUMP, *extra: str | Path) -> tuple[str | Path, ...]:
    return ("--maas-json", path, "--deployments-yaml", DEPLOYMENTS, "--config", CLIENTS, *extra)


# The main proof: the same cloud from MAAS and from a topology file gives the same plan.


def test_the_dump_is_the_topology_file_in_memory() -> None:
    deployment = maas.load_deployment(DEPLOYMENTS)
    topology = maas.topology_from_maas(
        maas.load_dump(DUMP),
        str(DUMP),
        maas.deployment_space_map(deployment, str(DEPLOYMENTS)),
        maas.parse_config([CLIENTS]),
        deployment.resource_tag,
    )
    assert topology == load_topology(TOPOLOGY)
    assert len(topology.machines) == 10  # spare-1 has not the deployment's tag
    assert "spare-1" in {m["hostname"] for m in dump()["machines"]}


@pytest.mark.parametrize("form", ["json", "text", "html"])
def test_same_plan_from_the_dump_as_from_the_file(
    capsys: pytest.CaptureFixture[str], form: str
) -> None:
    from_file = run_main(capsys, TOPOLOGY, "--format", form)
    from_maas = run_main(capsys, *from_dump(DUMP, "--format", form))
    assert from_file[0] == 0 and from_file[2] == ""
    assert from_maas == from_file
    if form == "json":
        plan = json.loads(from_maas[1])
        assert plan["isolation"]["level"] == "maximum"
        assert len(plan["machines"]) == 10


def test_same_plan_read_over_http_by_the_command(server: Server) -> None:
    """As a user runs it: a separate process, the key signed, the server on loopback."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env.update(PYTHONPATH=str(ROOT / "src"), HOME=os.environ["HOME"])
    command = [sys.executable, "-m", "network_isolation.cli", "--format", "json"]
    options = ["--deployments-yaml", str(DEPLOYMENTS), "--config", CLIENTS]
    live = subprocess.run(
        [*command, "--maas", server.url, "--api-key", KEY_TEXT, *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (live.returncode, live.stderr) == (0, "")
    from_file = subprocess.run(
        [*command, str(TOPOLOGY)], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    assert json.loads(live.stdout) == json.loads(from_file.stdout)
    paths = [path for path, _ in server.state.requests]
    assert paths == [f"/MAAS/api/2.0/{name}/" for name in ("machines", "subnets", "spaces")]


# The HTTP side: signing, paging, errors.


def test_the_key_is_split_and_signed_as_maas_checks_it() -> None:
    key = ApiKey.parse(f" {KEY_TEXT}\n")
    assert key == KEY
    header = key.authorization("http://127.0.0.1:5240/MAAS/api/2.0/machines/")
    assert signature_ok(header, KEY)
    assert 'oauth_signature="%26tOkEnSeCrEt' in header
    assert not signature_ok(header, ApiKey(KEY.consumer_key, KEY.token_key, "other"))
    assert KEY.token_secret not in repr(key)


@pytest.mark.parametrize(
    "text", ["", "a:b", "a:b:c:d", "a::c", "consumer-key-only", ":b:c"], ids=repr
)
def test_a_malformed_key_is_refused(text: str) -> None:
    with pytest.raises(MaasApiError, match="expected CONSUMER_KEY:TOKEN_KEY:TOKEN_SECRET"):
        ApiKey.parse(text)


@pytest.mark.parametrize(
    "url",
    [
        "http://maas.example:5240/MAAS",
        "http://maas.example:5240/MAAS/",
        "http://maas.example:5240/MAAS/api/2.0",
        "http://maas.example:5240/MAAS/api/2.0/",
    ],
)
def test_the_api_root_from_the_urls_people_give(url: str) -> None:
    assert maas_api.api_root(url) == "http://maas.example:5240/MAAS/api/2.0/"


@pytest.mark.parametrize("url", ["maas.example:5240/MAAS", "file:///etc/passwd", "http:///MAAS"])
def test_what_is_not_an_http_url_is_refused(url: str) -> None:
    with pytest.raises(MaasApiError, match="is not an http"):
        maas_api.api_root(url)


def test_each_collection_comes_whole_from_one_request(server: Server) -> None:
    """API 2.0 pages none of the three: one GET each, no offset or limit, every machine."""
    many = copy.deepcopy(dump())
    spare = many["machines"][-1]
    for n in range(2, 150):
        many["machines"].append({**spare, "hostname": f"spare-{n}", "system_id": f"s{n:05d}"})
    server.state.collections = many
    cloud = maas_api.read_cloud(server.url, KEY)
    assert cloud == many
    assert server.state.requests == [
        ("/MAAS/api/2.0/machines/", ""),
        ("/MAAS/api/2.0/subnets/", ""),
        ("/MAAS/api/2.0/spaces/", ""),
    ]


def test_a_paged_answer_is_not_taken_for_a_list(server: Server) -> None:
    """MAAS's v3 API pages (`items`, `next`); an answer of that shape is refused, not cut."""
    machines = dump()["machines"]
    server.state.collections["machines"] = {"items": machines[:2], "total": 11, "next": "p=2"}
    with pytest.raises(MaasApiError, match="machines/: expected a JSON list"):
        maas_api.read_cloud(server.url, KEY)


def test_a_bad_key_gets_401(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = f"{KEY.consumer_key}:{KEY.token_key}:not-the-secret"
    err = refused(capsys, "--maas", server.url, "--api-key", wrong)
    assert "MAAS refused the API key (HTTP 401 Unauthorized)" in err
    assert "not-the-secret" not in err
    assert server.state.requests == [("/MAAS/api/2.0/machines/", "")]


def test_a_malformed_key_is_refused_before_any_request(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(capsys, "--maas", server.url, "--api-key", "just-one-part")
    assert "--api-key: expected CONSUMER_KEY:TOKEN_KEY:TOKEN_SECRET" in err
    assert "just-one-part" not in err
    assert server.state.requests == []


def test_nothing_listening(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    err = refused(capsys, "--maas", f"http://127.0.0.1:{port}/MAAS", "--api-key", KEY_TEXT)
    assert f"cannot reach MAAS at http://127.0.0.1:{port}/MAAS/api/2.0/machines/" in err
    assert "refused" in err.lower()


def test_a_server_that_is_not_maas(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = server.url.replace("/MAAS", "/not-maas")
    err = refused(capsys, "--maas", elsewhere, "--api-key", KEY_TEXT)
    assert "HTTP 404 Not Found: is this MAAS?" in err
    server.state.collections["machines"] = b"<html><body>Welcome</body></html>"
    err = refused(capsys, "--maas", server.url, "--api-key", KEY_TEXT)
    assert "the answer is not JSON: is this MAAS?" in err


# The conversion's refusals: one line, exit status 2.


def write_dump(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "dump.json"
    path.write_text(json.dumps(data))
    return path


def test_a_machine_without_a_role_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = dump()
    storage = next(m for m in data["machines"] if m["hostname"] == "storage-2")
    storage["tag_names"] = ["openstack-racks", "virtual"]
    err = refused(capsys, *from_dump(write_dump(tmp_path, data)))
    assert "machines.storage-2: no role tag (Sunbeam's role tags: control," in err
    assert "region_controller" in err


def test_machines_outside_the_deployment_are_left_out_not_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """spare-1 has no role tag but no deployment tag either; without the tag filter, refused."""
    status, out, _ = run_main(capsys, *from_dump(DUMP, "--format", "json"))
    assert status == 0 and "spare-1" not in json.loads(out)["machines"]
    space_map = "management=oam,internal=internal,public=public,data=tenant"
    space_map += ",storage=ceph-public,storage-cluster=ceph-repl"
    err = refused(capsys, "--maas-json", DUMP, "--space-map", space_map)
    assert "machines.spare-1: no role tag" in err


def test_a_network_on_a_space_maas_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, *from_dump(DUMP, "--space-map", "storage=ceph"))
    assert "network 'storage' maps to space 'ceph', which MAAS does not have" in err
    assert "(its spaces: ceph-public, ceph-repl, internal, ipmi, oam, public, tenant)" in err


def test_a_network_no_space_carries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deployments = tmp_path / "deployments.yaml"
    text = DEPLOYMENTS.read_text().replace("storage-cluster: ceph-repl", "storage-cluster: null")
    deployments.write_text(text)
    err = refused(capsys, "--maas-json", DUMP, "--deployments-yaml", deployments)
    assert "network 'storage-cluster' maps to no space (map it with --space-map" in err
    status, _, _ = run_main(
        capsys,
        *("--maas-json", DUMP, "--deployments-yaml", deployments),
        *("--space-map", "storage-cluster=ceph-repl", "--config", CLIENTS),
    )
    assert status == 0


@pytest.mark.parametrize(
    ("space_map", "problem"),
    [
        ("storage-net=ceph-public", "unknown network 'storage-net' (known: data, internal,"),
        ("storage:ceph-public", "expected NAME=VALUE, got 'storage:ceph-public'"),
        ("storage=", "expected NAME=VALUE, got 'storage='"),
    ],
)
def test_a_bad_space_map(capsys: pytest.CaptureFixture[str], space_map: str, problem: str) -> None:
    err = refused(capsys, *from_dump(DUMP, "--space-map", space_map))
    assert f"plan: error: --space-map: {problem}" in err


def test_the_space_map_overrides_the_deployments_one(capsys: pytest.CaptureFixture[str]) -> None:
    """storage-cluster moved onto storage's space: the two share their subnets."""
    status, out, _ = run_main(
        capsys, *from_dump(DUMP, "--space-map", "storage-cluster=ceph-public", "--format", "json")
    )
    assert status == 0
    assert json.loads(out)["isolation"]["level"] == "partial"


def test_deployments_yaml_is_found_in_the_home(
    own_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    without = refused(capsys, "--maas-json", DUMP)
    assert "maps to no space" in without
    sunbeam = own_home / ".local" / "share" / "openstack"
    sunbeam.mkdir(parents=True)
    (sunbeam / "deployments.yaml").write_text(DEPLOYMENTS.read_text())
    status, out, err = run_main(capsys, "--maas-json", DUMP, "--config", CLIENTS)
    assert (status, err) == (0, "")
    assert out == run_main(capsys, TOPOLOGY)[1]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("active: local\ndeployments: [{name: local, type: local, url: local}]\n", "not a MAAS"),
        ("active: gone\ndeployments: []\n", "active: no active deployment"),
        ("{}\n", "active: no active deployment"),
        ("active: [\n", "not valid YAML"),
    ],
)
def test_a_deployments_yaml_without_an_active_maas_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    deployments = tmp_path / "deployments.yaml"
    deployments.write_text(text)
    err = refused(capsys, "--maas-json", DUMP, "--deployments-yaml", deployments)
    assert f"{deployments}: " in err and problem in err


def test_config_reaches_the_same_checks(capsys: pytest.CaptureFixture[str]) -> None:
    """The guide's role table knows no `sunbeam` role; an unknown option is no option."""
    err = refused(capsys, *from_dump(DUMP, "--config", "role-table=guide"))
    assert "config.role-table" not in err
    assert "machines.infra-1.roles: unknown role 'sunbeam' in role table 'guide'" in err
    err = refused(capsys, *from_dump(DUMP, "--config", "colour=blue"))
    assert "config.colour: not an option of this charm" in err


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.pop("subnets"), "subnets: Field required"),
        (lambda d: d["machines"][0].pop("hostname"), "machines.0.hostname: Field required"),
        (lambda d: d.update(machines=[]), "machines: no machine tagged 'openstack-racks'"),
    ],
    ids=["no-subnets", "no-hostname", "no-machines"],
)
def test_a_dump_of_the_wrong_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, problem: str
) -> None:
    data = dump()
    change(data)
    err = refused(capsys, *from_dump(write_dump(tmp_path, data)))
    assert problem in err


def test_a_dump_that_is_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dump.json"
    path.write_text('{"machines": [')
    assert "not valid JSON" in refused(capsys, *from_dump(path))
    assert "No such file" in refused(capsys, *from_dump(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    "args",
    [
        (TOPOLOGY, "--maas-json", DUMP),
        ("--maas", "http://127.0.0.1:9/MAAS"),
        ("--api-key", KEY_TEXT, "--maas-json", DUMP),
        ("--maas", "http://127.0.0.1:9/MAAS", "--api-key", KEY_TEXT, "--maas-json", DUMP),
        (TOPOLOGY, "--space-map", "storage=ceph-public"),
        (),
    ],
    ids=["file-and-dump", "no-key", "key-without-maas", "maas-and-dump", "map-with-file", "none"],
)
def test_one_source_at_a_time(capsys: pytest.CaptureFixture[str], args: tuple[str, ...]) -> None:
    refused(capsys, *args)


# The pieces of the conversion.


def test_a_subnet_space_is_its_vlans_and_undefined_is_none() -> None:
    subnet = maas.MaasSubnet.model_validate({"cidr": "10.0.0.0/24", "vlan": {"space": "oam"}})
    assert subnet.space_name == "oam"
    assert maas.MaasSubnet.model_validate({"cidr": "10.0.0.0/24"}).space_name is None
    undefined = {"cidr": "10.0.0.0/24", "space": "undefined", "vlan": {"space": "undefined"}}
    assert maas.MaasSubnet.model_validate(undefined).space_name is None


def test_links_without_an_address_give_none() -> None:
    subnet = {"cidr": "fd00:10:1::/64"}
    auto = maas.MaasLink.model_validate({"mode": "auto", "subnet": subnet})
    static = maas.MaasLink.model_validate(
        {"mode": "static", "ip_address": "fd00:10:1::5", "subnet": subnet}
    )
    assert (auto.address(), static.address()) == (None, "fd00:10:1::5/64")
    assert maas.MaasLink.model_validate({"mode": "link_up"}).address() is None


def test_role_tags_are_sunbeams() -> None:
    machine = maas.MaasMachine.model_validate(
        {"hostname": "m", "tag_names": ["region_controller", "compute", "virtual", "Control"]}
    )
    assert machine.roles() == ["compute", "region-controller"]


def test_the_space_map_names_only_the_six_networks() -> None:
    assert maas.parse_space_map(["data=tenant,storage=ceph", "data=other"]) == {
        Network.DATA: "other",
        Network.STORAGE: "ceph",
    }
    with pytest.raises(TopologyError, match="unknown network 'tenant'"):
        maas.parse_space_map(["tenant=data"])
