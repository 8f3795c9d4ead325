"""A soak at full rate: memory, descriptors and threads of every process stay flat (issue 15).

    python bench/bench_soak.py [--minutes 10] [--window 8] [--sample-s 30] [--warmup-s 30] [--churn-s 20]

EfficientNet-Lite0 split after block 8 over 2 devices (bench/common.py, efficientnet_block8_split), each
device an `edgepart run` process with its default flags (encrypted links, docs/agents.md "Encryption";
onnxruntime threads: the cores it may use), device-a pinned to core 0 and device-b to core 1, on loopback.
The app is a process of its own (a child of this one, on core 0, as bench_agents' plain path): one
InferenceSession streams requests with `submit` at full rate, `--window` in flight, for `--warmup-s`
and then `--minutes`. Inputs cycle over 8 real photos (edgepart.testing.zoo.imagenet_inputs); every
answer is checked against onnxruntime's output for the unsplit model on the same photo (max abs
difference <= 1e-3 and the same top-1 class; the 8 references are further apart than that, so an
answer given to the wrong request is caught too). A wrong answer and a failed request both count as
errors.

Session churn, at a lower rate, in the same app process: every `--churn-s` a second InferenceSession
is opened, runs 3 checked requests and is closed (docs/agents.md, "Links and liveness": each session
opens its own links to every agent), so a socket or thread leaked per session shows as growth in the
agents or the app.

Every `--sample-s` this process reads, for each agent and for the app: RSS (VmRSS, /proc/PID/status),
open descriptors (the entries of /proc/PID/fd), threads (Threads, /proc/PID/status), and the requests
answered and the errors so far. Samples are never taken while a churn session is open, so every
sample sees the same set of sessions. The first sample after the warm-up is the start (allocators,
onnxruntime's arenas and libzmq's buffers have grown to their working size by then); the last is the
end.

"Flat", per process, start vs end: RSS grew less than 5 %, open descriptors within +-2, threads
within +-2. (10 minutes at ~27 req/s is ~16,000 requests: a leak of ~300 bytes a request moves a
100 MB process by 5 %.) Beside it: the growth in the second half of the measured time (a leak keeps
growing, an allocator that is still settling does not), the RSS slope (least squares over the
measured samples, MB an hour), and where the RSS grew (/proc/PID/smaps: the malloc heap, other
anonymous memory, file-backed). When a process is not flat, its descriptor kinds (the targets of
/proc/PID/fd) and thread names (/proc/PID/task/*/comm) at start and end are compared and printed;
`--tracemalloc` also traces the app's Python allocations and prints the lines that grew most.

Results: bench/results/soak.json, and bench/results/soak.png (RSS, descriptors and threads over time)
when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, efficientnet_block8_split, save  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console() if sys.stdout.isatty() else Console(width=200)  # a log file: one line per sample

RSS_GROWTH_PCT = 5.0  # "flat": RSS grew less than this, start to end
FDS_TOLERANCE = 2  # ... and open descriptors within +-this
THREADS_TOLERANCE = 2  # ... and threads within +-this
N_INPUTS = 8
ATOL = 1e-3
CHURN_REQUESTS = 3
APP_CORE, CORES = 0, {"device-a": 0, "device-b": 1}


# -- /proc ------------------------------------------------------------------------------------------

def proc_status(pid: int) -> dict:
    """RSS (kB), threads and open descriptors of one process."""
    st = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "Threads"):
            st[k] = int(v.split()[0])
    return {"rss_kb": st["VmRSS"], "threads": st["Threads"], "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def fd_kinds(pid: int) -> Counter:
    """What a process's descriptors point at, by kind: socket, pipe, anon_inode:[eventfd], a file, ..."""
    out: Counter = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed between listdir and readlink
        out[t.split(":[", 1)[0] if t.startswith(("socket:", "pipe:")) else t] += 1
    return out


