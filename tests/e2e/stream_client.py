"""A stream of encoder requests from a process of its own (so that if the client process dies —
say on a libzmq assertion — the test reports it instead of dying with it). One JSON argument:

    {"dist", "interface", "n", "window" (null: all at once), "timeout_s", "width"}

Sends requests 0..n-1 with `InferenceSession.submit`, at most `window` in flight, and prints one
JSON line: how many failed (and the first failures), which answers belonged to another request,
the order in which the futures completed, and whether a request after the stream still works.
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
    completed: list[int] = []
    lock = threading.Lock()
    failed: list[tuple[int, str]] = []
    wrong: list[tuple[int, int]] = []
    futures: list = []

    def done(i):
        def cb(_):
            with lock:
                completed.append(i)
        return cb

    with edgepart.InferenceSession(args["dist"], interface=args["interface"], timeout_s=timeout_s) as sess:
        budget_s = timeout_s + 10
        t0 = time.monotonic()

        def collect(i):
            try:
                out = futures[i].result(max(budget_s - (time.monotonic() - t0), 0.1))
            except Exception as e:  # noqa: BLE001 - every failure is reported, with its type
                failed.append((i, f"{type(e).__name__}: {e}"))
                return
            if set(out) != {"y"} or not np.array_equal(out["y"], encoded(x(i))):
                wrong.append((i, encoder_owner(out["y"])))

        for i in range(n):
            if window is not None and i >= window:
                collect(i - window)
            f = sess.submit({"x": x(i)})
            f.add_done_callback(done(i))
            futures.append(f)
        for i in range(max(n - window, 0) if window is not None else 0, n):
            collect(i)
        took_s = time.monotonic() - t0
        with lock:
            order = list(completed)
        after = []
        for k in (n, n + 1, 7):  # the stream left nothing behind that answers a later request wrongly
            try:
                (y,) = sess.run(None, {"x": x(k)})
                after.append("ok" if np.array_equal(y, encoded(x(k))) else f"wrong answer for {k}")
            except edgepart.EdgepartError as e:
                after.append(f"{type(e).__name__}: {e}")
    print(json.dumps({"took_s": took_s, "n_failed": len(failed), "failed": failed[:5], "wrong": wrong[:10],
                      "n_wrong": len(wrong), "order": order, "after": after}), flush=True)


if __name__ == "__main__":
    main()
