"""Run by bench_auto.py and bench_grid.py, on this machine or inside the caller's network namespace: one session.

    auto_client.py DIST IP INPUTS.npz N WARMUP OUT.npz [BUDGET_S STREAM WINDOW]

Finds the cluster of DIST (every device an `edgepart run` elsewhere), prints one JSON line with the
median single-request latency over N requests (after WARMUP; with BUDGET_S, fewer where N would
take longer than BUDGET_S seconds, at least 2), and writes the first answer to OUT.npz. With STREAM
> 0 it then streams up to STREAM requests through `submit` with WINDOW in flight (at most BUDGET_S
seconds) and adds their rate, requests per second.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import edgepart


def latency(run, n: int, warmup: int, budget_s: float) -> tuple[float, int]:
    """The median of up to `n` timed runs after `warmup`, stopping once `budget_s` has passed (≥ 2 runs)."""
    for _ in range(warmup):
        run()
    ts: list[float] = []
    end = time.perf_counter() + budget_s
    while len(ts) < n and (len(ts) < 2 or time.perf_counter() < end):
        t = time.perf_counter()
        run()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), len(ts)


def stream(sess, feeds: dict, count: int, window: int, budget_s: float) -> tuple[float, int]:
    """Requests per second over up to `count` requests submitted with `window` in flight; stops sending
    once `budget_s` has passed, and counts what was answered by then (≥ 2 * window sent)."""
    pending = []
    done = 0
    t0 = time.perf_counter()
    sent = 0
    while sent < count and (sent < 2 * window or time.perf_counter() - t0 < budget_s):
        if len(pending) >= window:
            pending.pop(0).result(600)
            done += 1
        pending.append(sess.submit(feeds))
        sent += 1
    for f in pending:
        f.result(600)
        done += 1
    return done / (time.perf_counter() - t0), done


def main() -> None:
    os.sched_setaffinity(0, {0})
    dist, ip, feeds = Path(sys.argv[1]), sys.argv[2], dict(np.load(sys.argv[3]))
    n, warmup, out = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    budget_s = float(sys.argv[7]) if len(sys.argv) > 7 else float("inf")
    count = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    window = int(sys.argv[9]) if len(sys.argv) > 9 else 2
    with edgepart.InferenceSession(dist, interface=ip, timeout_s=600, discover_timeout_s=60) as sess:
        got = sess.run(None, feeds)
        np.savez(out, *got)
        res: dict = {}
        res["latency_ms"], res["latency_n"] = latency(lambda: sess.run(None, feeds), n, warmup, budget_s)
        if count > 0:
            res["throughput_per_s"], res["throughput_n"] = stream(sess, feeds, count, window, budget_s)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
