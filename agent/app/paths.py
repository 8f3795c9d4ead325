"""Which path a request takes, in one place (docs/agents.md, "Requests and deadlines").

The plan's hints (edgepart.plan.Hints, written by the packager) say where the requests enter and
leave the cluster; what is registered in this process (edgepart.agent.net.inproc) says which devices
run here. From those two alone:

    CALLER         a sync `run`, no device of the plan in this process: inputs sent and answers
                   received on the calling thread's own sockets (_caller.py)
    DIRECT_ANSWER  a sync `run` beside the entry's agent, whose one step only the caller feeds, on a
                   plan of two devices whose other one (the exit) is not in this process: the step
                   computed in the calling thread, its outputs sent from there and the exit's answer
                   received on the same socket (the agent's DirectPath)
    DIRECT         the same step in the calling thread, the answers through the client (the exit in
                   this process too, or no single exit)
    SUBMIT         the client's I/O thread; an agent in this process gets its inputs handed over
                   directly, and where every input goes to it (the entry) it relays the answers

A sync `run` while other requests wait for the window goes the SUBMIT way, so it keeps its place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgepart.plan import Plan

from ..net import inproc
from ..net.inproc import LocalAgent


class Path(enum.Enum):
    CALLER = "caller"
    DIRECT_ANSWER = "direct+answer"
    DIRECT = "direct"
    SUBMIT = "submit"


@dataclass(frozen=True)
class Direct:
    """The entry's agent in this process, and the device whose answer may come back to the caller's
    thread on the socket the request leaves on (None: the answers come through the client)."""

    agent: LocalAgent
    entry: str
    reply_from: str | None


class Paths:
    """A client's choice of path for each request (any thread)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.hints = plan.hints
        h = self.hints
        # the exit answers on the entry's direct socket only where nothing else could answer there
        self._reply_from = h.exit if h.exit and set(plan.device_names()) == {h.entry, h.exit} else None

    @property
    def relay(self) -> bool:
        """Every input goes to one device (the entry): an agent of it in this process may relay the
        request's answers to this client (it decides whether its routes allow it)."""
        return bool(self.hints.entry)

    def local(self, device: str) -> LocalAgent | None:
        """The agent of `device` in this process, if any."""
        return inproc.agent(self.plan.plan_id, device)

    def direct(self) -> Direct | None:
        """The entry's agent in this process, where the hints name an entry step and it offers a
        direct path; else None."""
        h = self.hints
        if not h.entry_step or (agent := self.local(h.entry)) is None or agent.direct is None:
            return None
        return Direct(agent, h.entry, self._reply_from)

    def for_run(self, busy: bool) -> tuple[Path, Direct | None]:
        """The path of a sync `run` (`busy`: other requests wait for the window)."""
        d = self.direct()
        if busy:
            return Path.SUBMIT, None
        if d is None:
            if any(self.local(r) is not None for r in self.plan.device_names()):
                return Path.SUBMIT, None
            return Path.CALLER, None
        if d.reply_from is not None and self.local(d.reply_from) is None:
            return Path.DIRECT_ANSWER, d
        return Path.DIRECT, d
