"""In-process routes: when the caller and an agent (or two agents) share one process and loop.

An app that embeds its device's agent (the camera holder computing the first stage) would otherwise
send its own inputs to itself over TCP. Parts register here on start; a sender that finds its
destination here, on the same event loop, hands the arrays over directly. Same validation, no
socket, no copy.
"""

from __future__ import annotations

import asyncio
from typing import Any

_agents: dict[tuple[str, str], tuple[asyncio.AbstractEventLoop, Any]] = {}
_clients: dict[bytes, tuple[asyncio.AbstractEventLoop, Any]] = {}


def register_agent(plan_id: str, role: str, core: Any) -> None:
    _agents[(plan_id, role)] = (asyncio.get_running_loop(), core)


def unregister_agent(plan_id: str, role: str, core: Any) -> None:
    if _agents.get((plan_id, role), (None, None))[1] is core:
        del _agents[(plan_id, role)]


def agent(plan_id: str, role: str) -> Any | None:
    loop, core = _agents.get((plan_id, role), (None, None))
    return core if loop is asyncio.get_running_loop() else None


def register_client(identity: bytes, client: Any) -> None:
    _clients[identity] = (asyncio.get_running_loop(), client)


def unregister_client(identity: bytes) -> None:
    _clients.pop(identity, None)


def client(identity: bytes) -> Any | None:
    loop, c = _clients.get(identity, (None, None))
    return c if loop is asyncio.get_running_loop() else None
