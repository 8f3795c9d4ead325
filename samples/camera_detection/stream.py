"""Frames through a split detector: several in flight, answers in frame order, newest frame wins.

    with Stream(session, hw=(480, 640), in_flight=3, deadline_s=1.0) as st:
        for r in st.results(source, frames=100, fps=30):      # Result per frame, in order
            draw(r.frame.image, r.faces); print(r.latency_ms, st.dropped)

The session is the public `edgepart.InferenceSession`; `submit` sends a frame at once and gives a
future (docs/agents.md, "Requests and deadlines"), so up to `in_flight` frames are inside the
cluster at a time, one per stage and one on the wire, which is what lets N devices pipeline. A
live source (a camera, or any source paced with `fps`) is read by a thread of its own into a
one-frame slot: a frame the cluster had no room for is replaced by the next and counted as dropped,
so what is shown is never older than the cluster's own latency. Every frame has a deadline (the
session's typed `DeadlineExceeded`); a device that vanishes fails the frames in flight with
`PeerError`, which is shown and counted, and the stream carries on: the session reconnects by
itself when the agent is back.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import edgepart

import detector
from sources import Frame

RETRY_S = 0.2  # after a failed frame, wait this long before sending the next (no hot loop while a device is away)


@dataclass
class Result:
    frame: Frame
    faces: list[detector.Face]
    t_submit: float
    t_done: float
    error: str = ""  # "" when answered; else what failed (shown on the overlay and logged)
    kind: str = ""  # "", "deadline" or "peer"

    @property
    def latency_ms(self) -> float:
        """Capture to answer, on the app's clock: what a viewer waits."""
        return (self.t_done - self.frame.t_capture) * 1e3

    @property
    def cluster_ms(self) -> float:
        """Sent to answered: the split network and its links, queueing in the cluster included."""
        return (self.t_done - self.t_submit) * 1e3


@dataclass
class Counts:
    read: int = 0
    dropped: int = 0
    answered: int = 0
    late: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class _Slot:
    """The newest frame of a live source, read by a thread; older untaken frames are dropped."""

    def __init__(self, source, frames: int | None, fps: float | None, counts: Counts):
        self.source, self.frames, self.fps, self.counts = source, frames, fps, counts
        self.cond = threading.Condition()
        self.frame: Frame | None = None
        self.ended = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="frame-source", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        t0, n = time.perf_counter(), 0
        try:
            while not self.stop.is_set() and (self.frames is None or n < self.frames):
                if self.fps:  # pace as a camera would: frame n exists at t0 + n / fps
                    wait = t0 + n / self.fps - time.perf_counter()
                    if wait > 0:
                        self.stop.wait(wait)
                f = self.source.read()
                if f is None:
                    break
                f.t_capture = time.perf_counter()
                n += 1
                with self.cond:
                    self.counts.read += 1
                    if self.frame is not None:
                        self.counts.dropped += 1  # the cluster had no room for it: the newer one wins
                    self.frame = f
                    self.cond.notify()
        finally:
            with self.cond:
                self.ended = True
                self.cond.notify()

    def take(self, block: bool) -> Frame | None:
        with self.cond:
            while block and self.frame is None and not self.ended:
                self.cond.wait(0.5)
            f, self.frame = self.frame, None
            return f

    def done(self) -> bool:
        with self.cond:
            return self.ended and self.frame is None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class Stream:
    def __init__(self, session: "edgepart.InferenceSession", *, hw: tuple[int, int] = (480, 640), in_flight: int = 3,
                 deadline_s: float = 1.0, score_threshold: float = detector.SCORE_THRESHOLD, log=None):
        self.session, self.hw, self.in_flight, self.deadline_s = session, hw, max(1, in_flight), deadline_s
        self.score_threshold = score_threshold
        self.counts = Counts()
        self.log = log or (lambda msg: None)
        self.input = session.get_inputs()[0].name
        self._slot: _Slot | None = None

    def results(self, source, *, frames: int | None = None, fps: float | None = None):
        """Yield one Result per frame sent, in frame order. A live source, or any source with `fps`,
        drops the frames the cluster has no room for; another is read only when there is room."""
        live = source.live or bool(fps)
        if live:
            self._slot = _Slot(source, frames, fps if not source.live else None, self.counts)
        pending: collections.deque = collections.deque()
        pause_until = 0.0
        try:
            while True:
                # keep `in_flight` frames inside the cluster
                while len(pending) < self.in_flight and time.perf_counter() >= pause_until:
                    f = self._next(source, frames, block=not pending)
                    if f is None:
                        break
                    x, lb = detector.feed(f.image, self.hw, self.input)
                    t = time.perf_counter()
                    try:
                        fut = self.session.submit({self.input: x}, timeout_s=self.deadline_s)
                    except edgepart.PeerError as e:
                        fut = e
                    pending.append((f, lb, t, fut))
                if not pending:
                    if time.perf_counter() < pause_until:
                        time.sleep(max(0.0, min(pause_until - time.perf_counter(), RETRY_S)))
                        continue
                    break  # the source ended (or gave its `frames`)
                f, lb, t, fut = pending.popleft()  # the oldest: answers come out in frame order
                r = self._answer(f, lb, t, fut)
                if r.error:
                    pause_until = time.perf_counter() + RETRY_S
                yield r
        finally:
            for f, lb, t, fut in pending:  # the caller stopped early: let what is in flight go
                if not isinstance(fut, Exception):
                    fut.cancel()
            if self._slot is not None:
                self._slot.close()

    def _next(self, source, frames: int | None, block: bool) -> Frame | None:
        if self._slot is not None:
            return self._slot.take(block)
        if frames is not None and self.counts.read >= frames:
            return None
        f = source.read()
        if f is not None:
            f.t_capture = time.perf_counter()
            self.counts.read += 1
        return f

    def _answer(self, f: Frame, lb, t: float, fut) -> Result:
        c = self.counts
        try:
            if isinstance(fut, Exception):
                raise fut
            # the session fails the future itself at the deadline; the extra seconds only bound a wait on a bug
            got = fut.result(self.deadline_s + 5.0)
        except edgepart.DeadlineExceeded as e:
            c.late += 1
            return self._failed(f, t, "deadline", f"frame {f.index} missed its {self.deadline_s * 1e3:.0f} ms deadline ({e})")
        except edgepart.PeerError as e:
            c.failed += 1
            return self._failed(f, t, "peer", str(e))
        except (TimeoutError, concurrent.futures.TimeoutError):  # (one class from Python 3.11 on)
            c.late += 1
            return self._failed(f, t, "deadline", f"frame {f.index} was not answered")
        faces = detector.postprocess(got, self.hw, lb, score_threshold=self.score_threshold)
        c.answered += 1
        return Result(f, faces, t, time.perf_counter())

    def _failed(self, f: Frame, t: float, kind: str, msg: str) -> Result:
        self.counts.errors.append(msg)
        del self.counts.errors[:-20]
        self.log(msg)
        return Result(f, [], t, time.perf_counter(), error=msg, kind=kind)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        if self._slot is not None:
            self._slot.close()


def latency_stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max()),
            "mean": float(a.mean())}
