"""The test bed's agent: runs inside the bed's sandbox and does everything there.

Started by `testbed.Sandbox`, usually under `unshare --user --net --mount` so that it, and every
network namespace it creates, is cut off from the host's network. It reads one JSON request
per line on stdin and answers with one JSON line on stdout. Standard library only: it runs
with whatever Python started the tests, inside the sandbox.

Requests (`op`):
- `run`: run a command (argv, optional stdin text); answers rc, out, err.
- `sysctl`: write /proc/sys/net settings inside a named network namespace.
- `listen`: TCP and UDP echo servers on given addresses and ports inside a namespace.
- `probe`: send many probes in parallel, each from a namespace with an explicit source
  address, and report pass (the echo came back), drop (nothing came back) or error.
- `seen`: which probe tokens the servers received (for one-way, spoofed probes).

A probe's socket is created after `setns()` into the sender's namespace (network namespaces
are per thread), so one process serves every namespace of the bed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, cast

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
_netns_fds: dict[str, int] = {}
_netns_lock = threading.Lock()
_home_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
_seen: set[str] = set()
_seen_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _netns_fd(name: str) -> int:
    with _netns_lock:
        if name not in _netns_fds:
            _netns_fds[name] = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        return _netns_fds[name]


@contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body in the named namespace (this thread only), then come back."""
    _setns(_netns_fd(name))
    try:
        yield
    finally:
        _setns(_home_fd)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _record(data: bytes) -> None:
    token = data.decode(errors="replace").strip()
    if token:
        with _seen_lock:
            _seen.add(token)


def _serve(sel: selectors.BaseSelector) -> None:
    """Echo every TCP line and UDP datagram back to its sender; forever."""
    while True:
        for key, _ in sel.select():
            sock = cast(socket.socket, key.fileobj)
            kind = key.data
            try:
                if kind == "udp":
                    data, peer = sock.recvfrom(2048)
                    _record(data)
                    sock.sendto(data, peer)
                elif kind == "tcp-listen":
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "tcp-conn")
                else:
                    data = sock.recv(2048)
                    if data:
                        _record(data)
                        sock.setblocking(True)
                        sock.settimeout(1.0)
                        sock.sendall(data)
                    sel.unregister(sock)
                    sock.close()
            except OSError:
                if kind == "tcp-conn":
                    sel.unregister(sock)
                    sock.close()


def op_listen(req: dict[str, Any]) -> dict[str, Any]:
    """Bind echo servers on every (address, port) inside the namespace."""
    sel = selectors.DefaultSelector()
    errors: list[str] = []
    with netns(req["ns"]):
        for address in req["addresses"]:
            family = _family(address)
            for proto, ports in (("tcp", req["tcp"]), ("udp", req["udp"])):
                for port in ports:
                    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
                    sock = socket.socket(family, kind)
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.bind((address, port))
                        if proto == "tcp":
                            sock.listen(512)
                    except OSError as e:
                        errors.append(f"{proto} [{address}]:{port}: {e}")
                        sock.close()
                        continue
                    sock.setblocking(False)
                    sel.register(
                        sock, selectors.EVENT_READ, proto if proto == "udp" else "tcp-listen"
                    )
    threading.Thread(target=_serve, args=(sel,), daemon=True).start()
    return {"ok": not errors, "errors": errors}


def _probe(probe: dict[str, Any]) -> dict[str, Any]:
    family = _family(probe["dst"])
    proto = probe["proto"]
    token = f"{probe['id']}-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    result: dict[str, Any] = {"id": probe["id"], "token": token}
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        with netns(probe["ns"]):
            sock = socket.socket(family, kind)
    except OSError as e:
        return {**result, "got": "error", "detail": str(e)}
    try:
        if probe.get("transparent"):
            level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.IPPROTO_IP
            opt = IPV6_TRANSPARENT if family == socket.AF_INET6 else IP_TRANSPARENT
            sock.setsockopt(level, opt, 1)
        sock.bind((probe["src"], 0))
        sock.settimeout(probe["timeout"])
        sock.connect((probe["dst"], probe["port"]))
        sock.send(f"{token}\n".encode())
        if probe.get("oneway"):
            return {**result, "got": "sent", "detail": ""}
        data = sock.recv(2048)
        if data.decode(errors="replace").strip() == token:
            got, detail = "pass", ""
        else:
            got, detail = "error", f"unexpected reply {data[:40]!r}"
    except TimeoutError:
        got, detail = "drop", "timeout"
    except ConnectionRefusedError:
        got, detail = "error", "connection refused (no listener?)"
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            got, detail = "drop", f"{errno.errorcode[e.errno]} (dropped on the way out)"
        else:
            got, detail = "error", str(e)
    finally:
        sock.close()
    return {**result, "got": got, "detail": detail, "ms": round(1000 * (time.monotonic() - start))}


def op_probe(req: dict[str, Any]) -> dict[str, Any]:
    """All probes in parallel; results in the order given."""
    with ThreadPoolExecutor(max_workers=req.get("workers", 96)) as pool:
        return {"results": list(pool.map(_probe, req["probes"]))}


def op_seen(req: dict[str, Any]) -> dict[str, Any]:
    """Which of these tokens some server received."""
    with _seen_lock:
        return {"seen": [t for t in req["tokens"] if t in _seen]}


def op_run(req: dict[str, Any]) -> dict[str, Any]:
    """Run a command inside the sandbox."""
    try:
        proc = subprocess.run(
            req["argv"],
            input=req.get("input"),
            capture_output=True,
            text=True,
            timeout=req.get("timeout", 60),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"rc": 127, "out": "", "err": str(e)}
    return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}


def op_sysctl(req: dict[str, Any]) -> dict[str, Any]:
    """Write net sysctls inside a namespace (/proc/sys/net follows the opener's netns)."""
    with netns(req["ns"]):
        for key, value in req["settings"].items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(str(value))
    return {"ok": True}


OPS = {
    "run": op_run,
    "sysctl": op_sysctl,
    "listen": op_listen,
    "probe": op_probe,
    "seen": op_seen,
    "ping": lambda req: {"pid": os.getpid(), "uid": os.getuid()},
}


def main() -> None:
    """Serve requests until stdin closes; die with the test process in any case."""
    _libc.prctl(PR_SET_PDEATHSIG, 9)
    out = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = OPS[req["op"]](req)
        except Exception as e:  # every failure goes back to the test
            answer = {"exception": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
