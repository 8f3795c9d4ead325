"""CURVE on every link: an agent serves only its plan's keys, and connects only to the key of the
device it means (docs/agents.md, "Encryption").

    guard = Guard(credentials, ctx, router, name)   # an agent: CURVE server + ZAP, refusals logged
    secure_client(sock, credentials, role)         # any DEALER, before connect(): pins `role`'s key (link.py)

ZeroMQ asks the ZAP handler (RFC 27) about every CURVE handshake on a server socket; ours answers
from the set of public keys in the bundle's manifest, on a thread of its own so a long step on the
data plane never delays a handshake. A sender without an accepted key never completes its handshake,
so none of its bytes reach the request table; an accepted one is named (`who`: the device or client
its key belongs to) on every message it sends, which the agent checks against the name the message
gives and bounds per sender (docs/agents.md, "Admission"). The same thread watches the ROUTER's handshake
failures (a plaintext client meeting a CURVE agent) and logs each kind once. A `Credentials` without a
keypair (--insecure) leaves sockets plaintext.
"""

from __future__ import annotations

import logging
import threading

import zmq
from zmq.utils import z85

from edgepart.keys import Credentials

from .link import WarnOnce
from .local import IPC, ipc_path, peer_uid_ok

log = logging.getLogger("edgepart")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DEVICE, CLIENT, LOCAL = "device:", "client:", "local:"  # how the ZAP handler names a connection (its User-Id)
_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
             | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class Guard:
    """The agent's side: its ROUTER made a CURVE server, and the ZAP handler for its context."""

    def __init__(self, credentials: Credentials, ctx: zmq.Context, router: zmq.Socket, name: str):
        self.credentials = credentials
        keys = credentials.keys
        # public key -> the name every message on its connection carries (zmq's User-Id)
        self.names = {**{k: f"{CLIENT}{n}" for n, k in keys.clients.items()},
                      **{k: f"{DEVICE}{n}" for n, k in keys.devices.items()}}
        self.refused = 0  # handshakes refused (a wrong key, or plaintext against CURVE)
        self._warn = WarnOnce(limit=256)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not credentials.secure:
            return
        # the handler must be bound before the server socket accepts its first connection
        self._zap = ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(ZAP_ENDPOINT)
        router.zap_domain = b"edgepart"
        # fail closed: with no handler bound (this one stopped first at shutdown), libzmq would
        # otherwise accept every handshake
        router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        router.curve_server = True
        router.curve_secretkey = credentials.me.secret.encode()
        router.curve_publickey = credentials.me.public.encode()
        self._mon = router.get_monitor_socket(_FAILURES)
        self._router = router
        self._thread = threading.Thread(target=self._serve, name=f"edgepart-zap-{name}", daemon=True)
        self._thread.start()

    def bind_local(self, plan_id: str, device: str) -> str:
        """Bind the ROUTER also on a Unix socket for apps on this host, plaintext (no CURVE) and
        open to this user and root only (agent/net/local.py); its path, or "" when there is none."""
        path = ipc_path(plan_id, device) if self.credentials.secure else None
        if path is None:
            return ""
        r = self._router
        r.curve_server = False  # (libzmq takes a listener's mechanism from the options at bind)
        try:
            r.bind(f"{IPC}{path}")
        except zmq.ZMQError as e:
            log.debug("no local socket at %s: %s", path, e)
            return ""
        finally:
            r.curve_server = True
        return str(path)

    def close(self) -> None:
        """Stop the handler (before the context is destroyed)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(5)
        self._thread = None

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._zap, zmq.POLLIN)
        poller.register(self._mon, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(100):
                    if sock is self._zap:
                        self._answer()
                    else:
                        self._failure()
        except zmq.ZMQError as e:  # the context is going away
            log.debug("zap handler: %s", e)
        finally:
            try:
                self._router.disable_monitor()
            except zmq.ZMQError:  # (the ROUTER is the data thread's: only its monitor is stopped here)
                pass
            self._mon.close(0)
            self._zap.close(0)

    def _answer(self) -> None:
        msg = self._zap.recv_multipart()
        # version, request id, domain, address, identity, mechanism, credentials...
        if len(msg) < 6 or msg[0] != b"1.0":
            self._zap.send_multipart([b"1.0", msg[1] if len(msg) > 1 else b"", b"500", b"malformed ZAP request", b"", b""])
            return
        rid, address, mechanism = msg[1], msg[3].decode(errors="replace"), msg[5]
        if mechanism == b"CURVE" and len(msg) >= 7:
            name = self.names.get(z85.encode(msg[6]).decode())
        elif mechanism == b"NULL" and peer_uid_ok(address):  # the local socket (the TCP one is CURVE only)
            name = f"{LOCAL}{address.rsplit(':', 1)[-1]}"
        else:
            name = None
        ok = name is not None
        if not ok and mechanism == b"NULL":
            self.refused += 1
            self._warn(f"local:{address}", "refused a local connection from uid %s (pid %s): only this agent's "
                       "user and root may use its local socket (docs/agents.md, \"On one host\")",
                       *(address.split(":")[1:4:2] if address.count(":") == 3 else ("?", "?")))
        elif not ok:
            self.refused += 1
            self._warn(f"key:{address}", "refused a connection from %s: its key is not one of this plan's "
                       "(another plan's bundle, or an app without the plan's key: docs/agents.md, \"Encryption\")",
                       address)
        self._zap.send_multipart([b"1.0", rid, b"200" if ok else b"400", b"OK" if ok else b"unknown key",
                                  name.encode() if ok else b"", b""])

    def _failure(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        ev = recv_monitor_message(self._mon)
        if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return  # ZAP said no: logged with the address above
        self.refused += 1
        # INFO, once: a static peer trying the plan's keys in turn fails here on purpose (link.py)
        (log.debug if self.refused > 1 else log.info)("a connection failed its handshake: not encrypted with this plan's keys (a peer started "
                 "with --insecure, an older edgepart, or a static peer trying another device's key)")


def who(user_id: str) -> tuple[str, str]:
    """(the name, its kind: "device", "client" or "local") of a connection's owner, from the User-Id
    the ZAP handler gave it (a local one is named by its process id)."""
    for prefix in (DEVICE, CLIENT, LOCAL):
        if user_id.startswith(prefix):
            return user_id[len(prefix):], prefix[:-1]
    return user_id, "unknown"
