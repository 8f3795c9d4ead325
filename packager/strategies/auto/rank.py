"""Ranking the candidates of `--strategy auto` (docs/planning.md, "Choosing the split"): pure.

Each candidate carries its strategy's own estimates (the figures of its Planned value, which come
from cost.py); this module only orders them for the objective and says why the first one wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from edgepart.packager.cluster import Cluster


@dataclass(frozen=True, eq=False)
class Candidate:
    """One way of running the model: a registered strategy with its options on (part of) the
    cluster, and what that strategy estimates; or why it cannot plan this model (`why_not`)."""

    name: str
    strategy: str
    options: Mapping[str, Any] = field(default_factory=dict)
    cluster: Cluster | None = None  # the devices it is planned on (one device: that one alone)
    planned: Any = None  # the strategy's Planned value
    devices: tuple[str, ...] = ()
    latency_ms: float = math.nan  # one request end to end, the caller's inputs and outputs included
    throughput_per_s: float = math.nan  # streamed
    why_not: str = ""
    # its strategy's own streamed rate, before what the caller's link carries held it (auto's
    # `_caller_bound`): a tie at that bound goes to the one whose devices have the most room
    headroom_per_s: float = math.nan

    def headroom(self) -> float:
        return self.throughput_per_s if math.isnan(self.headroom_per_s) else self.headroom_per_s

    @property
    def ok(self) -> bool:
        return not self.why_not

    def score(self, objective: str) -> float:
        """Lower is better: latency in ms, or the period (1000 / throughput) in ms."""
        if objective == "latency":
            return self.latency_ms
        return 1e3 / self.throughput_per_s if self.throughput_per_s > 0 else math.inf

    def figure(self, objective: str) -> str:
        if objective == "latency":
            return f"{self.latency_ms:.3f} ms"
        return f"{self.throughput_per_s:,.1f} req/s"


TIE = 1e-6  # scores within this relative distance are a tie (the estimates' own rounding differs)


def _tie(a: float, b: float) -> bool:
    return abs(a - b) <= TIE * max(abs(a), abs(b))


def rank(candidates: tuple[Candidate, ...] | list[Candidate], objective: str) -> tuple[Candidate, ...]:
    """Those that plan, best first for the objective (lower score first; scores within a relative
    1e-6 of the best left are a tie, and ties keep the given order: the simpler first; under
    throughput, a tie goes first to the candidate with the most headroom, its own rate before the
    caller's link held it), then those that cannot, in the given order."""
    order = {id(c): i for i, c in enumerate(candidates)}
    left = sorted((c for c in candidates if c.ok and math.isfinite(c.score(objective))),
                  key=lambda c: (c.score(objective), order[id(c)]))
    ok: list[Candidate] = []
    while left:
        head = left[0].score(objective)
        group = [c for c in left if _tie(c.score(objective), head)]
        ok += sorted(group, key=lambda c: (-c.headroom() if objective == "throughput" else 0.0, order[id(c)]))
        taken = {id(c) for c in group}
        left = [c for c in left if id(c) not in taken]
    done = {id(c) for c in ok}
    return tuple(ok) + tuple(c for c in candidates if id(c) not in done)


def reason(ranked: tuple[Candidate, ...], objective: str) -> str:
    """One sentence: why the first candidate wins."""
    ok = [c for c in ranked if c.ok]
    if not ok:
        return "no candidate can plan this model"
    w = ok[0]
    what = "latency" if objective == "latency" else "throughput"
    if len(ok) == 1:
        return f"{w.name} is the only candidate that plans this model ({what} {w.figure(objective)})"
    # the next best that is another plan (not the winner's own plan under another name: the pipeline
    # that leaves every other device out is the one-device plan)
    others = [c for c in ok[1:] if not (c.strategy == w.strategy and c.devices == w.devices
                                        and _tie(c.score(objective), w.score(objective)))]
    if not others:
        return f"{w.name} wins on {what}: {w.figure(objective)}; every other candidate that plans is the same plan"
    nxt = others[0]
    ratio = nxt.score(objective) / w.score(objective) if w.score(objective) > 0 else math.inf
    close = ""
    if _tie(nxt.score(objective), w.score(objective)):
        close = " (a tie: the simpler wins)"
        if objective == "throughput" and w.headroom() > nxt.headroom():
            close = (f" (a tie at what the caller's link carries: its devices alone would stream {w.headroom():,.1f} "
                     f"req/s against {nxt.headroom():,.1f}, the most headroom)")
    why = f"{w.name} wins on {what}: {w.figure(objective)} against {nxt.figure(objective)} for {nxt.name}, the next " \
          f"best ({ratio:.2f}x){close}"
    if len(w.devices) == 1:
        why += "; one device sends nothing between devices, and every split here costs more in links than it saves"
    return why
