"""What cannot run here, as one program: Juju's hook tools and the host's system commands.

Symlinked under each tool's name (`relation-get`, `status-set`, ..., and in a private mount
namespace over `/usr/sbin/nft`, `/usr/sbin/netplan`, `/usr/bin/systemctl`,
`/usr/bin/systemd-run`, `/sbin/ip`, `/sbin/tc`, `/usr/sbin/bpftool`), it acts on the name it
was called by:

- hook tools answer from, and write to, `juju.json` in its bed directory: the unit, leadership,
  config, the bindings as `network-get` gives them, the relations with their databags, the
  running action, the statuses;
- `nft`, `netplan generate`, the read-only `ip -j route show default`, the read-only look for
  BPF programs (`ip -details link`, `tc filter show`, `bpftool net`) and the deletion of our
  stale rules and routes run the real binary (the bed names where the namespace keeps it);
  `netplan apply`, `systemctl` and `systemd-run` would touch this machine, so they only do what
  their effect on the files would be.

Every call is appended to `calls.jsonl` (tool, arguments, the hook running, whether it could be
answered). It runs once per call, as `python -IS`: the standard library only, and none of the
slow-to-import parts (pathlib, typing), so a hook pays little more than Juju's own tools cost.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

STATE_FILE, CALLS_FILE = "juju.json", "calls.jsonl"
HOST_TOOLS = ("nft", "netplan", "systemctl", "systemd-run", "ip", "tc", "bpftool")
READ_ONLY_IP = [["-j", family, "route", "show", "default"] for family in ("-4", "-6")]
READ_ONLY_IP.append(["-details", "-json", "link", "show"])  # the look for XDP programs


class ToolError(Exception):
    """A call Juju (or the host tool) would reject: its message goes to stderr, exit 1."""


def fake_systemctl(root: str | os.PathLike[str], args: Sequence[str]) -> None:
    """What `systemctl enable/disable` would do to ROOT/etc; anything else does nothing.

    The link goes where the unit's `WantedBy=` says (`disable --now` included).
    """
    if args[:1] not in (["enable"], ["disable"]):
        return
    unit = args[-1]
    units = os.path.join(root, "etc/systemd/system")
    with open(os.path.join(units, unit)) as f:
        wanted_by = re.search(r"^WantedBy=(\S+)$", f.read(), re.MULTILINE)
    if wanted_by is None:
        raise ToolError(f"{unit} has no WantedBy=")
    wants = os.path.join(units, f"{wanted_by.group(1)}.wants")
    link = os.path.join(wants, unit)
    if os.path.lexists(link):
        os.unlink(link)
    if args[0] == "enable":
        os.makedirs(wants, exist_ok=True)
        os.symlink(f"/etc/systemd/system/{unit}", link)


# -- the hook tools ----------------------------------------------------------------------------


class Juju:
    """One hook tool call against the model in juju.json."""

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.changed = False

    def _relation(self, ref: str | None) -> dict[str, Any]:
        ref = ref or os.environ.get("JUJU_RELATION_ID", "")
        rid = int(ref.rsplit(":", 1)[-1]) if ref else -1
        for relation in self.state["relations"]:
            if relation["id"] == rid and (":" not in ref or ref.startswith(relation["endpoint"])):
                return relation
        raise ToolError(f"invalid value {ref!r} for option -r: relation not found")

    def is_leader(self, args: list[str]) -> Any:
        return self.state["leader"]

    def config_get(self, args: list[str]) -> Any:
        keys = [a for a in args if not a.startswith("-")]
        return self.state["config"][keys[0]] if keys else self.state["config"]

    def network_get(self, args: list[str]) -> Any:
        binding = [a for a in args if not a.startswith("-")][-1]
        if binding not in self.state["networks"]:
            raise ToolError(f'no network config found for binding "{binding}"')
        return self.state["networks"][binding]

    def relation_ids(self, args: list[str]) -> Any:
        endpoint = [a for a in args if not a.startswith("-")][0]
        return [
            f"{r['endpoint']}:{r['id']}"
            for r in self.state["relations"]
            if r["endpoint"] == endpoint
        ]

    def relation_list(self, args: list[str]) -> Any:
        relation = self._relation(_option(args, "-r"))
        return relation["remote_app"] if "--app" in args else relation["units"]

    def relation_get(self, args: list[str]) -> Any:
        relation = self._relation(_option(args, "-r"))
        rest = _positional(args, "-r")
        key = rest[0] if rest else "-"
        owner = rest[1] if len(rest) > 1 else os.environ.get("JUJU_REMOTE_UNIT", "")
        data = relation["data"].get(owner, {})
        return data if key == "-" else data.get(key)

    def relation_set(self, args: list[str]) -> Any:
        relation = self._relation(_option(args, "-r"))
        unit = self.state["unit"]
        owner = unit.split("/")[0] if "--app" in args else unit
        if "--app" in args and not self.state["leader"]:
            raise ToolError("cannot write relation settings: this unit is not the leader")
        data = relation["data"].setdefault(owner, {})
        for key, value in json.loads(sys.stdin.read() or "{}").items():
            if value == "":
                data.pop(key, None)
            else:
                data[key] = str(value)
        self.changed = True

    def status_set(self, args: list[str]) -> Any:
        whose = "application" if "--application=True" in args else "unit"
        rest = [a for a in args if not a.startswith("--application")]
        message = rest[rest.index("--") + 1] if "--" in rest else ""
        self.state["status"][whose] = {"status": rest[0], "message": message}
        self.changed = True

    def status_get(self, args: list[str]) -> Any:
        whose = "application" if "--application=true" in args else "unit"
        status = self.state["status"].get(whose, {"status": "unknown", "message": ""})
        return {**status, "status-data": {}}

    def action_get(self, args: list[str]) -> Any:
        keys = [a for a in args if not a.startswith("-")]
        params = self._action()["params"]
        return params[keys[0]] if keys else params

    def action_set(self, args: list[str]) -> Any:
        for pair in args:
            key, _, value = pair.partition("=")
            self._action()["results"][key] = value
        self.changed = True

    def action_fail(self, args: list[str]) -> Any:
        self._action()["failed"] = args[-1] if args else "action failed"
        self.changed = True

    def action_log(self, args: list[str]) -> Any:
        self._action()["log"].append(args[-1])
        self.changed = True

    def juju_log(self, args: list[str]) -> Any:
        return None  # the call itself is recorded

    def _action(self) -> dict[str, Any]:
        action = self.state.get("action")
        if not action or os.environ.get("JUJU_ACTION_NAME") != action["name"]:
            raise ToolError("not running an action")
        return action


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _positional(args: list[str], *with_values: str) -> list[str]:
    """Arguments that are neither flags nor the values of `with_values` options."""
    rest: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in with_values:
            skip = True
        elif not arg.startswith("-") or arg == "-":
            rest.append(arg)
    return rest


def hook_tool(name: str, args: list[str], bed: str) -> int:
    """Answer one hook tool call; exit status 1 with Juju-like stderr for what Juju refuses."""
    if name not in HOOK_TOOLS:
        print(f"ERROR {name}: not a hook tool this model provides", file=sys.stderr)
        return 1
    state_path = os.path.join(bed, STATE_FILE)
    with open(state_path) as f:
        juju = Juju(json.load(f))
    method: Callable[[list[str]], Any] = getattr(juju, name.replace("-", "_"))
    try:
        answer = method(args)
    except ToolError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    if juju.changed:
        with open(state_path, "w") as f:
            json.dump(juju.state, f, indent=1, sort_keys=True)
    if "--format=json" in args:
        print(json.dumps(answer))
    return 0


# -- the host's commands -----------------------------------------------------------------------


def host_verdict(name: str, args: list[str]) -> str:
    """`real` (safe in the namespace), `fake` (would touch this machine) or `refused`."""
    if name == "nft" or (name == "ip" and args in READ_ONLY_IP):
        return "real"
    if name == "ip" and args[1:3] in (["rule", "del"], ["route", "del"]):
        return "real"  # our stale routing, in the namespace's own tables
    if (name == "tc" and args[:3] == ["-json", "filter", "show"]) or (
        name == "bpftool" and args == ["--json", "net", "show"]
    ):
        return "real"  # the read-only look for BPF programs, in the namespace
    if name == "netplan" and args[:1] == ["generate"] and "--root-dir" in args:
        return "real"  # it writes only under its --root-dir
    if (name == "netplan" and args == ["apply"]) or name in ("systemctl", "systemd-run"):
        return "fake"
    return "refused"


def host_tool(name: str, args: list[str], bed: str) -> int:
    """Run the real binary where it is safe in the namespace; fake what would touch the machine."""
    verdict = host_verdict(name, args)
    if verdict == "real":
        with open(os.path.join(bed, STATE_FILE)) as f:
            real: str = json.load(f)["host"]["real"][name]
        os.execv(real, [real, *args])
    if verdict == "refused":
        print(f"{name}: refused in the test's namespace: {' '.join(args)}", file=sys.stderr)
        return 127
    if name == "systemctl":
        fake_systemctl("/", args)
    return 0


def main(argv: list[str], bed: str) -> int:
    """Record the call, then act as the tool named by argv[0]."""
    name, args = os.path.basename(argv[0]), argv[1:]
    answered = host_verdict(name, args) != "refused" if name in HOST_TOOLS else name in HOOK_TOOLS
    hook = os.environ.get("JUJU_DISPATCH_PATH", "")
    record = {"tool": name, "args": args, "hook": hook, "answered": answered}
    with open(os.path.join(bed, CALLS_FILE), "a") as calls:
        calls.write(json.dumps(record) + "\n")
    if name in HOST_TOOLS:
        return host_tool(name, args, bed)
    return hook_tool(name, args, bed)


HOOK_TOOLS = frozenset(n.replace("_", "-") for n in vars(Juju) if not n.startswith("_"))
