"""The scheduling rule of priority-aware model-distributed inference, in one place (docs/priority.md).

Pure: no clock, no sockets, no threads. The simulator (`edgepart.packager.sim`) applies it now, and
the agents (edgepart.agent.device.executor) apply the same functions over their live figures. Four parts:

    device choice   among the devices the plan allows for a task's next stage, the one with the least
                    score = (comm_ms + age_ms + compute_ms + backlog_ms) / weight           (PA-MDI)
                    ties: the option listed first (the plan lists the allocator's pick first)
    queue order     highest effective priority first, at every step boundary:
                    effective = weight + waited_ms / aging_ms    (aging: +1 for every aging_ms waited
                                                                  in this queue)
                    which orders tasks exactly as the static key  queued_ms - aging_ms * weight
                    (smaller first; ties: the earlier pushed), so a heap keeps it
    admission       a request whose expected completion exceeds its deadline is refused at once
                    (DeadlineRefused, a DeadlineExceeded, with the figures)
    claims          a sender claims its pick before sending (the RTC/CTC idea): the claim counts in the
                    target's backlog for every later choice until the task arrives, so several senders
                    choosing at once do not all pick the same idle device; a target may refuse a claim
                    that would take its backlog past a limit, and the sender takes its next option

Aging is additive so that it bounds waiting even when the high-priority load alone exceeds capacity:
a task of weight w is served before every task of weight w' that became ready more than
aging_ms * (w' - w) after it (docs/priority.md, "Aging"). It counts the wait in this queue, not the
request's age: a low-priority task that grew old on another, saturated device is not starving here,
and does not overtake urgent work here for that.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from edgepart.errors import DeadlineRefused

DEFAULT_AGING_MS = 100.0  # a waiting task gains one unit of weight per 100 ms


# -- queue order ---------------------------------------------------------------------------------------

def effective_priority(weight: float, waited_ms: float, aging_ms: float = DEFAULT_AGING_MS) -> float:
    """A waiting task's effective priority: its weight, plus one for every `aging_ms` it has waited in
    this queue."""
    return weight + waited_ms / aging_ms


def queue_key(weight: float, queued_ms: float, aging_ms: float = DEFAULT_AGING_MS) -> float:
    """The static key that orders tasks as `effective_priority` does at every instant (smaller first):
    queued_ms - aging_ms * weight. `queued_ms`: when the task became ready in this queue (its wait
    counts from there). A very long aging_ms (1e9) is strict priority, under which low priority can
    starve."""
    return queued_ms - aging_ms * weight


RULES = ("priority", "fifo")


def task_key(rule: str, weight: float, now_ms: float, aging_ms: float = DEFAULT_AGING_MS) -> float:
    """The place in a device's queue of a task that becomes ready there at `now_ms`, under the plan's
    rule: `priority`, queue_key (its weight, and its wait from now on); `fifo` (the priority-blind
    baseline, local-only), its arrival, `now_ms`."""
    return queue_key(weight, now_ms, aging_ms) if rule == "priority" else now_ms


class TaskQueue:
    """The tasks waiting on one device, served in key order (ties: the earlier pushed), with the work
    they hold, so the backlog ahead of a task of any key can be told."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, float, Any]] = []
        self._seq = itertools.count()
        self.work_ms = 0.0  # every queued task's compute, summed

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, key: float, work_ms: float, task: Any) -> None:
        heapq.heappush(self._heap, (key, next(self._seq), work_ms, task))
        self.work_ms += work_ms

    def pop(self) -> tuple[float, float, Any]:
        """(key, work_ms, task) of the task to serve next."""
        key, _, work, task = heapq.heappop(self._heap)
        self.work_ms -= work
        if not self._heap:
            self.work_ms = 0.0  # no drift from float sums
        return key, work, task

    def in_order(self) -> list[tuple[float, float, Any]]:
        """(key, work_ms, task) of every queued task, in the order they will be served."""
        return [(k, w, t) for k, _, w, t in sorted(self._heap, key=lambda e: (e[0], e[1]))]

    def ahead_ms(self, key: float | None = None) -> float:
        """The queued work that a task of `key` would wait behind (None: all of it, as FIFO would)."""
        if key is None:
            return self.work_ms
        return sum(w for k, _, w, _ in self._heap if k <= key)


# -- device choice ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One device that may take a task's next stage, with the figures the rule weighs (all in ms)."""

    device: str
    comm_ms: float  # sending the stage's input there (link backlog, busy time, latency); 0 if it is here
    compute_ms: float  # the stage on that device
    backlog_ms: float  # the work queued there that this task would wait behind, claims included


