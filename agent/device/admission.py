"""Admission: how much an agent holds for requests in flight, in all and per sender.

    adm = Admission(slots=256, held_bytes=1 << 30)
    why = adm.refusal(sender, new=True, nbytes=n)    # None: admit; else the reason to turn it away
    adm.take(sender, new=True, nbytes=n) ... adm.give_back(owner, {sender: bytes})

A request holds a slot from its first message until it completes, fails or expires, and the bytes
of every tensor received for it. An unauthenticated sender never gets here (its handshake fails,
agent/net/secure.py); an authenticated one is bounded: no sender may hold more than `share` of the
slots or of the bytes, so one misbehaving device or app, sending partial requests that never
complete, leaves the rest to the others (docs/agents.md, "Admission"). A sender is whoever holds
the key (the name the ZAP handler gave it), or under --insecure the name it gives itself.
"""

from __future__ import annotations

from collections import Counter

from edgepart.plan import CALLER, Plan

MAX_IN_FLIGHT = 256  # requests an agent holds at once
MAX_HELD_MB = 1024  # MiB of received tensors an agent holds for them (edgepart run --inflight-mb)
SENDER_SHARE = 0.75  # the most of either that one sender may hold


class Admission:
    def __init__(self, slots: int = MAX_IN_FLIGHT, held_bytes: int = MAX_HELD_MB << 20, share: float = SENDER_SHARE,
                 whole: str = ""):
        if slots < 1 or held_bytes < 1 or not 0 < share <= 1:
            raise ValueError(f"admission bounds must be positive (slots {slots}, bytes {held_bytes}, share {share})")
        self.slots, self.bytes = slots, held_bytes
        self.sender_slots = max(1, int(slots * share))
        self.sender_bytes = max(1, int(held_bytes * share))
        self.slots_of: Counter[str] = Counter()
        self.bytes_of: Counter[str] = Counter()
        self.held_slots = 0
        self.held_bytes = 0
        self.whole = whole  # a sender bounded by the totals only: the one device a later stage hears from
        self.refused: Counter[str] = Counter()  # messages turned away, by sender (the first 1,024 senders)

    def refusal(self, sender: str, new: bool, nbytes: int) -> str | None:
        """Why a message of `nbytes` from `sender` (starting a request when `new`) must be turned
        away, or None to admit it."""
        why = None
        if new and self.held_slots >= self.slots:
            why = f"{self.held_slots} requests in flight, the most it holds; send fewer at once"
        elif new and self.slots_of[sender] >= self.sender_slots and sender != self.whole:
            why = (f"{sender} holds {self.slots_of[sender]} of its {self.held_slots} requests in flight, "
                   f"the most one sender may ({self.sender_slots} of {self.slots})")
        elif self.held_bytes + nbytes > self.bytes:
            why = (f"it holds {_mib(self.held_bytes)} for requests in flight and {_mib(nbytes)} more would "
                   f"pass its {_mib(self.bytes)} (edgepart run --inflight-mb)")
        elif self.bytes_of[sender] + nbytes > self.sender_bytes and sender != self.whole:
            why = (f"{sender} holds {_mib(self.bytes_of[sender])} of its tensors, and {_mib(nbytes)} more "
                   f"would pass the most one sender may ({_mib(self.sender_bytes)}: 3/4 of edgepart run --inflight-mb)")
        if why is not None and (sender in self.refused or len(self.refused) < 1024):
            self.refused[sender] += 1
        return why

    def take(self, sender: str, new: bool, nbytes: int) -> None:
        if new:
            self.slots_of[sender] += 1
            self.held_slots += 1
        if nbytes:
            self.bytes_of[sender] += nbytes
            self.held_bytes += nbytes

    def give_back(self, owner: str, held: dict[str, int]) -> None:
        """A request left: its slot (taken by `owner`) and the bytes each sender gave it."""
        self.held_slots -= 1
        _less(self.slots_of, owner, 1)
        for sender, n in held.items():
            self.held_bytes -= n
            _less(self.bytes_of, sender, n)


def sole_upstream(plan: Plan, device: str) -> str:
    """The one device that alone sends to `device` (a later pipeline stage), or "": that device may
    use all of `device`'s slots and bytes, since a share would only cap the requests of every app
    behind it."""
    senders = {r.src for r in plan.routes_to(device)}
    return next(iter(senders)) if len(senders) == 1 and CALLER not in senders else ""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.3g} MiB"


def _less(c: Counter, k: str, n: int) -> None:
    left = c[k] - n
    if left > 0:
        c[k] = left
    else:
        del c[k]  # a sender that holds nothing is not remembered (a flood of names must not grow it)
