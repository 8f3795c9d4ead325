"""In-process routes: when the caller and an agent (or two agents) live in one process.

An app that embeds its device's agent (the camera holder computing the first stage) would otherwise
send its own inputs to itself over TCP. Parts register here on start; a sender that finds its
destination here hands the arrays over directly (the receiver's thread-safe entry points). Same
validation, no socket, no copy.

This is also where the device's agent and the app's client meet without importing each other
(docs/architecture.md, "The layers"): each registers itself, and each sees the other only through the
interfaces below.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from edgepart.errors import PeerError

Key = tuple[bytes, int]  # (client id, request id)


class DirectPath(Protocol):
    """What an agent offers a caller's thread in its process: run its one step there, send its outputs
    from there and, where `reply_from` is given, receive that device's answer there too (the device
    side: edgepart.agent.device._direct.DirectRuns)."""

    def run(self, client: bytes, rid: int, feeds: dict[str, np.ndarray], deadline: float,
            reply_from: str | None = None, expect: frozenset[str] = frozenset(),
            abort: threading.Event | None = None) -> dict[str, np.ndarray]: ...


class LocalAgent(Protocol):
    """An agent in this process, as a sender in this process sees it (the device side: AgentCore)."""

    @property
    def direct(self) -> DirectPath | None:
        """Its direct path, where its plan's hints make its device the entry with one step; else None."""
        ...

    def deliver_local(self, sender: str, key: Key, arrs: dict[str, np.ndarray], ttl_ms: float,
                      relay: bool = False, source: str = "", age_ms: float = 0.0) -> None:
        """Tensors for it from `sender` (any thread). `relay`: every input of this request comes here,
        so its answers may come back through this agent. `source`, `age_ms`: the request's (plans
        with sources)."""
        ...


class LocalClient(Protocol):
    """A client in this process, as an agent in this process sees it (the app side: ClusterClient)."""

    def on_result(self, rid: int, got: dict[str, np.ndarray]) -> bool:
        """Outputs of request `rid` (any thread); True once the request wants no more."""
        ...

    def on_error(self, rid: int, why: str, cause: type[PeerError] = PeerError) -> None:
        """Request `rid` failed (any thread)."""
        ...


_lock = threading.Lock()
_agents: dict[tuple[str, str], LocalAgent] = {}
_clients: dict[bytes, LocalClient] = {}


def register_agent(plan_id: str, role: str, core: LocalAgent) -> None:
    with _lock:
        _agents[(plan_id, role)] = core


def unregister_agent(plan_id: str, role: str, core: LocalAgent) -> None:
    with _lock:
        if _agents.get((plan_id, role)) is core:
            del _agents[(plan_id, role)]


def agent(plan_id: str, role: str) -> LocalAgent | None:
    return _agents.get((plan_id, role))


def register_client(identity: bytes, client: LocalClient) -> None:
    with _lock:
        _clients[identity] = client


def unregister_client(identity: bytes) -> None:
    with _lock:
        _clients.pop(identity, None)


def client(identity: bytes) -> LocalClient | None:
    return _clients.get(identity)