def rss_by_mapping(pid: int) -> dict:
    """RSS (kB) by kind of mapping: the malloc heap ([heap]), other anonymous memory (thread arenas,
    large buffers, stacks), and file-backed (libraries, the model files)."""
    out = {"heap": 0, "anon": 0, "file": 0}
    kind = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        f = line.split()
        if not f:
            continue
        if not f[0].endswith(":"):  # a mapping's first line: address perms offset dev inode [path]
            path = f[5] if len(f) > 5 else ""
            kind = "heap" if path == "[heap]" else "file" if path.startswith("/") else "anon"
        elif f[0] == "Rss:":
            out[kind] += int(f[1])
    return out


def thread_names(pid: int) -> Counter:
    out: Counter = Counter()
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            out[Path(f"/proc/{pid}/task/{t}/comm").read_text().strip()] += 1
        except OSError:
            pass
    return out


def diff(a: Counter, b: Counter) -> dict:
    return {k: b[k] - a[k] for k in sorted(set(a) | set(b), key=str) if b[k] != a[k]}


# -- the app: a process of its own ------------------------------------------------------------------

class Shared:
    """What the app process shares with this one: counters, the churn lock, marks and a message queue."""

    def __init__(self, ctx):
        self.answered = ctx.Value("q", 0, lock=False)  # checked-correct answers of the streaming session
        self.wrong = ctx.Value("q", 0, lock=False)
        self.failed = ctx.Value("q", 0, lock=False)
        self.churn_sessions = ctx.Value("q", 0, lock=False)
        self.churn_answered = ctx.Value("q", 0, lock=False)
        self.churn_errors = ctx.Value("q", 0, lock=False)
        self.churn_lock = ctx.Lock()  # held while a churn session is open; samples wait for it
        self.ready = ctx.Event()
        self.mark = ctx.Event()  # the start sample was taken (tracemalloc's first snapshot)
        self.stop = ctx.Event()
        self.msgs = ctx.Queue()

    def counts(self) -> dict:
        return {k: getattr(self, k).value for k in
                ("answered", "wrong", "failed", "churn_sessions", "churn_answered", "churn_errors")}


