"""In-process routes: when the caller and an agent (or two agents) live in one process.

An app that embeds its device's agent (the camera holder computing the first stage) would otherwise
send its own inputs to itself over TCP. Parts register here on start; a sender that finds its
destination here hands the arrays over directly (the receiver's thread-safe entry points). Same
validation, no socket, no copy.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_agents: dict[tuple[str, str], Any] = {}
_clients: dict[bytes, Any] = {}


def register_agent(plan_id: str, role: str, core: Any) -> None:
    with _lock:
        _agents[(plan_id, role)] = core


def unregister_agent(plan_id: str, role: str, core: Any) -> None:
    with _lock:
        if _agents.get((plan_id, role)) is core:
            del _agents[(plan_id, role)]


def agent(plan_id: str, role: str) -> Any | None:
    return _agents.get((plan_id, role))


def register_client(identity: bytes, client: Any) -> None:
    with _lock:
        _clients[identity] = client


def unregister_client(identity: bytes) -> None:
    with _lock:
        _clients.pop(identity, None)


def client(identity: bytes) -> Any | None:
    return _clients.get(identity)
