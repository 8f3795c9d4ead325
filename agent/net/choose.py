"""Which of several alternative devices takes a request: the plan's rule, applied by a sender.

A plan's `alternatives` (edgepart.plan.Alternatives) name devices that can each take the same part
of a request. Whoever sends into such a group (the caller's client, or an agent whose outputs go
there) sends each request to one of them, picked here by the rule the plan names; nothing here
knows which strategy made the plan (docs/architecture.md, "Alternatives").

    chooser = Chooser(plan)
    dsts = chooser.pick(key, ["dev-a", "dev-b", "dev-c"])   # one device per group, the rest as given
    chooser.done(key)                                       # the request's answer came (or it failed)

`round-robin` takes the group's devices in turn. `least-outstanding` takes the one with the fewest
requests this sender picked it for and has not yet marked done (ties: the plan's order). `priority`
takes the one of least  cost + work queued there ahead of this request + this sender's claims on it
(edgepart.schedule, docs/priority.md): the cost is the packager's (the group's `costs_ms`), the queue
what that device last said of itself (`figures`), and a claim is a request sent there that its last
report did not yet count (the RTC/CTC idea: senders choosing at once do not all pick one idle
device). Each request keeps its pick for all the tensors it sends into the group.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Hashable, Iterable

from edgepart.plan import Alternatives, Plan
from edgepart.schedule import DEFAULT_AGING_MS, Option, choose

# what a device last said of itself: ((weight, ms waited there, work ms) per task of its queue in serving
# order, the time (monotonic) of the request it answered, the time it came[, its steps' measured ms by
# name]); None: nothing yet
Figures = Callable[[str], "tuple | None"]


def ahead_ms(queue: Iterable[tuple[float, float, float]], elapsed_ms: float, weight: float,
             aging_ms: float | None) -> float:
    """The work of a reported queue that a task of `weight` arriving there now would wait behind,
    `elapsed_ms` after the report: under priority order (aging_ms given), each task of key
    -waited - aging*weight at or below the new task's -aging*weight (edgepart.schedule.queue_key,
    counted from now: the wait that ages a task is its wait in that queue); under FIFO (None), all of it."""
    if aging_ms is None:
        return sum(w for _, _, w in queue)
    mine = -aging_ms * weight
    return sum(work for wt, waited, work in queue if -(waited + elapsed_ms) - aging_ms * wt <= mine)


class Chooser:
    """One sender's choices among the plan's alternative devices (thread-safe)."""

    def __init__(self, plan: Plan, figures: Figures | None = None, aging_ms: float | None = DEFAULT_AGING_MS):
        self.groups = plan.alternatives
        # the step each device of a group runs for it, and the packager's estimate of that step: a device's
        # measured time replaces the estimate in its cost (the cost's transfer part stays the packager's)
        self._step_of = {d: (s.name, s.estimated_ms) for g in self.groups for d in g.devices
                         for s in plan.steps if s.device == d}
        self.figures = figures  # the `priority` rule's live figures (None: costs and claims only)
        self.aging_ms = aging_ms  # the queues' order: priority with this aging, or FIFO (None)
        self._claims: dict[str, dict[Hashable, tuple[float, float]]] = {}  # device -> request -> (sent, ms)
        self._task: tuple[float, float] = (1.0, 0.0)  # the request being picked for: (weight, age ms)
        self._group_of = {d: i for i, g in enumerate(self.groups) for d in g.devices}
        self._turn = [0] * len(self.groups)
        self._outstanding: dict[str, int] = {d: 0 for g in self.groups for d in g.devices}
        self._picked: dict[Hashable, dict[int, str]] = {}  # request -> {group: device}
        self.picks: dict[str, int] = {d: 0 for g in self.groups for d in g.devices}  # requests sent to each, ever
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.groups)

    def pick(self, key: Hashable, dsts: Iterable[str], task: tuple[float, float] = (1.0, 0.0),
             picked_only: bool = False) -> list[str]:
        """`dsts` with every group of alternatives in it narrowed to the one device this request uses.
        `task`: the request's (weight, age ms), for the `priority` rule. `picked_only`: narrow only the
        groups this request already picked from, leave the others whole (who answers a request from a
        group that another sender fed)."""
        dsts = list(dsts)
        if not self.groups or not any(d in self._group_of for d in dsts):
            return dsts
        out: list[str] = []
        with self._lock:
            self._task = task
            self._key = key
            chosen = self._picked.setdefault(key, {})
            for d in dsts:
                g = self._group_of.get(d)
                if g is None:
                    out.append(d)
                    continue
                if g not in chosen and picked_only:
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
                self._claims.get(d, {}).pop(key, None)

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
        if group.rule == "priority":
            return self._by_priority(group, order)
        i = self._turn[g]
        self._turn[g] = i + 1
        return order[i % len(order)]


    def _by_priority(self, group: Alternatives, order: list[str]) -> str:
        weight, age = self._task
        now = time.monotonic()
        pick = choose(self._options(group, order, weight, now), age, weight)
        self._claims.setdefault(pick.device, {})[self._key] = (now, pick.compute_ms)
        return pick.device

    def best_ms(self, task: tuple[float, float]) -> float:
        """For a request of (weight, age ms) about to enter: the sum over the groups of the least cost +
        work queued ahead there + claims, as the `priority` rule sees them now (admission's figure;
        nothing is claimed)."""
        weight, _ = task
        now = time.monotonic()
        with self._lock:
            return sum(min(o.compute_ms + o.backlog_ms for o in self._options(g, list(g.devices), weight, now))
                       for g in self.groups)

    @staticmethod
    def _cost(group: Alternatives) -> dict[str, float]:
        return dict(zip(group.devices, group.costs_ms)) if group.costs_ms else {}

    def _options(self, group: Alternatives, order: list[str], weight: float, now: float) -> list[Option]:
        """Each device of `order` as the rule weighs it: the packager's cost, and the work queued there
        ahead of the task (its last report, under the queue's order) plus this sender's claims that
        report did not count (claims it did count are dropped)."""
        cost = self._cost(group)
        options = []
        for d in order:
            claims = self._claims.setdefault(d, {})
            queued, c = 0.0, cost.get(d, 0.0)
            said = self.figures(d) if self.figures is not None else None
            if said is not None:
                q, basis, came = said[:3]
                for k in [k for k, (sent, _) in claims.items() if sent < basis]:
                    del claims[k]  # its report counted it already
                queued = ahead_ms(q, (now - came) * 1e3, weight, self.aging_ms)
                step, estimated = self._step_of.get(d, ("", 0.0))
                measured = said[3].get(step, 0.0) if len(said) > 3 else 0.0
                if measured > 0:
                    c = max(c - estimated, 0.0) + measured
            own = sum(ms for _, ms in claims.values())
            options.append(Option(d, 0.0, c, queued + own))
        return options


__all__ = ["Chooser", "ahead_ms"]