def score(option: Option, age_ms: float, weight: float) -> float:
    """PA-MDI's cost of sending a task there: (communication + age + compute + backlog) / weight."""
    return (option.comm_ms + age_ms + option.compute_ms + option.backlog_ms) / weight


def choose(options: Sequence[Option], age_ms: float, weight: float) -> Option:
    """The option of least score; ties (within 1e-9 relative) go to the one listed first."""
    if not options:
        raise ValueError("choose() needs at least one option")
    best, best_s = options[0], score(options[0], age_ms, weight)
    for o in options[1:]:
        s = score(o, age_ms, weight)
        if s < best_s - 1e-9 * max(1.0, abs(best_s)):
            best, best_s = o, s
    return best


def finish_ms(option: Option) -> float:
    """When a task sent there now is expected to be done, from now."""
    return option.comm_ms + option.backlog_ms + option.compute_ms


# -- claims (RTC/CTC) ----------------------------------------------------------------------------------------

class Claims:
    """Granted claims on devices: work that senders have picked a device for and not yet delivered.

    A claim counts in the device's backlog (`reserved_ms`) from the moment it is granted until the task
    arrives and is queued (`release`). `grant` refuses a claim that would take the device's backlog past
    `limit_ms` (None: never refuses): the sender then asks its next option."""

    def __init__(self, limit_ms: float | None = None) -> None:
        self.limit_ms = limit_ms
        self._by_device: dict[str, dict[Any, tuple[float, float]]] = {}

    def grant(self, device: str, token: Any, work_ms: float, key: float, backlog_ms: float = 0.0,
              force: bool = False) -> bool:
        """Claim `work_ms` on `device` for `token` (a task's id), of queue key `key`; `backlog_ms`: the
        device's queued work besides claims. False: refused (over the limit; never with `force`)."""
        held = self._by_device.setdefault(device, {})
        if (not force and self.limit_ms is not None and held
                and backlog_ms + self.reserved_ms(device) + work_ms > self.limit_ms):
            return False  # an idle device (no claims held) always grants, so a task is never refused everywhere
        held[token] = (work_ms, key)
        return True

    def release(self, device: str, token: Any) -> None:
        self._by_device.get(device, {}).pop(token, None)

    def reserved_ms(self, device: str, key: float | None = None) -> float:
        """Claimed work on `device` (with `key`: only the claims that would be served before it)."""
        held = self._by_device.get(device)
        if not held:
            return 0.0
        return sum(w for w, k in held.values() if key is None or k <= key)


def choose_and_claim(options: Sequence[Option], age_ms: float, weight: float, claims: Claims, token: Any,
                     key: float, backlog_of: dict[str, float] | None = None) -> Option:
    """The rule with claims: try the options in score order until one grants the claim (the last one
    is taken regardless, so a task always goes somewhere). `backlog_of`: each device's queued work
    without claims, for the limit (default: each option's backlog_ms)."""
    ranked = sorted(enumerate(options), key=lambda io: (score(io[1], age_ms, weight), io[0]))
    for i, (_, o) in enumerate(ranked):
        base = o.backlog_ms if backlog_of is None else backlog_of.get(o.device, o.backlog_ms)
        if claims.grant(o.device, token, o.compute_ms, key, base, force=i == len(ranked) - 1):
            return o
    raise AssertionError("unreachable")


# -- admission --------------------------------------------------------------------------------------------------

def admit(expected_ms: float, deadline_ms: float | None) -> bool:
    """Whether a request expected to take `expected_ms` may start: always without a deadline."""
    return deadline_ms is None or expected_ms <= deadline_ms


def check_admission(source: str, expected_ms: float, deadline_ms: float | None) -> None:
    """Refuse at once, with the figures, a request of `source` that cannot meet its deadline."""
    if not admit(expected_ms, deadline_ms):
        raise DeadlineRefused(
            f"A request of source {source!r} was refused at once: it is expected to take {expected_ms:.1f} ms "
            f"with the work queued now, past its deadline of {deadline_ms:g} ms. Send less often, give the "
            f"source a later deadline_ms in sources.yaml, or add devices (docs/priority.md, \"Admission\").")


def expected_ms(stage_options: Iterable[Sequence[Option]], age_ms: float = 0.0) -> float:
    """A request's expected time to finish: its age plus, for each remaining stage, the best finish among
    that stage's options (the backlogs as they are now; later stages' waits are not yet known)."""
    return age_ms + sum(min(finish_ms(o) for o in opts) for opts in stage_options)


__all__ = ["DEFAULT_AGING_MS", "Claims", "Option", "TaskQueue", "admit", "check_admission", "choose",
           "choose_and_claim", "effective_priority", "expected_ms", "finish_ms", "queue_key", "score", "task_key", "RULES"]
