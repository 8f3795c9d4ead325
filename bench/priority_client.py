"""Run by bench_priority_agents.py inside a source device's network namespace: one source's app.

    priority_client.py DIST IP SOURCE RATE_HZ SECONDS SEED TIMEOUT_S INPUTS.npz OUT.json [--insecure]

Opens `edgepart.InferenceSession(DIST, source=SOURCE)` on interface IP, runs 3 requests one at a time
(warm-up, and a check that the path works), prints `ready`, waits for a line on stdin (the bench
starts every source at once), then sends requests open-loop with Poisson arrivals at RATE_HZ for
SECONDS with `submit` (never waiting for an answer before sending the next), waits for the last
answers (up to TIMEOUT_S), and writes OUT.json: per request its send time (s after the start), its
latency (ms, null when it failed) and its status:

    ok        answered
    refused   edgepart.errors.DeadlineExceeded well before the request's timeout (refused at once:
              its deadline could not be met)
    timeout   no answer within TIMEOUT_S (DeadlineExceeded or TimeoutError at the timeout)
    error     anything else (the first message of each kind is kept)
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np


def main() -> None:
    dist, ip, source = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    rate, seconds, seed = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    timeout_s, feeds, out = float(sys.argv[7]), dict(np.load(sys.argv[8])), Path(sys.argv[9])
    insecure = "--insecure" in sys.argv[10:]  # agents run --insecure: plaintext links

    import edgepart
    from edgepart.errors import DeadlineExceeded

    result: dict = {"source": source, "rate_hz": rate, "seconds": seconds, "records": [], "errors": {}}
    try:
        kw = {} if source.startswith("plain:") else {"source": source}  # plain:NAME: a plan without sources (a check of the bench)
        sess = edgepart.InferenceSession(dist, interface=ip, timeout_s=timeout_s, discover_timeout_s=60, insecure=insecure, **kw)
    except TypeError as e:  # an edgepart whose session takes no source yet
        result["fatal"] = f"InferenceSession(source=) is not supported by this edgepart: {e}"
        out.write_text(json.dumps(result))
        print("fatal", result["fatal"], flush=True)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - reported to the bench, which prints it
        result["fatal"] = f"{type(e).__name__}: {e}"
        out.write_text(json.dumps(result))
        print("fatal", result["fatal"], flush=True)
        sys.exit(2)
    with sess:
        ok, tries, last = 0, 0, None
        while ok < 3 and tries < 30:  # a cold agent may refuse the first requests of a source with a deadline
            tries += 1
            try:
                sess.run(None, feeds)
                ok += 1
            except DeadlineExceeded as e:
                last = e
                time.sleep(0.3)
            except Exception as e:  # noqa: BLE001
                last = e
                break
        result["warmup"] = {"ok": ok, "tries": tries}
        if ok < 3:
            e = last
            result["fatal"] = f"warm-up requests failed ({ok} of {tries} answered): {type(e).__name__}: {e}"
            out.write_text(json.dumps(result))
            print("fatal", result["fatal"], flush=True)
            sys.exit(3)
        print("ready", flush=True)
        sys.stdin.readline()  # the bench's go

        rng = np.random.default_rng(seed)
        n_max = int(rate * seconds * 3 + 100)
        sent = np.full(n_max, np.nan)
        lat = np.full(n_max, np.nan)
        status: list[str | None] = [None] * n_max
        lock = threading.Lock()
        left = [0]
        all_done = threading.Event()

        def done_cb(i: int, t0: float):
            def cb(fut) -> None:
                t = time.perf_counter()
                exc = fut.exception()
                ms = (t - t0) * 1e3
                if exc is None:
                    lat[i], st = ms, "ok"
                elif isinstance(exc, DeadlineExceeded) and ("refus" in str(exc).lower() or ms < 0.5 * timeout_s * 1e3):
                    lat[i], st = ms, "refused"
                elif isinstance(exc, (DeadlineExceeded, TimeoutError)):
                    st = "timeout"
                else:
                    st = "error"
                if exc is not None:
                    key = f"{st}: {type(exc).__name__}"
                    with lock:
                        result["errors"].setdefault(key, {"count": 0, "first": str(exc)[:500]})["count"] += 1
                with lock:
                    status[i] = st
                    left[0] -= 1
                    if left[0] == 0 and stopped[0]:
                        all_done.set()
            return cb

        stopped = [False]
        start = time.perf_counter()
        t_next = rng.exponential(1.0 / rate)
        n = 0
        while t_next < seconds and n < n_max:
            delay = start + t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            sent[n] = t0 - start
            with lock:
                left[0] += 1
            try:
                fut = sess.submit(feeds)
            except Exception as e:  # noqa: BLE001 - refused before it left, counted like a refusal
                with lock:
                    left[0] -= 1
                    st = "refused" if isinstance(e, DeadlineExceeded) else "error"
                    status[n] = st
                    lat[n] = (time.perf_counter() - t0) * 1e3 if st == "refused" else np.nan
                    result["errors"].setdefault(f"{st}: {type(e).__name__}", {"count": 0, "first": str(e)[:500]})["count"] += 1
            else:
                fut.add_done_callback(done_cb(n, t0))
            n += 1
            t_next += rng.exponential(1.0 / rate)
        with lock:
            stopped[0] = True
            if left[0] == 0:
                all_done.set()
        all_done.wait(timeout_s + 10)
        with lock:
            result["records"] = [[round(float(sent[i]), 6), None if np.isnan(lat[i]) else round(float(lat[i]), 4),
                                  status[i] or "unfinished"] for i in range(n)]
            result["sent"] = n
            result["wall_s"] = time.perf_counter() - start
    out.write_text(json.dumps(result))
    print("done", n, flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