def app_main(sh: Shared, dist: str, model: str, window: int, churn_s: float, trace: bool) -> None:
    """The app: one streaming session at full rate, a churn session every `churn_s`, every answer checked."""
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench process handles Ctrl-C and stops us
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # die with the bench process, however it dies
    except (OSError, AttributeError):
        pass
    os.sched_setaffinity(0, {APP_CORE})
    import onnxruntime as ort

    import edgepart
    from edgepart.testing import zoo

    xs = zoo.imagenet_inputs(N_INPUTS)["input"]
    feeds = [{"input": np.ascontiguousarray(xs[i:i + 1])} for i in range(N_INPUTS)]
    ref_sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    refs = [ref_sess.run(None, f)[0] for f in feeds]
    del ref_sess
    gap = min(float(np.abs(refs[i] - refs[j]).max()) for i in range(N_INPUTS) for j in range(i))
    assert gap > 10 * ATOL, f"two reference outputs are only {gap} apart: a swapped answer would pass"
    top1 = [int(r.argmax()) for r in refs]
    errors_told = [0]

    def tell(what: str) -> None:
        if errors_told[0] < 10:  # the first few, not one per failed request
            errors_told[0] += 1
            sh.msgs.put(("error", what))

    def ok(i: int, out: dict) -> bool:
        y = out["logits"]
        good = y.shape == refs[i].shape and float(np.abs(y - refs[i]).max()) <= ATOL and int(y.argmax()) == top1[i]
        if not good:
            tell(f"wrong answer for input {i}: max abs diff {float(np.abs(y - refs[i]).max()):.3g}")
        return good

    def churn() -> None:
        n = 0
        while not sh.stop.wait(churn_s):
            with sh.churn_lock:
                try:
                    with edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=30) as s:
                        for k in range(CHURN_REQUESTS):
                            i = (n + k) % N_INPUTS
                            if ok(i, dict(zip(["logits"], s.run(None, feeds[i])))):
                                sh.churn_answered.value += 1
                            else:
                                sh.churn_errors.value += 1
                except Exception as e:  # noqa: BLE001 - counted and told; the soak goes on
                    sh.churn_errors.value += 1
                    tell(f"churn session: {type(e).__name__}: {e}")
                sh.churn_sessions.value += 1
                n += 1

    sh.msgs.put(("hello", os.getpid()))  # the queue's feeder thread starts now, before any sample
    tm = None
    if trace:
        import tracemalloc as tm

        tm.start(8)
    sess = edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=60)
    try:
        for f in feeds:  # first contact
            sess.run(None, f)
        sh.ready.set()
        threading.Thread(target=churn, name="soak-churn", daemon=True).start()
        snap0, marked = None, False
        q: deque = deque()
        n = 0
        while not sh.stop.is_set():
            if not marked and sh.mark.is_set():
                marked = True
                sh.msgs.put(("py_threads_start", sorted(t.name for t in threading.enumerate())))
                if tm is not None:
                    snap0 = tm.take_snapshot()
            while len(q) >= window:
                i, fut = q.popleft()
                try:
                    out = fut.result(120)
                except Exception as e:  # noqa: BLE001 - counted and told; the soak goes on
                    sh.failed.value += 1
                    tell(f"request: {type(e).__name__}: {e}")
                    continue
                if ok(i, out):
                    sh.answered.value += 1
                else:
                    sh.wrong.value += 1
            i = n % N_INPUTS
            q.append((i, sess.submit(feeds[i])))
            n += 1
        sh.msgs.put(("py_threads_end", sorted(t.name for t in threading.enumerate())))
        for i, fut in q:
            try:
                fut.result(120)
            except Exception:  # noqa: BLE001 - past the end sample: not counted
                pass
        if tm is not None and snap0 is not None:
            top = tm.take_snapshot().compare_to(snap0, "lineno")[:15]
            sh.msgs.put(("tracemalloc", [str(s) for s in top]))
    finally:
        sess.close()
        sh.msgs.put(("done", None))


# -- the bench --------------------------------------------------------------------------------------

def fit_mb_per_h(ts: list[float], rss_kb: list[int]) -> float:
    if len(ts) < 2:
        return 0.0
    slope = statistics.linear_regression(ts, rss_kb).slope  # kB per second
    return slope * 3600 / 1024


