"""Local links: an app on the same host as an agent reaches it over a Unix socket, not TCP
(docs/agents.md, "Encryption", "On one host").

    path = ipc_path(plan_id, device)         # an agent: where to bind, in a folder only its user may enter
    endpoint = reach(ann_endpoint, ann_ipc)  # a session: the ipc:// endpoint when that agent is on this host

CURVE protects what crosses a network; on one host it would only spend the cipher on every byte of
the app's input (measured: bench/bench_secure.py). The socket's folder is mode 0700, so only the
agent's user (and root) can connect, and the agent's ZAP handler checks the peer's uid, which the
kernel gives: the same processes that could read the bundle's keys anyway.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("edgepart")

IPC = "ipc://"
_MAX_PATH = 100  # a Unix socket's path is at most 107 bytes


def _folders() -> list[Path]:
    """Where this user's agents put their sockets: under $XDG_RUNTIME_DIR where it is set, else the
    temp folder (an agent run as a service and an app in a login shell may see either)."""
    name = f"edgepart-{os.getuid()}"
    bases = [os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir()]
    return list(dict.fromkeys(Path(b) / name for b in bases if b))


def _private(d: Path) -> bool:
    """A real folder (not a link), this user's, that no one else may enter."""
    try:
        st = d.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def ipc_dir() -> Path | None:
    """This user's folder for agents' sockets (made 0700), or None where it cannot be trusted."""
    d = _folders()[0]
    try:
        d.mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        log.info("no local socket for apps on this host (%s): they will use encrypted TCP", e)
        return None
    if not _private(d):
        log.warning("%s is not a private folder of this user: apps on this host will use encrypted TCP", d)
        return None
    return d


def ipc_path(plan_id: str, device: str) -> Path | None:
    """Where an agent of `device` binds its local socket; stale sockets of dead agents are removed."""
    d = ipc_dir()
    if d is None:
        return None
    _sweep(d)
    label = "".join(c if c.isalnum() or c == "-" else "-" for c in device)[:40]
    path = d / f"{plan_id[:16]}-{label}-{os.getpid()}.sock"
    if len(str(path)) > _MAX_PATH:
        log.info("no local socket for apps on this host: %s is longer than a Unix socket's path may be", path)
        return None
    return path


def _sweep(d: Path) -> None:
    """Remove the sockets of agents that no longer run (a SIGKILL leaves its file behind)."""
    for p in d.glob("*.sock"):
        pid = p.stem.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_local_address(ip: str) -> bool:
    """True when `ip` is an address of this host (in this network namespace)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def reach(tcp_endpoint: str, ipc: str) -> str:
    """The endpoint a session on this host connects to: the agent's Unix socket when it runs here
    (its address is this host's and its socket is in this user's folder), else its TCP endpoint."""
    if not ipc or os.environ.get("EDGEPART_LOCAL_IPC", "1") == "0":
        return tcp_endpoint
    path = Path(ipc)
    host = tcp_endpoint[len("tcp://"):].rpartition(":")[0]
    try:
        # only in this user's own folders: an announcement must not point the app at another socket
        ok = (path.parent in _folders() and _private(path.parent) and stat.S_ISSOCK(path.lstat().st_mode)
              and is_local_address(host))
    except OSError:
        ok = False
    return f"{IPC}{path}" if ok else tcp_endpoint


def peer_uid_ok(zap_address: str) -> bool:
    """Whether a connection on the local socket comes from this user or root: libzmq gives the
    ZAP handler an IPC peer as `host:uid:gid:pid` (the kernel's SO_PEERCRED)."""
    parts = zap_address.split(":")
    return len(parts) == 4 and parts[1].isdigit() and int(parts[1]) in (os.getuid(), 0)
