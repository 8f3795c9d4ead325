"""Discovery with mDNS (zeroconf): announce this agent, and find the other agents of its plan.

Each agent registers `<role>-<plan id>-<nonce>._edgepart._tcp.local.` with TXT records

    plan=<plan id>  role=<device name>  proto=<wire protocol version>  port=<ZeroMQ port>
    sec=curve|none  (whether its links are encrypted: a hint for error messages, never trust)
    ipc=<path>      (its Unix socket for apps on its host, when it encrypts: local.py)

and browses the same type. Agents of another plan or protocol version are ignored with one log
line each; two live agents claiming one role of one plan are reported as a duplicate, not merged.
Where multicast is blocked, static peers (`--peer host:port`) replace all of this: the ZeroMQ
`hello` exchange tells their role and plan (see link.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from dataclasses import dataclass
from typing import Callable

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edgepart.wire import PROTOCOL_VERSION

from .local import reach

log = logging.getLogger("edgepart")

SERVICE = "_edgepart._tcp.local."


@dataclass(frozen=True)
class Announcement:
    """What one agent says about itself over mDNS."""

    instance: str  # the mDNS service name, unique per agent process
    role: str
    plan_id: str
    protocol: int
    endpoint: str  # tcp://ip:port
    secure: bool = True  # it says it encrypts its links (sec=curve); older agents say nothing
    ipc: str = ""  # its Unix socket for apps on its host (agent/net/local.py), if any

    @property
    def compatible(self) -> bool:
        return self.protocol == PROTOCOL_VERSION


class Discovery:
    """Announce (optionally) and browse `_edgepart._tcp`; call `on_change(announcement, present)`."""

    def __init__(self, interface: str | None = None, plan_id: str | None = None,
                 on_change: Callable[[Announcement, bool], None] | None = None, local: bool = False):
        self.interface = interface
        self.local = local  # an app's: an agent on this host is reached on its Unix socket (local.py)
        self.plan_id = plan_id  # None: report every plan (for `edgepart discover`)
        self.on_change = on_change
        self.found: dict[str, Announcement] = {}
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._ignored: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        interfaces = [self.interface] if self.interface else None
        kw = {"interfaces": interfaces} if interfaces else {}
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only, **kw)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE, handlers=[self._on_state])

    async def announce(self, role: str, plan_id: str, host: str, port: int, secure: bool = True, ipc: str = "") -> str:
        """Register this agent; returns its instance name."""
        assert self._zc is not None, "start() first"
        name = f"{_label(role)}-{plan_id}-{secrets.token_hex(3)}.{SERVICE}"
        props = {"plan": plan_id, "role": role, "proto": str(PROTOCOL_VERSION), "port": str(port),
                 "sec": "curve" if secure else "none", **({"ipc": ipc} if ipc else {})}
        addrs = [socket.inet_aton(a) for a in _host_addresses(host)]
        self._info = AsyncServiceInfo(SERVICE, name, addresses=addrs, port=port, properties=props,
                                      server=f"{name.split('.')[0]}.local.")
        # zeroconf returns a task: awaiting it waits for the probe and first announcement
        await (await self._zc.async_register_service(self._info, allow_name_change=True))
        return self._info.name

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._zc is None:
            return
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            if self._info is not None:
                await asyncio.wait_for(await self._zc.async_unregister_service(self._info), 2.0)
        except (asyncio.TimeoutError, Exception) as e:  # shutting down: never let cleanup raise
            log.debug("discovery close: %s", e)
        finally:
            await self._zc.async_close()
            self._zc = None

    # -- browsing ----------------------------------------------------------------------------------
    def _on_state(self, zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            gone = self.found.pop(name, None)
            if gone is not None and self.on_change:
                self.on_change(gone, False)
            return
        t = asyncio.ensure_future(self._resolve(name))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(SERVICE, name)
        if not await info.async_request(self._zc.zeroconf, 1500):
            log.debug("could not resolve %s", name)
            return
        props = {k.decode(errors="replace"): (v or b"").decode(errors="replace") for k, v in info.properties.items()}
        addrs = info.parsed_addresses(IPVersion.V4Only)
        try:
            endpoint = f"tcp://{addrs[0]}:{int(props.get('port', info.port))}"
            ipc = props.get("ipc", "")
            ann = Announcement(name, props["role"], props["plan"], int(props["proto"]),
                               reach(endpoint, ipc) if self.local else endpoint, props.get("sec") != "none", ipc)
        except (KeyError, ValueError, IndexError):
            self._ignore(name, "its TXT records are not an edgepart agent's")
            return
        if not ann.compatible:
            self._ignore(name, f"it speaks protocol {ann.protocol}, this agent {PROTOCOL_VERSION}")
            return
        if self.plan_id is not None and ann.plan_id != self.plan_id:
            self._ignore(name, f"it runs plan {ann.plan_id}, this one {self.plan_id}")
            return
        dup = [a for a in self.found.values() if a.role == ann.role and a.plan_id == ann.plan_id and a.instance != name]
        if dup and self.plan_id is not None:
            log.warning("two agents claim role %r of plan %s: %s and %s; using the newest, stop one of them",
                        ann.role, ann.plan_id, dup[0].endpoint, ann.endpoint)
        self.found[name] = ann
        if self.on_change:
            self.on_change(ann, True)

    def _ignore(self, name: str, why: str) -> None:
        if name not in self._ignored:
            self._ignored.add(name)
            log.info("ignoring agent %s: %s", name.split(".")[0], why)

    def duplicates(self) -> dict[tuple[str, str], list[Announcement]]:
        """Roles of one plan claimed by more than one live agent."""
        by: dict[tuple[str, str], list[Announcement]] = {}
        for a in self.found.values():
            by.setdefault((a.plan_id, a.role), []).append(a)
        return {k: v for k, v in by.items() if len(v) > 1}


def _label(role: str) -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in role)[:40] or "agent"


def _host_addresses(host: str) -> list[str]:
    """The IPv4 addresses to announce: the bound interface, or every non-loopback one."""
    if host and host not in ("0.0.0.0", "*"):
        return [host]
    import ifaddr

    out = [ip.ip for ad in ifaddr.get_adapters() for ip in ad.ips
           if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
    return out or ["127.0.0.1"]