def verdict(s0: dict, s1: dict) -> dict:
    g = (s1["rss_kb"] - s0["rss_kb"]) / s0["rss_kb"] * 100
    v = {"rss_growth_pct": g, "fds_delta": s1["fds"] - s0["fds"], "threads_delta": s1["threads"] - s0["threads"]}
    v["flat"] = g < RSS_GROWTH_PCT and abs(v["fds_delta"]) <= FDS_TOLERANCE and abs(v["threads_delta"]) <= THREADS_TOLERANCE
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="measured time after the warm-up (default 10)")
    ap.add_argument("--window", type=int, default=8, help="requests in flight (default 8)")
    ap.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples (default 30)")
    ap.add_argument("--warmup-s", type=float, default=30.0, help="full-rate warm-up before the start sample (default 30)")
    ap.add_argument("--churn-s", type=float, default=20.0, help="seconds between churn sessions (default 20)")
    ap.add_argument("--tracemalloc", action="store_true", help="trace the app's Python allocations (slows it)")
    ap.add_argument("--name", default="soak", help="results file name under bench/results (default soak)")
    a = ap.parse_args()

    from edgepart.testing import zoo
    from edgepart.testing.emulate import AgentProcesses

    ctx = mp.get_context("spawn")
    out: dict = {"cpus": os.cpu_count(), "minutes": a.minutes, "window": a.window, "sample_s": a.sample_s,
                 "warmup_s": a.warmup_s, "churn_s": a.churn_s, "loadavg_before": os.getloadavg(),
                 "rule": f"flat: RSS growth < {RSS_GROWTH_PCT} %, |fds delta| <= {FDS_TOLERANCE}, "
                         f"|threads delta| <= {THREADS_TOLERANCE}, start (after warm-up) vs end"}
    samples: list[dict] = []
    msgs: list = []
    with tempfile.TemporaryDirectory() as tmpd, ExitStack() as stack:
        dist = Path(tmpd) / "dist"
        _, info = efficientnet_block8_split(dist)
        assert (dist / "app.key").is_file(), "the bundles are not sealed with keys: the soak is meant for CURVE links"
        procs = AgentProcesses(dist, interface="127.0.0.1", threads=0, cpus=CORES)  # --threads 0 is the default
        stack.callback(procs.stop)  # registered first: stop() is safe on agents never started
        procs.start()
        procs.wait_ready(30)
        sh = Shared(ctx)
        app = ctx.Process(target=app_main, name="soak-app", daemon=True,
                          args=(sh, str(dist), str(zoo.efficientnet_lite0()), a.window, a.churn_s, a.tracemalloc))
        app.start()

        def stop_app() -> None:
            sh.stop.set()
            app.join(30)
            if app.is_alive():
                app.kill()
                app.join(10)
        stack.callback(stop_app)
        if not sh.ready.wait(120):
            raise RuntimeError(f"the app process did not get its first answers within 120 s (exit code {app.exitcode}); "
                               "the agents said:\n"
                               + "\n".join(f"{n}: {ln}" for n, p in procs.agents.items() for ln in p.lines[-10:]))
        pids = {d: p.proc.pid for d, p in procs.agents.items()}
        pids["app"] = app.pid
        names = list(pids)
        console.print(f"cut after node {info['cut']}; agents: " + ", ".join(f"{d} pid {pids[d]} core {CORES[d]}" for d in CORES)
                      + f"; app pid {app.pid} core {APP_CORE}; window {a.window}; warm-up {a.warmup_s:g} s, then "
                        f"{a.minutes:g} min, a sample every {a.sample_s:g} s, a churn session every {a.churn_s:g} s")
        hdr = f"{'t s':>6} {'answered':>9} {'req/s':>6} {'errors':>6} {'churn':>5}  " + "  ".join(
            f"{n + ' RSS MB':>16} {'fds':>4} {'thr':>4}" for n in names)
        console.print(hdr)

        def sample(t0: float, label: str) -> dict:
            if not sh.churn_lock.acquire(timeout=60):
                raise RuntimeError("a churn session stayed open for 60 s")
            try:
                s = {"t": time.monotonic() - t0, "label": label, **sh.counts(),
                     "procs": {n: proc_status(p) for n, p in pids.items()}}
                if label in ("start", "end"):
                    s["fd_kinds"] = {n: dict(fd_kinds(p)) for n, p in pids.items()}
                    s["thread_names"] = {n: dict(thread_names(p)) for n, p in pids.items()}
                    s["rss_by_mapping"] = {n: rss_by_mapping(p) for n, p in pids.items()}
            finally:
                sh.churn_lock.release()
            prev = samples[-1] if samples else None
            rate = (s["answered"] - prev["answered"]) / (s["t"] - prev["t"]) if prev else 0.0
            errs = s["wrong"] + s["failed"] + s["churn_errors"]
            row = f"{s['t']:6.0f} {s['answered']:9d} {rate:6.1f} {errs:6d} {s['churn_sessions']:5d}  " + "  ".join(
                f"{s['procs'][n]['rss_kb'] / 1024:16.1f} {s['procs'][n]['fds']:4d} {s['procs'][n]['threads']:4d}" for n in names)
            console.print(row + (f"  [bold]{label}[/]" if label else ""))
            samples.append(s)
            if not app.is_alive():
                raise RuntimeError(f"the app process exited (code {app.exitcode})")
            for n, p in procs.agents.items():
                if p.proc is None or p.proc.poll() is not None:
                    raise RuntimeError(f"agent {n} exited:\n" + "\n".join(p.lines[-15:]))
            return s

        t0 = time.monotonic()
        sample(t0, "")
        next_t = min(a.sample_s, a.warmup_s)
        while next_t < a.warmup_s:
            time.sleep(max(0.0, t0 + next_t - time.monotonic()))
            sample(t0, "")
            next_t += a.sample_s
        time.sleep(max(0.0, t0 + a.warmup_s - time.monotonic()))
        start = sample(t0, "start")
        sh.mark.set()
        end_t = a.warmup_s + a.minutes * 60
        next_t = a.warmup_s + a.sample_s
        while next_t < end_t - 1e-6:
            time.sleep(max(0.0, t0 + next_t - time.monotonic()))
            sample(t0, "")
            next_t += a.sample_s
        time.sleep(max(0.0, t0 + end_t - time.monotonic()))
        end = sample(t0, "end")
        agent_log_lines = {n: len(p.lines) for n, p in procs.agents.items()}
        sh.stop.set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                kind, v = sh.msgs.get(timeout=1)
            except queue.Empty:
                if not app.is_alive():
                    break
                continue
            if kind == "done":
                break
            msgs.append((kind, v))
        stop_app()
        agent_tail = {n: p.lines[-5:] for n, p in procs.agents.items()}

    # -- figures --------------------------------------------------------------------------------------
    dt = end["t"] - start["t"]
    errors = {k: end[k] - start[k] for k in ("wrong", "failed", "churn_errors")}
    errors_total = {k: end[k] for k in ("wrong", "failed", "churn_errors")}
    answered = end["answered"] - start["answered"]
    measured = [s for s in samples if s["t"] >= start["t"] - 1e-6]
    table = Table(title=f"start (t={start['t']:.0f} s, after the warm-up) vs end (t={end['t']:.0f} s): "
                        f"{answered} requests answered in {dt / 60:.1f} min, {answered / dt:.1f} req/s, window {a.window}",
                  title_justify="left")
    mid = measured[len(measured) // 2]
    for c in ("process", "RSS MB start", "end", "growth", "2nd half MB", "slope MB/h", "fds start", "end",
              "threads start", "end", "verdict"):
        table.add_column(c, justify="right")
    per: dict = {}
    for n in names:
        s0, s1 = start["procs"][n], end["procs"][n]
        v = verdict(s0, s1)
        v["rss_slope_mb_per_h"] = fit_mb_per_h([s["t"] for s in measured], [s["procs"][n]["rss_kb"] for s in measured])
        v["rss_second_half_mb"] = (s1["rss_kb"] - mid["procs"][n]["rss_kb"]) / 1024
        v["rss_by_mapping_delta_kb"] = {k: end["rss_by_mapping"][n][k] - start["rss_by_mapping"][n][k]
                                        for k in start["rss_by_mapping"][n]}
        v.update({"start": s0, "end": s1})
        if not v["flat"]:
            v["fd_kinds_delta"] = diff(Counter(start["fd_kinds"][n]), Counter(end["fd_kinds"][n]))
            v["thread_names_delta"] = diff(Counter(start["thread_names"][n]), Counter(end["thread_names"][n]))
        per[n] = v
        table.add_row(n, f"{s0['rss_kb'] / 1024:.1f}", f"{s1['rss_kb'] / 1024:.1f}", f"{v['rss_growth_pct']:+.2f} %",
                      f"{v['rss_second_half_mb']:+.1f}",
                      f"{v['rss_slope_mb_per_h']:+.1f}", str(s0["fds"]), str(s1["fds"]), str(s0["threads"]),
                      str(s1["threads"]), "[green]flat[/]" if v["flat"] else "[red]NOT FLAT[/]")
    console.print(table)
    console.print(f"rule: {out['rule']}")
    console.print(f"requests answered (checked correct): {end['answered']} in all, {answered} measured "
                  f"({answered / dt:.1f} req/s); errors: wrong {errors_total['wrong']}, failed {errors_total['failed']}; "
                  f"churn sessions {end['churn_sessions']} ({end['churn_answered']} requests answered, "
                  f"{errors_total['churn_errors']} errors)")
    console.print(f"the 2nd half is the growth from t={mid['t']:.0f} s to the end: a leak keeps growing, an allocator "
                  "settling does not. RSS growth by mapping, start to end (MB): " + "; ".join(
                      f"{n} " + ", ".join(f"{k} {d / 1024:+.1f}" for k, d in v["rss_by_mapping_delta_kb"].items())
                      for n, v in per.items()))
    for n, v in per.items():
        if not v["flat"]:
            console.print(f"[red]{n}[/]: descriptor kinds changed {v['fd_kinds_delta'] or 'no'}, "
                          f"thread names changed {v['thread_names_delta'] or 'no'}")
    for kind, v in msgs:
        if kind == "error":
            console.print(f"[red]app error[/]: {v}")
        elif kind == "py_threads_end":
            before = Counter(dict(msgs).get("py_threads_start", []))
            d = diff(before, Counter(v))
            console.print(f"the app's Python threads at the start sample: {len(before)}, after the end sample: {len(v)}"
                          + (f"; changed: {d}" if d else ", the same names"))
        elif kind == "tracemalloc":
            console.print("the app's Python allocations that grew most, start to end (tracemalloc):")
            for line in v:
                console.print(f"  {line}")
    out.update({"cut": info["cut"], "pids": pids, "processes": per, "answered_measured": answered,
                "req_per_s": answered / dt, "measured_s": dt, "errors_total": errors_total, "errors_measured": errors,
                "answered_total": end["answered"], "churn_sessions": end["churn_sessions"],
                "churn_answered": end["churn_answered"], "all_flat": all(v["flat"] for v in per.values()),
                "agent_log_lines": agent_log_lines, "agent_log_tail": agent_tail,
                "app_messages": [list(m) for m in msgs], "loadavg_after": os.getloadavg(),
                "samples": [{k: v for k, v in s.items() if k not in ("fd_kinds", "thread_names", "rss_by_mapping")}
                            for s in samples],
                "start_rss_by_mapping": start["rss_by_mapping"], "end_rss_by_mapping": end["rss_by_mapping"],
                "start_fd_kinds": start["fd_kinds"], "end_fd_kinds": end["fd_kinds"],
                "start_thread_names": start["thread_names"], "end_thread_names": end["thread_names"]})
    console.print(f"cores {os.cpu_count()}, load average before {out['loadavg_before'][0]:.1f}, after "
                  f"{out['loadavg_after'][0]:.1f} (a busy machine lowers req/s, not the verdict)")
    console.print(f"results: {save(a.name, out)}")
    png = plot(samples, start["t"], names, RESULTS / f"{a.name}.png")
    if png:
        console.print(f"plot: {png}")


def plot(samples: list[dict], t_start: float, names: list[str], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ts = [s["t"] / 60 for s in samples]
    s0 = next(s for s in samples if s["t"] >= t_start - 1e-6)
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for ax, key, label, scale in ((axes[0], "rss_kb", "RSS - RSS at start (MB)", 1 / 1024),
                                  (axes[1], "fds", "open descriptors", 1), (axes[2], "threads", "threads", 1)):
        for n in names:
            base = s0["procs"][n][key] if key == "rss_kb" else 0
            lab = f"{n} ({base / 1024:.0f} MB at start)" if key == "rss_kb" else n
            ax.plot(ts, [(s["procs"][n][key] - base) * scale for s in samples], marker=".", label=lab)
        ax.axvline(t_start / 60, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    axes[0].set_title("soak: 2 `edgepart run` agents (CURVE) and the app; dashed: end of warm-up (start sample)")
    axes[2].set_xlabel("minutes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
