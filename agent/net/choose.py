"""Which of several alternative devices takes a request: the plan's rule, applied by a sender.

A plan's `alternatives` (edgepart.plan.Alternatives) name devices that can each take the same part
of a request. Whoever sends into such a group (the caller's client, or an agent whose outputs go
there) sends each request to one of them, picked here by the rule the plan names; nothing here
knows which strategy made the plan (docs/architecture.md, "Alternatives").

    chooser = Chooser(plan)
    dsts = chooser.pick(key, ["dev-a", "dev-b", "dev-c"])   # one device per group, the rest as given
    chooser.done(key)                                       # the request's answer came (or it failed)

`round-robin` takes the group's devices in turn. `least-outstanding` takes the one with the fewest
requests this sender picked it for and has not yet marked done (ties: the plan's order). Each
request keeps its pick for all the tensors it sends into the group.
"""

from __future__ import annotations

import threading
from typing import Hashable, Iterable

from edgepart.plan import Alternatives, Plan


class Chooser:
    """One sender's choices among the plan's alternative devices (thread-safe)."""

    def __init__(self, plan: Plan):
        self.groups = plan.alternatives
        self._group_of = {d: i for i, g in enumerate(self.groups) for d in g.devices}
        self._turn = [0] * len(self.groups)
        self._outstanding: dict[str, int] = {d: 0 for g in self.groups for d in g.devices}
        self._picked: dict[Hashable, dict[int, str]] = {}  # request -> {group: device}
        self.picks: dict[str, int] = {d: 0 for g in self.groups for d in g.devices}  # requests sent to each, ever
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.groups)

    def pick(self, key: Hashable, dsts: Iterable[str]) -> list[str]:
        """`dsts` with every group of alternatives in it narrowed to the one device this request uses."""
        dsts = list(dsts)
        if not self.groups or not any(d in self._group_of for d in dsts):
            return dsts
        out: list[str] = []
        with self._lock:
            chosen = self._picked.setdefault(key, {})
            for d in dsts:
                g = self._group_of.get(d)
                if g is None:
                    out.append(d)
                    continue
                if g not in chosen:
                    chosen[g] = self._next(g, [x for x in dsts if self._group_of.get(x) == g])
                    self._outstanding[chosen[g]] += 1
                    self.picks[chosen[g]] += 1
                if chosen[g] == d:
                    out.append(d)
        return out

    def done(self, key: Hashable) -> None:
        """The request is over (answered, failed or expired): its picks no longer count as outstanding."""
        with self._lock:
            for d in self._picked.pop(key, {}).values():
                self._outstanding[d] -= 1

    def passed_over(self, key: Hashable) -> set[str]:
        """The devices of the groups this request picked from that it did not pick: a request does
        not fail when one of those goes away."""
        with self._lock:
            chosen = self._picked.get(key, {})
            return {d for g, pick in chosen.items() for d in self.groups[g].devices if d != pick}

    def outstanding(self) -> dict[str, int]:
        with self._lock:
            return dict(self._outstanding)

    def _next(self, g: int, candidates: list[str]) -> str:
        group: Alternatives = self.groups[g]
        order = [d for d in group.devices if d in candidates] or list(group.devices)
        if group.rule == "least-outstanding":
            return min(order, key=lambda d: (self._outstanding[d], order.index(d)))
        i = self._turn[g]
        self._turn[g] = i + 1
        return order[i % len(order)]


__all__ = ["Chooser"]
