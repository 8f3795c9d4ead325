"""A stream of encoder requests from a process of its own, for the failover test (test_failover.py).
One JSON argument:

    {"dist", "interface", "n", "window", "timeout_s", "width", "signal_after"}

Opens an InferenceSession on `dist`, says `edgepart-stream ready` once every plan (the fallbacks'
too) is linked, then sends requests 0..n-1 with `submit`, at most `window` in flight, and prints
`edgepart-stream answered K` once `signal_after` requests are answered (the test kills a device
then). Each answer is checked against the request's own (the encoder model names its request). At
the end it prints one JSON line: how many were answered, failed, answered wrongly, answered more
than once, the completion times' longest gap, the plans the session used, and whether a request
after the stream works.
"""

import json
import sys
import threading
import time

import numpy as np

import edgepart
from e2e_helpers import encoded, encoder_input, encoder_owner


def main() -> None:
    args = json.loads(sys.argv[1])
    n, window, timeout_s, width = args["n"], args["window"], args["timeout_s"], args["width"]
    x = lambda i: encoder_input(i, width)
    lock = threading.Lock()
    answered_at: dict[int, float] = {}
    calls: dict[int, int] = {}
    wrong: list[tuple[int, int]] = []
    failed: list[tuple[int, str]] = []
    said = threading.Event()

    def done(i):
        def cb(f):
            now = time.monotonic()
            with lock:
                calls[i] = calls.get(i, 0) + 1
                e = f.exception()
                if e is not None:
                    failed.append((i, f"{type(e).__name__}: {e}"))
                    return
                answered_at[i] = now
                y = f.result()["y"]
                if not np.array_equal(y, encoded(x(i))):
                    wrong.append((i, encoder_owner(y)))
                k = len(answered_at)
            if k >= args["signal_after"] and not said.is_set():
                said.set()
                print(f"edgepart-stream answered {k}", flush=True)
        return cb

    with edgepart.InferenceSession(args["dist"], interface=args["interface"], timeout_s=timeout_s) as sess:
        client = sess._client
        end = time.monotonic() + 30
        while hasattr(client, "fallbacks_ready") and not client.fallbacks_ready() and time.monotonic() < end:
            time.sleep(0.05)
        print(f"edgepart-stream ready fallbacks={json.dumps(sess.fallbacks)}", flush=True)
        plans = [sess.active_plan_id]
        futures = []
        t0 = time.monotonic()
        for i in range(n):
            if window is not None and i >= window:
                try:
                    futures[i - window].result(timeout_s + 5)
                except Exception:  # noqa: BLE001 - counted by its callback
                    pass
            f = sess.submit({"x": x(i)})
            f.add_done_callback(done(i))
            futures.append(f)
            if sess.active_plan_id != plans[-1]:
                plans.append(sess.active_plan_id)
        for f in futures:
            try:
                f.result(timeout_s + 5)
            except Exception:  # noqa: BLE001 - counted by its callback
                pass
        took_s = time.monotonic() - t0
        time.sleep(0.5)  # a late second answer would show in `calls` now
        with lock:
            times = sorted(answered_at.values())
            gaps = [b - a for a, b in zip(times, times[1:])]
            worst = max(range(len(gaps)), key=gaps.__getitem__) if gaps else None
            twice = sorted(i for i, c in calls.items() if c > 1)
            n_answered, n_failed = len(answered_at), len(failed)
        after = []
        for k in (n, n + 1, 7):
            try:
                (y,) = sess.run(None, {"x": x(k)})
                after.append("ok" if np.array_equal(y, encoded(x(k))) else f"wrong answer for {k}")
            except edgepart.EdgepartError as e:
                after.append(f"{type(e).__name__}: {e}")
        retried = getattr(client, "retried", 0)
        switches = getattr(client, "switches", 0)
    print(json.dumps({
        "n": n, "answered": n_answered, "n_failed": n_failed, "failed": failed[:5], "n_wrong": len(wrong),
        "wrong": wrong[:10], "twice": twice[:10], "longest_gap_s": max(gaps) if gaps else 0.0,
        "longest_gap_after": (sorted(answered_at, key=answered_at.get)[worst] if worst is not None else None),
        "took_s": took_s, "plans": plans, "retried": retried, "switches": switches, "after": after,
    }), flush=True)


if __name__ == "__main__":
    main()
